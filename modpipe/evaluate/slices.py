"""Metrics per slice of a task's test split, and the largest gap between slices.

Curate writes ``<tasks_dir>/<task>/slices.parquet``: one row per example (``id``) and one string column per slice
field: ``length`` (a bucket of the example's normalised length before truncation, for every task) and each of the
task's ``slice_fields`` (a user column; ``(missing)`` where a row has none).  The adapt stage and the registry's
gate both call ``slice_metrics`` on the same predictions they score, so the numbers in ``metrics.json``, the gate's
rule ``publish.max_slice_gap``, the registry tags and the report are one computation.

The gap of a field is the best slice's primary metric (``evaluate.problems``: macro-F1, or RMSE for regression)
minus the worst's, over the slices with at least
``MIN_SLICE_EXAMPLES`` test rows (smaller slices are listed, but too noisy to decide a gap).  Macro-F1 of a slice
averages over the labels present in that slice (sklearn's ``f1_score``), so a slice is not penalised for classes
it does not contain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SLICES_FILE = "slices.parquet"
MIN_SLICE_EXAMPLES = 10
LENGTH_BUCKETS = ((500, "<500 chars"), (2000, "500-2k chars"), (8000, "2k-8k chars"))


def length_bucket(n_chars: int) -> str:
    """The ``length`` slice of an example from its normalised length before truncation."""
    return next((name for bound, name in LENGTH_BUCKETS if n_chars < bound), ">=8k chars")


def read_slices(task_dir: str | Path) -> dict[str, dict[str, str]]:
    """``{field: {id: value}}`` from the task's slices file ({} when the task has none: built before slices)."""
    import pyarrow.parquet as pq

    path = Path(task_dir) / SLICES_FILE
    if not path.is_file():
        return {}
    table = pq.read_table(path)
    ids = table.column("id").to_pylist()
    return {f: dict(zip(ids, table.column(f).to_pylist())) for f in table.column_names if f != "id"}


def slice_metrics(task_dir: str | Path, ids: list[str], targets: list, preds: list, prefix: str = "test_",
                  problem=None) -> dict[str, Any]:
    """``{prefix}slices``: {field: {value: {n, <metrics>}}}, ``{prefix}slice_gap.<field>`` (the problem's
    primary metric, best minus worst slice of >= MIN_SLICE_EXAMPLES rows, always >= 0; None with fewer than two
    such slices) and ``{prefix}max_slice_gap`` (the largest of them, None when no field has a gap).  ``problem``:
    an ``evaluate.problems.Problem`` (None: classification); ``preds`` are its decisions (``problems.decide``)."""
    import numpy as np

    from modpipe.evaluate import problems

    problem = problem or problems.CLASSIFICATION
    fields = read_slices(task_dir)
    detail: dict[str, dict[str, dict[str, Any]]] = {}
    out: dict[str, Any] = {}
    for field, by_id in fields.items():
        values = np.asarray([by_id.get(i, "(missing)") for i in ids], dtype=object)
        rows = {}
        for value in sorted(set(values.tolist())):
            at = np.flatnonzero(values == value)
            rows[value] = {"n": len(at), **decision_metrics(problem, [targets[i] for i in at],
                                                            [preds[i] for i in at])}
        detail[field] = rows
        decided = [r[problem.primary] for r in rows.values() if r["n"] >= MIN_SLICE_EXAMPLES]
        out[f"{prefix}slice_gap.{field}"] = max(decided) - min(decided) if len(decided) >= 2 else None
    gaps = [g for g in out.values() if g is not None]
    return {f"{prefix}slices": detail, **out, f"{prefix}max_slice_gap": max(gaps) if gaps else None}


def decision_metrics(problem, targets: list, preds: list) -> dict[str, float]:
    """A slice's metrics from decisions alone: classification accuracy and macro-F1 (over the labels present in
    the slice, so a slice is not penalised for classes it does not contain); multilabel subset accuracy and
    micro/macro-F1; regression RMSE and MAE."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    from modpipe.evaluate import problems

    if problem is problems.REGRESSION:
        err = np.asarray(preds, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
        return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}
    if problem is problems.MULTILABEL:
        k = 1 + max([i for row in (*targets, *preds) for i in row], default=0)
        y, p = problems.multi_hot(targets, k), problems.multi_hot(preds, k)
        micro, macro = problems.multilabel_f1(y, p)
        return {"accuracy": float(accuracy_score(y, p)), "micro_f1": micro, "macro_f1": macro}
    y, p = np.asarray(targets), np.asarray(preds)
    return {"accuracy": float(accuracy_score(y, p)),
            "macro_f1": float(f1_score(y, p, average="macro", labels=sorted(set(y.tolist())), zero_division=0))}
