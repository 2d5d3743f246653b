"""Remove from the pretraining text every document that is a held-out task example.

Matched by id and by content key (``normalize.text_key``) of the whole normalised text and of its prefix
truncated to each task's ``max_chars`` (task examples are ``normalize(page)[:max_chars]``), so a page whose
truncation is a val/test example goes too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from modpipe.curate.filters import Step
from modpipe.curate.normalize import text_key


@dataclass
class Decontaminate(Step):
    ids: dict[str, str] = field(default_factory=dict)
    """task example id -> "task/split"."""
    keys: dict[str, str] = field(default_factory=dict)
    """content key of the example text -> "task/split"."""
    prefix_lengths: list[int] = field(default_factory=list)
    name: str = "decontaminate"
    reasons: tuple[str, ...] = ("contaminated",)

    def apply(self, df: pd.DataFrame, alive: np.ndarray) -> pd.DataFrame:
        details = []
        hit = np.zeros(len(df), bool)
        for pos in np.flatnonzero(alive):
            rid, text, key = df["id"].iat[pos], df["text"].iat[pos], df["key"].iat[pos]
            why = None
            if rid in self.ids:
                why = f"id in {self.ids[rid]}"
            elif key in self.keys:
                why = f"text in {self.keys[key]}"
            else:
                for n in self.prefix_lengths:
                    if len(text) > n:
                        k = text_key(text[:n].strip())
                        if k in self.keys:
                            why = f"first {n} chars in {self.keys[k]}"
                            break
            if why:
                hit[pos] = True
                details.append(why)
        if hit.any():
            df = df.copy()
            df.loc[hit, "reason"] = "contaminated"
            df.loc[hit, "detail"] = details
        return df


def from_tasks(tasks, splits: list[str]) -> Decontaminate:
    ids, keys, lengths = {}, {}, set()
    for task in tasks:
        for split in splits:
            for row in task.splits.get(split, []):
                ids.setdefault(row["id"], f"{task.name}/{split}")
                keys.setdefault(row["key"], f"{task.name}/{split}")
        lengths.add(task.max_chars)
    return Decontaminate(ids=ids, keys=keys, prefix_lengths=sorted(lengths))
