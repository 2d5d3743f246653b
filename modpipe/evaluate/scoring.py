"""A module's test split scored once, the same way by the adapt stage (``metrics.json``) and the publish gate
(``registry.policy.measure``): scores -> values -> predictions -> the problem's metrics and the predictions file.

The predictions file (``test_predictions.parquet``) holds, per row, ``id``, the truth and the prediction in the
problem's columns (classification ``label_id``/``pred_id``; multilabel ``label_ids``/``pred_ids``; regression
``target``/``pred``) and the head's raw ``probs`` (the scores the gate's ``reproduces`` field compares).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

TRUTH_PRED = {"classification": ("label_id", "pred_id"), "multilabel": ("label_ids", "pred_ids"),
              "regression": ("target", "pred")}


def score_split(manifest: dict[str, Any], split, scores: np.ndarray, predictions: str | Path | None = None,
                prefix: str = "test_") -> dict[str, Any]:
    """``{"metrics", "preds", "threshold"}`` of a module (its ``module.json``: problem, labels, the multilabel
    decision threshold, the regression target scale) on ``split`` (``adapt.data.Split``) from its ``scores``
    (``predict_proba``); writes the predictions file when ``predictions`` is given."""
    from modpipe.evaluate import problems

    problem = problems.get(manifest.get("problem"))
    threshold = manifest.get("decision_threshold") if problem is problems.MULTILABEL else None
    if problem is problems.MULTILABEL and not isinstance(threshold, (int, float)):
        raise ValueError("a multilabel module.json must record its decision_threshold (chosen on val)")
    values = problems.to_values(problem, scores, manifest.get("target_scale"))
    preds = problems.decide(problem, values, threshold)
    metrics = problems.evaluate(problem, split.targets, values, prefix=prefix, labels=manifest.get("labels") or (),
                                threshold=threshold)
    metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    if predictions is not None:
        write_predictions(Path(predictions), problem.name, split, preds, scores)
    return {"metrics": metrics, "preds": preds, "threshold": threshold}


def write_predictions(path: Path, problem: str, split, preds: list, scores: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    truth, pred = TRUTH_PRED[problem]
    kind = {"classification": pa.int64(), "multilabel": pa.list_(pa.int64()), "regression": pa.float64()}[problem]
    pq.write_table(pa.table({"id": split.ids, truth: pa.array(split.targets, kind), pred: pa.array(preds, kind),
                             "probs": pa.array([[float(x) for x in row] for row in np.asarray(scores).reshape(
                                 len(split.ids), -1)], pa.list_(pa.float32()))}), path)


def read_predictions(path: str | Path) -> tuple[str, dict[str, list]]:
    """(problem, ``{"id", "truth", "pred", "probs"?}``) of a predictions file, by the columns it has."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    names = set(table.column_names)
    for problem, (truth, pred) in TRUTH_PRED.items():
        if {"id", truth, pred} <= names:
            out = {"id": [str(i) for i in table.column("id").to_pylist()],
                   "truth": table.column(truth).to_pylist(), "pred": table.column(pred).to_pylist()}
            if "probs" in names:
                out["probs"] = table.column("probs").to_pylist()
            return problem, out
    raise ValueError(f"{path}: no id + truth + prediction columns of any problem ({sorted(names)})")
