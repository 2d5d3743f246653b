"""Downstream classification tasks, one mechanism for every source (never synthetic labels).

- ``files``:        the user's labelled examples (``TaskSpec.path``), read by ``harvest.ingest_task`` through the
                    same hardened readers as the corpus (bad files/rows quarantined with file and row); rows
                    without a usable label or with an unknown split value are quarantined here;
- ``man_section``:  English page -> its section number (classes balanced by corpus.max_docs_per_section);
- ``man_language``: translated page -> its language folder (labels with >= corpus.min_docs_per_language);
- ``py_package``:   stdlib docstring -> its top-level package: a second source of text, always built from
                    ``harvest.harvest_pydocs`` (a cached step dir of its own) whatever the pretraining corpus,
                    so the adapt stage shows how the backbone transfers beyond manual pages.

A task whose data is unusable (fewer than two labels with enough examples, an empty split) is not built: it is
listed with the reason in ``BuiltTasks.failed`` and the other tasks go on (the run then ends failed for it).

Text = normalize(page)[:spec.max_chars].  Identical texts (``text_key``: whitespace-collapsed, lower-cased)
are deduplicated first (smallest id kept; a text that carries two labels is dropped), so no example can
sit in two splits.  Splits are stratified and deterministic: inside each label, examples are ordered by
the sha256 of their text key (the document hash: no alphabetical bias such as every ``a*`` command landing in
test) and the first ``test_frac`` go to test, the next ``val_frac`` to val, the rest to train; a task file with a
``split_field`` gives each row's split instead.  Every task's
val/test rows (id + text key) feed ``decontaminate.from_tasks``, the py_package ones included.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modpipe.config import PipelineConfig, TaskSpec
from modpipe.curate.normalize import normalize, text_key
from modpipe.curate.readers import reject
from modpipe.curate.task_splits import SPLITS, TaskDataError, doc_hash, hash_split  # noqa: F401 - re-exported
from modpipe.evaluate.slices import SLICES_FILE, length_bucket

log = logging.getLogger("modpipe.curate")


def _file_label(spec: TaskSpec, rec: dict) -> str | tuple[str, ...] | float | dict:
    """A task file's row -> its label (classification: a string; multilabel: a sorted tuple of strings;
    regression: a float), or the row's quarantine entry."""
    value = rec.get(spec.label_field)
    where = (rec.get("source", spec.path), rec.get("line"))
    if value is None:
        return reject(*where, "missing_label", f"no {spec.label_field!r} field")
    if spec.problem == "regression":
        return _number_label(spec, value, where)
    if spec.problem == "multilabel":
        if isinstance(value, str) and spec.label_separator:
            value = value.split(spec.label_separator) if value.strip() else []
        if not isinstance(value, list):
            return reject(*where, "bad_label", f"{spec.label_field!r} is {type(value).__name__}, expected a list of "
                                               f"labels" + ("" if spec.label_separator else
                                                            " (or set label_separator for a string column)"))
        bad = [x for x in value if isinstance(x, bool) or not isinstance(x, (str, int)) or not str(x).strip()]
        if bad:
            return reject(*where, "bad_label", f"{spec.label_field!r} holds {bad[0]!r}; labels are non-blank "
                                               f"strings or integers")
        joined = next((x for x in value if "|" in str(x)), None)
        if joined is not None:
            return reject(*where, "bad_label", f"{spec.label_field!r} holds {joined!r}; a label may not contain '|' "
                                               f"(it joins a row's labels in the task's label column)")
        return tuple(sorted({str(x).strip() for x in value}))
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return reject(*where, "bad_label", f"{spec.label_field!r} is {type(value).__name__}, expected a string or "
                                           f"an integer")
    if not str(value).strip():
        return reject(*where, "missing_label", f"{spec.label_field!r} is blank")
    return str(value).strip()


_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
"""A regression target written as text: a plain decimal number (``float`` alone would also read ``1_5`` as 15
and non-ASCII digits)."""
MAX_TARGET = 1e100
"""Largest magnitude of a regression target: squared errors and sums of them must stay finite in float64 (above
~1e154 the RMSE, the train std and the ridge baseline overflow to inf/NaN)."""


def _number_label(spec: TaskSpec, value: Any, where: tuple) -> float | dict:
    """A regression target: a finite number of magnitude <= ``MAX_TARGET``, or its text (a CSV cell) as a plain
    decimal number."""
    if isinstance(value, bool):
        return reject(*where, "bad_label", f"{spec.label_field!r} is a boolean, expected a number")
    if isinstance(value, str) and not _DECIMAL.fullmatch(value.strip()):
        return reject(*where, "bad_label", f"{spec.label_field!r} is {value[:40]!r}, expected a number (digits, "
                                           f"one '.', an exponent; no thousands separator)")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError):
        return reject(*where, "bad_label", f"{spec.label_field!r} is {str(value)[:40]!r}, expected a number")
    if not math.isfinite(number):
        return reject(*where, "bad_label", f"{spec.label_field!r} is {number}, expected a finite number")
    if abs(number) > MAX_TARGET:
        return reject(*where, "bad_label", f"{spec.label_field!r} is {number:g}, beyond +-{MAX_TARGET:g} (its "
                                           f"squared error overflows)")
    return number


def _given_split(spec: TaskSpec, rec: dict) -> str | dict | None:
    """The row's split from ``split_field`` (None when the task is split by hash), or its quarantine entry."""
    if not spec.split_field:
        return None
    value = rec.get(spec.split_field)
    if value not in SPLITS:
        return reject(rec.get("source", spec.path), rec.get("line"), "bad_split",
                      f"{spec.split_field!r} is {value!r}; expected one of {list(SPLITS)}")
    return value


def _label(kind: str, rec: dict) -> str | None:
    lang = rec.get("language")
    if kind == "man_section":
        return str(rec["section"]) if lang == "en" and rec.get("section") is not None else None
    if kind == "man_language":
        return str(lang) if lang not in (None, "en") and rec.get("section") is not None else None
    if kind == "py_package":
        return rec.get("package")
    raise ValueError(f"unknown task kind {kind!r}; valid: man_section, man_language, py_package")



def _label_order(kind: str, labels: set[str]) -> list[str]:
    if kind == "man_section":
        return sorted(labels, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    return sorted(labels)


@dataclass
class Task:
    name: str
    kind: str
    labels: list[str]
    splits: dict[str, list[dict]]  # split -> rows {id, text, label, key, label_id | label_ids | target}
    dropped: dict[str, int]
    max_chars: int
    rejects: list[dict] = field(default_factory=list)
    """Quarantine rows of the task's own file rows (missing/bad label, unknown split)."""
    problem: dict[str, Any] = field(default_factory=lambda: {"problem": "classification"})
    """``problem.json``: the problem and what it needs (regression: the train target's mean and std)."""


@dataclass
class BuiltTasks:
    tasks: list[Task]
    failed: dict[str, str]
    """Task name -> why its data could not make a task."""
    rejects: list[dict]
    """Every task row quarantined (``files`` tasks; the readers' rejects are in the raw dir's quarantine)."""


def _rows(spec: TaskSpec, records: list[dict], cfg: PipelineConfig, dropped: dict, rejects: list
          ) -> dict[str, list[dict]]:
    """Usable rows grouped by text key: labelled, split (when given), normalised, long enough."""
    by_key: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        if spec.source == "files":
            label, split = _file_label(spec, rec), _given_split(spec, rec)
            bad = next((x for x in (label, split) if isinstance(x, dict)), None)
            if bad is not None:
                rejects.append(bad)
                continue
        else:
            label, split = _label(spec.source, rec), None
            if label is None:
                continue
        full = normalize(rec["text"])
        text = full[: spec.max_chars].strip()
        if len(text) < cfg.tasks.min_chars:
            dropped["too_short"] += 1
            continue
        slices = {"length": length_bucket(len(full)),
                  **{f: "(missing)" if rec.get(f) is None else str(rec[f]) for f in spec.slice_fields}}
        by_key[text_key(text)].append({"id": rec["id"], "text": text, "label": label, "split": split,
                                       "slices": slices})
    return by_key


def build_task(spec: TaskSpec, records: list[dict], cfg: PipelineConfig) -> Task:
    """One task from raw records; ``TaskDataError`` when its data cannot make one."""
    from modpipe.curate.task_problems import multilabel_splits, regression_splits

    t = cfg.tasks
    min_per_label = cfg.corpus.min_docs_per_language if spec.kind == "man_language" else t.min_examples_per_label
    min_per_label = max(min_per_label, 3)  # one example per split at least
    dropped: dict[str, int] = defaultdict(int)
    rejects: list[dict] = []
    unique = _dedup(_rows(spec, records, cfg, dropped, rejects), dropped)
    where = f"task {spec.name!r} ({spec.source}, {spec.problem})"
    build = {"classification": _classification_splits, "multilabel": multilabel_splits,
             "regression": regression_splits}[spec.problem]
    labels, splits, info = build(spec, unique, min_per_label, t, dropped, where, len(rejects))
    for s in SPLITS:
        if not splits[s]:
            raise TaskDataError(f"{where}: the {s} split is empty "
                                f"({', '.join(f'{k} {len(v)}' for k, v in splits.items())} examples)")
        splits[s].sort(key=lambda r: r["id"])
    return Task(spec.name, spec.kind, labels, splits, dict(dropped), spec.max_chars, rejects,
                {"problem": spec.problem, **info})


def _dedup(by_key: dict[str, list[dict]], dropped: dict) -> list[dict]:
    """One row per text key (the smallest id); a text that carries two different labels is dropped."""
    unique = []
    for key, rows in by_key.items():
        if len({r["label"] for r in rows}) > 1:
            dropped["conflicting_labels"] += len(rows)
            continue
        rows.sort(key=lambda r: r["id"])
        dropped["duplicate_text"] += len(rows) - 1
        unique.append({**rows[0], "key": key})
    return unique



def _classification_splits(spec: TaskSpec, unique: list[dict], min_per_label: int, t, dropped: dict, where: str,
                           n_rejects: int) -> tuple[list[str], dict[str, list[dict]], dict]:
    """Labels with >= ``min_per_label`` examples, split inside each label (stratified)."""
    per_label: dict[str, list[dict]] = defaultdict(list)
    for row in unique:
        per_label[row["label"]].append(row)
    small = {lab: len(rows) for lab, rows in per_label.items() if len(rows) < min_per_label}
    if small:
        log.info("task %s: labels with < %d examples dropped: %s", spec.name, min_per_label, small)
        dropped["small_label"] += sum(small.values())
    labels = _label_order(spec.kind, {lab for lab in per_label if lab not in small})
    if len(labels) < 2:
        found = dict(sorted(Counter({lab: len(rows) for lab, rows in per_label.items()}).items()))
        raise TaskDataError(f"{where}: {len(labels)} label(s) with >= {min_per_label} usable examples; a "
                            f"classifier needs two (examples per label: {found or 'none'}; {n_rejects} row(s) "
                            f"quarantined)")
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for label_id, label in enumerate(labels):
        for split, rows in hash_split(per_label[label], t).items():
            splits[split] += [{**row, "label_id": label_id} for row in rows]
    return labels, splits, {}


def _sources(records: list[dict], cfg: PipelineConfig, corpus_kind: str) -> list[tuple[TaskSpec, Any]]:
    """(spec, its records or a function reading them) for every task to build.  Man tasks read ``records``
    (the man harvest); ``py_package`` tasks the stdlib docstrings (``harvest.harvest_pydocs``); ``files`` tasks
    their own raw dir (``harvest.ingest_task``).  On the pydocs fallback corpus the man tasks cannot be built: a
    ``py_package`` task is built even when no spec asks for one."""
    from modpipe.curate import harvest as hv

    specs = list(cfg.tasks.specs)
    man = [s for s in specs if s.source in ("man_section", "man_language")]
    py = [s for s in specs if s.source == "py_package"]
    if corpus_kind == "pydocs":
        py = py or [TaskSpec(name="py_package", source="py_package")]
        log.warning("tasks: man pages unavailable; %s not built, %s from stdlib docstrings",
                    [s.name for s in man], [s.name for s in py])
        man, pydocs = [], records
    else:
        pydocs = (lambda: hv.read_raw(hv.harvest_pydocs(cfg, reason="py_package task")["raw_dir"]))
    order = {s.name: i for i, s in enumerate(specs)}
    files = [(s, lambda s=s: hv.read_raw(hv.ingest_task(cfg, s)["raw_dir"])) for s in specs if s.source == "files"]
    return sorted([(s, records) for s in man] + [(s, pydocs) for s in py] + files,
                  key=lambda x: order.get(x[0].name, len(order)))


def build_all(records: list[dict], cfg: PipelineConfig, corpus_kind: str) -> BuiltTasks:
    """Every configured task, each on its own: one that cannot be built is listed in ``failed`` with the reason
    while the others are built."""
    tasks, failed, rejects = [], {}, []
    cached: dict[int, list[dict]] = {}
    for spec, source in _sources(records, cfg, corpus_kind):
        try:
            if not isinstance(source, list) and id(source) not in cached:
                cached[id(source)] = source()
            rows = source if isinstance(source, list) else cached[id(source)]
            task = build_task(spec, rows, cfg)
        except TaskDataError as e:
            log.error("task %s not built: %s", spec.name, e)
            failed[spec.name] = str(e)
            continue
        rejects += [{**r, "task": spec.name} for r in task.rejects]
        tasks.append(task)
        log.info("task %s: %d labels, train/val/test = %d/%d/%d%s", task.name, len(task.labels),
                 *(len(task.splits[s]) for s in SPLITS),
                 f"; {len(task.rejects)} row(s) quarantined" if task.rejects else "")
    return BuiltTasks(tasks, failed, rejects)


def build_tasks(records: list[dict], cfg: PipelineConfig, corpus_kind: str) -> list[Task]:
    """The tasks ``build_all`` could build."""
    return build_all(records, cfg, corpus_kind).tasks


def write_tasks(tasks: list[Task], out: Path) -> dict[str, Any]:
    """tasks/<name>/{train,val,test}.parquet (id, text, label (as text) and the target column of the problem:
    ``label_id``, ``label_ids`` or ``target``) + labels.json (the outputs: label names; regression: the target's
    name) + problem.json + slices.parquet (id, one column per slice field: ``evaluate.slices``); returns the
    manifest part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modpipe.evaluate.problems import PROBLEM_FILE, get

    types = {"label_id": pa.int64(), "label_ids": pa.list_(pa.int64()), "target": pa.float64()}
    summary = {}
    for task in tasks:
        column = get(task.problem["problem"]).target_column
        schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.string()),
                            (column, types[column])])
        d = out / task.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "labels.json").write_text(json.dumps(task.labels, ensure_ascii=False))
        (d / PROBLEM_FILE).write_text(json.dumps(task.problem, indent=1))
        for split, rows in task.splits.items():
            table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)
            pq.write_table(table, d / f"{split}.parquet")
        rows = [r for s in SPLITS for r in task.splits[s]]
        fields = list(rows[0]["slices"]) if rows else ["length"]
        pq.write_table(pa.table({"id": [r["id"] for r in rows],
                                 **{f: pa.array([r["slices"][f] for r in rows], pa.string()) for f in fields}}),
                       d / SLICES_FILE)
        summary[task.name] = {"kind": task.kind, "problem": task.problem["problem"], "labels": task.labels,
                              **{s: len(task.splits[s]) for s in SPLITS}, "dropped": task.dropped}
    return summary


def write_quarantine(cfg: PipelineConfig, built: BuiltTasks, path: Path) -> None:
    """The task files' rejected files/lines (their raw dirs' quarantine, step ``ingest_task``) and the task rows
    quarantined here (step ``tasks``), one JSON line each, with the task's name."""
    from modpipe.curate import harvest as hv

    with open(path, "w", encoding="utf-8") as fh:
        for spec in (s for s in cfg.tasks.specs if s.source == "files"):
            q = Path(hv.ingest_task(cfg, spec)["raw_dir"]) / "quarantine.jsonl"
            for line in q.read_text(encoding="utf-8").splitlines() if q.is_file() else []:
                if line.strip():
                    fh.write(json.dumps({"step": "ingest_task", "task": spec.name, "id": None, **json.loads(line)},
                                        ensure_ascii=False) + "\n")
        for row in built.rejects:
            fh.write(json.dumps({"step": "tasks", "id": None, **row}, ensure_ascii=False) + "\n")
