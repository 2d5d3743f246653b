"""Connect to (or start) Ray the same way from the CLI, Prefect flows, Ray jobs and tests.

A local cluster started here is reachable from this machine only, and only with its token:

- **Loopback only.** Ray binds its gRPC servers (GCS, raylet, every worker and driver), its agents and the
  dashboard to 127.0.0.1 only when the node's IP *is* 127.0.0.1; ``ray.init`` swaps a 127.0.0.1 it is given for
  the machine's external address, except on platforms where Ray keeps clusters local
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``). ``ensure_ray`` sets that switch off, in this process and in the
  environment its Ray processes inherit, so the node's IP stays 127.0.0.1 and every service listens there
  (tests/integration/test_ray_network.py lists the sockets).
- **Token auth.** Unless ``RAY_AUTH_MODE`` is set, it is set to ``token`` here, in the environment every Ray
  process, subprocess and ``ray job submit`` started from this one inherits (a process that attaches to a cluster by
  address does not turn auth on by itself, so it must find ``RAY_AUTH_MODE=token`` in its environment). The token
  is Ray's: ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``; when none
  exists one is generated into ``~/.ray/auth_token``, readable by its owner only. ``RAY_AUTH_MODE=disabled`` turns
  auth off (a warning says so).

Attaching to ``cfg.address`` / RAY_ADDRESS (a cluster, or the Ray job we run in) changes nothing: that cluster's
own settings apply (see README, "Ray jobs").
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from modpipe.config import RayConfig

log = logging.getLogger("modpipe.raycluster")

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for "clusters are local to this machine" (node IP 127.0.0.1); named after the platforms where it
is off by default."""
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).is_file() if path else default_token_path().is_file()


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def ensure_token() -> None:
    """Token auth on (unless the user turned it off) and a token to use; see the module docstring."""
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is None:
        os.environ[AUTH_MODE_ENV] = mode = "token"
        from ray._raylet import Config

        Config.initialize("")  # this process's Ray core has read the variable already: make it read it again
    if mode.lower() != "token":
        log.warning("Ray token authentication is off (%s=%s): anyone who can reach this machine's Ray ports can "
                    "run code in it", AUTH_MODE_ENV, mode)
        return
    if _token_available():
        return
    import secrets

    path = default_token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never world-readable, not even briefly
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()
    log.info("generated a Ray auth token in %s (mode 600)", path)


def local_only() -> None:
    """Keep the node's IP at 127.0.0.1 so every Ray service binds to loopback (see the module docstring)."""
    os.environ[LOCAL_ONLY_ENV] = "0"  # for the GCS, raylet, agents and workers this process starts
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # this process may have imported ray before the variable was set


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Attach to ``cfg.address`` / RAY_ADDRESS if given (a ``ray job submit`` sets it), else start locally, on
    127.0.0.1 with token auth (see the module docstring).

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
        local_only()
        ensure_token()
        # "local" forces a fresh in-process cluster; None would attach to any `ray start` cluster on the host.
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            num_cpus=cfg.num_cpus or max(2, os.cpu_count() or 2),
            # The dashboard serves Ray's state API, which Train V2's PlacementGroupCleaner needs to free the
            # workers of a trainer whose driver was stopped (an ASHA-stopped trial); loopback only.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            configure_logging=True,
            log_to_driver=True,
            **kwargs,
        )
