"""Shared test setup: CPU DeepSpeed environment, one local Ray per session, small configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) shared by every test that needs it."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})
    yield ray
    ray.shutdown()


@pytest.fixture()
def free_port():
    """A function returning a free TCP port on 127.0.0.1."""
    import socket

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick



@pytest.fixture(scope="session")
def smoke_built(ray_local, tmp_path_factory):
    """The smoke recipe's curate, contracts and pretrain steps, built once per test session through the executor.

    Tests take a copy with ``run_helpers.copy_run`` (step records keep paths relative: a copied run dir is a run
    dir)."""
    from modpipe.config import load_config
    from modpipe.executor import run_steps
    from run_helpers import SMOKE

    run_dir = tmp_path_factory.mktemp("smoke-built")
    results = run_steps(load_config(SMOKE, [f"run_dir={run_dir}"]), ["pretrain"])
    return run_dir, results
