"""``benchmarks/quality.py`` on the smoke recipe (one module method, LoRA): rows for every task and method beside the
baseline step's own numbers, the per-task summary (best module, TF-IDF baseline, ratio) computed from those rows."""

import json
import subprocess
import sys

import pytest

from modpipe.paths import REPO_ROOT
from run_helpers import SMOKE, copy_run, ray_env

pytestmark = [pytest.mark.slow]


def test_quality_benchmark_on_the_smoke_recipe(smoke_built, ray_local, tmp_path):
    run_dir = copy_run(smoke_built[0], tmp_path / "run")
    proc = subprocess.run([sys.executable, "benchmarks/quality.py", "--recipe", SMOKE, "--out", str(tmp_path / "out"),
                        "--set", f"run_dir={run_dir}", "--set", "transfer.methods=[lora]"],
                          capture_output=True, text=True, timeout=900, cwd=REPO_ROOT, env=ray_env(ray_local))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = (tmp_path / "out").glob("quality-*.json")
    result = json.loads(path.read_text())
    assert result["recipe"] == "recipes/smoke.yaml"
    rows = result["rows"]
    tasks = {"man_section", "man_language", "py_package"}
    assert {(r["task"], r["method"]) for r in rows} == {(t, m) for t in tasks
                                                         for m in ("lora", "majority", "tfidf_lr")}
    assert all(set(r) >= {"task", "method", "macro_f1", "accuracy", "trainable_pct", "train_seconds"} for r in rows)
    # the baselines are the baseline step's, on the same splits; the modules are the transfer step's
    [baseline_dir] = (run_dir / "baseline").glob("baseline-*")
    base = json.loads((baseline_dir / "baselines.json").read_text())
    for r in rows:
        if r["method"] in ("majority", "tfidf_lr"):
            assert r["macro_f1"] == base[r["task"]][r["method"]]["test_macro_f1"]
        else:
            assert 0 <= r["macro_f1"] <= 1 and 0 < r["trainable_pct"] < 100
    for task, s in result["tasks"].items():
        mods = [r for r in rows if r["task"] == task and r["method"] == "lora"]
        best = max(mods, key=lambda r: r["macro_f1"])
        assert s["best_module"]["method"] == best["method"]
        assert s["ratio"] == pytest.approx(best["macro_f1"] / base[task]["tfidf_lr"]["test_macro_f1"])
        assert f"{task:<14} {best['method']} {best['macro_f1']:.4f}" in proc.stdout
