"""Downstream classification tasks built from the harvested corpus (never synthetic labels).

- ``man_section``:  English page -> its section number (classes balanced by corpus.max_docs_per_section);
- ``man_language``: translated page -> its language folder (labels with >= corpus.min_docs_per_language);
- ``py_package``:   stdlib docstring -> its top-level package: a second source of text, always built from
                    ``harvest.harvest_pydocs`` (a cached step dir of its own) whatever the pretraining corpus,
                    so the adapt stage shows how the backbone transfers beyond manual pages.

Text = normalize(page)[:spec.max_chars].  Identical texts (``text_key``: whitespace-collapsed, lower-cased)
are deduplicated first (smallest id kept; a text that carries two labels is dropped), so no example can
sit in two splits.  Splits are stratified and deterministic: inside each label, examples are ordered by
the sha256 of their text key (the document hash: no alphabetical bias such as every ``a*`` command landing in
test) and the first ``test_frac`` go to test, the next ``val_frac`` to val, the rest to train.  Every task's
val/test rows (id + text key) feed ``decontaminate.from_tasks``, the py_package ones included.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modpipe.config import PipelineConfig, TaskSpec
from modpipe.curate.normalize import normalize, text_key

log = logging.getLogger("modpipe.curate")

SPLITS = ("train", "val", "test")


def _label(kind: str, rec: dict) -> str | None:
    lang = rec.get("language")
    if kind == "man_section":
        return str(rec["section"]) if lang == "en" and rec.get("section") is not None else None
    if kind == "man_language":
        return str(lang) if lang not in (None, "en") and rec.get("section") is not None else None
    if kind == "py_package":
        return rec.get("package")
    raise ValueError(f"unknown task kind {kind!r}; valid: man_section, man_language, py_package")


def doc_hash(key: str) -> str:
    """The split order of an example: sha256 of its text key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _label_order(kind: str, labels: set[str]) -> list[str]:
    if kind == "man_section":
        return sorted(labels, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    return sorted(labels)


@dataclass
class Task:
    name: str
    kind: str
    labels: list[str]
    splits: dict[str, list[dict]]  # split -> rows {id, text, label, label_id, key}
    dropped: dict[str, int]
    max_chars: int


def build_task(spec: TaskSpec, records: list[dict], cfg: PipelineConfig) -> Task | None:
    """One task from raw records; None (with a warning) when fewer than two labels qualify."""
    t = cfg.tasks
    min_per_label = cfg.corpus.min_docs_per_language if spec.kind == "man_language" else t.min_examples_per_label
    min_per_label = max(min_per_label, 3)  # one example per split at least
    dropped = defaultdict(int)
    by_key: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        label = _label(spec.kind, rec)
        if label is None:
            continue
        text = normalize(rec["text"])[: spec.max_chars].strip()
        if len(text) < t.min_chars:
            dropped["too_short"] += 1
            continue
        by_key[text_key(text)].append({"id": rec["id"], "text": text, "label": label})
    per_label: dict[str, list[dict]] = defaultdict(list)
    for key, rows in by_key.items():
        if len({r["label"] for r in rows}) > 1:
            dropped["conflicting_labels"] += len(rows)
            continue
        rows.sort(key=lambda r: r["id"])
        dropped["duplicate_text"] += len(rows) - 1
        per_label[rows[0]["label"]].append({**rows[0], "key": key})
    small = {lab: len(rows) for lab, rows in per_label.items() if len(rows) < min_per_label}
    if small:
        log.info("task %s: labels with < %d examples dropped: %s", spec.name, min_per_label, small)
        dropped["small_label"] += sum(small.values())
    labels = _label_order(spec.kind, {lab for lab in per_label if lab not in small})
    if len(labels) < 2:
        log.warning("task %s (%s): %d label(s) with >= %d examples; task not built", spec.name, spec.kind,
                    len(labels), min_per_label)
        return None
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for label_id, label in enumerate(labels):
        rows = sorted(per_label[label], key=lambda r: (doc_hash(r["key"]), r["id"]))
        n = len(rows)
        n_test = max(1, round(n * t.test_frac))
        n_val = max(1, round(n * t.val_frac))
        for i, row in enumerate(rows):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            splits[split].append({**row, "label_id": label_id})
    for s in SPLITS:
        splits[s].sort(key=lambda r: r["id"])
    return Task(spec.name, spec.kind, labels, splits, dict(dropped), spec.max_chars)


def build_tasks(records: list[dict], cfg: PipelineConfig, corpus_kind: str) -> list[Task]:
    """The configured specs.  Man tasks come from ``records`` (the man harvest); ``py_package`` tasks always come
    from the stdlib docstrings (``harvest.harvest_pydocs``).  On the pydocs fallback corpus the man tasks cannot
    be built: a ``py_package`` task is built even when no spec asks for one."""
    from modpipe.curate import harvest as hv

    specs = list(cfg.tasks.specs)
    py_specs = [s for s in specs if s.kind == "py_package"]
    man_specs = [s for s in specs if s.kind != "py_package"]
    if corpus_kind == "pydocs":
        py_specs = py_specs or [TaskSpec(name="py_package", kind="py_package")]
        man_specs = []
        log.warning("tasks: man pages unavailable; building %s from stdlib docstrings", [s.name for s in py_specs])
        py_records = records
    else:
        py_records = hv.read_raw(hv.harvest_pydocs(cfg, reason="py_package task")["raw_dir"]) if py_specs else []
    tasks = []
    for spec, source in [(s, records) for s in man_specs] + [(s, py_records) for s in py_specs]:
        task = build_task(spec, source, cfg)
        if task is not None:
            tasks.append(task)
            log.info("task %s: %d labels, train/val/test = %d/%d/%d", task.name, len(task.labels),
                     *(len(task.splits[s]) for s in SPLITS))
    return tasks


def write_tasks(tasks: list[Task], out: Path) -> dict[str, Any]:
    """tasks/<name>/{train,val,test}.parquet (id, text, label, label_id) + labels.json; returns manifest part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.string()),
                        ("label_id", pa.int64())])
    summary = {}
    for task in tasks:
        d = out / task.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "labels.json").write_text(json.dumps(task.labels, ensure_ascii=False))
        for split, rows in task.splits.items():
            table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)
            pq.write_table(table, d / f"{split}.parquet")
        summary[task.name] = {"kind": task.kind, "labels": task.labels,
                              **{s: len(task.splits[s]) for s in SPLITS}, "dropped": task.dropped}
    return summary
