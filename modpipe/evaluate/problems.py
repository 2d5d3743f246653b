"""What a task predicts (``TaskSpec.problem``), and everything that changes with it, in one place.

- ``classification``: one label per example; outputs = the labels; softmax; cross-entropy; the label with the
  highest probability; accuracy, macro-F1 (+ AUROC and ECE from the probabilities); selected by macro-F1.
- ``multilabel``: a set of labels per example; outputs = the label vocabulary; one sigmoid per label; binary
  cross-entropy; every label whose probability reaches the decision threshold, which is chosen on the validation
  split (the one threshold that maximises val macro-F1, ``choose_threshold``) and stored with the module;
  micro- and macro-F1, mean average precision, subset accuracy and per-label F1; selected by macro-F1.
- ``regression``: a number per example; one output, trained on the target standardised with the train split's
  mean and standard deviation (stored with the task and the module) and mapped back before scoring; mean
  squared error; RMSE, MAE and Spearman's rank correlation; selected by (lowest) RMSE.

A task dir says its problem in ``problem.json`` (absent: classification, as every task built before problems
existed). Targets travel as ``Split.targets``: a label id, a list of label ids, or a float.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from modpipe.config_problems import (  # noqa: F401 - the table, re-exported where the computing code is
    BY_NAME, CLASSIFICATION, LOWER_IS_BETTER, MULTILABEL, PROBLEMS, REGRESSION, Problem, get, higher_is_better,
)

PROBLEM_FILE = "problem.json"
THRESHOLD_GRID = tuple(round(x, 2) for x in np.arange(0.05, 0.96, 0.05))


def selection(problem: Problem, configured: str) -> str:
    """The validation metric that picks a task's epoch: the configured one where the problem measures it
    (classification, multilabel: ``val_macro_f1`` or ``val_accuracy``), else the problem's own."""
    return configured if configured.removeprefix("val_") in problem.metrics else f"val_{problem.primary}"


def read_problem(task_dir: str | Path) -> dict[str, Any]:
    """``problem.json`` of a task dir: ``{"problem", ...}`` (regression: ``target_mean``, ``target_std``);
    a task dir without one is a classification task."""
    path = Path(task_dir) / PROBLEM_FILE
    if not path.is_file():
        return {"problem": "classification"}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    get(data.get("problem"))  # a known problem, or a clear error
    if data["problem"] == "regression":
        std = data.get("target_std")
        if not isinstance(data.get("target_mean"), (int, float)) or not isinstance(std, (int, float)) or std <= 0:
            raise ValueError(f"{path}: a regression task needs a numeric target_mean and a target_std > 0")
    return data


# ---------------------------------------------------------------------------------------- training and decoding


def loss(problem: Problem, logits, y, scale: dict[str, float] | None = None):
    """The training loss of a batch: ``logits`` (B, K); ``y`` from ``target_tensor``."""
    import torch.nn.functional as F

    if problem is MULTILABEL:
        return F.binary_cross_entropy_with_logits(logits.float(), y)
    if problem is REGRESSION:
        return F.mse_loss(logits.float().squeeze(-1), y)
    return F.cross_entropy(logits.float(), y)


def target_tensor(problem: Problem, targets: Sequence, num_outputs: int, scale: dict[str, float] | None = None,
                  device=None):
    """A batch's targets as the loss wants them: class ids (B,), multi-hot floats (B, K), standardised floats."""
    import torch

    if problem is MULTILABEL:
        return torch.as_tensor(multi_hot(targets, num_outputs), dtype=torch.float32, device=device)
    if problem is REGRESSION:
        mean, std = scale["target_mean"], scale["target_std"]
        return torch.tensor([(float(t) - mean) / std for t in targets], dtype=torch.float32, device=device)
    return torch.tensor([int(t) for t in targets], device=device)


def activation(problem: Problem) -> str:
    """What turns the head's logits into scores: ``softmax``, ``sigmoid`` or ``none``."""
    return {"classification": "softmax", "multilabel": "sigmoid", "regression": "none"}[problem.name]


def to_values(problem: Problem, scores: np.ndarray, scale: dict[str, float] | None) -> np.ndarray:
    """Scores in the target's units: regression outputs mapped back from the standardised scale."""
    if problem is REGRESSION:
        s = np.asarray(scores, dtype=np.float64)
        return (s[:, 0] if s.ndim == 2 else s.reshape(-1)) * scale["target_std"] + scale["target_mean"]
    return np.asarray(scores)


def decide(problem: Problem, scores: np.ndarray, threshold: float | None = None) -> list:
    """Predictions from scores (``to_values`` applied): a class id, the list of label ids at or above
    ``threshold``, or the value."""
    s = np.asarray(scores)
    if problem is MULTILABEL:
        return [np.flatnonzero(row >= threshold).tolist() for row in s]
    if problem is REGRESSION:
        return [float(x) for x in s.reshape(-1)]
    return s.argmax(-1).tolist()


def multi_hot(label_sets: Sequence[Sequence[int]], k: int) -> np.ndarray:
    out = np.zeros((len(label_sets), k), dtype=np.int64)
    for i, ids in enumerate(label_sets):
        out[i, list(ids)] = 1
    return out


def choose_threshold(label_sets: Sequence[Sequence[int]], probs: np.ndarray) -> float:
    """The multilabel decision threshold: the value of ``THRESHOLD_GRID`` with the highest macro-F1 on these
    (validation) rows; ties go to the one nearest 0.5."""
    y = multi_hot(label_sets, probs.shape[1])
    best = max(THRESHOLD_GRID, key=lambda t: (multilabel_f1(y, probs >= t)[1], -abs(t - 0.5)))
    return float(best)


# ---------------------------------------------------------------------------------------------------- metrics


def evaluate(problem: Problem, targets: Sequence, scores: np.ndarray, *, prefix: str = "",
             labels: Sequence[str] = (), threshold: float | None = None) -> dict[str, Any]:
    """Every metric of ``problem`` from the targets and the scores (``to_values`` applied), keys
    ``<prefix><metric>``; multilabel also ``<prefix>label_f1`` ({label: F1}) and ``<prefix>threshold``."""
    from modpipe.evaluate.metrics import classification_metrics

    scores = np.asarray(scores)
    if problem is CLASSIFICATION:
        return classification_metrics(targets, scores.argmax(-1), prefix=prefix, probs=scores,
                                      num_labels=len(labels) or None)
    if problem is MULTILABEL:
        return multilabel_metrics(targets, scores, threshold, labels, prefix)
    return regression_metrics(targets, scores, prefix)


def multilabel_f1(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(micro-F1, macro-F1) over the labels present in ``y`` or ``pred`` (a label neither holds nor predicts is
    left out, as macro-F1 of classification leaves out absent classes)."""
    from sklearn.metrics import f1_score

    present = np.flatnonzero(y.any(0) | pred.any(0))
    if len(present) == 0:
        return 0.0, 0.0
    micro = f1_score(y, pred, average="micro", labels=present, zero_division=0)
    macro = f1_score(y, pred, average="macro", labels=present, zero_division=0)
    return float(micro), float(macro)


def multilabel_metrics(label_sets: Sequence[Sequence[int]], probs: np.ndarray, threshold: float | None,
                       labels: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """Subset accuracy, micro/macro-F1 (scikit-learn), mAP (``average_precision_score`` over the labels with a
    positive row) and per-label F1, at ``threshold`` (None: ``choose_threshold`` on these rows)."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    probs = np.asarray(probs, dtype=np.float64)
    y = multi_hot(label_sets, probs.shape[1])
    t = choose_threshold(label_sets, probs) if threshold is None else float(threshold)
    pred = (probs >= t).astype(np.int64)
    micro, macro = multilabel_f1(y, pred)
    positive = np.flatnonzero(y.any(0))
    m_ap = float(average_precision_score(y[:, positive], probs[:, positive], average="macro")) \
        if len(positive) else float("nan")
    per_label = f1_score(y, pred, average=None, zero_division=0)
    names = list(labels) or [str(i) for i in range(probs.shape[1])]
    return {f"{prefix}accuracy": float(accuracy_score(y, pred)) if len(y) else 0.0,
            f"{prefix}micro_f1": micro, f"{prefix}macro_f1": macro, f"{prefix}map": m_ap,
            f"{prefix}threshold": t, f"{prefix}label_f1": {n: float(f) for n, f in zip(names, per_label)}}


def regression_metrics(targets: Sequence[float], values: np.ndarray, prefix: str = "") -> dict[str, Any]:
    """RMSE and MAE (scikit-learn) and Spearman's rank correlation (scipy): NaN when the targets are constant,
    0 when the predictions are (a constant predictor ranks nothing; the mean baseline is one)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    y = np.asarray(targets, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        return {f"{prefix}rmse": float("nan"), f"{prefix}mae": float("nan"), f"{prefix}spearman": float("nan")}
    rho = float("nan") if np.ptp(y) == 0 else 0.0 if np.ptp(v) == 0 else float(spearmanr(y, v).statistic)
    return {f"{prefix}rmse": float(np.sqrt(mean_squared_error(y, v))),
            f"{prefix}mae": float(mean_absolute_error(y, v)), f"{prefix}spearman": rho}
