"""The classical baselines per problem: fit on a task's train split, score other texts.

Scores are what ``evaluate.scoring`` turns into predictions: class probabilities (classification), one
probability per label (multilabel) or the predicted value in the target's units (regression, one column).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from modpipe.config import PipelineConfig


def fit_predict(cfg: PipelineConfig, kind: str, task, train, texts: list[Sequence[str]]) -> list[np.ndarray]:
    """Fit baseline ``kind`` (``majority`` or ``tfidf_lr``) on ``train`` and score each list of ``texts``."""
    k = len(task.labels)
    if kind == "majority":
        return [_constant(task.problem, train.targets, k, len(t)) for t in texts]
    from sklearn.feature_extraction.text import TfidfVectorizer

    b = cfg.baseline
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2,
                          max_features=b.max_features)
    x = vec.fit_transform([t[:b.max_chars] for t in train.texts])
    model = {"classification": _logistic, "multilabel": _one_vs_rest, "regression": _ridge}[task.problem]
    predict = model(cfg, x, train.targets, k)
    return [predict(vec.transform([t[:b.max_chars] for t in batch])) for batch in texts]


def _constant(problem: str, targets: list, k: int, n: int) -> np.ndarray:
    """The majority baseline: the most frequent class; each label's frequency; the mean target."""
    from modpipe.evaluate.problems import multi_hot

    if problem == "regression":
        return np.full((n, 1), float(np.mean(targets)))
    if problem == "multilabel":
        return np.tile(multi_hot(targets, k).mean(0), (n, 1))
    probs = np.zeros((n, k))
    probs[:, int(np.bincount(np.asarray(targets, np.int64), minlength=k).argmax())] = 1.0
    return probs


def _logistic(cfg: PipelineConfig, x, targets: list, k: int):
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(targets, dtype=np.int64)
    if len(np.unique(y)) < 2:  # one label in train: logistic regression cannot fit; it is the majority
        return lambda xt: _constant("classification", targets, k, xt.shape[0])
    clf = LogisticRegression(max_iter=2000, C=cfg.baseline.c, random_state=cfg.seed).fit(x, y)

    def predict(xt):
        probs = np.zeros((xt.shape[0], k))
        probs[:, clf.classes_] = clf.predict_proba(xt)
        return probs
    return predict


def _one_vs_rest(cfg: PipelineConfig, x, targets: list, k: int):
    """One logistic regression per label (scikit-learn's ``OneVsRestClassifier``); a label that is always or
    never on in train gets that constant as its probability."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    from modpipe.evaluate.problems import multi_hot

    y = multi_hot(targets, k)
    varied = np.flatnonzero((y.min(0) == 0) & (y.max(0) == 1))
    clf = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=cfg.baseline.c, random_state=cfg.seed)) \
        .fit(x, y[:, varied]) if len(varied) else None

    def predict(xt):
        probs = np.tile(y.mean(0).astype(float), (xt.shape[0], 1))
        if clf is not None:
            # one varied label: scikit-learn fits it as a binary problem and returns (1 - p, p)
            probs[:, varied] = clf.predict_proba(xt).reshape(xt.shape[0], -1)[:, -len(varied):]
        return probs
    return predict


def _ridge(cfg: PipelineConfig, x, targets: list, k: int):
    from sklearn.linear_model import Ridge

    reg = Ridge(alpha=1.0, random_state=cfg.seed).fit(x, np.asarray(targets, dtype=np.float64))
    return lambda xt: reg.predict(xt).reshape(-1, 1)
