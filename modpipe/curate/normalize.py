"""Text normalisation as named steps, and the content keys every step agrees on.

Steps (``curate.normalize`` lists them by name, applied in that order; drop a name to turn a step off):

troff          troff/man markup stripped (``troff.strip_troff``), only where the reader that made the raw corpus
               says it is troff (``harvest.MARKUP``: the man harvest keeps the pages' troff source in raw/); user
               text is never read as troff, whatever its fields say
nfc            Unicode NFC
control_chars  newlines unified (CRLF/CR -> LF); control and invisible format characters removed (NUL included)
whitespace     runs of blanks collapsed, blanks around newlines and 3+ newlines trimmed, ends stripped

``NormalizeText(names, markup)`` is the step of the normalize pass (blank results are ``empty_text``; a record
whose normalisation raises is removed as ``normalize_error``, the others go on).
``normalize(text)`` = nfc -> control_chars -> whitespace (what tasks and contracts use).  ``text_key``: sha256
of the whitespace-collapsed, lower-cased text, the same notion of "the same example" the contracts use for split
overlap (``contracts.datasets.text_hash``); exact dedup, task splitting and decontamination all use it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from modpipe.config_curate import NORMALIZE_STEPS
from modpipe.curate.base import Step, flag

_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\ufeff\u00ad\ufffe\uffff]")
_BLANKS = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_EDGE = re.compile(r" ?\n ?")
_PARAS = re.compile(r"\n{3,}")
# CJK ideographs and kana carry no spaces: each counts as a word
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_NONLETTER = re.compile(r"[\W\d_]")
_SPACE = re.compile(r"\s")


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def control_chars(text: str) -> str:
    return _CTRL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def whitespace(text: str) -> str:
    text = _BLANKS.sub(" ", text)
    text = _EDGE.sub("\n", text)
    text = _PARAS.sub("\n\n", text)
    return text.strip()


def troff(text: str) -> str:
    from modpipe.curate.troff import strip_troff

    return strip_troff(text)


STEPS: dict[str, Callable[[str], str]] = {"troff": troff, "nfc": nfc, "control_chars": control_chars,
                                          "whitespace": whitespace}
"""Named normalisation steps (``curate.normalize``); the config validates names against ``NORMALIZE_STEPS``."""
assert tuple(STEPS) == NORMALIZE_STEPS, "config_curate.NORMALIZE_STEPS must list the steps of curate.normalize"
MARKUP_STEPS = {"troff": "troff"}
"""Steps that apply only to text of the markup they name (``apply_steps``' ``markup``)."""


def normalize(text: str) -> str:
    return whitespace(control_chars(nfc(text)))


def check_steps(names: list[str]) -> list[str]:
    """``names`` if every one is a step (the config runs the same check on ``NORMALIZE_STEPS``)."""
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise ValueError(f"unknown normalize step(s) {unknown}; valid: {sorted(STEPS)}")
    return list(names)


def apply_steps(text: str, names: list[str], markup: str | None = None) -> str:
    """``text`` through the named steps; markup steps run only when ``markup`` names them."""
    for n in names:
        if n in MARKUP_STEPS and MARKUP_STEPS[n] != markup:
            continue
        text = STEPS[n](text)
    return text


@dataclass
class NormalizeText(Step):
    """The text of every alive row through the named steps; ``markup``: what the whole shard is written in, as
    its reader says (``harvest.MARKUP``; never a column of the data), gates the markup steps.  Rows left blank are
    removed as ``empty_text``, rows whose normalisation raises as ``normalize_error``."""

    steps: list[str]
    markup: str | None = None
    name: str = "normalize"
    reasons: tuple[str, ...] = ("empty_text", "normalize_error")

    def apply(self, df: pd.DataFrame, alive: np.ndarray) -> pd.DataFrame:
        texts = df["text"].to_numpy().copy()
        failed: dict[int, str] = {}
        for pos in np.flatnonzero(alive):
            try:
                texts[pos] = apply_steps(texts[pos], self.steps, self.markup)
            except Exception as e:  # noqa: BLE001 - one record never stops the shard
                texts[pos], failed[int(pos)] = "", f"{type(e).__name__}: {e}"[:500]
        df = df.assign(text=texts)
        empty = [p for p in np.flatnonzero(alive & (df["text"].to_numpy() == "")) if int(p) not in failed]
        df = flag(df, empty, "empty_text", ["blank after normalisation"] * len(empty))
        return flag(df, list(failed), "normalize_error", list(failed.values()))


def text_key(text: str) -> str:
    """sha256 of whitespace-collapsed, lower-cased text (identical to contracts.datasets.text_hash)."""
    return hashlib.sha256(" ".join(text.split()).lower().encode("utf-8")).hexdigest()


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def alpha_fraction(text: str) -> float:
    """Letters / non-blank characters (0.0 for a blank text)."""
    blanks = len(_SPACE.findall(text))
    nonblank = len(text) - blanks
    if nonblank == 0:
        return 0.0
    letters = len(text) - len(_NONLETTER.findall(text))  # _NONLETTER (\W, digits, _) also matches the blanks
    return letters / nonblank
