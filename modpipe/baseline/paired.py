"""Module minus baseline on the same test rows, with a paired-bootstrap interval, for every problem's metrics.

The resampled metrics are hand-written rather than scikit-learn calls per resample: one vectorised numpy pass
over all resamples costs ~1 ms for 1000 x 500 rows where 1000 sklearn calls cost ~2 s. Each has the same
definition as the per-split metric (``evaluate.problems``; tests check them against scikit-learn / scipy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

PAIRED = {"classification": ("test_macro_f1", "test_accuracy"),
          "multilabel": ("test_macro_f1", "test_micro_f1", "test_accuracy"),
          "regression": ("test_rmse", "test_mae", "test_spearman")}
"""Per problem, the metrics the paired bootstrap resamples (those computed from predictions alone)."""
PAIRED_METRICS = PAIRED["classification"]


def compare(module_predictions: str | Path, baseline_predictions: str | Path, *, n: int = 1000,
            seed: int = 0, confidence: float = 0.95, metric: str = "test_macro_f1") -> dict[str, float]:
    """``paired_bootstrap`` of two prediction files (``evaluate.scoring``), matched by id."""
    from modpipe.evaluate.scoring import read_predictions

    _, m = read_predictions(module_predictions)
    return paired_bootstrap(m["id"], m["pred"], baseline_predictions, n=n, seed=seed, confidence=confidence,
                            metric=metric)


def paired_bootstrap(ids: Sequence[str], preds: Sequence, baseline_predictions: str | Path, *,
                     n: int = 1000, seed: int = 0, confidence: float = 0.95,
                     metric: str = "test_macro_f1") -> dict[str, float]:
    """Module minus baseline ``metric`` (``PAIRED`` of the baseline file's problem) over the test rows both
    predicted (matched by id; the truth from the baseline's file), with its ``confidence`` interval from ``n``
    paired resamples of those rows: ``{"delta", "low", "high", "rows", "module", "baseline", "resamples",
    "confidence"}``. Higher-is-better metrics: the module is *worse beyond noise* when ``high < 0``; lower-is-
    better ones (RMSE, MAE): when ``low > 0``."""
    from modpipe.evaluate.scoring import read_predictions

    problem, base = read_predictions(baseline_predictions)
    if metric not in PAIRED[problem]:
        raise ValueError(f"no paired bootstrap for {metric!r} on a {problem} task (only {', '.join(PAIRED[problem])})")
    ours = dict(zip(map(str, ids), preds))
    rows = [i for i, rid in enumerate(base["id"]) if rid in ours]
    if not rows:
        raise ValueError(f"the module's test predictions and {baseline_predictions} share no test row")
    y, q = [base["truth"][i] for i in rows], [base["pred"][i] for i in rows]
    p = [ours[base["id"][i]] for i in rows]
    score = _scorer(problem, metric, y, p, q)
    every = np.arange(len(rows))[None, :]
    idx = np.random.default_rng(seed).integers(0, len(rows), (n, len(rows)))
    deltas = score("module", idx) - score("baseline", idx)
    tail = (1 - confidence) / 2
    mod, bas = float(score("module", every)[0]), float(score("baseline", every)[0])
    return {"delta": mod - bas, "low": float(np.quantile(deltas, tail)), "high": float(np.quantile(deltas, 1 - tail)),
            "rows": len(rows), "module": mod, "baseline": bas, "resamples": n, "confidence": confidence}


def _scorer(problem: str, metric: str, y: list, p: list, q: list):
    """``score(which, idx)``: the metric of the module's or the baseline's predictions on each resample."""
    if problem == "regression":
        yy, preds = np.asarray(y, float), {"module": np.asarray(p, float), "baseline": np.asarray(q, float)}
        fn = {"test_rmse": _rmse, "test_mae": _mae, "test_spearman": _spearman}[metric]
        return lambda which, idx: fn(yy, preds[which], idx)
    if problem == "multilabel":
        from modpipe.evaluate.problems import multi_hot

        k = 1 + max([i for row in (*y, *p, *q) for i in row], default=0)
        yy = multi_hot(y, k).astype(bool)
        preds = {"module": multi_hot(p, k).astype(bool), "baseline": multi_hot(q, k).astype(bool)}
        fn = {"test_macro_f1": _ml_macro_f1, "test_micro_f1": _ml_micro_f1, "test_accuracy": _ml_accuracy}[metric]
        return lambda which, idx: fn(yy, preds[which], idx)
    yy = np.asarray(y, np.int64)
    preds = {"module": np.asarray(p, np.int64), "baseline": np.asarray(q, np.int64)}
    k = int(max(yy.max(), preds["module"].max(), preds["baseline"].max())) + 1
    fn = _macro_f1 if metric == "test_macro_f1" else _accuracy
    return lambda which, idx: fn(yy, preds[which], idx, k)


# ------------------------------------------------------------------------------------------------ classification
# sklearn's f1_score(average="macro", zero_division=0): the mean over the classes present in the resample's labels
# or predictions.
def _macro_f1(y: np.ndarray, p: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    b = np.arange(idx.shape[0])[:, None]
    yy, pp = y[idx], p[idx]
    size = idx.shape[0] * k
    true = np.bincount((b * k + yy).ravel(), minlength=size).reshape(-1, k)
    pred = np.bincount((b * k + pp).ravel(), minlength=size).reshape(-1, k)
    hit = np.bincount((b * k + yy)[yy == pp].ravel(), minlength=size).reshape(-1, k)
    support = true + pred
    f1 = np.divide(2 * hit, support, out=np.zeros(support.shape), where=support > 0)
    return f1.sum(1) / np.maximum((support > 0).sum(1), 1)


def _accuracy(y: np.ndarray, p: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    return (y[idx] == p[idx]).mean(1)


# ---------------------------------------------------------------------------------------------------- multilabel
# y, p: (N, K) booleans; per resample the counts over its rows, (R, K).
def _ml_counts(y: np.ndarray, p: np.ndarray, idx: np.ndarray):
    yy, pp = y[idx], p[idx]  # (R, N, K)
    return (yy & pp).sum(1), (~yy & pp).sum(1), (yy & ~pp).sum(1)


def _ml_macro_f1(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean per-label F1 over the labels the resample holds or predicts (``problems.multilabel_f1``)."""
    tp, fp, fn = _ml_counts(y, p, idx)
    support = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, support, out=np.zeros(support.shape), where=support > 0)
    return f1.sum(1) / np.maximum((support > 0).sum(1), 1)


def _ml_micro_f1(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    tp, fp, fn = (c.sum(1) for c in _ml_counts(y, p, idx))
    support = 2 * tp + fp + fn
    return np.divide(2 * tp, support, out=np.zeros(support.shape), where=support > 0)


def _ml_accuracy(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return (y[idx] == p[idx]).all(2).mean(1)


# ---------------------------------------------------------------------------------------------------- regression
def _rmse(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.sqrt(((p[idx] - y[idx]) ** 2).mean(1))


def _mae(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.abs(p[idx] - y[idx]).mean(1)


def _spearman(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Pearson correlation of the average ranks per resample (scipy's ``spearmanr``); 0 where a side is constant."""
    from scipy.stats import rankdata

    ry, rp = rankdata(y[idx], axis=1), rankdata(p[idx], axis=1)
    ry, rp = ry - ry.mean(1, keepdims=True), rp - rp.mean(1, keepdims=True)
    den = np.sqrt((ry ** 2).sum(1) * (rp ** 2).sum(1))
    return np.divide((ry * rp).sum(1), den, out=np.zeros(len(idx)), where=den > 0)
