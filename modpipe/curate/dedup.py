"""Exact dedup: global and deterministic.  Among rows with the same content key, the smallest id survives.

The verdict needs only (id, key) of the alive rows, gathered on the driver (64 bytes a row); the rows are
then flagged by ``filters.Drop`` in the next Ray Data pass.
"""

from __future__ import annotations

import pandas as pd


def duplicate_ids(ids_keys: pd.DataFrame) -> dict[str, str]:
    """{duplicate id: detail naming the kept id} for a frame with columns id, key."""
    if ids_keys.empty:
        return {}
    df = ids_keys.sort_values(["key", "id"], kind="mergesort")
    first = df.groupby("key", sort=False)["id"].transform("first")
    dup = df["id"] != first
    return {i: f"same content as {k}" for i, k in zip(df.loc[dup, "id"], first[dup])}
