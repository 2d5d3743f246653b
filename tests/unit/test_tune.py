"""Tune stage: a real Ray Tune sweep (ASHA over epochs) whose trials each fit a real Ray Train TorchTrainer."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from modpipe.config import load_config
from test_adapt import make_backbone, make_tasks  # tests/unit is on sys.path (rootdir-relative test modules)


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
    from modpipe import tune

    cfg = tune_cfg(world["root"] / "run")
    return cfg, tune.run(cfg, str(world["backbone"]), str(world["tasks_dir"]))


def test_disabled_returns_nothing_quickly(tmp_path):
    from modpipe import tune

    t0 = time.perf_counter()
    assert tune.run(tune_cfg(tmp_path, enabled=False), str(tmp_path / "no-backbone"), str(tmp_path)) == {}
    assert time.perf_counter() - t0 < 1.0
    assert not (tmp_path / "tune").exists()


@pytest.mark.slow
def test_sweep_returns_best_config_within_space(tuned):
    cfg, out = tuned
    tune_dir = Path(out["tune_dir"])
    assert tune_dir.parent == cfg.run_path / "tune" and tune_dir.name.startswith("doc_kind-")
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
    # every trial was a real Ray Train run with one checkpoint per reported epoch
    runs = sorted((cfg.run_path / "tune" / "train" / tune_dir.name).glob("trial-*"))
    assert len(runs) == 2
    by_id = {tr["trial_id"]: tr for tr in trials}
    for run in runs:
        ckpts = list(run.glob("epoch-*/adapter/adapter_model.safetensors"))
        # a trial ASHA stops may still save the next epoch before its actor is killed
        assert by_id[run.name.removeprefix("trial-")]["epochs_run"] <= len(ckpts) <= 2


@pytest.mark.slow
def test_rerun_reuses_and_lost_output_is_restored_from_the_sweep(tuned, world):
    from modpipe import tune

    cfg, out = tuned
    again = tune.run(cfg, str(world["backbone"]), str(world["tasks_dir"]))
    assert again == out
    # lose the step dir: the finished sweep is restored (Tuner.restore), not rerun, and gives the same answer
    best_before = json.loads(Path(out["best_config"]).read_text())
    shutil.rmtree(out["tune_dir"])
    restored = tune.run(cfg, str(world["backbone"]), str(world["tasks_dir"]))
    assert json.loads(Path(restored["best_config"]).read_text()) == best_before


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
