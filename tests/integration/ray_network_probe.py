"""Run by test_ray_network.py in a fresh process: start Ray the way modpipe does, make it start workers, and print
(as JSON) every listening socket of this process and its descendants, the auth settings, and whether clients with
a wrong token or none get in."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from modpipe.config import RayConfig
from modpipe.raycluster import default_token_path, ensure_ray

ATTACH = """
import os, ray
ray.init(address=os.environ["PROBE_GCS"], log_to_driver=False)
print("attached", ray.get(ray.remote(lambda: 41 + 1).remote()))
"""


def listening() -> list[dict]:
    me = psutil.Process()
    out = []
    for p in [me, *me.children(recursive=True)]:
        try:
            conns = p.net_connections(kind="inet")
            name = " ".join(p.cmdline())[:400] or p.name()
        except psutil.Error:
            continue
        out += [{"pid": p.pid, "process": name, "ip": c.laddr.ip, "port": c.laddr.port}
                for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def attach(env: dict) -> dict:
    try:
        r = subprocess.run([sys.executable, "-c", ATTACH], env=env, capture_output=True, text=True, timeout=90)
        return {"rc": r.returncode, "out": r.stdout[-500:], "err": r.stderr[-1500:]}
    except subprocess.TimeoutExpired:
        return {"rc": None, "out": "", "err": "timed out"}


def main() -> None:
    ensure_ray(RayConfig(num_cpus=1))
    import ray

    @ray.remote
    class Probe:
        def pid(self):
            return os.getpid()

    actor = Probe.remote()
    ray.get([actor.pid.remote(), ray.remote(lambda: 1).remote()])
    time.sleep(3)  # the dashboard agent and runtime-env agent come up beside the raylet
    ctx = ray.get_runtime_context()
    gcs = ctx.gcs_address
    token = default_token_path()
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    report = {
        "sockets": listening(),
        "gcs": gcs,
        "auth_mode": os.environ.get("RAY_AUTH_MODE"),
        "token_mode": oct(stat.S_IMODE(token.stat().st_mode)) if token.is_file() else None,
        "with_token": attach({**base, "PROBE_GCS": gcs}),
        "wrong_token": attach({**base, "PROBE_GCS": gcs, "RAY_AUTH_TOKEN": "0" * 64}),
    }
    url = f"http://{ray._private.worker.get_dashboard_url()}/api/version"
    try:
        urllib.request.urlopen(url, timeout=10)
        report["dashboard_without_token"] = 200
    except urllib.error.HTTPError as err:
        report["dashboard_without_token"] = err.code
    except OSError as err:
        report["dashboard_without_token"] = str(err)
    print("PROBE " + json.dumps(report), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
