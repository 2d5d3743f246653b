"""Classification metrics for module evaluation, from real predictions, by scikit-learn and torchmetrics."""

from __future__ import annotations

from typing import Sequence

import numpy as np

ECE_BINS = 15


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], prefix: str = "",
                           probs: np.ndarray | Sequence[Sequence[float]] | None = None,
                           num_labels: int | None = None) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn; over the classes present in ``y_true`` or ``y_pred``); with
    ``probs`` (N x K class probabilities) also one-vs-rest macro AUROC (scikit-learn; classes absent from
    ``y_true`` are left out, NaN when fewer than two are present) and the 15-bin expected calibration error
    (torchmetrics, L1). Keys ``<prefix>accuracy``, ``<prefix>macro_f1``, ``<prefix>auroc_ovr``, ``<prefix>ece``.
    An empty split gives zeros rather than an exception."""
    from sklearn.metrics import accuracy_score, f1_score

    y_true, y_pred = list(map(int, y_true)), list(map(int, y_pred))
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if not y_true:
        out = {f"{prefix}accuracy": 0.0, f"{prefix}macro_f1": 0.0}
        if probs is not None:
            out.update({f"{prefix}auroc_ovr": float("nan"), f"{prefix}ece": 0.0})
        return out
    out = {
        f"{prefix}accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
    if probs is not None:
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != len(y_true):
            raise ValueError(f"probs must be N x K with N={len(y_true)}, got {p.shape}")
        k = num_labels or p.shape[1]
        out[f"{prefix}auroc_ovr"] = auroc_ovr(y_true, p)
        out[f"{prefix}ece"] = expected_calibration_error(y_true, p, k)
    return out


def auroc_ovr(y_true: Sequence[int], probs: np.ndarray) -> float:
    """Macro one-vs-rest AUROC over the classes present in ``y_true`` (scikit-learn ``roc_auc_score``)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true, dtype=np.int64)
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    # One binary AUROC per present class, averaged: roc_auc_score(multi_class="ovr") demands every column's
    # class to occur in y_true, which a small test split need not satisfy.
    scores = [roc_auc_score((y == c).astype(int), probs[:, c]) for c in present]
    return float(np.mean(scores))


def expected_calibration_error(y_true: Sequence[int], probs: np.ndarray, num_labels: int,
                               n_bins: int = ECE_BINS) -> float:
    """Top-label ECE with ``n_bins`` equal-width confidence bins (torchmetrics ``MulticlassCalibrationError``)."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    y = torch.as_tensor(np.asarray(y_true, dtype=np.int64))
    return float(multiclass_calibration_error(p, y, num_classes=num_labels, n_bins=n_bins, norm="l1"))


def confusion(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> list[list[int]]:
    """``num_labels`` x ``num_labels`` confusion matrix (rows: true label id, columns: predicted)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(list(y_true), list(y_pred), labels=list(range(num_labels))).tolist()
