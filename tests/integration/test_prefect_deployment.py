"""A real Prefect server on 127.0.0.1 + a process worker: deploy flows/prefect.yaml and run a deployment."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from modpipe.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent


def _wait_http(url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


@pytest.fixture()
def prefect_server(tmp_path, free_port):
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "MODPIPE_HOME": str(REPO_ROOT),
    }
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    procs = [server]
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/health", 120)
        yield env, procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def _prefect(env, *args, timeout=300):
    r = subprocess.run([BIN / "prefect", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"prefect {' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_deployments_run_the_dag_and_a_step_refuses_failed_contracts(prefect_server, smoke_built, ray_local,
                                                                      tmp_path):
    """Every step of modpipe/steps.py is a deployment; the DAG deployment completes and registers the modules; the
    pretrain step deployment refuses curated data whose contracts failed and builds nothing."""
    from run_helpers import MICRO, SMOKE, copy_run

    env, procs = prefect_server
    env = {**env, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}  # the flows attach to the test's Ray
    _prefect(env, "work-pool", "create", "modpipe-process", "--type", "process", "--overwrite")
    _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "flows/prefect.yaml")
    listing = _prefect(env, "deployment", "ls")
    for name in ("nightly", "on-demand", "curate", "contracts", "pretrain", "adapt", "tune", "publish", "transfer"):
        assert name in listing

    worker_log = open(tmp_path / "worker.log", "w")
    procs.append(subprocess.Popen(
        [BIN / "prefect", "worker", "start", "--pool", "modpipe-process"],
        env=env, cwd=REPO_ROOT, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
    ))
    run_dir = copy_run(smoke_built[0], tmp_path / "run")
    params = {"config_path": SMOKE, "overrides": [f"run_dir={run_dir}", *MICRO]}
    out = _prefect(env, "deployment", "run", "modpipe-dag/on-demand", "--params", json.dumps(params), "--watch",
                   "--watch-timeout", "900", timeout=960)
    assert "Completed" in out, out[-2000:] + (tmp_path / "worker.log").read_text()[-4000:]
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["outcome"] == "succeeded" and summary["publish"]["registered"]

    bad_dir = copy_run(smoke_built[0], tmp_path / "bad", steps=("raw", "curate"))
    params = {"config_path": SMOKE, "overrides": [f"run_dir={bad_dir}", "contracts.min_doc_tokens=100000"]}
    r = subprocess.run([BIN / "prefect", "deployment", "run", "modpipe-step/pretrain", "--params", json.dumps(params),
                        "--watch", "--watch-timeout", "600"], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=660)
    # curate is already built and may show as a Completed task; the flow itself and pretrain must not complete
    assert "finished in state 'Failed'" in r.stdout + r.stderr, r.stdout[-2000:]
    assert "flow-run.Completed" not in r.stdout and "pretrain-" not in r.stdout, r.stdout[-2000:]
    assert list(bad_dir.glob("contracts/contracts-*.failed-*/status.json"))
    assert not (bad_dir / "pretrain").exists()
    failed = json.loads((bad_dir / "run_summary.json").read_text())
    assert failed["outcome"] == "failed" and failed["failed_step"] == "contracts" and "n_tokens" in failed["error"]
