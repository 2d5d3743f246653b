"""Classification metrics for module evaluation, computed by scikit-learn from real predictions."""

from __future__ import annotations

from typing import Sequence


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], prefix: str = "") -> dict[str, float]:
    """Accuracy and macro-F1 (over the classes present in ``y_true`` or ``y_pred``), keys ``<prefix>accuracy``,
    ``<prefix>macro_f1``.  An empty split gives NaN-free zeros rather than an exception."""
    from sklearn.metrics import accuracy_score, f1_score

    y_true, y_pred = list(map(int, y_true)), list(map(int, y_pred))
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if not y_true:
        return {f"{prefix}accuracy": 0.0, f"{prefix}macro_f1": 0.0}
    return {
        f"{prefix}accuracy": float(accuracy_score(y_true, y_pred)),
        f"{prefix}macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def confusion(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> list[list[int]]:
    """``num_labels`` x ``num_labels`` confusion matrix (rows: true label id, columns: predicted)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(list(y_true), list(y_pred), labels=list(range(num_labels))).tolist()
