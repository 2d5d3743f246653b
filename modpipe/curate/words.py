"""Words and word n-gram hashes shared by the per-document steps (MinHash, repetition, decontamination).

A regex word splitter, not spaCy: datatrove spends nearly all of its Gopher/MinHash time in spaCy's word
tokenizer (~200-300 docs/s on 2 cores on the man-page corpus); one compiled regex does the same job at
~0.3 us a word.  A word is a run of letters/digits, joined across ``' ’ . -`` inside it (``don't``,
``1.2.3``, ``utf-8`` stay one word); punctuation is not a word.  CJK ideographs and kana carry no spaces:
each one is a word (as ``normalize.count_words`` counts them).

Hashes: every word -> xxh3_64 (C, ~0.1 us), then an n-gram hash is a polynomial of its n word hashes
mod 2^64 finished with murmur3's fmix64, all in numpy (no Python loop over n-grams).

    words("Don't use 1.2.3!")          -> ["Don't", "use", "1.2.3"]
    ngram_hashes(word_hashes(ws), 5)    -> uint64 array, one hash per 5-word window
    text_words(text)                    -> Words(hashes, lengths, n_letter, n_cjk) of the lower-cased words, cached
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xxhash

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD = re.compile(rf"[{CJK}]|[^\W{CJK}]+(?:['\u2019.\-][^\W{CJK}]+)*")
_CJK_CHAR = re.compile(rf"[{CJK}]")

NGRAM_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio) for the n-gram polynomial
_C1 = np.uint64(0xFF51AFD7ED558CCD)
_C2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def words(text: str) -> list[str]:
    return WORD.findall(text)


def norm_words(text: str) -> list[str]:
    """Lower-cased words: the normalisation MinHash shingles and decontamination n-grams are taken over."""
    return WORD.findall(text.lower())


@dataclass(frozen=True)
class Words:
    """What the per-document steps need of a text's lower-cased words, without the words themselves."""

    hashes: np.ndarray
    """(n,) uint64 xxh3_64 of each word."""
    lengths: np.ndarray
    """(n,) int64 characters of each word."""
    n_letter: int
    """Words holding at least one letter."""
    n_cjk: int
    """CJK words (one character each)."""


_NO_LETTER = "0123456789_.-'\u2019"


@lru_cache(maxsize=2048)
def text_words(text: str) -> Words:
    """``Words`` of a text, cached: the filter pass runs its steps (Gopher quality, repetition,
    decontamination) one after another over the same shard of <= ~1000 texts, so each is split and hashed once."""
    ws = WORD.findall(text.lower())
    n_letter = sum(1 for w in ws if w.strip(_NO_LETTER))  # a word is letters/digits/_ joined by . - '
    n_cjk = 0 if text.isascii() else len(_CJK_CHAR.findall(text))
    return Words(word_hashes(ws), np.fromiter(map(len, ws), dtype=np.int64, count=len(ws)), n_letter, n_cjk)


def word_hashes(ws: list[str]) -> np.ndarray:
    """(len(ws),) uint64: xxh3_64 of each word (seedless, so identical on every worker and run)."""
    return np.fromiter(map(xxhash.xxh3_64_intdigest, ws), dtype=np.uint64, count=len(ws))


def fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser (avalanche), vectorised; uint64 arithmetic wraps mod 2^64."""
    h = h ^ (h >> _S33)
    h = h * _C1
    h = h ^ (h >> _S33)
    h = h * _C2
    return h ^ (h >> _S33)


def ngram_hashes(wh: np.ndarray, n: int) -> np.ndarray:
    """(len(wh) - n + 1,) uint64: one hash per window of n consecutive word hashes (empty if too short)."""
    m = len(wh) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = wh[:m].copy()
        for j in range(1, n):
            h = h * NGRAM_MUL + wh[j:j + m]
        return fmix64(h)
