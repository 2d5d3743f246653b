"""The whole DAG and its gates through the CLI (`modpipe run`, `modpipe <step>`), on the smoke recipe.

curate, contracts and pretrain are built once per session (``smoke_built``) and copied; later steps run with one
tune trial. The Prefect deployment and `ray job submit` entry points are in tests/integration."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modpipe.paths import REPO_ROOT
from run_helpers import MICRO, SMOKE, copy_run, ray_env

pytestmark = [pytest.mark.slow]
FAILING_CONTRACT = "contracts.min_doc_tokens=100000"


def modpipe(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "modpipe", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO_ROOT)


def step_dirs(run_dir: Path, step: str) -> list[Path]:
    return sorted(p for p in (run_dir / step).glob(f"{step}-*") if ".failed-" not in p.name) \
        if (run_dir / step).is_dir() else []


def assert_whole(run_dir: Path) -> None:
    """Every step dir has a succeeded record and the files it names; no temp dir is left."""
    for status in run_dir.glob("*/*-*/status.json"):
        if ".failed-" in status.parent.name:
            continue
        rec = json.loads(status.read_text())
        assert rec["state"] == "succeeded", status
        for key, out in rec["outputs"].items():
            if isinstance(out, dict) and set(out) == {"path"}:
                assert (status.parent / out["path"]).exists(), (status, key)
    assert not list(run_dir.glob("*/.tmp-*")), list(run_dir.glob("*/.tmp-*"))


def test_modpipe_run_whole_dag_and_tune_feeds_publish(smoke_built, ray_local, tmp_path):
    run_dir = copy_run(smoke_built[0], tmp_path / "run")
    sets = [x for o in [f"run_dir={run_dir}", *MICRO] for x in ("--set", o)]
    r = modpipe("run", "--engine", "local", "--config", SMOKE, *sets, env=ray_env(ray_local))
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["outcome"] == "succeeded" and list(summary["steps"]) == [
        "curate", "contracts", "profile", "drift", "pretrain", "adapt", "baseline", "shift", "tune", "publish"]
    assert all(summary["steps"][s]["skipped"] for s in ("curate", "contracts", "pretrain"))
    assert not any(summary["steps"][s]["skipped"] for s in ("adapt", "baseline", "shift", "tune", "publish"))
    # quiet: no traceback of ours (lines Ray forwards from its own actors carry an "(Actor pid=...)" prefix)
    assert Path(summary["report"]).is_file() and not [ln for ln in r.stderr.splitlines()
                                                       if ln.startswith("Traceback")], r.stderr[-3000:]
    assert_whole(run_dir)

    # the tune -> publish edge: the tuned task's published module is tune's best trial's module
    publish = summary["publish"]
    tuned = summary["tune"]["modules"]
    assert len(tuned) == 1
    task, tune_module = next(iter(tuned.items()))
    assert publish["candidates"][task] == {"from": "tune", "module": tune_module}
    assert all(c["from"] == "adapt" for t, c in publish["candidates"].items() if t != task)
    registered = {r["task"]: r for r in publish["registered"]}
    assert task in registered
    from urllib.parse import unquote, urlparse

    from modpipe.lineage import sha256_file

    manifest = json.loads((Path(tune_module) / "module.json").read_text())
    source = Path(unquote(urlparse(registered[task]["source"]).path))
    assert source.is_dir() and sha256_file(source / "module.json") == sha256_file(Path(tune_module) / "module.json")
    best = json.loads(Path(summary["tune"]["best_config"]).read_text())
    assert manifest["lr"] == pytest.approx(best["lr"])

    listing = modpipe("registry", "list", "--config", SMOKE, "--set", f"run_dir={run_dir}")
    assert listing.returncode == 0 and all(r["name"] in listing.stdout for r in publish["registered"])

    # the same command again: every step reused, nothing rebuilt but the drift check (the first run's profile is
    # the reference now: a new reference is a new drift version), which finds nothing moved
    r = modpipe("run", "--engine", "local", "--config", SMOKE, *sets, env=ray_env(ray_local))
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((run_dir / "run_summary.json").read_text())
    assert all(s["skipped"] for n, s in again["steps"].items() if n != "drift") and again["run_id"] != summary["run_id"]
    assert again["drift"]["status"] == "ok" and again["drift"]["warnings"] == 0


def test_failed_contract_stops_every_consumer_whichever_way_it_is_started(smoke_built, ray_local, tmp_path):
    from modpipe import pretrain, steps
    from modpipe.config import load_config
    from modpipe.contracts import ContractViolation
    from modpipe.executor import StepContext, StepError, execute, load_result, run_steps
    from modpipe.gates import GateError

    run_dir = copy_run(smoke_built[0], tmp_path / "run", steps=("raw", "curate"))
    sets = ["--config", SMOKE, "--set", f"run_dir={run_dir}", "--set", FAILING_CONTRACT]
    env = ray_env(ray_local)
    r = modpipe("contracts", *sets, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "curated_docs" in r.stderr and "n_tokens" in r.stderr and "index.html" in r.stderr, r.stderr[-3000:]
    failed = next((run_dir / "contracts").glob("contracts-*.failed-*"))
    assert list(failed.glob("gx/**/index.html"))  # the Data Docs of the failure stay for a person to read

    for command in ("pretrain", "adapt", "publish"):
        r = modpipe(command, *sets, env=env)
        assert r.returncode == 1, (command, r.stdout[-2000:], r.stderr[-2000:])
        assert "contracts failed" in r.stderr and "n_tokens" in r.stderr, (command, r.stderr[-2000:])
    for step in ("pretrain", "adapt", "tune", "publish"):
        assert not (run_dir / step).exists(), step

    # the library: the executor refuses, and so does the step's entry function called by hand
    cfg = load_config(SMOKE, [f"run_dir={run_dir}", FAILING_CONTRACT])
    with pytest.raises(StepError, match="contracts failed"):
        run_steps(cfg, ["pretrain"])
    curate = load_result(step_dirs(run_dir, "curate")[0])
    contracts = load_result(failed)
    with pytest.raises(StepError, match="upstream step contracts has not succeeded"):
        execute(steps.get("pretrain"), cfg, {"curate": curate, "contracts": contracts}, run_id="by-hand")
    ctx = StepContext("pretrain", "x", "by-hand", tmp_path / "out", tmp_path / "work", tmp_path / "final",
                      {"curate": curate, "contracts": contracts})
    with pytest.raises(GateError, match="contracts failed"):
        pretrain.run(cfg, ctx)
    assert not (run_dir / "pretrain").exists() and not (tmp_path / "out").exists()

    # --force reruns the failed contracts (a new attempt), which fails again: still no backbone
    r = modpipe("pretrain", *sets, "--force", env=env)
    assert r.returncode == 1 and "n_tokens" in r.stderr
    assert len(list((run_dir / "contracts").glob("contracts-*.failed-*"))) == 2
    assert not (run_dir / "pretrain").exists()
    with pytest.raises(ContractViolation):
        run_steps(cfg, ["contracts"], force=True)


def test_two_runs_at_once_on_one_run_dir(smoke_built, ray_local, tmp_path):
    run_dir = copy_run(smoke_built[0], tmp_path / "run")
    sets = [x for o in [f"run_dir={run_dir}", *MICRO] for x in ("--set", o)]
    cmd = [sys.executable, "-m", "modpipe", "run", "--engine", "local", "--config", SMOKE, *sets]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                              env=ray_env(ray_local)) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, [o[1][-2000:] for o in outs]
    for code, (_, err) in zip(codes, outs):
        # the loser stops at once, naming the run that holds the step
        assert code == 0 or (code == 1 and "is being built by run" in err and "pid" in err), err[-2000:]
    assert_whole(run_dir)
    for step in ("adapt", "tune", "publish"):
        assert len(step_dirs(run_dir, step)) == 1, step
    r = modpipe("run", "--engine", "local", "--config", SMOKE, *sets, env=ray_env(ray_local))
    assert r.returncode == 0, r.stderr[-3000:]
    # all reused but the drift check against the winner's profile, now the reference
    assert all(s["skipped"] for n, s in json.loads((run_dir / "run_summary.json").read_text())["steps"].items()
               if n != "drift")


def test_kill_during_pretrain_then_rerun_is_bitwise_equal(smoke_built, ray_local, tmp_path):
    from modpipe.lineage import sha256_file

    built_dir, built = smoke_built
    run_dir = copy_run(built_dir, tmp_path / "run", steps=("raw", "curate", "contracts"))
    cmd = [sys.executable, "-m", "modpipe", "pretrain", "--config", SMOKE, "--set", f"run_dir={run_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT,
                            env=ray_env(ray_local), start_new_session=True)
    try:  # the marker: Ray Train has registered this build's first checkpoint (at pretrain.checkpoint_every)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if list(run_dir.glob("pretrain/.work-pretrain-*/ray/backbone/checkpoint_manager_snapshot.json")):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "pretraining finished (or failed) before it could be killed"
    assert list(run_dir.glob("pretrain/.tmp-pretrain-*")) and not step_dirs(run_dir, "pretrain")
    time.sleep(2)  # Ray reaps the killed driver's workers

    r = modpipe("pretrain", "--config", SMOKE, "--set", f"run_dir={run_dir}", env=ray_env(ray_local))
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(run_dir.glob("pretrain/.tmp-*")) and not list(run_dir.glob("pretrain/.work-*"))
    (new,) = step_dirs(run_dir, "pretrain")
    old = Path(built["pretrain"]["backbone"])
    assert new.name == old.name  # same version
    metrics = json.loads((new / "metrics.json").read_text())
    assert metrics["resumed_from_step"] > 0  # it did resume, not start over
    assert sha256_file(new / "model.safetensors") == sha256_file(old / "model.safetensors")
