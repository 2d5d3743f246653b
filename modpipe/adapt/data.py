"""Task datasets as curate writes them: ``<tasks_dir>/<task>/{train,val,test}.parquet`` + ``labels.json``.

Rows whose text is empty or whose ``label_id`` is not an index into ``labels.json`` are dropped with a reason
(the driver writes them to the stage's quarantine); a task missing a file or a column is rejected as a whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from modpipe.lineage import sha256_file

SPLITS = ("train", "val", "test")
COLUMNS = ("id", "text", "label_id")
LABELS_FILE = "labels.json"


class TaskDataError(ValueError):
    """A task folder that cannot be trained on; the message says why."""


@dataclass
class Split:
    ids: list[str]
    texts: list[str]
    label_ids: list[int]
    rejects: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def list_tasks(tasks_dir: str | Path) -> list[str]:
    """Task folders (those holding labels.json or a train split) whose names are names
    (``config_base.NAME_PATTERN``: a task's name goes into module dirs and registered model names), sorted."""
    from modpipe.config_base import is_name

    root = Path(tasks_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if is_name(p.name) and p.is_dir() and not p.is_symlink()
                  and ((p / LABELS_FILE).is_file() or (p / "train.parquet").is_file()))


def read_labels(task_dir: str | Path) -> list[str]:
    path = Path(task_dir) / LABELS_FILE
    if not path.is_file():
        raise TaskDataError(f"{path}: missing")
    try:
        labels = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TaskDataError(f"{path}: not JSON ({err})") from None
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise TaskDataError(f"{path}: expected a list of >= 2 label names")
    return labels


def read_split(task_dir: str | Path, split: str, num_labels: int) -> Split:
    """One split's usable rows (file order) and the rows dropped, each with a reason."""
    import pyarrow.parquet as pq

    path = Path(task_dir) / f"{split}.parquet"
    if not path.is_file():
        raise TaskDataError(f"{path}: missing")
    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same problem for us
        raise TaskDataError(f"{path}: unreadable parquet ({type(err).__name__}: {err})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise TaskDataError(f"{path}: missing column(s) {', '.join(missing)}")
    out = Split([], [], [])
    cols = {c: table.column(c).to_pylist() for c in COLUMNS}
    for line, (rid, text, label_id) in enumerate(zip(cols["id"], cols["text"], cols["label_id"])):
        if not isinstance(text, str) or not text.strip():
            reason = "empty_text"
        elif not isinstance(label_id, int) or not 0 <= label_id < num_labels:
            reason = "label_id_out_of_range"
        else:
            out.ids.append(str(rid))
            out.texts.append(text)
            out.label_ids.append(label_id)
            continue
        out.rejects.append({"source": str(path), "line": line, "reason": reason,
                            "detail": f"id={rid!r} label_id={label_id!r}"})
    return out


@dataclass
class Task:
    name: str
    dir: Path
    labels: list[str]
    splits: dict[str, Split]
    digests: dict[str, str]
    """sha256 of each split's parquet file and of labels.json."""

    @property
    def rejects(self) -> list[dict]:
        return [r for s in self.splits.values() for r in s.rejects]


def load_task(tasks_dir: str | Path, name: str) -> Task:
    """Read and check a task; raises TaskDataError naming the file when it cannot be used."""
    from modpipe.config_base import is_name

    if not is_name(name):
        raise TaskDataError(f"{name!r} is not a valid task name")
    root = Path(tasks_dir) / name
    if not root.is_dir():
        raise TaskDataError(f"{root}: no such task folder")
    labels = read_labels(root)
    splits = {s: read_split(root, s, len(labels)) for s in SPLITS}
    for s in SPLITS:
        if len(splits[s]) == 0:
            raise TaskDataError(f"{root / (s + '.parquet')}: no usable rows")
    digests = {s: sha256_file(root / f"{s}.parquet") for s in SPLITS}
    digests["labels"] = sha256_file(root / LABELS_FILE)
    return Task(name, root, labels, splits, digests)


def stratified_subset(split: Split, fraction: float, seed: int) -> Split:
    """A seeded, label-stratified ``fraction`` of a split (``ceil(fraction * n_label)`` rows of each label, at
    least one), rows kept in file order; ``fraction`` 1 returns the split itself."""
    import math

    import numpy as np

    if fraction >= 1.0:
        return split
    if not 0.0 < fraction:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 7919])
    keep: list[int] = []
    for label in sorted(set(split.label_ids)):
        rows = [i for i, y in enumerate(split.label_ids) if y == label]
        take = max(1, math.ceil(fraction * len(rows)))
        keep += [rows[j] for j in rng.permutation(len(rows))[:take]]
    keep.sort()
    return Split([split.ids[i] for i in keep], [split.texts[i] for i in keep], [split.label_ids[i] for i in keep])
