"""Splitting a task's examples, shared by every problem's builder (``curate.tasks``, ``curate.task_problems``)."""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


class TaskDataError(ValueError):
    """A task's data cannot make a task (one label, an empty split); the message says which and why."""


def doc_hash(key: str) -> str:
    """The split order of an example: sha256 of its text key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def hash_split(rows: list[dict], t) -> dict[str, list[dict]]:
    """Rows into train/val/test: each row's given split, else by the sha256 order of its text key (the first
    ``test_frac`` to test, the next ``val_frac`` to val, the rest to train)."""
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    rows = sorted(rows, key=lambda r: (doc_hash(r["key"]), r["id"]))
    n = len(rows)
    n_test, n_val = max(1, round(n * t.test_frac)), max(1, round(n * t.val_frac))
    for i, row in enumerate(rows):
        split = row.pop("split") or ("test" if i < n_test else "val" if i < n_test + n_val else "train")
        splits[split].append(row)
    return splits
