"""Run one Ray job per task without oversubscribing the cluster, retrying failed tasks.

Each job declares what it holds while it runs (for a trainer: its workers' CPUs/GPUs). Jobs start in order as
long as their demand fits what is free of the capacity found at the start (``ray.available_resources()``, capped
by ``ray.cluster_resources()``); the rest wait for a running job to finish, so tasks run in waves when they do
not all fit. A job that needs more than the whole cluster is reported at once instead of waiting forever; one that
fits the cluster but not what was free at the start runs alone. A job that fails (its result has ``"error"``, or
its Ray task raised) goes back to the end of the queue until it has been tried ``1 + retries`` times; the others
go on meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("modpipe.adapt")
EPS = 1e-9


def capacity() -> tuple[dict[str, float], dict[str, float]]:
    """(free now, cluster total) CPU/GPU of the connected Ray cluster."""
    import ray

    total = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    free = {k: min(float(v), total.get(k, 0.0)) for k, v in ray.available_resources().items() if k in total}
    return free, total


def fits(demand: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + EPS >= v for k, v in demand.items() if v > 0)


def _fmt(res: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(res.items()) if v > 0) or "nothing"


@dataclass
class Job:
    key: str
    demand: dict[str, float]
    payload: Any
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Schedule:
    results: dict[str, dict[str, Any]]
    peak_in_use: dict[str, float]
    """Most of each resource held at once by running jobs: never above the capacity, except for a job that
    runs alone because it needed more than was free at the start."""
    launches: list[tuple[str, float, dict[str, float]]]
    """(job key, launch time, resources held by running jobs right after the launch)."""


def run_jobs(jobs: list[Job], launch: Callable[[Any], Any], retries: int,
             free: dict[str, float], total: dict[str, float]) -> Schedule:
    """Run ``launch(job.payload)`` (returns a Ray ObjectRef of a result dict) for every job, within ``free``."""
    import ray

    results: dict[str, dict[str, Any]] = {}
    queue: deque[Job] = deque()
    for job in jobs:
        if fits(job.demand, total):
            queue.append(job)
        else:
            results[job.key] = {"error": f"needs {_fmt(job.demand)} per trainer but the whole Ray cluster has "
                                         f"{_fmt(total)}; lower num_workers_per_task or cpus/gpus_per_worker",
                                "attempts": 0}
            log.error("adapt: %s: %s", job.key, results[job.key]["error"])
    running: dict[Any, Job] = {}
    in_use: dict[str, float] = {}
    peak: dict[str, float] = {}
    launches = []

    def start(job: Job) -> None:
        job.attempts += 1
        for k, v in job.demand.items():
            in_use[k] = in_use.get(k, 0.0) + v
            peak[k] = max(peak.get(k, 0.0), in_use[k])
        launches.append((job.key, time.time(), dict(in_use)))
        log.info("adapt: starting %s (attempt %d of %d, holds %s; in use %s of %s)", job.key, job.attempts,
                 1 + retries, _fmt(job.demand), _fmt(in_use), _fmt(free))
        running[launch(job.payload)] = job

    while queue or running:
        for job in list(queue):  # first fit, in order: a small job may pass a large one that waits
            left = {k: free.get(k, 0.0) - in_use.get(k, 0.0) for k in set(free) | set(job.demand)}
            if fits(job.demand, left):
                queue.remove(job)
                start(job)
        if not running and queue:  # fits the cluster, not what was free at the start: alone, Ray queues it
            job = queue.popleft()
            log.warning("adapt: %s needs %s, more than was free (%s): running it alone", job.key,
                        _fmt(job.demand), _fmt(free))
            start(job)
        if queue:
            log.info("adapt: %d task(s) wait for resources: %s", len(queue), ", ".join(j.key for j in queue))
        done, _ = ray.wait(list(running), num_returns=1)
        job = running.pop(done[0])
        for k, v in job.demand.items():
            in_use[k] -= v
        try:
            out = ray.get(done[0])
        except Exception as err:  # noqa: BLE001 - the job's process died; report it, keep the others
            out = {"error": f"{type(err).__name__}: {err}"}
        if "error" in out:
            job.errors.append(str(out["error"]))
            if job.attempts <= retries:
                log.warning("adapt: %s failed (attempt %d of %d), retrying after the queue: %s", job.key,
                            job.attempts, 1 + retries, out["error"])
                queue.append(job)
                continue
            out = {**out, "error": f"{out['error']} (failed {job.attempts} time(s))"}
        results[job.key] = {**out, "attempts": job.attempts, "errors": job.errors}
    return Schedule(results, peak, launches)
