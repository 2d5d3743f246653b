"""Tune stage: a real Ray Tune sweep (ASHA over epochs) whose trials each fit a real Ray Train TorchTrainer."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from modpipe.config import load_config
from test_adapt import make_backbone, make_tasks, step_ctx  # tests/unit is on sys.path (rootdir-relative modules)


def tune_cfg(run_dir: Path, **tune):
    sets = [f"run_dir={run_dir}", "adapt.batch_size=16", "adapt.max_length=64", "adapt.num_workers_per_task=1",
            "adapt.cpus_per_worker=1", "adapt.max_failures=0", "tune.task=doc_kind", "tune.num_samples=2",
            "tune.max_concurrent_trials=2", "tune.epochs=2", "tune.grace_period=1", "tune.lr_min=0.001",
            "tune.lr_max=0.05", "tune.ranks=[2,4]"]
    return load_config(overrides=sets + [f"tune.{k}={v}" for k, v in tune.items()])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    backbone = make_backbone(root / "model")
    tasks_dir = root / "tasks"
    make_tasks(tasks_dir)
    return {"root": root, "backbone": backbone, "tasks_dir": tasks_dir}


@pytest.fixture(scope="module")
def tuned(world, ray_local):
    """The tune step's entry behind a passing contracts record, as the executor calls it."""
    from modpipe import tune

    cfg = tune_cfg(world["root"] / "run")
    ctx = step_ctx(world["root"] / "steps", "tune", world["backbone"], world["tasks_dir"])
    return cfg, tune.run(cfg, ctx), ctx


def test_disabled_returns_no_module_quickly(tmp_path):
    from modpipe import tune

    ctx = step_ctx(tmp_path, "tune", tmp_path / "no-backbone", tmp_path)
    cfg = tune_cfg(tmp_path / "run", enabled=False)
    t0 = time.perf_counter()
    assert tune.run(cfg, ctx) == {"modules": {}}
    assert time.perf_counter() - t0 < 1.0
    assert not list(ctx.out.iterdir()) and not list(ctx.work.iterdir()) and not cfg.run_path.exists()


@pytest.mark.parametrize("contracts", [None, "failed"])
def test_step_refuses_data_without_passing_contracts(tmp_path, world, contracts):
    from modpipe import tune
    from modpipe.gates import GateError

    ctx = step_ctx(tmp_path, "tune", world["backbone"], world["tasks_dir"], contracts)
    cfg = tune_cfg(tmp_path / "run")
    with pytest.raises(GateError, match="no data-contract record" if contracts is None else "contracts failed"):
        tune.run(cfg, ctx)
    assert not list(ctx.out.iterdir()) and not list(ctx.work.iterdir()) and not cfg.run_path.exists()


@pytest.mark.slow
def test_sweep_returns_best_config_within_space(tuned):
    cfg, out, ctx = tuned
    assert Path(out["tune_dir"]) == ctx.out and set(out["modules"]) == {"doc_kind"}
    best = json.loads(Path(out["best_config"]).read_text())
    assert best["task"] == "doc_kind" and best["metric"] == "val_macro_f1"
    assert 0.001 <= best["lr"] <= 0.05 and best["r"] in (2, 4)
    assert 0.0 <= best["best_metric"] <= 1.0 and best["best_metric"] == out["best_metric"]
    assert best["best_epoch"] in (1, 2) and best["num_trials"] == 2 and best["failed_trials"] == 0

    trials = json.loads(Path(out["trials"]).read_text())
    assert len(trials) == 2 and all(tr["error"] is None for tr in trials)
    assert len({(tr["lr"], tr["r"]) for tr in trials}) == 2  # two distinct sampled configs
    assert all(1 <= tr["epochs_run"] <= 2 for tr in trials)  # ASHA may stop one after its grace epoch
    assert best["best_metric"] == max(tr["best_metric"] for tr in trials)
    # every trial was a real Ray Train run (under the step's work dir) with one checkpoint per reported epoch
    runs = sorted((ctx.work / "train").glob("trial-*"))
    assert len(runs) == 2
    by_id = {tr["trial_id"]: tr for tr in trials}
    for run in runs:
        ckpts = list(run.glob("epoch-*/adapter/adapter_model.safetensors"))
        # a trial ASHA stops may still save the next epoch before its actor is killed
        assert by_id[run.name.removeprefix("trial-")]["epochs_run"] <= len(ckpts) <= 2


@pytest.mark.slow
def test_output_module_is_the_best_trials_module(tuned, world):
    """The tune -> publish edge: the task's module in the step dir is the best trial's, as adapt writes modules:
    trained with best_config's lr and rank, its val metric is best_metric, and it loads through the contract."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from modpipe.lineage import sha256_file
    from modpipe.models.modules import load_module, predict_proba

    cfg, out, ctx = tuned
    best = json.loads(Path(out["best_config"]).read_text())
    mdir = Path(out["modules"]["doc_kind"])
    assert mdir == ctx.out / "modules" / "doc_kind"
    module = json.loads((mdir / "module.json").read_text())
    metrics = json.loads((mdir / "metrics.json").read_text())
    assert module["task"] == "doc_kind" and module["method"] == "lora"
    assert module["lr"] == best["lr"] and module["lora"]["r"] == best["r"]
    assert module["epochs"] == 2 and metrics["selected_by"] == "val_macro_f1"
    assert metrics["val_macro_f1"] == module["metrics"]["val_macro_f1"] == best["best_metric"] == out["best_metric"]
    assert metrics["best_epoch"] == best["best_epoch"]
    # the whole trial dir was copied: what its driver wrote under work, the manifest's sha256s intact
    trial_dir = ctx.work / "modules" / f"doc_kind-{best['module_fingerprint']}"
    assert {p.name: sha256_file(p) for p in mdir.iterdir()} == {p.name: sha256_file(p) for p in trial_dir.iterdir()}
    model = load_module(world["backbone"], mdir)  # verifies module.json against the backbone and every file
    test = pq.read_table(world["tasks_dir"] / "doc_kind" / "test.parquet").to_pydict()
    recorded = pq.read_table(mdir / "test_predictions.parquet").to_pydict()
    probs = predict_proba(model, AutoTokenizer.from_pretrained(world["backbone"]), test["text"], 64, 16)
    assert probs.argmax(-1).tolist() == recorded["pred_id"]


@pytest.mark.slow
def test_sweep_restored_from_the_work_dir(tuned, world, tmp_path):
    """A new attempt with the same work dir (a killed step's) restores the finished sweep (Tuner.restore) instead
    of rerunning it, and gives the same best config and the same module."""
    from modpipe import tune
    from modpipe.lineage import sha256_file

    cfg, out, ctx = tuned
    trials_before = sorted(p.name for p in (ctx.work / "train").glob("trial-*"))
    again = tune.sweep(cfg, world["backbone"], world["tasks_dir"], tmp_path / "out", ctx.work)
    assert json.loads(Path(again["best_config"]).read_text()) == json.loads(Path(out["best_config"]).read_text())
    assert sorted(p.name for p in (ctx.work / "train").glob("trial-*")) == trials_before
    a, b = Path(out["modules"]["doc_kind"]), Path(again["modules"]["doc_kind"])
    assert {p.name: sha256_file(p) for p in a.iterdir()} == {p.name: sha256_file(p) for p in b.iterdir()}

    # a best trial without a module dir (ASHA stopped it, or its driver died after training) gets one written
    # from its Train run's checkpoints: the same weights and validation metric
    best = json.loads(Path(out["best_config"]).read_text())
    trial_dir = ctx.work / "modules" / f"doc_kind-{best['module_fingerprint']}"
    shutil.move(trial_dir, tmp_path / "set-aside")
    rebuilt = tune.sweep(cfg, world["backbone"], world["tasks_dir"], tmp_path / "out2", ctx.work)
    c = Path(rebuilt["modules"]["doc_kind"])
    assert trial_dir.is_dir() and rebuilt["best_metric"] == out["best_metric"]
    assert sha256_file(c / "adapter_model.safetensors") == sha256_file(a / "adapter_model.safetensors")
    assert json.loads((c / "metrics.json").read_text())["val_macro_f1"] == out["best_metric"]


def test_placement_groups_of_stopped_trials_are_freed_during_the_sweep(ray_local):
    """A placement group no live actor uses (what a killed trial's TorchTrainer leaves) is removed after two checks;
    one whose actor lives is kept."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from modpipe.tune import free_stopped_trial_workers

    callback = free_stopped_trial_workers()
    orphan, used = placement_group([{"CPU": 0.5}]), placement_group([{"CPU": 0.5}])
    ray.get([orphan.ready(), used.ready()])

    @ray.remote(num_cpus=0.5)
    class Worker:
        def ping(self) -> int:
            return 1

    worker = Worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(used)).remote()
    assert ray.get(worker.ping.remote()) == 1
    try:
        callback.on_step_end(0, [])
        assert callback.enabled and callback.suspects == {orphan.id.hex()}
        callback.last -= callback.EVERY_S
        callback.on_step_end(1, [])
        table = ray.util.placement_group_table()
        assert table[orphan.id.hex()]["state"] == "REMOVED"
        assert table[used.id.hex()]["state"] == "CREATED"
    finally:
        ray.kill(worker)
        remove_placement_group(used)
