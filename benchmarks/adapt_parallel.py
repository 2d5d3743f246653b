"""Parallel fine-tuning: K task trainers at once vs the same K trainers one after another, in one run.

    python benchmarks/adapt_parallel.py --backbone DIR --tasks-dir DIR [--k 2] [--epochs 1] [--task man_section]
        [--real man_section man_language] [--set adapt.max_length=128 ...]

Same work both ways, through ``modpipe.adapt.train_tasks`` (one Ray Train ``TorchTrainer`` per task, each ``fit()`` in a
zero-CPU Ray task, every worker holding ``adapt.cpus_per_worker`` CPUs):

- balanced: K task folders with the same rows (copies of ``--task``, so every trainer does identical work) trained
  concurrently in one ``adapt.train_tasks``, then one by one (K calls); speedup = sequential / concurrent,
  the goal is >= 0.85 K on K free cores;
- real (``--real``): the given tasks as they are (their sizes differ, so the ideal speedup is sum / max of their
  sequential times, not K): speedup and parallel efficiency = speedup / ideal.

Each measurement uses a fresh run dir (no module reuse); Ray is started once before any timing.  Results:
``benchmarks/results/adapt_parallel-<UTC time>.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("bench.adapt_parallel")


def _cfg(run_dir: Path, tasks: list[str], epochs: int, sets: list[str]):
    from modpipe.config import load_config

    return load_config(None, [f"run_dir={run_dir}", f"adapt.tasks={json.dumps(tasks)}", f"adapt.epochs={epochs}",
                              "adapt.num_workers_per_task=1", "adapt.cpus_per_worker=1", "adapt.max_failures=0",
                              "adapt.task_retries=0", *sets])


def _timed_run(cfg, backbone: str, tasks_dir: str) -> tuple[float, dict]:
    from modpipe import adapt

    t0 = time.perf_counter()
    out = adapt.train_tasks(cfg, backbone, tasks_dir)
    seconds = time.perf_counter() - t0
    if out["failed"]:
        raise RuntimeError(f"tasks failed: {out['failed']}")
    return seconds, out


def measure(tasks: list[str], backbone: str, tasks_dir: str, epochs: int, sets: list[str], work: Path,
            repeat: int = 1) -> dict:
    """Concurrent (one train_tasks of all tasks) and sequential (one call per task), fresh run dirs each time;
    ``repeat`` rounds alternating which goes first (a shared machine's load drifts), medians reported."""
    import statistics

    rounds = []
    for r in range(repeat):
        conc_s, seq = 0.0, {}
        for mode in (("concurrent", "sequential") if r % 2 == 0 else ("sequential", "concurrent")):
            if mode == "concurrent":
                conc_s, _ = _timed_run(_cfg(work / f"r{r}-concurrent", tasks, epochs, sets), backbone, tasks_dir)
                log.info("round %d concurrent: %d tasks in %.1f s", r, len(tasks), conc_s)
            else:
                for t in tasks:
                    seq[t], _ = _timed_run(_cfg(work / f"r{r}-sequential-{t}", [t], epochs, sets), backbone,
                                           tasks_dir)
                    log.info("round %d sequential: %s in %.1f s", r, t, seq[t])
        seq_s = sum(seq.values())
        rounds.append({"concurrent_s": round(conc_s, 2), "sequential_s": round(seq_s, 2),
                       "sequential_per_task_s": {k: round(v, 2) for k, v in seq.items()},
                       "speedup": round(seq_s / conc_s, 3), "ideal_speedup": round(seq_s / max(seq.values()), 3),
                       "loadavg_1m": round(os.getloadavg()[0], 1)})
    med = {k: round(statistics.median(x[k] for x in rounds), 3)
           for k in ("concurrent_s", "sequential_s", "speedup", "ideal_speedup")}
    return {"tasks": tasks, **med, "efficiency": round(med["speedup"] / med["ideal_speedup"], 3), "rounds": rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--tasks-dir", required=True)
    ap.add_argument("--k", type=int, default=2, help="trainers at once (= free cores for the goal)")
    ap.add_argument("--task", default="man_section", help="task copied K times for the balanced measurement")
    ap.add_argument("--real", nargs="*", default=[], help="real tasks for the second measurement")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="rounds, alternating which mode runs first")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override, e.g. adapt.max_length=128")
    args = ap.parse_args()
    args.backbone, args.tasks_dir = str(Path(args.backbone).resolve()), str(Path(args.tasks_dir).resolve())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import ray

    from modpipe.config import load_config
    from modpipe.raycluster import ensure_ray

    ensure_ray(load_config().ray)  # started once, before any timing
    cpus = int(ray.cluster_resources().get("CPU", 0))
    work = Path(tempfile.mkdtemp(prefix="bench-adapt-parallel-"))
    try:
        copies = work / "tasks"
        copies.mkdir()
        names = [f"{args.task}_copy{i}" for i in range(args.k)]
        for n in names:  # identical rows per trainer: the same work K times
            shutil.copytree(Path(args.tasks_dir) / args.task, copies / n)
        balanced = measure(names, args.backbone, str(copies), args.epochs, args.sets, work / "balanced", args.repeat)
        balanced["goal_speedup"] = round(0.85 * args.k, 3)
        real = (measure(args.real, args.backbone, args.tasks_dir, args.epochs, args.sets, work / "real", args.repeat)
                if args.real else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"k": args.k, "ray_cpus": cpus, "os_cpus": os.cpu_count(), "epochs": args.epochs, "sets": args.sets,
              "backbone": args.backbone, "balanced": balanced, "real": real, "host": platform.node(),
              "loadavg_after": os.getloadavg(), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"adapt_parallel-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2, default=str).replace(str(REPO) + "/", ""))  # repo-relative paths
    print(f"\nK = {args.k} trainers, {cpus} Ray CPUs, {args.epochs} epoch(s), median of {args.repeat} round(s); "
          f"1-min load average per round: {[x['loadavg_1m'] for x in balanced['rounds']]}")
    print(f"{'run':<10} {'sequential s':>13} {'concurrent s':>13} {'speedup':>8} {'ideal':>6} {'goal':>6}")
    print(f"{'balanced':<10} {balanced['sequential_s']:>13.1f} {balanced['concurrent_s']:>13.1f} "
          f"{balanced['speedup']:>8.2f} {balanced['ideal_speedup']:>6.2f} {balanced['goal_speedup']:>6.2f}")
    if real:
        print(f"{'real':<10} {real['sequential_s']:>13.1f} {real['concurrent_s']:>13.1f} {real['speedup']:>8.2f} "
              f"{real['ideal_speedup']:>6.2f} {'':>6}  ({', '.join(real['tasks'])})")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
