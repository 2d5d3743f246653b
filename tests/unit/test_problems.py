"""Multilabel and regression tasks (``TaskSpec.problem``): built from files, scored by the problem's metrics (checked
against scikit-learn / scipy by hand), their classical baselines, the paired bootstrap and the gate's rule.

The examples are real text from this machine: the standard library's Python source files, labelled by which of a
few modules they import (multilabel) and by the log of their size (regression)."""

from __future__ import annotations

import json
import math
import re
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from modpipe.config import ConfigError, load_config
from modpipe.curate import tasks as tk
from modpipe.evaluate import problems
from test_user_tasks import PACKAGES, cfg_with, write_jsonl

IMPORTS = ("os", "sys", "re", "collections", "functools", "io", "warnings", "types")


def code_examples(per_package: int = 12, chars: int = 1500) -> list[dict]:
    """Source files: {id, text (the first ``chars``), imports (which of IMPORTS the whole file imports),
    log_size (natural log of its size in bytes)}."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for pkg in PACKAGES:
        files = sorted(p for p in (root / pkg).rglob("*.py") if "test" not in p.parts and p.stat().st_size > 400)
        for p in files[:per_package]:
            full = p.read_text(errors="replace")
            found = {m for m in IMPORTS if re.search(rf"^\s*(import|from)\s+{m}\b", full, re.M)}
            out.append({"id": f"{pkg}/{p.relative_to(root / pkg)}", "text": full[:chars],
                        "imports": sorted(found), "log_size": math.log(p.stat().st_size)})
    return out


def test_a_multilabel_task_from_a_jsonl_file(tmp_path):
    rows = code_examples()
    bad = [{"id": "not-a-list", "text": "a text long enough to count as an example", "imports": "os"},
           {"id": "bad-item", "text": "another text long enough to count as an example", "imports": ["os", 3.5]}]
    path = write_jsonl(tmp_path / "imports.jsonl", rows + bad)
    cfg = cfg_with(tmp_path, f"{{name: imports, source: files, path: '{path}', problem: multilabel, "
                             f"label_field: imports}}")
    built = tk.build_all([], cfg, "files")
    assert built.failed == {}
    task = built.tasks[0]
    assert task.problem == {"problem": "multilabel"} and set(task.labels) <= set(IMPORTS) and len(task.labels) >= 3
    assert {(r["line"], r["reason"]) for r in built.rejects} == {(len(rows) + 1, "bad_label"),
                                                                   (len(rows) + 2, "bad_label")}
    by_id = {r["id"]: r for r in rows}
    for split in tk.SPLITS:
        for row in task.splits[split]:
            want = [lab for lab in by_id[row["id"]]["imports"] if lab in task.labels]
            assert [task.labels[i] for i in row["label_ids"]] == want and row["label"] == "|".join(want)

    summary = tk.write_tasks(built.tasks, tmp_path / "tasks")
    assert summary["imports"]["problem"] == "multilabel"
    from modpipe.adapt.data import load_task

    loaded = load_task(tmp_path / "tasks", "imports")
    assert loaded.problem == "multilabel" and "problem" in loaded.digests
    assert loaded.splits["test"].targets == [r["label_ids"] for r in task.splits["test"]]


def test_a_regression_task_from_a_csv_file(tmp_path):
    import csv

    rows = code_examples()
    path = tmp_path / "size.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "log_size"])
        for r in rows:
            w.writerow([r["id"], r["text"], repr(r["log_size"])])
        w.writerow(["nan-row", "a text long enough to count as an example", "nan"])
        w.writerow(["word-row", "another text long enough to count as an example", "large"])
    cfg = cfg_with(tmp_path, f"{{name: size, source: files, path: '{path}', problem: regression, "
                             f"label_field: log_size}}")
    built = tk.build_all([], cfg, "files")
    task = built.tasks[0]
    assert task.labels == ["log_size"] and {r["reason"] for r in built.rejects} == {"bad_label"}
    assert len(built.rejects) == 2
    train = [r["target"] for r in task.splits["train"]]
    assert task.problem["target_mean"] == pytest.approx(np.mean(train))
    assert task.problem["target_std"] == pytest.approx(np.std(train))
    want = {r["id"]: r["log_size"] for r in rows}
    assert all(r["target"] == pytest.approx(want[r["id"]]) for s in tk.SPLITS for r in task.splits[s])


def test_unusable_multilabel_and_regression_tasks_fail_on_their_own(tmp_path):
    rows = code_examples()
    same = write_jsonl(tmp_path / "same.jsonl", [{**r, "label": 1.0} for r in rows])
    one = write_jsonl(tmp_path / "one.jsonl", [{**r, "label": ["os"]} for r in rows])
    cfg = cfg_with(tmp_path, f"{{name: flat, source: files, path: '{same}', problem: regression}}",
                   f"{{name: single, source: files, path: '{one}', problem: multilabel}}")
    built = tk.build_all([], cfg, "files")
    assert built.tasks == []
    assert "target is constant" in built.failed["flat"]
    assert "1 label(s)" in built.failed["single"] and "multilabel task needs two" in built.failed["single"]


def test_problem_settings_are_checked_at_load(tmp_path):
    with pytest.raises(ConfigError, match="built-in source man_section is a classification task"):
        cfg_with(tmp_path, "{name: s, source: man_section, problem: regression}")
    with pytest.raises(ConfigError, match="label_separator is for multilabel"):
        cfg_with(tmp_path, "{name: s, source: files, path: x.jsonl, label_separator: '|'}")
    cfg = load_config(None, ["publish.task_metrics={size: {metric: test_rmse, direction: lower, threshold: 2}}"])
    assert cfg.publish.rule("other", "regression").metric == "test_spearman"  # the problem's scale-free default
    assert cfg.publish.rule("other", "multilabel").metric == "test_macro_f1"
    assert cfg.publish.rule("size", "regression").direction == "lower"


def test_multilabel_metrics_equal_sklearn_and_the_threshold_is_chosen_on_the_rows_given():
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (80, 4))
    y[:, 3] = 0  # a label no row holds: left out of macro-F1 when never predicted, and out of mAP
    probs = np.clip(y * 0.6 + rng.random((80, 4)) * 0.5, 0, 1)
    probs[:, 3] = 0.01
    sets = [np.flatnonzero(r).tolist() for r in y]
    m = problems.multilabel_metrics(sets, probs, 0.5, ["a", "b", "c", "d"], "test_")
    pred = (probs >= 0.5).astype(int)
    assert m["test_macro_f1"] == pytest.approx(f1_score(y[:, :3], pred[:, :3], average="macro"))
    assert m["test_micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["test_map"] == pytest.approx(average_precision_score(y[:, :3], probs[:, :3], average="macro"))
    assert m["test_accuracy"] == pytest.approx(np.mean((y == pred).all(1)))
    assert m["test_label_f1"]["d"] == 0.0 and m["test_threshold"] == 0.5
    t = problems.choose_threshold(sets, probs)
    best = max(f1_score(y[:, :3], (probs[:, :3] >= g).astype(int), average="macro") for g in problems.THRESHOLD_GRID)
    assert problems.multilabel_metrics(sets, probs, t, "abcd")["macro_f1"] == pytest.approx(best)


def test_regression_metrics_equal_sklearn_and_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    y = rng.normal(5, 2, 50)
    v = y + rng.normal(0, 1, 50)
    m = problems.regression_metrics(y, v, "test_")
    assert m["test_rmse"] == pytest.approx(np.sqrt(np.mean((y - v) ** 2)))
    assert m["test_mae"] == pytest.approx(np.mean(np.abs(y - v)))
    assert m["test_spearman"] == pytest.approx(spearmanr(y, v).statistic)
    assert problems.regression_metrics(y, np.full(50, 5.0))["spearman"] == 0.0  # a constant predictor ranks nothing


def test_resampled_multilabel_and_regression_metrics_equal_the_per_split_ones():
    """The paired bootstrap's vectorised metrics give the per-split metric on every resample."""
    from scipy.stats import spearmanr

    from modpipe.baseline import paired

    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 2, (40, 3)).astype(bool), rng.integers(0, 2, (40, 3)).astype(bool)
    idx = rng.integers(0, 40, (25, 40))
    macro, micro = paired._ml_macro_f1(y, p, idx), paired._ml_micro_f1(y, p, idx)
    for i, rows in enumerate(idx):
        want_micro, want_macro = problems.multilabel_f1(y[rows].astype(int), p[rows].astype(int))
        assert macro[i] == pytest.approx(want_macro) and micro[i] == pytest.approx(want_micro)
    t, v = rng.normal(size=40), rng.normal(size=40)
    rho, rmse = paired._spearman(t, v, idx), paired._rmse(t, v, idx)
    for i, rows in enumerate(idx):
        assert rho[i] == pytest.approx(spearmanr(t[rows], v[rows]).statistic)
        assert rmse[i] == pytest.approx(np.sqrt(np.mean((t[rows] - v[rows]) ** 2)))


def test_baselines_of_multilabel_and_regression_tasks_and_the_lower_is_better_bootstrap(tmp_path):
    from modpipe.baseline import compare, compute

    rows = code_examples()
    ml = write_jsonl(tmp_path / "imports.jsonl", rows)
    rg = write_jsonl(tmp_path / "size.jsonl", rows)
    cfg = cfg_with(tmp_path, f"{{name: imports, source: files, path: '{ml}', problem: multilabel, "
                             f"label_field: imports}}",
                   f"{{name: size, source: files, path: '{rg}', problem: regression, label_field: log_size}}")
    built = tk.build_all([], cfg, "files")
    tk.write_tasks(built.tasks, tmp_path / "tasks")
    compute(cfg, tmp_path / "tasks", tmp_path / "out")
    res = json.loads((tmp_path / "out" / "baselines.json").read_text())
    assert res["imports"]["problem"] == "multilabel" and 0 <= res["imports"]["tfidf_lr"]["test_macro_f1"] <= 1
    assert {"test_micro_f1", "test_map", "threshold"} <= set(res["imports"]["tfidf_lr"])
    size = res["size"]
    test_y = [r["target"] for r in built.tasks[1].splits["test"]]
    assert size["majority"]["test_rmse"] == pytest.approx(
        np.sqrt(np.mean((np.asarray(test_y) - built.tasks[1].problem["target_mean"]) ** 2)))
    assert size["majority"]["test_spearman"] == 0.0
    d = tmp_path / "out" / "size"
    same = compare(d / "tfidf_lr.parquet", d / "tfidf_lr.parquet", metric="test_rmse", n=50)
    assert same["delta"] == same["low"] == same["high"] == 0.0
    vs_mean = compare(d / "tfidf_lr.parquet", d / "majority.parquet", metric="test_rmse", n=200)
    assert vs_mean["module"] == pytest.approx(size["tfidf_lr"]["test_rmse"])
    assert vs_mean["baseline"] == pytest.approx(size["majority"]["test_rmse"])
    with pytest.raises(ValueError, match="no paired bootstrap for 'test_macro_f1' on a regression task"):
        compare(d / "tfidf_lr.parquet", d / "majority.parquet", metric="test_macro_f1")

    # the drift profile: a multilabel task's label shares are the share of examples holding each label; a
    # regression task's values are not labels
    from modpipe.drift.profile import _task

    rows_ml = [r for s in tk.SPLITS for r in built.tasks[0].splits[s]]
    want = {lab: sum(lab in r["label"].split("|") for r in rows_ml) / len(rows_ml) for lab in built.tasks[0].labels}
    assert _task(tmp_path / "tasks" / "imports", cfg.drift)["label_shares"] == pytest.approx(want)
    assert _task(tmp_path / "tasks" / "size", cfg.drift)["label_shares"] is None
