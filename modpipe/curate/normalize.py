"""Text normalisation and the content keys every step agrees on.

``normalize``: NFC, newlines unified, control and invisible format characters removed, runs of blanks
collapsed, trailing blanks and 3+ newlines trimmed.  ``text_key``: sha256 of the whitespace-collapsed,
lower-cased text, the same notion of "the same example" the contracts use for split overlap
(``contracts.datasets.text_hash``); exact dedup, task splitting and decontamination all use it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\ufeff\u00ad\ufffe\uffff]")
_BLANKS = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_EDGE = re.compile(r" ?\n ?")
_PARAS = re.compile(r"\n{3,}")
# CJK ideographs and kana carry no spaces: each counts as a word
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_NONLETTER = re.compile(r"[\W\d_]")
_SPACE = re.compile(r"\s")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CTRL.sub("", text)
    text = _BLANKS.sub(" ", text)
    text = _EDGE.sub("\n", text)
    text = _PARAS.sub("\n\n", text)
    return text.strip()


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
