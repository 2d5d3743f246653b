"""Faults during training, each at a marker the run itself writes (Ray Train registering a checkpoint), never on a
timer: adapt killed -9 and rerun ends bitwise where an uninterrupted run ends; a Ray Train worker killed during
pretraining is replaced and the run completes from its latest checkpoint. (Pretrain killed -9 and rerun, bitwise
equal: tests/e2e/test_dag.py::test_kill_during_pretrain_then_rerun_is_bitwise_equal.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from modpipe.lineage import sha256_file
from modpipe.paths import REPO_ROOT
from run_helpers import ray_env

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))  # the tiny backbone/task/curate builders live there

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ADAPT_DRIVER = """
import json, sys
from modpipe import adapt
from modpipe.config import load_config
adapt.train_tasks(load_config(overrides=json.loads(sys.argv[1])), sys.argv[2], sys.argv[3])
"""


def _wait_for(pattern_root: Path, pattern: str, proc: subprocess.Popen | None = None, timeout: float = 600):
    deadline = time.time() + timeout
    while time.time() < deadline and (proc is None or proc.poll() is None):
        found = list(pattern_root.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.02)
    return None


def test_kill_during_adapt_then_rerun_is_bitwise_equal(ray_local, tmp_path):
    """LoRA (dropout on) for 2 epochs: once Ray Train registered epoch 1's checkpoint the adapt driver is killed -9;
    the rerun resumes epoch 2 with the weights, optimizer state, data order and dropout RNG the uninterrupted run
    had there, and writes the same module, bit for bit."""
    from test_adapt import adapt_cfg, make_backbone, make_tasks

    from modpipe import adapt

    backbone = make_backbone(tmp_path / "model")
    tasks_dir = tmp_path / "tasks"
    make_tasks(tasks_dir)
    sets = ["adapt.epochs=2", "adapt.lora.dropout=0.3"]

    whole = adapt.train_tasks(adapt_cfg(tmp_path / "whole", ["doc_kind"], **_kv(sets)), str(backbone),
                              str(tasks_dir))
    reference = Path(whole["modules"]["doc_kind"])

    run_dir = tmp_path / "killed"
    overrides = [f"run_dir={run_dir}", 'adapt.tasks=["doc_kind"]', "adapt.batch_size=16", "adapt.max_length=64",
                 "adapt.lr=0.01", "adapt.lora.r=4", "adapt.num_workers_per_task=1", "adapt.cpus_per_worker=1",
                 "adapt.max_failures=0", *sets]
    assert adapt_cfg(run_dir, ["doc_kind"], **_kv(sets)) == _load(overrides)  # the same job as the reference
    proc = subprocess.Popen([sys.executable, "-c", ADAPT_DRIVER, json.dumps(overrides), str(backbone),
                             str(tasks_dir)], cwd=REPO_ROOT, env=ray_env(ray_local), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        marker = _wait_for(run_dir, "adapt/ray/doc_kind-*/checkpoint_manager_snapshot.json", proc)
        killed_at = time.time()
        if marker is not None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "adapt finished (or failed) before it could be killed"
    assert not list(run_dir.glob("adapt/doc_kind-*/module.json"))  # no module yet: the kill came mid-run
    time.sleep(2)  # Ray reaps the killed driver's trainer

    again = adapt.train_tasks(_load(overrides), str(backbone), str(tasks_dir))
    resumed = Path(again["modules"]["doc_kind"])
    assert resumed.name == reference.name  # same fingerprint: same job, same data, same backbone
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["train_started"] < killed_at < metrics["fit_started"]  # epoch 1 came from the killed run
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    for f in ("adapter_model.safetensors", "test_predictions.parquet"):
        assert sha256_file(resumed / f) == sha256_file(reference / f), f


def test_worker_killed_during_pretraining_restarts_from_checkpoint(ray_local, tmp_path):
    """pretrain.max_failures=1: once the first checkpoint is registered one Ray Train worker process is killed -9;
    Ray Train replaces the worker group, the loop resumes from the latest checkpoint and the run completes."""
    import psutil
    from test_pretrain import make_curate_output, tiny_cfg

    from modpipe import pretrain

    curated = make_curate_output(tmp_path / "curate")
    cfg = tiny_cfg(tmp_path / "run", steps=100, checkpoint_every=20, log_every=20, max_failures=1)
    work = tmp_path / "work"
    killed: list[int] = []

    def kill_a_worker() -> None:
        if _wait_for(work, "ray/backbone/checkpoint_manager_snapshot.json", timeout=900) is None:
            return
        # only workers of this session's cluster (the raylet is a child of this process): never anyone else's
        workers = [p for p in psutil.Process().children(recursive=True)
                   if _title(p).startswith("ray::RayTrainWorker")]
        if workers:
            workers[-1].send_signal(signal.SIGKILL)
            killed.append(workers[-1].pid)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    out = pretrain.train(cfg, curated, tmp_path / "backbone", work)
    killer.join(timeout=10)

    assert killed, "no Ray Train worker was found to kill"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    metrics = json.loads(Path(out["metrics"]).read_text())
    assert metrics["steps"] == 100
    assert metrics["resumed_from_step"] in (20, 40, 60, 80)  # the replaced group resumed, not started over
    assert out["fingerprint"]


def _title(p) -> str:
    try:
        return " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - a process that ended while we looked
        return ""


def _kv(sets: list[str]) -> dict[str, str]:
    return dict(s.removeprefix("adapt.").split("=", 1) for s in sets)


def _load(overrides: list[str]):
    from modpipe.config import load_config

    return load_config(overrides=overrides)
