"""PII scrubbing: e-mail addresses, IP addresses and phone numbers become typed placeholders.

Usage:

    step = PiiScrub.from_config(cfg.curate.pii)
    df = step(df)                  # alive rows' text scrubbed; adds pii_email, pii_ip, pii_phone (int) to every row
    pii_counts(df)                 # {"email": n, "ip": n, "phone": n} over the kept rows
    scrub("mail me at a@b.org")    # -> ("mail me at <EMAIL>", {"email": 1, "ip": 0, "phone": 0})

Choices (datatrove's ``PIIFormatter`` and Dolma's PII tagger, adapted to manual pages):
- e-mail: datatrove's RFC-5322-ish regex.  Man pages name their authors and bug lists (``bug-foo@gnu.org``);
  those go too: an address is an address.
- IP: IPv4 dotted quads and IPv6 (full or ``::``-compressed), each checked with ``ipaddress``.  As datatrove
  (``only_remove_public_ips``), only globally routable addresses are replaced: private, loopback, link-local,
  multicast and documentation ranges (10/8, 127/8, 192.168/16, 192.0.2/24, fe80::/10, 2001:db8::/32 ...) are no
  one's personal data, and man pages are full of them.  A quad that is part of a longer dotted number
  (``1.2.3.4.5``), follows ``v``, ``version `` or a letter and a dash (``v1.2.3.4``, ``foo-1.2.3.4``) or is
  followed by a dash and a letter, or comes shortly after "version", "release", "since", "section", "RFC" ...
  (``since dpkg 1.15.5.4``, ``RFC 2616 section 8.1.2.2``) is a version number, not an address (datatrove would
  replace them all).  Multicast addresses (224/4) are not anyone's either.
  An IPv6 match needs a digit (``dead:beef::cafe`` is more often a C++/Perl scope than an address).
- phone: Dolma's pattern is US-centric and matches numeric tables; here a number needs separators and 10-15
  digits in all: ``+CC`` international forms, ``(AAA) BBB-CCCC`` and ``AAA-BBB-CCCC`` / ``AAA.BBB.CCCC``.  Dates,
  versions, octal modes and byte counts never have that shape.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from modpipe.curate.base import Step
from modpipe.curate.normalize import count_words

PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>"}

# Every pattern starts by consuming one character and only then looks behind it: Python's re evaluates a leading
# lookbehind at every position of the text, which made the scrub ~5x slower.  E-mails are searched only around
# each "@" (str.find), IPv6 only in texts holding "::" or a long colon run.
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
EMAIL = re.compile(rf"\b{_LOCAL}@{_DOMAIN}")
_LOCAL_BEFORE_AT = re.compile(rf"{_LOCAL}\Z")
IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\w]|\.\d|-[A-Za-z])")
_H = r"[0-9A-Fa-f]{1,4}"
IPV6 = re.compile(  # gated (see above), so its leading lookbehind costs little
    rf"(?<![\w:.])((?:{_H}:){{7}}{_H}|(?:{_H}:){{1,7}}:(?:{_H}(?::{_H}){{0,6}})?|::(?:{_H}(?::{_H}){{0,6}}))"
    rf"(?![\w:.])")
PHONE = re.compile(
    r"[+(\d](?<![\w+.\-/][+(\d])(?:"
    r"(?<=\+)\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]\d{2,4}){1,4}"  # +44 20 7946 0958, +1-202-555-0143
    r"|(?<=\()\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}"  # (202) 555-0143
    r"|(?<=\d)\d{2}([.\-])\d{3}\1\d{4}"  # 202-555-0143, 202.555.0143
    r")(?![\w\-/]|\.\d)")


_VERSION_BEFORE = re.compile(r"\b(?:version|release|revision|rev|ver|since|section|oid|rfc)\W{0,3}(?:[\w.+-]+ )?$",
                             re.IGNORECASE)


def _ip_ok(text: str, public_only: bool) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return (ip.is_global and not ip.is_multicast) if public_only else True


def _ipv4_ok(m: re.Match, public_only: bool) -> bool:
    """A public address, not a version/section number ("since dpkg 1.15.5.4", "RFC 2616 section 8.1.2.2",
    "libfoo-1.2.3.4")."""
    before = m.string[max(0, m.start() - 32):m.start()]
    if before[-2:-1].isalpha() and before[-1:] == "-":
        return False
    return _ip_ok(m.group(0), public_only) and not _VERSION_BEFORE.search(before)


def _email_spans(text: str) -> list[tuple[int, int]]:
    """Spans of the e-mail addresses, found from each "@" (a local part is at most 64 characters)."""
    spans: list[tuple[int, int]] = []
    i = text.find("@")
    while i > 0:
        local = _LOCAL_BEFORE_AT.search(text, max(0, i - 64), i)
        if local is not None and (not spans or local.start() >= spans[-1][1]):
            m = EMAIL.match(text, local.start())
            if m is not None and m.end() > i:
                spans.append(m.span())
        i = text.find("@", i + 1)
    return spans


def scrub(text: str, emails: bool = True, ips: bool = True, phones: bool = True,
          only_public_ips: bool = True) -> tuple[str, dict[str, int]]:
    """(text with placeholders, matches replaced per type)."""
    counts = {"email": 0, "ip": 0, "phone": 0}

    def sub(kind: str, valid=None):
        def repl(m: re.Match) -> str:
            if valid is not None and not valid(m):
                return m.group(0)
            counts[kind] += 1
            return PLACEHOLDERS[kind]
        return repl

    if emails and "@" in text:
        spans = _email_spans(text)
        if spans:
            counts["email"] = len(spans)
            pieces, at = [], 0
            for a, b in spans:
                pieces += [text[at:a], PLACEHOLDERS["email"]]
                at = b
            text = "".join(pieces) + text[at:]
    if ips:
        if "." in text:
            text = IPV4.sub(sub("ip", lambda m: _ipv4_ok(m, only_public_ips)), text)
        if "::" in text or text.count(":") >= 7:
            # a digit required: "dead:beef::cafe"-like words are C++/Perl scopes far more often than addresses
            text = IPV6.sub(sub("ip", lambda m: any(c.isdigit() for c in m.group(0))
                                and _ip_ok(m.group(0), only_public_ips)), text)
    if phones:
        text = PHONE.sub(sub("phone", lambda m: 10 <= sum(c.isdigit() for c in m.group(0)) <= 15), text)
    return text, counts


@dataclass
class PiiScrub(Step):
    emails: bool = True
    ips: bool = True
    phones: bool = True
    only_public_ips: bool = True
    name: str = "pii"
    reasons: tuple[str, ...] = ()  # rewrites text, removes nothing

    @classmethod
    def from_config(cls, c) -> "PiiScrub":
        return cls(c.emails and c.enabled, c.ips and c.enabled, c.phones and c.enabled, c.only_public_ips)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        found = {k: np.zeros(len(df), dtype=np.int64) for k in PLACEHOLDERS}
        if self.emails or self.ips or self.phones:
            texts = df["text"].to_numpy().copy()
            changed = []
            for pos in np.flatnonzero((df["reason"] == "").to_numpy()):
                new, counts = scrub(texts[pos], self.emails, self.ips, self.phones, self.only_public_ips)
                if new != texts[pos]:
                    texts[pos] = new
                    changed.append(pos)
                for k, v in counts.items():
                    found[k][pos] = v
            if changed:
                df["text"] = texts
                for col, fn in (("n_chars", len), ("n_words", count_words)):
                    if col in df:
                        vals = df[col].to_numpy().copy()
                        vals[changed] = [fn(texts[p]) for p in changed]
                        df[col] = vals
        for k, v in found.items():
            df[f"pii_{k}"] = v
        return df


def pii_counts(df: pd.DataFrame) -> dict[str, int]:
    """Replacements per type over the alive rows of a frame that went through ``PiiScrub``."""
    alive = df["reason"] == "" if "reason" in df else slice(None)
    return {k: int(df.loc[alive, f"pii_{k}"].sum()) if f"pii_{k}" in df else 0 for k in PLACEHOLDERS}
