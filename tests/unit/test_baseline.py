"""The baseline step's library part on a hand-made task: majority and TF-IDF + LR, and the paired bootstrap."""

import json

import numpy as np
import pandas as pd
import pytest

from modpipe.baseline import compare, compute
from modpipe.config import load_config

WORDS = {0: "socket connect bind listen packet", 1: "matrix vector tensor gradient kernel",
         2: "poem verse rhyme stanza meter"}


def _task(root, name="topics", n=(60, 12, 30), skew=0):
    rng = np.random.default_rng(0)
    d = root / name
    d.mkdir(parents=True)
    for split, size in zip(("train", "val", "test"), n):
        label_id = [int(rng.integers(0, 3)) if i >= skew else 0 for i in range(size)]
        text = [" ".join(rng.choice(WORDS[y].split(), 12)) + f" filler {i}" for i, y in enumerate(label_id)]
        pd.DataFrame({"id": [f"{split}-{i}" for i in range(size)], "text": text,
                      "label": [str(y) for y in label_id], "label_id": label_id}).to_parquet(d / f"{split}.parquet")
    (d / "labels.json").write_text(json.dumps(["0", "1", "2"]))
    return root


def test_baselines_score_the_test_split_and_keep_their_predictions(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    out = compute(cfg, _task(tmp_path / "tasks"), tmp_path / "out")
    res = json.loads((tmp_path / "out" / "baselines.json").read_text())["topics"]
    assert out["tasks"] == {"topics": str(tmp_path / "out" / "topics")}
    assert res["tfidf_lr"]["test_macro_f1"] > 0.9  # the words give the label away
    assert res["majority"]["test_macro_f1"] < 0.4 and res["majority"]["n_test"] == 30
    preds = pd.read_parquet(tmp_path / "out" / "topics" / "majority.parquet")
    assert preds["pred_id"].nunique() == 1 and len(preds) == 30


def test_paired_bootstrap_separates_worse_from_noise(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    compute(cfg, _task(tmp_path / "tasks"), tmp_path / "out")
    base = tmp_path / "out" / "topics"
    strong = compare(base / "tfidf_lr.parquet", base / "majority.parquet", n=300)
    assert strong["delta"] > 0.4 and strong["low"] > 0  # better beyond noise
    weak = compare(base / "majority.parquet", base / "tfidf_lr.parquet", n=300)
    assert weak["high"] < 0 and weak["rows"] == 30  # worse beyond noise
    same = compare(base / "tfidf_lr.parquet", base / "tfidf_lr.parquet", n=50)
    assert same["delta"] == same["low"] == same["high"] == 0.0
    with pytest.raises(ValueError, match="share no test row"):
        other = tmp_path / "other.parquet"
        pd.DataFrame({"id": ["x"], "label_id": [0], "pred_id": [0]}).to_parquet(other)
        compare(other, base / "majority.parquet")


def test_vectorised_bootstrap_metrics_equal_sklearn():
    """The hand-written resampled macro-F1 and accuracy give sklearn's numbers, classes absent from a resample
    included (sklearn's average="macro" over the labels present in y_true or y_pred, zero_division=0)."""
    from sklearn.metrics import accuracy_score, f1_score

    from modpipe.baseline import _accuracy, _macro_f1

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 5, 60), rng.integers(0, 4, 60)
    p[:10] = y[:10]
    idx = rng.integers(0, 60, (40, 60))
    idx[0] = 0  # one resample of a single row: one class present
    got_f1, got_acc = _macro_f1(y, p, idx, 5), _accuracy(y, p, idx, 5)
    for i, rows in enumerate(idx):
        assert got_f1[i] == pytest.approx(f1_score(y[rows], p[rows], average="macro", zero_division=0))
        assert got_acc[i] == pytest.approx(accuracy_score(y[rows], p[rows]))


def test_baselines_record_the_split_they_were_computed_on(tmp_path):
    from modpipe.lineage import sha256_file

    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    tasks = _task(tmp_path / "tasks")
    compute(cfg, tasks, tmp_path / "out")
    split = json.loads((tmp_path / "out" / "baselines.json").read_text())["topics"]["split"]
    assert split == {"test_digest": sha256_file(tasks / "topics" / "test.parquet"),
                     "labels_digest": sha256_file(tasks / "topics" / "labels.json")}
