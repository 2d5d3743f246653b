"""Module methods next to full fine-tuning, per task, in one run: the metric, the gap in points, trainable %.

    python benchmarks/transfer.py --backbone DIR --tasks-dir DIR [--run-dir runs/bench-transfer]
        [--methods lora ia3 prefix bottleneck linear_probe full] [--fractions 1.0] [--curve-methods ...]
        [--set adapt.epochs=3 ...]

Everything trains through ``modpipe.evaluate.transfer.evaluate`` (the adapt stage: one Ray Train trainer per task,
all tasks of a method at once), so every method gets the same data, epochs, learning rate, seed and selection
rule (best validation epoch).  The literature's bar (Houlsby et al. 2019: adapters within 0.4 points of full
fine-tuning with 3.6% of the parameters) is checked as "within 1 point with <= 1% of the backbone's parameters".
Results: ``benchmarks/results/transfer-<UTC time>.json`` (rows + the transfer report's paths) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BAR_POINTS, BAR_PCT = 1.0, 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--tasks-dir", required=True)
    ap.add_argument("--run-dir", default="runs/bench-transfer")
    ap.add_argument("--tasks", nargs="*", default=["man_section", "man_language", "py_package"])
    ap.add_argument("--methods", nargs="*", default=["lora", "ia3", "prefix", "bottleneck", "linear_probe", "full"])
    ap.add_argument("--fractions", nargs="*", type=float, default=[1.0])
    ap.add_argument("--curve-methods", nargs="*", default=[])
    ap.add_argument("--no-router", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override, e.g. adapt.epochs=3")
    args = ap.parse_args()
    args.backbone, args.tasks_dir = str(Path(args.backbone).resolve()), str(Path(args.tasks_dir).resolve())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from modpipe.config import load_config
    from modpipe.evaluate import transfer

    cfg = load_config(None, [f"run_dir={args.run_dir}", f"adapt.tasks={json.dumps(args.tasks)}",
                             f"transfer.tasks={json.dumps(args.tasks)}", f"transfer.methods={json.dumps(args.methods)}",
                             f"transfer.fractions={json.dumps(args.fractions)}",
                             f"transfer.curve_methods={json.dumps(args.curve_methods)}",
                             f"transfer.router={str(not args.no_router).lower()}", *args.sets])
    t0 = time.perf_counter()
    out = transfer.evaluate(cfg, args.backbone, args.tasks_dir,
                            Path(args.run_dir) / "transfer" / f"bench-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
    seconds = time.perf_counter() - t0
    metric = cfg.transfer.metric
    rows = [r for r in out["rows"] if r.get("train_fraction") in (1.0, None)]
    for r in rows:
        r["meets_bar"] = (r.get("gap_to_full") is not None and r["gap_to_full"] >= -BAR_POINTS
                          and r.get("trainable_pct") is not None and r["trainable_pct"] <= BAR_PCT)
    merge = merge_lora_modules(cfg, args.backbone, args.tasks_dir, out["rows"])
    result = {"metric": metric, "bar": {"points": BAR_POINTS, "trainable_pct": BAR_PCT}, "rows": out["rows"],
              "merge": merge,
              "report": out["report"], "curve": out["curve"], "results": out["results"], "seconds": round(seconds, 1),
              "sets": args.sets, "backbone": args.backbone,
              "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"transfer-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2, default=str).replace(str(REPO) + "/", ""))  # repo-relative paths

    print(f"\n{metric} on each task's test split; gap = method - full fine-tuning (points); bar: within "
          f"{BAR_POINTS:g} point with <= {BAR_PCT:g}% trainable")
    print(f"{'task':<14} {'method':<22} {metric:>14} {'gap':>7} {'trainable %':>12} {'train s':>8}  bar")
    for r in sorted(rows, key=lambda r: (r["task"], r["method"] != "full", -(r.get(metric) or -1))):
        if r.get("error"):
            print(f"{r['task']:<14} {r['method']:<22} failed: {r['error'][:80]}")
            continue
        gap = "" if r.get("gap_to_full") is None else f"{r['gap_to_full']:+.1f}"
        pct = "" if r.get("trainable_pct") is None else f"{r['trainable_pct']:.3f}"
        secs = "" if r.get("train_seconds") is None else f"{r['train_seconds']:.0f}"
        bar = "" if r["method"] == "full" or r.get("train_fraction") is None else ("yes" if r["meets_bar"] else "no")
        print(f"{r['task']:<14} {r['method']:<22} {r[metric]:>14.4f} {gap:>7} {pct:>12} {secs:>8}  {bar}")
    if merge:
        print(f"\nmerged LoRA (weights {merge['weights']}) vs each task's own module, {metric} on its test split")
        for task, m in merge["tasks"].items():
            print(f"{task:<14} own {m['own_' + metric]:.4f}  merged {m['merged_' + metric]:.4f}  "
                  f"({m['delta_macro_f1']:+.1f} points macro-F1)")
    print(f"report: {out['report']}\nresults: {path}  ({seconds:.0f} s)")


def merge_lora_modules(cfg, backbone: str, tasks_dir: str, rows: list[dict]) -> dict | None:
    """The LoRA modules (100% data) merged with equal weights; each task through the merge with its own head."""
    from modpipe.compose import MultiModuleModel
    from modpipe.compose.merge import evaluate_merge

    lora = {r["task"]: r["module"] for r in rows
            if r["method"] == "lora" and r.get("train_fraction") == 1.0 and r.get("module")}
    if len(lora) < 2:
        return None
    model = MultiModuleModel.load(backbone, lora)
    weights = [round(1.0 / len(lora), 4)] * len(lora)
    model.merge("merged", sorted(lora), weights)
    return {"sources": sorted(lora), "weights": weights,
            "tasks": evaluate_merge(model, "merged", tasks_dir, cfg.adapt.max_length, cfg.adapt.batch_size)}


if __name__ == "__main__":
    main()
