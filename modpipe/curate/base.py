"""The per-document step base: the bookkeeping lives here, a concrete step writes one method.

Every row of a batch (a pandas frame: one shard) carries ``reason`` ('' = alive) and ``detail``; a step sees only
the alive rows and flags the ones it rejects instead of dropping them, so rejected rows reach the end of the
chain, where they become quarantine records.

    Step.apply(df, alive)          -> df        the general form (language ID adds columns, PII rewrites text)
    Filter.keep(df)                -> (mask, details)   one reason code per filter (datatrove's ``BaseFilter``)
    RuleFilter.check(text, lang)   -> (reason, detail) | None   per document, several reason codes

    stats = Stats()
    for step in chain:
        df = step.run(df, stats)   # step(df) + bookkeeping: rows in/out, removed per reason, the step's name on
                                   # the rows it rejected (their quarantine record's ``step``)
    stats.as_dict()                # {step: {"in", "out", "removed_by_reason"}}: JSON, summed over shards

``step(df)`` alone is the transformation without bookkeeping (what the unit tests and the benchmark call).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd


def flag(df: pd.DataFrame, positions, reasons, details) -> pd.DataFrame:
    """A copy of ``df`` with ``reason``/``detail`` set at the given row positions."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        return df
    df = df.copy()
    df.iloc[positions, df.columns.get_loc("reason")] = list(reasons) if not isinstance(reasons, str) else reasons
    df.iloc[positions, df.columns.get_loc("detail")] = list(details)
    return df


class Stats:
    """Per-step counters, mergeable: rows in, rows out and rows removed per reason code."""

    def __init__(self, steps: dict[str, dict[str, Any]] | None = None):
        self.steps: dict[str, dict[str, Any]] = {}
        if steps:
            self.merge(steps)

    def add(self, name: str, n_in: int, removed: Counter) -> None:
        s = self.steps.setdefault(name, {"in": 0, "out": 0, "removed_by_reason": {}})
        n_removed = sum(removed.values())
        s["in"] += int(n_in)
        s["out"] += int(n_in) - n_removed
        for reason, n in sorted(removed.items()):
            s["removed_by_reason"][reason] = s["removed_by_reason"].get(reason, 0) + int(n)

    def merge(self, other: dict[str, dict[str, Any]]) -> "Stats":
        for name, s in other.items():
            self.add(name, s["in"], Counter(s["removed_by_reason"]))
        return self

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return self.steps


class Step:
    """One step over a batch; ``name`` labels its stats and quarantine rows, ``reasons`` lists every reason code
    it can leave (the report lists each, zeros included)."""

    name: str = "step"
    reasons: tuple[str, ...] = ()

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        alive = (df["reason"] == "").to_numpy()
        if alive.any():
            df = self.apply(df, alive)
        return df

    def apply(self, df: pd.DataFrame, alive: np.ndarray) -> pd.DataFrame:
        raise NotImplementedError

    def run(self, df: pd.DataFrame, stats: Stats) -> pd.DataFrame:
        """``self(df)`` with the bookkeeping (see the module docstring)."""
        before = (df["reason"] == "").to_numpy()
        df = self(df)
        removed = before & (df["reason"] != "").to_numpy()
        if removed.any():
            if "step" not in df:
                df = df.assign(step="")
            df.loc[removed, "step"] = self.name
        stats.add(self.name, int(before.sum()), Counter(df["reason"].to_numpy()[removed].tolist()))
        return df


class Filter(Step):
    """Removes the rows ``keep`` says no to, with the filter's one reason code."""

    reason: str = "filtered"

    @property
    def reasons(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.reason,)

    def keep(self, df: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """(mask of rows to keep, detail per row) for the alive rows in ``df``."""
        raise NotImplementedError

    def apply(self, df: pd.DataFrame, alive: np.ndarray) -> pd.DataFrame:
        mask, details = self.keep(df[alive])
        drop = np.flatnonzero(alive)[~mask]
        return flag(df, drop, self.reason, [d for d, k in zip(details, mask) if not k])


class RuleFilter(Step):
    """Per-document rules, first failing rule wins (so cheap rules go first)."""

    def check(self, text: str, lang: str) -> tuple[str, str] | None:
        raise NotImplementedError

    def apply(self, df: pd.DataFrame, alive: np.ndarray) -> pd.DataFrame:
        texts = df["text"].to_numpy()
        langs = df["lang"].to_numpy() if "lang" in df else None
        hits = []
        for pos in np.flatnonzero(alive):
            out = self.check(texts[pos], langs[pos] if langs is not None else "")
            if out is not None:
                hits.append((pos, *out))
        if not hits:
            return df
        pos, reasons, details = zip(*hits)
        return flag(df, pos, reasons, details)
