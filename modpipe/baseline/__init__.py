"""Baseline step: each task's classical baselines, on the same splits the modules train and test on.

``run(cfg, ctx)`` (the ``baseline`` step) -> ``{"baselines": <baselines.json>, "tasks": {task: dir}}``;
``compute(cfg, tasks_dir, out)`` is the same without the contract gate. Per task, two baselines fit on the train
split and scored on the test split with the modules' own metric code (``evaluate.classification_metrics``):

- ``majority``: always the most frequent train label;
- ``tfidf_lr``: scikit-learn TF-IDF over character 2-4-grams of the first ``baseline.max_chars`` characters,
  logistic regression (a few seconds per task on 2 cores).

Each baseline's test predictions go to ``<task>/<baseline>.parquet`` (id, label_id, pred_id) so that a module can
be compared with it on the very same rows (``compare``: a paired bootstrap over test rows). The gate, the run
report and the transfer report read these numbers; nothing computes them a second time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from modpipe.config import PipelineConfig

log = logging.getLogger("modpipe.baseline")

BASELINES_FILE = "baselines.json"


def run(cfg: PipelineConfig, ctx) -> dict[str, Any]:
    from modpipe.gates import require_contracts

    require_contracts(ctx)
    return compute(cfg, ctx.inputs["curate"]["tasks_dir"], ctx.out)


def compute(cfg: PipelineConfig, tasks_dir: str | Path, out: Path) -> dict[str, Any]:
    from modpipe.adapt.data import TaskDataError, list_tasks, load_task

    out = Path(out)
    results: dict[str, Any] = {}
    for name in list_tasks(tasks_dir):
        try:
            task = load_task(tasks_dir, name)
        except TaskDataError as err:
            results[name] = {"error": str(err)}
            log.warning("baseline: %s skipped: %s", name, err)
            continue
        (out / name).mkdir(parents=True)
        results[name] = {b: _fit_score(cfg, task, b, out / name) for b in ("majority", "tfidf_lr")}
        log.info("baseline: %s: majority macro-F1 %.3f, TF-IDF + LR macro-F1 %.3f", name,
                 results[name]["majority"]["test_macro_f1"], results[name]["tfidf_lr"]["test_macro_f1"])
    (out / BASELINES_FILE).write_text(json.dumps(results, indent=2))
    return {"baselines": str(out / BASELINES_FILE),
            "tasks": {t: str(out / t) for t, r in results.items() if "error" not in r}}


def _fit_score(cfg: PipelineConfig, task, kind: str, out: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modpipe.evaluate import classification_metrics

    train, test = task.splits["train"], task.splits["test"]
    probs = _predict_proba(cfg, kind, train.texts, train.label_ids, test.texts, len(task.labels))
    preds = probs.argmax(1).tolist()
    pq.write_table(pa.table({"id": test.ids, "label_id": pa.array(test.label_ids, pa.int64()),
                             "pred_id": pa.array(preds, pa.int64())}), out / f"{kind}.parquet")
    metrics = classification_metrics(test.label_ids, preds, prefix="test_", probs=probs,
                                     num_labels=len(task.labels))
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in metrics.items()} | {
        "n_train": len(train.texts), "n_test": len(test.texts), "predictions": f"{kind}.parquet"}


def _predict_proba(cfg: PipelineConfig, kind: str, train_texts: Sequence[str], train_y: Sequence[int],
                   test_texts: Sequence[str], num_labels: int) -> np.ndarray:
    """N_test x num_labels class probabilities."""
    y = np.asarray(train_y, dtype=np.int64)
    probs = np.zeros((len(test_texts), num_labels))
    if kind == "majority":
        probs[:, int(np.bincount(y, minlength=num_labels).argmax())] = 1.0
        return probs
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    b = cfg.baseline
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2,
                          max_features=b.max_features)
    cut = b.max_chars
    x = vec.fit_transform([t[:cut] for t in train_texts])
    if len(np.unique(y)) < 2:  # one label in train: logistic regression cannot fit; it is the majority
        probs[:, int(y[0])] = 1.0
        return probs
    clf = LogisticRegression(max_iter=2000, C=b.c, random_state=cfg.seed).fit(x, y)
    probs[:, clf.classes_] = clf.predict_proba(vec.transform([t[:cut] for t in test_texts]))
    return probs


def compare(module_predictions: str | Path, baseline_predictions: str | Path, *, n: int = 1000,
            seed: int = 0, confidence: float = 0.95) -> dict[str, float]:
    """Paired bootstrap of test macro-F1, module minus baseline, over the rows both predicted (matched by id).

    ``{"delta", "low", "high", "rows"}``: the observed difference and its ``confidence`` interval. A module is
    *worse beyond noise* when ``high < 0``."""
    import pandas as pd
    from sklearn.metrics import f1_score

    m = pd.read_parquet(module_predictions, columns=["id", "label_id", "pred_id"])
    b = pd.read_parquet(baseline_predictions, columns=["id", "pred_id"]).rename(columns={"pred_id": "base_id"})
    rows = m.merge(b, on="id", how="inner")
    if rows.empty:
        raise ValueError(f"{module_predictions} and {baseline_predictions} share no test row")
    y, p, q = (rows[c].to_numpy() for c in ("label_id", "pred_id", "base_id"))

    def f1(a, idx):
        return f1_score(y[idx], a[idx], average="macro", zero_division=0)

    every = np.arange(len(y))
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        deltas.append(f1(p, idx) - f1(q, idx))
    tail = (1 - confidence) / 2
    return {"delta": float(f1(p, every) - f1(q, every)), "low": float(np.quantile(deltas, tail)),
            "high": float(np.quantile(deltas, 1 - tail)), "rows": int(len(y))}
