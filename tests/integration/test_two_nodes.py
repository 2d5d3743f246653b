"""Pretraining across two real Ray nodes on this machine: `ray start --head` and a second `ray start --address`
joined to it, each with one CPU, both on 127.0.0.1 and sharing one auth token. One Ray Train worker lands on each
node (asserted from Ray's own actor records), ZeRO-3 over gloo, checkpoints on the shared run dir, and the export
consolidated from the ZeRO-3 shards equals a single-node run with the same world size and stage (fp32 tolerance)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modpipe.paths import REPO_ROOT
from run_helpers import SMOKE, copy_run, ray_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent
ZERO3 = ["pretrain.num_workers=2", "pretrain.zero_stage=3", "pretrain.deepspeed_config=infra/deepspeed/zero3.json"]
NODES = """
import json, ray
ray.init(address="auto", logging_level="ERROR")
print(json.dumps([{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "cpu": n["Resources"].get("CPU")}
                  for n in ray.nodes() if n["Alive"]]))
"""
WORKERS = """
import json, ray
from ray._private.state import actors  # the GCS's actor table (dead actors included); no dashboard needed
ray.init(address="auto", logging_level="ERROR")
print(json.dumps([a["Address"]["NodeID"] for a in actors().values() if a["ActorClassName"] == "RayTrainWorker"]))
"""


JOIN = """
import sys
from ray._private import ray_constants, services
from ray.scripts.scripts import main
# Two nodes on one machine, both on loopback: Ray refuses to join a node when clusters are local-only
# (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps 127.0.0.1), and with clusters on it replaces 127.0.0.1 by the
# machine's external address. Keep the given 127.0.0.1 and allow the join: on two machines neither is needed.
services.resolve_ip_for_localhost = lambda host: host
ray_constants.ENABLE_RAY_CLUSTER = True
sys.argv = ["ray", "start"] + sys.argv[1:]
main()
"""


def _start(args: list[str], env: dict, log: Path, join: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-c", JOIN] if join else [BIN / "ray", "start"]
    return subprocess.Popen([*cmd, "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             "--disable-usage-stats", *args], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Kill one node's process group (never `ray stop`: it would stop every Ray on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(30)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def _py(code: str, env: dict) -> list:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture()
def two_nodes(tmp_path, free_port):
    port = free_port()
    agent = lambda: [f"--{f}={free_port()}" for f in (  # noqa: E731 - fresh ports per node
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "DS_ACCELERATOR": "cpu",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": f"127.0.0.1:{port}"}
    head = _start(["--head", f"--port={port}", "--include-dashboard=false", "--ray-client-server-port="
                   f"{free_port()}", *agent()], {k: v for k, v in env.items() if k != "RAY_ADDRESS"},
                  tmp_path / "head.log")
    second = None
    try:
        end = time.time() + 120
        while subprocess.run([BIN / "ray", "status", f"--address=127.0.0.1:{port}"], env=env,
                             capture_output=True).returncode != 0:
            assert time.time() < end and head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(2)
        second = _start([f"--address=127.0.0.1:{port}", *agent()], env, tmp_path / "second.log", join=True)
        while len(_py(NODES, env)) < 2:
            assert time.time() < end and second.poll() is None, (tmp_path / "second.log").read_text()[-3000:]
            time.sleep(2)
        yield env
    finally:
        for proc in (second, head):
            if proc is not None:
                _stop(proc)


def _pretrain(run_dir: Path, env: dict) -> tuple[dict, set[str]]:
    """The run summary, and the ZeRO partition files seen in the run dir's checkpoints while it ran (the work dir
    holding them is removed once the step succeeds)."""
    log = open(run_dir / "pretrain.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "modpipe", "pretrain", "--config", SMOKE,
                             "--set", f"run_dir={run_dir}", *[x for s in ZERO3 for x in ("--set", s)]],
                            env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    seen: set[str] = set()
    end = time.time() + 900
    while proc.poll() is None and time.time() < end:
        seen |= {p.name for p in (run_dir / "pretrain").rglob("zero_pp_rank_*optim_states.pt")}
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    assert proc.wait() == 0, (run_dir / "pretrain.log").read_text()[-4000:]
    return json.loads((run_dir / "run_summary.json").read_text()), seen


def test_pretrain_spreads_over_two_nodes_and_exports_what_one_node_does(two_nodes, smoke_built, ray_local, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    env = two_nodes
    nodes = _py(NODES, env)
    assert len(nodes) == 2 and {n["ip"] for n in nodes} == {"127.0.0.1"} and all(n["cpu"] == 1 for n in nodes)
    # a driver without the shared token is refused
    stranger = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    assert subprocess.run([sys.executable, "-c", NODES], env=stranger, capture_output=True,
                          timeout=120).returncode != 0

    two = copy_run(smoke_built[0], tmp_path / "two", steps=("raw", "curate", "contracts"))
    summary, shards = _pretrain(two, env)
    workers = _py(WORKERS, env)
    assert len(workers) == 2 and set(workers) == {n["id"] for n in nodes}  # one worker on each node
    backbone = Path(summary["pretrain"]["backbone"])
    # each rank's ZeRO-3 partition reached the shared run dir's checkpoints (rank 1 ran on the other node)
    assert any("zero_pp_rank_0_" in n for n in shards) and any("zero_pp_rank_1_" in n for n in shards), shards
    metrics = json.loads(Path(summary["pretrain"]["metrics"]).read_text())
    assert metrics["world_size"] == 2 and metrics["zero_stage"] == 3

    one = copy_run(smoke_built[0], tmp_path / "one", steps=("raw", "curate", "contracts"))
    single, _ = _pretrain(one, {**ray_env(ray_local), "RAY_AUTH_MODE": "disabled"})  # one node, 2 CPUs
    a = load_file(str(backbone / "model.safetensors"))
    b = load_file(str(Path(single["pretrain"]["backbone"]) / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and (a[k] - b[k]).abs().max().item() <= 1e-5, k
    model = AutoModelForCausalLM.from_pretrained(str(backbone))
    assert sum(p.numel() for p in model.parameters()) == metrics["params"]
