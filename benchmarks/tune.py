"""Tune: ASHA vs an exhaustive grid over the same discrete space, one task, the same cores, in one run.

    python benchmarks/tune.py --backbone DIR --tasks-dir DIR [--task man_section] [--epochs 3]
        [--lrs 1e-3 3e-3 1e-2] [--ranks 4 8 16] [--set adapt.max_length=128 ...]

Space (the issue's "2 methods x 3 learning rates x 3 ranks"): LoRA ``r`` in ``--ranks`` and bottleneck adapters with
``reduction_factor`` in ``--ranks`` (the bottleneck's width knob), each at every ``--lrs``: 18 points by default.
Both arms run ``modpipe.tune.sweep_task`` on the same task, backbone, Ray cluster and concurrency (as many trials at
once as the free CPUs hold), with ``tune.search=grid`` (every point):

- **grid**: ``tune.scheduler=fifo``: every point trains every epoch;
- **ASHA**: ``tune.scheduler=asha``, ``grace_period=1``: weak points stop after their first epoch.

Each arm selects its best trial on the validation split (as the tune stage does) and reports that module's *test*
macro-F1 (from its module dir's metrics.json, measured by adapt's writer), the best test macro-F1 over all its
trials (the oracle), epochs trained, wall seconds, and CPU-seconds: the sum over trials of the trial's time times
the CPUs its trainer held (``adapt.cpus_per_worker x num_workers_per_task``), which is what the cluster gave it
(``reserved_cpu_seconds``: inflated by other load on a shared machine), and the CPU time actually burnt by the
driver and every Ray process under it (``cpu_seconds``, sampled with psutil; the ratio uses this one).
Goal: ASHA's selected test metric within 1 point of the grid's with <= 50% of its CPU-seconds. The arms run one
after the other (``--order`` picks which first; a shared machine's load drifts), each in a fresh work dir.
Results: ``benchmarks/results/tune-<UTC time>.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("bench.tune")


def _cfg(run_dir: Path, state: Path, task: str, epochs: int, scheduler: str, lrs: list[float], ranks: list[int],
         sets: list[str]):
    from modpipe.config import load_config

    space = {"lora": {"lr": lrs, "params": {"r": ranks}}, "bottleneck": {"lr": lrs, "params": {"reduction_factor": ranks}}}
    return load_config(None, [
        f"run_dir={run_dir}", f"tune.tasks=[{task}]", "tune.methods=[lora,bottleneck]", f"tune.space={json.dumps(space)}",
        "tune.search=grid", f"tune.scheduler={scheduler}", f"tune.epochs={epochs}", "tune.grace_period=1",
        f"tune.state_dir={state}", "adapt.num_workers_per_task=1", "adapt.cpus_per_worker=1", "adapt.max_failures=0",
        *sets])


class CpuMeter:
    """Process CPU time (user + system) of this driver and every process under it (the local Ray cluster: GCS,
    raylet, trial actors, Train workers), sampled every ``every`` seconds: CPU actually burnt, whatever the other
    load on the machine (a process's last ``every`` seconds before it exits are missed)."""

    def __init__(self, every: float = 0.5):
        import threading

        import psutil

        self.every, self.psutil = every, psutil
        self.seen: dict[tuple[int, float], float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = self.psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                self.seen[(p.pid, p.create_time())] = t.user + t.system
            except self.psutil.Error:
                continue

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self._sample()

    def total(self) -> float:
        self._sample()
        return sum(self.seen.values())

    def __enter__(self) -> CpuMeter:
        self._sample()
        self.start = sum(self.seen.values())
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.cpu = self.total() - self.start


def arm(name: str, cfg, backbone: str, tasks_dir: str, work: Path) -> dict:
    from modpipe.raycluster import ensure_ray
    from modpipe.tune import sweep_task

    ensure_ray(cfg.ray)
    out, w = work / f"{name}-out", work / f"{name}-work"
    out.mkdir(parents=True)
    w.mkdir(parents=True)
    t0 = time.perf_counter()
    with CpuMeter() as meter:
        record, trials = sweep_task(cfg, cfg.tune.tasks[0], backbone, tasks_dir, out, w.resolve(),
                                    Path(cfg.tune.state_dir))
    wall = time.perf_counter() - t0
    cpus = cfg.adapt.cpus_per_worker * cfg.adapt.num_workers_per_task
    module = out / "modules" / cfg.tune.tasks[0]
    selected = json.loads((module / "metrics.json").read_text())
    tests = []
    for tr in trials:  # every trial's own module dir (written when it trained to the end)
        for d in (w / "modules").glob(f"{cfg.tune.tasks[0]}-*"):
            m = json.loads((d / "module.json").read_text())
            if m["method"] == tr["method"] and m["lr"] == tr["lr"] and all(
                    m[tr["method"]].get(k) == v for k, v in tr["params"].items()):
                tests.append(json.loads((d / "metrics.json").read_text())["test_macro_f1"])
                break
    return {
        "arm": name, "scheduler": cfg.tune.scheduler, "trials": len(trials), "wall_s": round(wall, 1),
        "epochs_trained": sum(tr["epochs_run"] for tr in trials),
        "cpu_seconds": round(meter.cpu, 1),
        "reserved_cpu_seconds": round(sum((tr["seconds"] or 0.0) * cpus for tr in trials), 1),
        "stopped_early": record["stopped_early"], "selected": record["label"], "selected_val": record["best_metric"],
        "selected_test_macro_f1": selected["test_macro_f1"], "oracle_test_macro_f1": max(tests) if tests else None,
        "trials_detail": [{k: tr[k] for k in ("label", "epochs_run", "best_metric", "seconds")} for tr in trials],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True)
    p.add_argument("--tasks-dir", required=True)
    p.add_argument("--task", default="man_section")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--order", choices=["asha-first", "grid-first"], default="asha-first")
    p.add_argument("--set", dest="sets", action="append", default=[])
    p.add_argument("--work", default=None, help="work dir (default: a temp dir)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    work = Path(a.work or tempfile.mkdtemp(prefix="bench-tune-"))
    state = work / "state"
    arms = ["asha", "grid"] if a.order == "asha-first" else ["grid", "asha"]
    results = {}
    for name in arms:
        cfg = _cfg(work / f"{name}-run", state, a.task, a.epochs, "asha" if name == "asha" else "fifo", a.lrs,
                   a.ranks, a.sets)
        results[name] = arm(name, cfg, a.backbone, a.tasks_dir, work)
        log.info("%s: %s", name, {k: v for k, v in results[name].items() if k != "trials_detail"})
    g, s = results["grid"], results["asha"]
    summary = {
        "points": g["trials"], "epochs": a.epochs, "task": a.task,
        "test_gap_points": round(100 * (g["selected_test_macro_f1"] - s["selected_test_macro_f1"]), 2),
        "cpu_ratio": round(s["cpu_seconds"] / g["cpu_seconds"], 3) if g["cpu_seconds"] else None,
        "epochs_ratio": round(s["epochs_trained"] / g["epochs_trained"], 3) if g["epochs_trained"] else None,
        "goal_met": (100 * (g["selected_test_macro_f1"] - s["selected_test_macro_f1"]) <= 1.0
                     and g["cpu_seconds"] > 0 and s["cpu_seconds"] <= 0.5 * g["cpu_seconds"]),
    }
    record = {"when": datetime.now(timezone.utc).isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
              "args": vars(a), "summary": summary, "arms": results}
    out = REPO / "benchmarks" / "results" / f"tune-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"\n| arm | trials | epochs trained | CPU-s | reserved CPU-s | wall s | selected (val) | test macro-F1 | "
          f"best test over trials |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in (g, s):
        print(f"| {r['arm']} ({r['scheduler']}) | {r['trials']} | {r['epochs_trained']} | {r['cpu_seconds']:.0f} | "
              f"{r['reserved_cpu_seconds']:.0f} | "
              f"{r['wall_s']:.0f} | {r['selected']} ({r['selected_val']:.3f}) | {r['selected_test_macro_f1']:.3f} | "
              f"{r['oracle_test_macro_f1'] if r['oracle_test_macro_f1'] is None else round(r['oracle_test_macro_f1'], 3)} |")
    print(f"\nASHA vs grid: test gap {summary['test_gap_points']} points, CPU-seconds ratio {summary['cpu_ratio']}, "
          f"goal (<= 1 point, <= 50%) {'met' if summary['goal_met'] else 'NOT met'}; {out}")


if __name__ == "__main__":
    main()
