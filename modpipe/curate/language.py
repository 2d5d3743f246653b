"""Language ID and the language filter, with py3langid (offline: its naive-Bayes model ships in the wheel).

Usage:

    df = LanguageFilter.from_config(cfg.curate.language)(df)   # adds lang, lang_score to every row
    LanguageFilter(allowed=["en", "de"], min_confidence=0.5)     # keep only these, confidently identified

Every row gets ``lang`` (ISO 639-1, '' for rows already rejected) and ``lang_score`` (normalised probability);
the steps after it (Gopher's stop-word rule, contracts' language mix) read them.  Only the first ``max_chars``
characters are classified (~0.4 ms a page at 1000): the start of a page says its language as well as all of it.
With the defaults (every language allowed, no minimum confidence) nothing is removed: the man-page corpus holds
~1.3k translated pages that a downstream task classifies by language.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from modpipe.curate.base import Step, flag

_IDENTIFIER = None


def identifier():
    """The py3langid identifier with normalised probabilities, loaded once per process."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def detect(text: str, max_chars: int = 1000) -> tuple[str, float]:
    """(language code, probability) of the start of ``text``."""
    lang, score = identifier().classify(text[:max_chars])
    return lang, float(score)


@dataclass
class LanguageFilter(Step):
    allowed: list[str] | None = None
    min_confidence: float = 0.0
    max_chars: int = 1000
    name: str = "language"
    reasons: tuple[str, ...] = ("lang_not_allowed", "lang_low_confidence")

    @classmethod
    def from_config(cls, c) -> "LanguageFilter":
        return cls(list(c.allowed) if c.allowed is not None else None, c.min_confidence, c.max_chars)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        alive = (df["reason"] == "").to_numpy()
        pos = np.flatnonzero(alive)
        texts = df["text"].to_numpy()
        found = [detect(texts[p], self.max_chars) for p in pos]
        langs = np.full(len(df), "", dtype=object)
        scores = np.zeros(len(df), dtype=np.float64)
        if found:
            langs[pos] = [f[0] for f in found]
            scores[pos] = [f[1] for f in found]
        df = df.copy()
        df["lang"] = langs
        df["lang_score"] = scores
        if self.allowed is not None:
            bad = pos[~np.isin(langs[pos].astype(str), list(self.allowed))]
            df = flag(df, bad, "lang_not_allowed",
                      [f"{langs[p]} ({scores[p]:.2f}) not in {sorted(self.allowed)}" for p in bad])
        if self.min_confidence > 0:
            low = np.flatnonzero((df["reason"] == "").to_numpy() & alive & (scores < self.min_confidence))
            df = flag(df, low, "lang_low_confidence",
                      [f"{langs[p]} at {scores[p]:.2f} < {self.min_confidence}" for p in low])
        return df
