"""Connect to (or start) Ray the same way from the CLI, Prefect flows, Ray jobs and tests."""

from __future__ import annotations

import os

from modpipe.config import RayConfig


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Attach to ``cfg.address`` / RAY_ADDRESS if given (a ``ray job submit`` sets it), else start locally.

    Worker processes inherit the environment DeepSpeed needs on CPU (see DESIGN notes).
    """
    import ray

    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    env = {k: os.environ[k] for k in ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "PYTHONPATH") if k in os.environ}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"runtime_env": {"env_vars": env}} if env else {}
    if address:
        # A cluster (or the Ray job we run in) brings its own runtime env; adding ours would conflict with it.
        ray.init(address=address)
    else:
        # "local" forces a fresh in-process cluster; None would attach to any `ray start` cluster on the host.
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",  # servers bind to loopback unless a cluster address is given
            num_cpus=cfg.num_cpus or max(2, os.cpu_count() or 2),
            # The dashboard serves Ray's state API, which Train V2's PlacementGroupCleaner needs to free the
            # workers of a trainer whose driver was stopped (an ASHA-stopped trial); loopback only.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            configure_logging=True,
            log_to_driver=True,
            **kwargs,
        )
