"""A local Ray cluster started by modpipe (``raycluster.ensure_ray``) is reachable from this machine only, and only
with its token: every socket its processes listen on is a loopback address, token auth is on without being asked
for, the generated token is readable by its owner only, and a client without the token is refused.

The cluster runs in a fresh process (``ray_network_probe.py``) with RAY_AUTH_MODE unset, as a user's first run has
it (the test session's own cluster runs with auth off), and HOME in a temp dir so the token is generated there."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modpipe.paths import REPO_ROOT

pytestmark = [pytest.mark.integration]


def test_local_cluster_listens_on_loopback_only_with_token_auth(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(tmp_path)
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("ray_network_probe.py"))], env=env,
                       capture_output=True, text=True, timeout=420, cwd=REPO_ROOT)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE ")]
    assert r.returncode == 0 and lines, r.stderr[-4000:]
    report = json.loads(lines[-1][len("PROBE "):])

    sockets = report["sockets"]
    processes = " ".join(s["process"] for s in sockets)
    # GCS, raylet, dashboard, its agents, the workers and the driver itself all listen somewhere
    for part in ("gcs_server", "raylet", "dashboard", "DashboardAgent", "RuntimeEnvAgent", "ray::Probe"):
        assert part in processes, (part, sockets)
    exposed = [s for s in sockets if not _loopback(s["ip"])]
    assert not exposed, exposed
    assert report["gcs"].startswith("127.0.0.1:")

    assert report["auth_mode"] == "token"
    assert report["token_mode"] == "0o600" and (tmp_path / ".ray" / "auth_token").is_file()
    assert report["with_token"]["rc"] == 0 and "attached 42" in report["with_token"]["out"], report["with_token"]
    assert report["wrong_token"]["rc"] not in (0, None), report["wrong_token"]
    assert "Authentication token is missing or incorrect" in report["wrong_token"]["err"] or \
        "Failed to connect" in report["wrong_token"]["err"], report["wrong_token"]
    assert report["dashboard_without_token"] == 401


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback
