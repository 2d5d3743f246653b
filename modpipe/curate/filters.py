"""Steps over pandas batches (Ray Data ``map_batches``) that flag rows instead of dropping them.

Every row carries ``reason`` ('' = alive) and ``detail``.  A ``Step`` sees only alive rows; a ``Filter``
writes one vectorised ``keep(df) -> (mask, details)`` and the base flags the rest with the filter's reason
code (datatrove's ``BaseFilter`` shape).  Thresholds are kwargs; ``None`` disables a rule.  Rejected rows
stay in the dataset until the end, where they become quarantine records and per-step stats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from modpipe.curate.normalize import alpha_fraction, count_words, normalize, text_key


class Step:
    name: str = "step"
    reasons: tuple[str, ...] = ()

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        alive = (df["reason"] == "").to_numpy()
        if alive.any():
            df = self.apply(df, alive)
        return df

    def apply(self, df: pd.DataFrame, alive: np.ndarray) -> pd.DataFrame:
        raise NotImplementedError


class Filter(Step):
    reason: str = "filtered"

    @property
    def reasons(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.reason,)

    def keep(self, df: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """(mask of rows to keep, detail per row) for the alive rows in ``df``."""
        raise NotImplementedError

    def apply(self, df: pd.DataFrame, alive: np.ndarray) -> pd.DataFrame:
        sub = df[alive]
        mask, details = self.keep(sub)
        drop = np.flatnonzero(alive)[~mask]
        if len(drop):
            df = df.copy()
            df.iloc[drop, df.columns.get_loc("reason")] = self.reason
            df.iloc[drop, df.columns.get_loc("detail")] = [d for d, k in zip(details, mask) if not k]
        return df


class Normalize(Step):
    """NFC + whitespace/control cleanup; adds n_chars, n_words, key; blank results are flagged ``empty_text``."""

    name = "normalize"
    reasons = ("empty_text",)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        alive = (df["reason"] == "").to_numpy()
        texts = [normalize(t) if a else "" for t, a in zip(df["text"], alive)]
        df["text"] = texts
        df["n_chars"] = np.array([len(t) for t in texts], dtype=np.int64)
        df["n_words"] = np.array([count_words(t) for t in texts], dtype=np.int64)
        df["key"] = [text_key(t) if t else "" for t in texts]
        empty = alive & (df["n_chars"].to_numpy() == 0)
        df.loc[empty, "reason"] = "empty_text"
        df.loc[empty, "detail"] = "blank after normalisation"
        return df


@dataclass
class Length(Filter):
    min_chars: int | None = 200
    max_chars: int | None = 100_000
    name: str = "length"

    @property
    def reasons(self):  # two codes
        return ("too_short", "too_long")

    def apply(self, df, alive):
        n = df["n_chars"].to_numpy()
        df = df.copy()
        short = alive & (n < self.min_chars) if self.min_chars is not None else np.zeros(len(df), bool)
        long_ = alive & (n > self.max_chars) if self.max_chars is not None else np.zeros(len(df), bool)
        df.loc[short, "reason"] = "too_short"
        df.loc[short, "detail"] = [f"{x} chars < {self.min_chars}" for x in n[short]]
        df.loc[long_, "reason"] = "too_long"
        df.loc[long_, "detail"] = [f"{x} chars > {self.max_chars}" for x in n[long_]]
        return df


@dataclass
class MinWords(Filter):
    min_words: int | None = 30
    name: str = "min_words"
    reason: str = "too_few_words"

    def keep(self, df):
        n = df["n_words"].to_numpy()
        if self.min_words is None:
            return np.ones(len(df), bool), [""] * len(df)
        return n >= self.min_words, [f"{x} words < {self.min_words}" for x in n]


@dataclass
class AlphaFraction(Filter):
    min_alpha_frac: float | None = 0.55
    name: str = "alpha_fraction"
    reason: str = "low_alpha_frac"

    def keep(self, df):
        if self.min_alpha_frac is None:
            return np.ones(len(df), bool), [""] * len(df)
        frac = np.array([alpha_fraction(t) for t in df["text"]])
        return frac >= self.min_alpha_frac, [f"letters {f:.3f} < {self.min_alpha_frac}" for f in frac]


@dataclass
class SymbolWordRatio(Filter):
    """Gopher: (hash symbols + ellipses) / words."""

    max_ratio: float | None = 0.2
    symbols: list[str] = field(default_factory=lambda: ["#", "...", "\u2026"])
    name: str = "symbol_word_ratio"
    reason: str = "high_symbol_ratio"

    def keep(self, df):
        if self.max_ratio is None:
            return np.ones(len(df), bool), [""] * len(df)
        counts = np.array([sum(t.count(s) for s in self.symbols) for t in df["text"]], dtype=np.float64)
        ratio = counts / np.maximum(df["n_words"].to_numpy(), 1)
        return ratio <= self.max_ratio, [f"symbol/word {r:.3f} > {self.max_ratio}" for r in ratio]


@dataclass
class Drop(Step):
    """Flag the rows whose id is in ``ids`` with ``reason`` (detail from the dict): exact dedup's verdicts."""

    ids: dict[str, str]
    reason_code: str = "duplicate"
    name: str = "dedup_exact"

    @property
    def reasons(self):
        return (self.reason_code,)

    def apply(self, df, alive):
        hit = alive & df["id"].isin(self.ids.keys()).to_numpy()
        if hit.any():
            df = df.copy()
            df.loc[hit, "reason"] = self.reason_code
            df.loc[hit, "detail"] = [self.ids[i] for i in df.loc[hit, "id"]]
        return df


def quality_filters(c) -> list[Filter]:
    """The filter chain from ``CurateConfig``."""
    return [
        Length(c.min_chars, c.max_chars),
        MinWords(c.min_words),
        AlphaFraction(c.min_alpha_frac),
        SymbolWordRatio(c.max_symbol_word_ratio, list(c.symbols)),
    ]
