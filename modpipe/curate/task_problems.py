"""Splits of multilabel and regression tasks (``curate.tasks.build_task`` dispatches here by ``problem``).

Both split by the sha256 order of each example's text key (``tasks.hash_split``) unless the task file gives the
split: stratifying by a label set or a number has no single right answer, and the hash order is stable under
added rows.

- multilabel: the label vocabulary is every label on >= ``min_per_label`` examples (others are dropped from the
  rows; a row left with no label that had labels is dropped as ``small_label``: an empty set would tell the model
  that none applies); at least two labels are needed;
- regression: at least ``min_per_label`` examples and a train target that is not constant; the train split's
  mean and standard deviation go to ``problem.json`` (the model trains on the standardised target).
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from modpipe.config import TaskSpec


def multilabel_splits(spec: TaskSpec, unique: list[dict], min_per_label: int, t, dropped: dict, where: str,
                      n_rejects: int) -> tuple[list[str], dict[str, list[dict]], dict[str, Any]]:
    from modpipe.curate.task_splits import TaskDataError, hash_split

    counts = Counter(lab for row in unique for lab in row["label"])
    labels = sorted(lab for lab, n in counts.items() if n >= min_per_label)
    if len(labels) < 2:
        raise TaskDataError(f"{where}: {len(labels)} label(s) on >= {min_per_label} usable examples; a multilabel "
                            f"task needs two (examples per label: {dict(sorted(counts.items())) or 'none'}; "
                            f"{n_rejects} row(s) quarantined)")
    index = {lab: i for i, lab in enumerate(labels)}
    rows = []
    for row in unique:
        kept = [lab for lab in row["label"] if lab in index]
        if row["label"] and not kept:
            dropped["small_label"] += 1
            continue
        rows.append({**row, "label": "|".join(kept), "label_ids": [index[lab] for lab in kept]})
    return labels, hash_split(rows, t), {}


def regression_splits(spec: TaskSpec, unique: list[dict], min_per_label: int, t, dropped: dict, where: str,
                      n_rejects: int) -> tuple[list[str], dict[str, list[dict]], dict[str, Any]]:
    from modpipe.curate.task_splits import TaskDataError, hash_split

    if len(unique) < min_per_label:
        raise TaskDataError(f"{where}: {len(unique)} usable example(s); a regression task needs >= "
                            f"{min_per_label} ({n_rejects} row(s) quarantined)")
    rows = [{**row, "target": float(row["label"]), "label": f"{row['label']:g}"} for row in unique]
    splits = hash_split(rows, t)
    train = [r["target"] for r in splits["train"]]
    if len(set(train)) < 2:
        raise TaskDataError(f"{where}: the train split's target is constant ({len(train)} example(s)); there is "
                            f"nothing to regress")
    info = {"target_mean": statistics.fmean(train), "target_std": statistics.pstdev(train),
            "target_name": spec.label_field}
    return [spec.label_field], splits, info
