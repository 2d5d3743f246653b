"""Multilabel and regression tasks fed odd data: what curate quarantines (with file, line and a reason), what the
baselines, the config's gate rules and the report do with it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from modpipe.config import ConfigError, load_config
from modpipe.curate import tasks as tk
from test_problems import code_examples
from test_user_tasks import cfg_with, write_jsonl

TEXT = "a text long enough to count as an example, row "


def test_regression_targets_that_overflow_or_are_not_plain_numbers_are_quarantined(tmp_path):
    rows = code_examples()
    odd = [10 ** 400, "1_5", "\u0661\u0662", 1e101, "-2e200", "1,5", " 2.5 ", -7, "+.5e1"]
    bad = [{"id": f"odd-{i}", "text": TEXT + str(i), "y": y} for i, y in enumerate(odd)]
    data = [{**r, "y": r["log_size"]} for r in rows] + bad
    path = write_jsonl(tmp_path / "y.jsonl", data)
    cfg = cfg_with(tmp_path, f"{{name: y, source: files, path: '{path}', problem: regression, label_field: y}}")
    built = tk.build_all([], cfg, "files")  # a 400-digit integer raised OverflowError out of curate
    assert built.failed == {}
    quarantined = {r["line"]: r for r in built.rejects}
    first = len(rows) + 1
    assert sorted(quarantined) == [first + i for i in range(6)]  # the last three are plain numbers
    assert {r["reason"] for r in built.rejects} == {"bad_label"}
    assert "1_5" in quarantined[first + 1]["detail"]  # float() alone reads it as 15
    assert "beyond" in quarantined[first + 3]["detail"] and "beyond" in quarantined[first + 4]["detail"]
    targets = {r["id"]: r["target"] for s in tk.SPLITS for r in built.tasks[0].splits[s]}
    assert [targets.get(f"odd-{i}") for i in (6, 7, 8)] == [2.5, -7.0, 5.0]


def test_regression_targets_near_the_bound_give_finite_baselines(tmp_path):
    from modpipe.baseline import compute

    rows = code_examples()
    data = [{**r, "y": r["log_size"] * 5e98 * (-1) ** i} for i, r in enumerate(rows)]
    path = write_jsonl(tmp_path / "big.jsonl", data)
    cfg = cfg_with(tmp_path, f"{{name: big, source: files, path: '{path}', problem: regression, label_field: y}}")
    built = tk.build_all([], cfg, "files")
    assert built.failed == {} and built.rejects == []
    assert np.isfinite([built.tasks[0].problem["target_mean"], built.tasks[0].problem["target_std"]]).all()
    tk.write_tasks(built.tasks, tmp_path / "tasks")
    compute(cfg, tmp_path / "tasks", tmp_path / "out")
    res = json.loads((tmp_path / "out" / "baselines.json").read_text())["big"]
    for kind in ("majority", "tfidf_lr"):
        assert all(np.isfinite(res[kind][m]) for m in ("test_rmse", "test_mae")), res[kind]


def test_a_multilabel_label_holding_the_join_character_is_quarantined(tmp_path):
    """``label`` is the names joined by "|": {"a|b"} and {"a", "b"} would read the same, and the contract's check
    that label_ids match label could not tell them apart."""
    rows = code_examples()
    data = [{**r, "l": r["imports"]} for r in rows] + [{"id": "pipe", "text": TEXT + "pipe", "l": ["os", "a|b"]}]
    path = write_jsonl(tmp_path / "l.jsonl", data)
    cfg = cfg_with(tmp_path, f"{{name: l, source: files, path: '{path}', problem: multilabel, label_field: l}}")
    built = tk.build_all([], cfg, "files")
    assert built.failed == {}
    assert [(r["line"], r["reason"]) for r in built.rejects] == [(len(rows) + 1, "bad_label")]
    assert "'a|b'" in built.rejects[0]["detail"] and "'|'" in built.rejects[0]["detail"]


def test_multilabel_baselines_when_only_one_label_varies_in_train(tmp_path):
    """A label on every train row is a constant; the one label left varying was fitted by scikit-learn as a
    binary problem whose (1 - p, p) did not fit its one column: the baseline step crashed."""
    from modpipe.baseline import compute

    rows = code_examples()
    data = [{**r, "l": ["all"] + (["os"] if "os" in r["imports"] else [])} for r in rows]
    path = write_jsonl(tmp_path / "l.jsonl", data)
    cfg = cfg_with(tmp_path, f"{{name: l, source: files, path: '{path}', problem: multilabel, label_field: l}}")
    built = tk.build_all([], cfg, "files")
    assert built.tasks[0].labels == ["all", "os"]
    tk.write_tasks(built.tasks, tmp_path / "tasks")
    compute(cfg, tmp_path / "tasks", tmp_path / "out")
    res = json.loads((tmp_path / "out" / "baselines.json").read_text())["l"]
    import pyarrow.parquet as pq

    probs = np.asarray(pq.read_table(tmp_path / "out" / "l" / "tfidf_lr.parquet").column("probs").to_pylist())
    assert probs.shape[1] == 2 and (probs[:, 0] == 1.0).all() and ((0 < probs[:, 1]) & (probs[:, 1] < 1)).all()
    assert res["tfidf_lr"]["test_label_f1"]["all"] == 1.0


def test_a_lower_is_better_rule_is_judged_lower_unless_told_otherwise(tmp_path):
    """``{metric: test_rmse, threshold: 4}`` without a direction passed every module with RMSE >= 4 (the default
    direction was "higher"): the worse modules."""
    cfg = load_config(None, ["publish.task_metrics={size: {metric: test_rmse, threshold: 4.0}}"])
    rule = cfg.publish.rule("size", "regression")
    assert (rule.metric, rule.direction, rule.threshold) == ("test_rmse", "lower", 4.0)
    cfg = load_config(None, ["publish.metric=test_mae", "publish.min_metric=3"])
    assert cfg.publish.direction == "lower" and cfg.publish.rule("x", "regression").direction == "lower"
    assert cfg.publish.rule("x", "classification").direction == "higher"  # judged by macro-F1 there
    assert load_config(None).publish.direction == "higher"
    with pytest.raises(ConfigError, match="test_rmse is better lower; direction 'higher'"):
        load_config(None, ["publish.task_metrics={size: {metric: test_rmse, direction: higher, threshold: 4}}"])
    with pytest.raises(ConfigError, match="test_ece is better lower"):
        load_config(None, ["publish.metric=test_ece", "publish.direction=higher"])
    # a measured key that is no problem's metric keeps the direction it is given
    custom = load_config(None, ["publish.task_metrics={t: {metric: test_slice_gap.length, direction: lower}}"])
    assert custom.publish.task_metrics["t"].direction == "lower"


def test_a_task_rule_on_a_metric_its_problem_does_not_measure_is_refused_at_load(tmp_path):
    spec = "{name: size, source: files, path: x.csv, problem: regression, label_field: y}"
    with pytest.raises(ConfigError, match="test_macro_f1 is not measured for a regression task"):
        cfg_with(tmp_path, spec, extra=("publish.task_metrics={size: {metric: test_macro_f1, threshold: 0.5}}",))
    with pytest.raises(ConfigError, match="test_rmse is not measured for a multilabel task"):
        cfg_with(tmp_path, "{name: tags, source: files, path: x.jsonl, problem: multilabel}",
                 extra=("publish.task_metrics={tags: {metric: test_rmse, threshold: 1}}",))
    ok = cfg_with(tmp_path, spec, extra=("publish.task_metrics={size: {metric: test_spearman, threshold: 0.3}}",))
    assert ok.publish.rule("size", "regression").metric == "test_spearman"


def test_the_report_compares_a_regression_module_with_its_baseline_on_its_own_metric(tmp_path):
    """Without a gate comparison the report compared on test_macro_f1: nothing for a regression module."""
    from modpipe.baseline import compute
    from modpipe.report.facts import _baseline

    rows = code_examples()
    path = write_jsonl(tmp_path / "y.jsonl", rows)
    cfg = cfg_with(tmp_path, f"{{name: y, source: files, path: '{path}', problem: regression, label_field: log_size}}")
    tk.write_tasks(tk.build_all([], cfg, "files").tasks, tmp_path / "tasks")
    out = compute(cfg, tmp_path / "tasks", tmp_path / "out")
    module = tmp_path / "module"
    module.mkdir()
    shutil.copy(tmp_path / "out" / "y" / "tfidf_lr.parquet", module / "test_predictions.parquet")
    row = _baseline(out, "y", module)
    assert row["name"] == "TF-IDF + ridge" and row["metric"] == "test_spearman"
    assert row["value"] == json.loads((tmp_path / "out" / "baselines.json").read_text())["y"]["tfidf_lr"][
        "test_spearman"]
    assert row["delta"] is not None and row["delta"]["delta"] == 0.0  # the same predictions


def test_the_gate_says_why_a_regression_module_has_no_spearman(tmp_path):
    """A test split whose target is constant (given splits) has no Spearman: the default rule refuses the module
    and says why rather than only "no numeric test_spearman"."""
    from modpipe.registry.policy import Rules, check

    module = tmp_path / "module"
    module.mkdir()
    (module / "metrics.json").write_text(json.dumps({"test_rmse": 1.5, "test_mae": 1.2, "test_spearman": None}))
    v = check(module, None, Rules(metric="test_spearman", threshold=0.3, max_ece=None))
    field = next(f for f in v.fields if f.name == "metric")
    assert not field.ok and "undefined on this test split: its target is constant" in field.detail
    v = check(module, None, Rules(metric="test_rmse", direction="lower", threshold=2.0, max_ece=None))
    assert next(f for f in v.fields if f.name == "metric").ok and not v.passed  # no weights: refused anyway


def test_a_loaded_module_decides_an_empty_batch_and_each_problem(tmp_path):
    """``LoadedModule.decide`` of no rows is no predictions (a regression module raised on reshaping 0 rows)."""
    from types import SimpleNamespace

    from modpipe.registry.load import LoadedModule

    def loaded(labels, manifest):
        return LoadedModule("m", "1", labels, 64, SimpleNamespace(modpipe_manifest=manifest), None, None, "d",
                            tmp_path, tmp_path)

    reg = loaded(["y"], {"problem": "regression", "target_scale": {"target_mean": 10.0, "target_std": 2.0}})
    assert reg.decide(np.zeros((0, 1), np.float32)) == []
    assert reg.decide(np.array([[0.5], [-1.0]], np.float32)) == [11.0, 8.0]
    ml = loaded(["a", "b", "c"], {"problem": "multilabel", "decision_threshold": 0.35})
    assert ml.decide(np.zeros((0, 3), np.float32)) == []
    assert ml.decide(np.array([[0.5, 0.1, 0.35], [0.0, 0.0, 0.0]], np.float32)) == [["a", "c"], []]


def test_a_multilabel_train_fraction_is_near_the_fraction_and_keeps_every_label():
    """Stratified by the whole label set, 10% of 65 rows with 28 distinct sets kept 30 rows (46%)."""
    from modpipe.adapt.data import Split, stratified_subset
    from test_problems import IMPORTS

    rows = code_examples()
    index = {m: i for i, m in enumerate(IMPORTS)}
    split = Split([r["id"] for r in rows], [r["text"] for r in rows], [[index[m] for m in r["imports"]] for r in rows])
    held = {i for t in split.targets for i in t}
    for fraction in (0.1, 0.25, 0.5):
        sub = stratified_subset(split, fraction, 0)
        assert len(sub) <= fraction * len(split) + len(held) + 1
        assert {i for t in sub.targets for i in t} == held  # every label the split holds is still held
        assert sub.ids == [i for i in split.ids if i in set(sub.ids)]  # file order
    assert stratified_subset(split, 1.0, 0) is split


def test_predict_writes_a_regression_value_in_full():
    """The ``label`` column held the value to 6 significant digits (1234567.89 -> "1.23457e+06") and nothing else
    in the output holds it (``probabilities`` is the standardised score)."""
    from types import SimpleNamespace

    from modpipe.predict import _Predictor
    from modpipe.registry.load import LoadedModule

    scale = {"target_mean": 1234000.0, "target_std": 1000.0}
    model = SimpleNamespace(modpipe_manifest={"problem": "regression", "target_scale": scale})
    m = LoadedModule("m", "1", ["price"], 64, model, None, None, "d", None, None)
    m.predict_proba = lambda texts, batch_size: np.array([[0.56789], [-3.0]], dtype=np.float64)
    p = _Predictor.__new__(_Predictor)
    p.loaded, p.batch_size = m, 2
    out = p({"id": np.array(["a", "b"]), "text": np.array(["x", "y"]), "source": np.array(["f", "f"]),
             "line": np.array([1, 2])})
    assert [float(v) for v in out["label"]] == [1234567.89, 1231000.0]
