"""Task datasets as curate writes them: ``<tasks_dir>/<task>/{train,val,test}.parquet`` + ``labels.json`` +
``problem.json`` (``evaluate.problems``; absent: classification).

Rows whose text is empty or whose target is unusable (a ``label_id`` or a ``label_ids`` entry that is not an index
into ``labels.json``, a ``target`` that is not a finite number) are dropped with a reason (the driver writes them
to the stage's quarantine); a task missing a file or a column is rejected as a whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from modpipe.lineage import sha256_file

SPLITS = ("train", "val", "test")
COLUMNS = ("id", "text")
LABELS_FILE = "labels.json"


class TaskDataError(ValueError):
    """A task folder that cannot be trained on; the message says why."""


@dataclass
class Split:
    ids: list[str]
    texts: list[str]
    targets: list
    """Per row: a class id (classification), a list of label ids (multilabel) or a float (regression)."""
    rejects: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def label_ids(self) -> list:
        """The targets (the name classification code reads them by)."""
        return self.targets


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


def read_labels(task_dir: str | Path, problem: str = "classification") -> list[str]:
    """The task's outputs: >= 2 label names, or (regression) the one target name."""
    path = Path(task_dir) / LABELS_FILE
    if not path.is_file():
        raise TaskDataError(f"{path}: missing")
    try:
        labels = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TaskDataError(f"{path}: not JSON ({err})") from None
    need = 1 if problem == "regression" else 2
    if not isinstance(labels, list) or len(labels) < need or not all(isinstance(x, str) for x in labels) \
            or (problem == "regression" and len(labels) != 1):
        raise TaskDataError(f"{path}: expected a list of " + ("one target name" if need == 1 else
                                                              ">= 2 label names"))
    return labels


def _target_problem(value, column: str, num_labels: int) -> str | None:
    """Why a row's target is unusable (None: usable)."""
    import math

    if column == "label_id":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < num_labels
        return None if ok else "label_id_out_of_range"
    if column == "label_ids":
        ok = isinstance(value, list) and all(isinstance(i, int) and 0 <= i < num_labels for i in value)
        return None if ok else "label_ids_out_of_range"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return None if ok else "target_not_finite"


def read_split(task_dir: str | Path, split: str, num_labels: int, problem: str = "classification") -> Split:
    """One split's usable rows (file order) and the rows dropped, each with a reason."""
    import pyarrow.parquet as pq

    from modpipe.evaluate.problems import get

    column = get(problem).target_column
    path = Path(task_dir) / f"{split}.parquet"
    if not path.is_file():
        raise TaskDataError(f"{path}: missing")
    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same problem for us
        raise TaskDataError(f"{path}: unreadable parquet ({type(err).__name__}: {err})") from None
    missing = [c for c in (*COLUMNS, column) if c not in table.column_names]
    if missing:
        raise TaskDataError(f"{path}: missing column(s) {', '.join(missing)} (a {problem} task)")
    out = Split([], [], [])
    cols = {c: table.column(c).to_pylist() for c in (*COLUMNS, column)}
    for line, (rid, text, target) in enumerate(zip(cols["id"], cols["text"], cols[column])):
        reason = "empty_text" if not isinstance(text, str) or not text.strip() else \
            _target_problem(target, column, num_labels)
        if reason is None:
            out.ids.append(str(rid))
            out.texts.append(text)
            out.targets.append(target)
            continue
        out.rejects.append({"source": str(path), "line": line, "reason": reason,
                            "detail": f"id={rid!r} {column}={target!r}"})
    return out


@dataclass
class Task:
    name: str
    dir: Path
    labels: list[str]
    splits: dict[str, Split]
    digests: dict[str, str]
    """sha256 of each split's parquet file, of labels.json and (where there is one) of problem.json."""
    info: dict = field(default_factory=lambda: {"problem": "classification"})
    """``problem.json`` (``evaluate.problems.read_problem``)."""

    @property
    def problem(self) -> str:
        return self.info["problem"]

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
    from modpipe.evaluate.problems import PROBLEM_FILE, read_problem

    try:
        info = read_problem(root)
    except ValueError as err:
        raise TaskDataError(str(err)) from None
    labels = read_labels(root, info["problem"])
    splits = {s: read_split(root, s, len(labels), info["problem"]) for s in SPLITS}
    for s in SPLITS:
        if len(splits[s]) == 0:
            raise TaskDataError(f"{root / (s + '.parquet')}: no usable rows")
    digests = {s: sha256_file(root / f"{s}.parquet") for s in SPLITS}
    digests["labels"] = sha256_file(root / LABELS_FILE)
    if (root / PROBLEM_FILE).is_file():
        digests["problem"] = sha256_file(root / PROBLEM_FILE)
    return Task(name, root, labels, splits, digests, info)


def stratified_subset(split: Split, fraction: float, seed: int) -> Split:
    """A seeded, label-stratified ``fraction`` of a split (``ceil(fraction * n_label)`` rows of each label, at
    least one; multilabel: by each row's rarest label), rows kept in file order; ``fraction`` 1 returns the split
    itself."""
    import math

    import numpy as np

    if fraction >= 1.0:
        return split
    if not 0.0 < fraction:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    from collections import Counter

    rng = np.random.default_rng([seed, 7919])
    keep: list[int] = []
    # strata: the class id; a label set's rarest label (-1: no label; one stratum per label set would keep one row
    # of each of hundreds of sets whatever the fraction); a regression target is one stratum (no classes to keep)
    counts = Counter(i for y in split.targets if isinstance(y, list) for i in y)
    strata = [y if isinstance(y, int) else min(y, key=lambda i: (counts[i], i), default=-1) if isinstance(y, list)
              else 0 for y in split.targets]
    for label in sorted(set(strata)):
        rows = [i for i, y in enumerate(strata) if y == label]
        take = max(1, math.ceil(fraction * len(rows)))
        keep += [rows[j] for j in rng.permutation(len(rows))[:take]]
    keep.sort()
    return Split([split.ids[i] for i in keep], [split.texts[i] for i in keep], [split.targets[i] for i in keep])
