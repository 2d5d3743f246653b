"""Tune stage: the search space over module kinds, the seals of Ray Tune's pickles, and a real Ray Tune sweep (ASHA
over epochs, each trial a real Ray Train TorchTrainer) whose driver is SIGKILLed mid-sweep and restored."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modpipe.config import load_config
from test_adapt import make_backbone, make_tasks, step_ctx  # tests/unit is on sys.path (rootdir-relative modules)

SPACE = ('tune.space={lora: {lr: [0.01, 0.03], params: {r: [2, 4]}}, '
         'bottleneck: {lr: [0.01], params: {reduction_factor: [8]}}}')


def tune_sets(run_dir: Path, state: Path) -> list[str]:
    return [f"run_dir={run_dir}", "adapt.batch_size=16", "adapt.max_length=64", "adapt.num_workers_per_task=1",
            "adapt.cpus_per_worker=1", "adapt.max_failures=0", "tune.tasks=[doc_kind]", "tune.num_samples=3",
            "tune.max_concurrent_trials=1", "tune.epochs=1", "tune.grace_period=1", "tune.methods=[lora,bottleneck]",
            SPACE, f"tune.state_dir={state}"]


def tune_cfg(run_dir: Path, state: Path, *extra: str):
    return load_config(overrides=tune_sets(run_dir, state) + list(extra))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    backbone = make_backbone(root / "model")
    tasks_dir = root / "tasks"
    make_tasks(tasks_dir)
    return {"root": root, "backbone": backbone, "tasks_dir": tasks_dir, "state": root / "state"}


def test_disabled_returns_no_module_quickly(tmp_path):
    from modpipe import tune

    ctx = step_ctx(tmp_path, "tune", tmp_path / "no-backbone", tmp_path)
    cfg = tune_cfg(tmp_path / "run", tmp_path / "state", "tune.enabled=false")
    t0 = time.perf_counter()
    assert tune.run(cfg, ctx) == {"modules": {}}
    assert time.perf_counter() - t0 < 1.0
    assert not list(ctx.out.iterdir()) and not list(ctx.work.iterdir()) and not cfg.run_path.exists()


@pytest.mark.parametrize("contracts", [None, "failed"])
def test_step_refuses_data_without_passing_contracts(tmp_path, world, contracts):
    from modpipe import tune
    from modpipe.gates import GateError

    ctx = step_ctx(tmp_path, "tune", world["backbone"], world["tasks_dir"], contracts)
    cfg = tune_cfg(tmp_path / "run", tmp_path / "state")
    with pytest.raises(GateError, match="no data-contract record" if contracts is None else "contracts failed"):
        tune.run(cfg, ctx)
    assert not list(ctx.out.iterdir()) and not list(ctx.work.iterdir()) and not cfg.run_path.exists()


# ---------------------------------------------------------------------------------------------------- the space


def test_space_grid_sample_and_trial_job(world, tmp_path):
    from modpipe.adapt.data import load_task
    from modpipe.adapt.job import make_job, module_config
    from modpipe.tune.space import grid, points, sample

    cfg = tune_cfg(tmp_path / "run", tmp_path / "state")
    full = grid(cfg.tune)
    assert len(full) == 2 * 2 + 1  # lora: 2 lr x 2 r; bottleneck: 1 x 1
    picked = sample(cfg.tune, 3, seed=0)
    assert len(picked) == 3 and len({json.dumps(p, sort_keys=True) for p in picked}) == 3
    assert {p["method"] for p in picked} == {"lora", "bottleneck"}  # a small budget still tries both kinds
    assert picked == sample(cfg.tune, 3, seed=0) and points(cfg.tune, 0) == picked
    assert len(sample(cfg.tune, 50, seed=1)) == 5  # never more than the space holds
    shuffled = points(tune_cfg(tmp_path, tmp_path / "s", "tune.search=grid").tune, 0)
    assert sorted(map(json.dumps, shuffled)) == sorted(map(json.dumps, full))

    job = make_job(cfg, load_task(world["tasks_dir"], "doc_kind"), world["backbone"])
    kinds = {k: module_config(cfg.adapt, k) for k in cfg.tune.methods}
    from modpipe.tune.space import trial_job

    t = trial_job(job, {"method": "bottleneck", "lr": 0.01, "head": "mlp", "top_k": 1,
                        "params": {"reduction_factor": 8}}, kinds)
    assert (t.method, t.lr, t.head, t.freeze.policy, t.freeze.top_k) == ("bottleneck", 0.01, "mlp", "top_k", 1)
    assert t.module.reduction_factor == 8 and t.task == job.task and t.labels == job.labels
    t = trial_job(job, {"method": "lora", "lr": 0.03, "head": "linear", "top_k": 0, "params": {"r": 2}}, kinds)
    assert (t.method, t.module.r, t.module.alpha, t.freeze.policy) == ("lora", 2, cfg.adapt.lora.alpha, "frozen")


# ---------------------------------------------------------------------------------------------------- seals


class _Planted:
    """What an attacker would plant: unpickling it writes a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_seal_records_as_written_and_refuses_anything_else(tmp_path):
    from modpipe.tune.seal import Seal, SealError, state_dir

    exp, staging = tmp_path / "run" / "work" / "ray" / "task", tmp_path / "staging"
    exp.mkdir(parents=True)
    staging.mkdir()
    state = state_dir(str(tmp_path / "state"), tmp_path / "run")
    with pytest.raises(SealError, match="inside the run dir"):
        state_dir(str(tmp_path / "run" / "state"), tmp_path / "run")
    seal = Seal(exp, state)
    (exp / "tuner.pkl").write_bytes(pickle.dumps({"ok": 1}))
    (exp / "result.json").write_text("{}")  # not unpickled: not sealed, not checked
    assert seal.record() == 1
    (staging / "experiment_state-x.json").write_text('{"v": 2}')  # the step's fresh state, not synced yet
    (exp / "experiment_state-x.json").write_text('{"v": 1}')
    assert seal.record(staging) == 2
    seal.verify()
    (exp / "experiment_state-x.json").write_text('{"v": 2}')  # the sync caught up: a digest we recorded
    seal.verify()
    assert oct(state.joinpath("tune-seals").stat().st_mode)[-3:] == "700"

    marker = tmp_path / "pwned"
    (exp / "tuner.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    (exp / "trial_1").mkdir()
    (exp / "trial_1" / "error.pkl").write_bytes(b"x")
    with pytest.raises(SealError, match=r"trial_1/error\.pkl .*tuner\.pkl"):
        seal.verify()
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------- a real sweep

DRIVER = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from pathlib import Path
from modpipe.config import load_config
from modpipe import tune
cfg = load_config(overrides=json.loads(sys.argv[1]))
tune.sweep(cfg, sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]))
"""


@pytest.fixture(scope="module")
def killed_and_restored(world, ray_local):
    """A sweep (3 trials over LoRA and bottleneck points, one at a time) whose driver process is SIGKILLed once the
    first trial finished (its module dir appeared), then the tune step's sweep again on the same work dir."""
    from modpipe import tune

    root = world["root"] / "killed"
    cfg = tune_cfg(root / "run", world["state"])
    work, out1, out2 = root / "work", root / "out1", root / "out2"
    for d in (work, out1, out2):
        d.mkdir(parents=True)
    sets = tune_sets(root / "run", world["state"])
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    log = open(root / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(sets), str(world["backbone"]),
                               str(world["tasks_dir"]), str(out1), str(work)], env=env, stdout=log, stderr=log,
                              start_new_session=True)
    deadline = time.time() + 600
    finished: list[Path] = []
    while not finished:  # the marker: a finished trial's module dir (StepDir renames it into place when complete)
        finished = [p for p in (work / "modules").glob("doc_kind-*") if (p / "module.json").is_file()]
        assert driver.poll() is None, (root / "driver.log").read_text()[-4000:]
        assert time.time() < deadline, (root / "driver.log").read_text()[-4000:]
        time.sleep(0.5)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(60)
    done = {p.name: p.stat().st_mtime_ns for p in finished}
    runs_before = {p.name: sorted(c.name for c in p.glob("epoch-*")) for p in (work / "train").glob("trial-*")}
    time.sleep(3)  # Ray notices the dead driver and ends its job's actors
    out = tune.sweep(cfg, world["backbone"], world["tasks_dir"], out2, work)
    return {"cfg": cfg, "out": out, "work": work, "done": done, "runs_before": runs_before, "root": root}


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(killed_and_restored):
    k = killed_and_restored
    trials = json.loads(Path(k["out"]["trials"]).read_text())
    assert len(trials) == 3 and all(tr["error"] is None for tr in trials), trials
    assert {tr["method"] for tr in trials} == {"lora", "bottleneck"}
    # the trial that had finished kept its module dir and its Train run: nothing of it was trained again
    for name, mtime in k["done"].items():
        assert (k["work"] / "modules" / name).stat().st_mtime_ns == mtime
    finished_runs = {n: e for n, e in k["runs_before"].items() if len(e) == k["cfg"].tune.epochs}
    assert finished_runs, k["runs_before"]
    for name, epochs in finished_runs.items():
        assert sorted(c.name for c in (k["work"] / "train" / name).glob("epoch-*")) == epochs
    assert len(list((k["work"] / "train").glob("trial-*"))) == 3


@pytest.mark.slow
def test_best_trial_module_is_the_tasks_candidate(killed_and_restored, world):
    """The tune -> publish edge: the task's module in the step dir is the best trial's, as adapt writes modules,
    trained with best_config's point, and it passes the one registry check on the backbone."""
    from modpipe.lineage import sha256_file
    from modpipe.registry.policy import Rules, check

    k = killed_and_restored
    out = k["out"]
    best = json.loads(Path(out["best_config"]).read_text())
    assert best["task"] == "doc_kind" and set(best["tasks"]) == {"doc_kind"} and out["failed"] == {}
    trials = json.loads(Path(out["trials"]).read_text())
    assert best["best_metric"] == max(tr["best_metric"] for tr in trials) == out["best_metric"]["doc_kind"]
    mdir = Path(out["modules"]["doc_kind"])
    module = json.loads((mdir / "module.json").read_text())
    assert module["method"] == best["method"] and module["lr"] == best["lr"] and module["head"] == best["head"]
    for key, value in best["params"].items():
        assert module[module["method"]][key] == value
    assert json.loads((mdir / "metrics.json").read_text())["val_macro_f1"] == best["best_metric"]
    trial_dir = k["work"] / "modules" / f"doc_kind-{best['module_fingerprint']}"
    assert {p.name: sha256_file(p) for p in mdir.iterdir()} == {p.name: sha256_file(p) for p in trial_dir.iterdir()}
    verdict = check(mdir, world["backbone"], Rules(threshold=0.0, max_ece=None), task_dir=world["tasks_dir"] / "doc_kind")
    assert verdict.passed, verdict.reasons


@pytest.mark.slow
def test_restore_refuses_a_planted_tuner_pickle(killed_and_restored, world, tmp_path):
    from modpipe import tune
    from modpipe.tune.seal import SealError

    k = killed_and_restored
    exp = k["work"] / "ray" / "doc_kind"
    marker = tmp_path / "pwned"
    (exp / "tuner.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(SealError, match="tuner.pkl"):
        tune.sweep(k["cfg"], world["backbone"], world["tasks_dir"], tmp_path / "out", k["work"])
    assert not marker.exists()


def test_placement_groups_of_stopped_trials_are_freed_during_the_sweep(ray_local):
    """A placement group no live actor uses (what a killed trial's TorchTrainer leaves) is removed once it was
    orphaned on every check for ORPHAN_GRACE_S; one whose actor lives is kept."""
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
        assert callback.enabled and set(callback.suspects) == {orphan.id.hex()}
        callback.last -= callback.EVERY_S
        callback.on_step_end(1, [])  # orphaned twice, but not for long: a starting trial's group may look like this
        assert ray.util.placement_group_table()[orphan.id.hex()]["state"] == "CREATED"
        callback.suspects[orphan.id.hex()] -= callback.ORPHAN_GRACE_S
        callback.last -= callback.EVERY_S
        callback.on_step_end(2, [])
        table = ray.util.placement_group_table()
        assert table[orphan.id.hex()]["state"] == "REMOVED"
        assert table[used.id.hex()]["state"] == "CREATED"
    finally:
        ray.kill(worker)
        remove_placement_group(used)
