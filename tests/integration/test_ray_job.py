"""A real `ray start --head` on 127.0.0.1 and `ray job submit` of a stage."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modpipe.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent


@pytest.fixture()
def ray_head(tmp_path, free_port):
    """`ray start --head --block` in its own process group, stopped by killing that group (not `ray stop`,
    which would also kill the test session's own local Ray)."""
    gcs, dash = free_port(), free_port()
    # The test session's own local Ray already holds the agents' default ports: pick free ones for this head.
    agent_ports = [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "ray-client-server-port")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         "--disable-usage-stats", *agent_ports],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        # Ready = a job can be submitted: the dashboard answers before its job agent is up
        # ("No available agent to submit job"), so probe with a trivial job.
        end = time.time() + 180
        while True:
            try:
                JobSubmissionClient(address).submit_job(entrypoint="true")
                break
            except Exception:
                if time.time() > end or head.poll() is not None:
                    raise RuntimeError((tmp_path / "ray-head.log").read_text()[-3000:])
                time.sleep(2)
        yield env, address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def _submit(address, env, job_id, *args):
    cmd = [
        BIN / "ray", "job", "submit", "--address", address, "--submission-id", job_id,
        "--runtime-env-json", json.dumps({"env_vars": {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}}),
        "--", sys.executable, "-m", "modpipe", *map(str, args),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, cwd=REPO_ROOT)


def test_ray_job_submit_runs_the_dag_and_a_step_refuses_failed_contracts(ray_head, smoke_built, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from run_helpers import MICRO, SMOKE, copy_run

    env, address = ray_head
    client = JobSubmissionClient(address)
    run_dir = copy_run(smoke_built[0], tmp_path / "run")
    sets = [x for o in [f"run_dir={run_dir}", *MICRO] for x in ("--set", o)]
    r = _submit(address, env, "modpipe-dag-test", "run", "--engine", "local", "--config", SMOKE, *sets)
    logs = client.get_job_logs("modpipe-dag-test")
    assert r.returncode == 0 and client.get_job_status("modpipe-dag-test") == JobStatus.SUCCEEDED, logs[-4000:]
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["outcome"] == "succeeded" and summary["publish"]["registered"]

    bad_dir = copy_run(smoke_built[0], tmp_path / "bad", steps=("raw", "curate"))
    r = _submit(address, env, "modpipe-gate-test", "pretrain", "--config", SMOKE, "--set", f"run_dir={bad_dir}",
                "--set", "contracts.min_doc_tokens=100000")
    assert r.returncode != 0 and client.get_job_status("modpipe-gate-test") == JobStatus.FAILED
    assert "n_tokens" in client.get_job_logs("modpipe-gate-test")
    assert not (bad_dir / "pretrain").exists()
