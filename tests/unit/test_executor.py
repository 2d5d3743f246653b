"""The one executor: versions, skip / refuse / --force, status records, locks, temp dirs, the contract gate."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modpipe import steps
from modpipe.config import load_config
from modpipe.executor import (
    FAILED, SUCCEEDED, StepBusy, StepContext, StepFailed, StepResult, execute, load_result, step_version,
)
from modpipe.gates import GateError, require_contracts
from modpipe.steps import Step

CALLS: list[str] = []


def build_ok(cfg, ctx):
    CALLS.append(ctx.run_id)
    (ctx.out / "data.txt").write_text(f"seed {cfg.seed}")
    (ctx.work / "progress").write_text("resumable state")
    return {"data": str(ctx.out / "data.txt"), "count": 3, "nested": {"dir": str(ctx.out)}}


def build_fail(cfg, ctx):
    CALLS.append(ctx.run_id)
    (ctx.out / "partial.txt").write_text("half")
    raise ValueError("the input is bad")


OK = Step("toy", f"{__name__}:build_ok", ("seed", "pretrain"))
FAIL = Step("toy", f"{__name__}:build_fail", ("seed", "pretrain"))


@pytest.fixture()
def cfg(tmp_path):
    CALLS.clear()
    return load_config(None, [f"run_dir={tmp_path / 'run'}"])


def test_builds_then_skips_with_a_status_record(cfg):
    first = execute(OK, cfg, {}, run_id="run-a")
    assert first.succeeded and not first.skipped and CALLS == ["run-a"]
    assert first.dir == cfg.run_path / "toy" / f"toy-{first.version}"
    assert Path(first["data"]).read_text() == "seed 0" and first["count"] == 3
    assert first["nested"]["dir"] == str(first.dir)  # paths inside the temp dir point into the final dir
    rec = json.loads((first.dir / "status.json").read_text())
    assert rec["state"] == SUCCEEDED and rec["run_id"] == "run-a" and rec["pid"] == os.getpid()
    assert rec["config"]["seed"] == 0 and rec["config"]["pretrain"]["lr"] == cfg.pretrain.lr
    assert "log_every" not in rec["config"]["pretrain"]  # unversioned
    assert rec["outputs"]["data"] == {"path": "data.txt"} and rec["finished"] >= rec["started"]
    assert {"torch", "ray"} <= set(rec["libraries"]) and rec["host"] and "git_commit" in rec
    assert not (cfg.run_path / "toy" / f".work-toy-{first.version}").exists()  # work dir gone after success
    assert not list((cfg.run_path / "toy").glob(".tmp-*"))

    again = execute(OK, cfg, {}, run_id="run-b")
    assert again.skipped and CALLS == ["run-a"] and again.record["run_id"] == "run-a"


def test_failed_step_is_refused_until_forced(cfg):
    with pytest.raises(ValueError, match="the input is bad"):
        execute(FAIL, cfg, {}, run_id="run-a")
    version = step_version(FAIL, cfg, {})[0]
    failed = cfg.run_path / "toy" / f"toy-{version}.failed-run-a"
    rec = json.loads((failed / "status.json").read_text())
    assert rec["state"] == FAILED and "the input is bad" in rec["error"] and "Traceback" in rec["traceback"]
    assert (failed / "partial.txt").read_text() == "half"  # what it wrote stays for a person to look at
    assert not (cfg.run_path / "toy" / f"toy-{version}").exists()

    with pytest.raises(StepFailed, match=r"(?s)failed in run run-a: ValueError: the input is bad.*--force"):
        execute(OK, cfg, {}, run_id="run-b")  # same step, same version
    assert CALLS == ["run-a"]
    forced = execute(OK, cfg, {}, run_id="run-c", force=True)
    assert forced.succeeded and CALLS == ["run-a", "run-c"]
    assert failed.is_dir()  # the failed record is history, never deleted


def test_version_changes_only_with_versioned_fields(tmp_path):
    pretrain = steps.get("pretrain")

    def version(*overrides, upstream=("c1", "k1")):
        c = load_config(None, [f"run_dir={tmp_path}", *overrides])
        return step_version(pretrain, c, {"curate": upstream[0], "contracts": upstream[1]})[0]

    base = version()
    # cosmetic: how the run is watched or recovered, and where the run dir is
    assert version("pretrain.log_every=3", "pretrain.checkpoint_every=7", "pretrain.max_failures=2",
                   "ray.num_cpus=1", "adapt.lr=0.5", "publish.min_metric=0.9") == base
    assert version(f"run_dir={tmp_path / 'elsewhere'}") == base
    # real: what is trained, on what
    assert version("pretrain.lr=0.01") != base
    assert version("model.num_layers=3") != base
    assert version("seed=1") != base
    assert version(upstream=("c2", "k1")) != base
    # a DeepSpeed JSON with the same content at another path changes nothing; other content does
    ds = json.loads(Path(load_config().pretrain.deepspeed_config).read_text())
    (tmp_path / "same.json").write_text(json.dumps(ds))
    assert version(f"pretrain.deepspeed_config={tmp_path / 'same.json'}") == base
    (tmp_path / "other.json").write_text(json.dumps({**ds, "gradient_clipping": 0.5}))
    assert version(f"pretrain.deepspeed_config={tmp_path / 'other.json'}") != base


HOLD = """
import sys, time
from modpipe.executor import _Lock
lock = _Lock(__import__("pathlib").Path(sys.argv[1]))
lock.acquire({"step": "toy", "version": "v", "run_id": "run-holder", "pid": __import__("os").getpid(),
              "host": "here", "started_at": "then"})
print("held", flush=True)
time.sleep(600)
"""


def test_lock_names_the_holder_and_a_dead_holder_is_taken_over(cfg):
    version = step_version(OK, cfg, {})[0]
    root = cfg.run_path / "toy"
    root.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root / f".toy-{version}.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (root / f".tmp-toy-{version}-run-killed").mkdir()  # what a killed build leaves
        with pytest.raises(StepBusy, match=rf"run run-holder \(pid {holder.pid} on here, since then\)"):
            execute(OK, cfg, {}, run_id="run-b")
        assert CALLS == [] and (root / f".tmp-toy-{version}-run-killed").is_dir()  # not ours to remove
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    done = execute(OK, cfg, {}, run_id="run-c")
    assert done.succeeded and CALLS == ["run-c"]
    assert not list(root.glob(".tmp-*"))  # the killed build's temp dir went with the takeover


def _result(tmp_path, name, version, state, upstream=None, outputs=None) -> StepResult:
    d = tmp_path / f"{name}-{version}"
    d.mkdir()
    rec = {"step": name, "version": version, "state": state, "upstream": upstream or {}, "outputs": outputs or {},
           "error": "ContractViolation: n_chars too large" if state == FAILED else None}
    (d / "status.json").write_text(json.dumps(rec))
    return load_result(d)


def _ctx(tmp_path, inputs) -> StepContext:
    return StepContext("pretrain", "p1", "run-x", tmp_path / "out", tmp_path / "work", tmp_path / "final", inputs)


def test_gate_refuses_unless_a_passed_record_for_that_curate_version(tmp_path):
    curate = _result(tmp_path, "curate", "c1", SUCCEEDED)
    with pytest.raises(GateError, match="no data-contract record"):
        require_contracts(_ctx(tmp_path, {"curate": curate}))
    failed = _result(tmp_path, "contracts", "k1", FAILED, {"curate": {"version": "c1"}})
    with pytest.raises(GateError, match="contracts failed: ContractViolation: n_chars too large"):
        require_contracts(_ctx(tmp_path, {"curate": curate, "contracts": failed}))
    # a caller claiming success is not believed: the record on disk decides
    forged = StepResult("contracts", "k1", failed.dir, SUCCEEDED, {}, {"datasets": 5})
    with pytest.raises(GateError, match="contracts failed"):
        require_contracts(_ctx(tmp_path, {"curate": curate, "contracts": forged}))
    other = _result(tmp_path, "contracts", "k2", SUCCEEDED, {"curate": {"version": "c0"}}, {"datasets": 5})
    with pytest.raises(GateError, match="checked curate version c0"):
        require_contracts(_ctx(tmp_path, {"curate": curate, "contracts": other}))
    empty = _result(tmp_path, "contracts", "k3", SUCCEEDED, {"curate": {"version": "c1"}}, {"datasets": 0})
    with pytest.raises(GateError, match="checked no dataset"):
        require_contracts(_ctx(tmp_path, {"curate": curate, "contracts": empty}))
    good = _result(tmp_path, "contracts", "k4", SUCCEEDED, {"curate": {"version": "c1"}}, {"datasets": 12})
    require_contracts(_ctx(tmp_path, {"curate": curate, "contracts": good}))


def test_every_consumer_of_curated_data_reads_the_contracts_step():
    for step in steps.STEPS:
        if "curate" in step.inputs:  # the checks of curated data (contracts, the drift profile and gate) excepted
            assert step.name in ("contracts", "profile", "drift") or "contracts" in step.inputs, step.name
    assert [s.name for s in steps.plan(["publish"])] == ["curate", "contracts", "profile", "drift", "pretrain",
                                                          "adapt", "baseline", "tune", "publish"]
    assert [s.name for s in steps.plan(["pretrain"])] == ["curate", "contracts", "profile", "drift", "pretrain"]
    # the drift gate is planned before every consumer of curated data, but its version is none of theirs
    for step in steps.STEPS:
        if "contracts" in step.inputs:
            assert step.gates == ("drift",) and "drift" not in step.inputs, step.name


def test_every_step_has_a_deployment_a_cli_command_and_an_entry_function():
    import yaml
    from typer.main import get_command

    from modpipe.cli import app
    from modpipe.paths import REPO_ROOT

    deployments = yaml.safe_load((REPO_ROOT / "flows" / "prefect.yaml").read_text())["deployments"]
    per_step = {d["parameters"]["step"]: d for d in deployments if d["entrypoint"] == "flows/dag.py:step_flow"}
    commands = set(get_command(app).commands)
    for step in steps.STEPS:
        assert step.name in per_step and per_step[step.name]["name"] == step.name
        assert step.name in commands
        assert callable(step.function())
