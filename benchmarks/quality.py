"""Modules against the classical baselines, per task, on the same test splits in one run.

    python benchmarks/quality.py [--recipe recipes/quality.yaml] [--set KEY=VALUE ...] [--out DIR]

Runs the recipe's DAG up to the backbone, the ``baseline`` step (majority; TF-IDF + logistic regression) and the
``transfer`` step (every ``transfer.methods`` through the adapt stage, whole train split) through the executor, so
everything is the pipeline's own code and every step is reused when already built. Writes
``<out>/quality-<UTC>.json``: ``{"recipe", "sets", "rows": [{"task", "method", "macro_f1", "accuracy",
"trainable_pct", "train_seconds"}], "tasks": {task: {best module, baseline, ratio, ...}}}`` and prints, per task,
the best module (module kinds and the linear probe; full fine-tuning is the reference beside it), the TF-IDF
baseline and their ratio, and whether a module at <= 1% of the backbone's parameters is within 1 point of the best
method (full fine-tuning included).
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

BASELINES = ("majority", "tfidf_lr")
NOT_MODULES = ("full", *BASELINES)
SMALL_PCT, WITHIN_POINTS = 1.0, 1.0


def rows_of(transfer_rows: list[dict], baselines: dict) -> list[dict]:
    """One row per (task, method): the transfer step's modules at the whole train split, then the baselines."""
    rows = []
    for r in transfer_rows:
        if r.get("train_fraction") not in (1.0, None) or r.get("method") in ("router", *BASELINES) or \
                "external" in str(r.get("method")):
            continue
        rows.append({"task": r["task"], "method": r["method"], "macro_f1": r.get("test_macro_f1"),
                     "accuracy": r.get("test_accuracy"), "trainable_pct": r.get("trainable_pct"),
                     "train_seconds": r.get("train_seconds"), **({"error": r["error"]} if r.get("error") else {})})
    for task, b in sorted(baselines.items()):
        for name in BASELINES:
            if isinstance(b, dict) and isinstance(b.get(name), dict):
                rows.append({"task": task, "method": name, "macro_f1": b[name]["test_macro_f1"],
                             "accuracy": b[name]["test_accuracy"], "trainable_pct": None,
                             "train_seconds": b[name].get("train_seconds")})
    return rows


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per task: the best module, the TF-IDF baseline, their ratio, full fine-tuning, the small-module check."""
    out: dict[str, dict] = {}
    for task in sorted({r["task"] for r in rows}):
        ok = [r for r in rows if r["task"] == task and r.get("macro_f1") is not None]
        modules = [r for r in ok if r["method"] not in NOT_MODULES]
        best = max(modules, key=lambda r: r["macro_f1"], default=None)
        base = next((r for r in ok if r["method"] == "tfidf_lr"), None)
        full = next((r for r in ok if r["method"] == "full"), None)
        top = max((r for r in ok if r["method"] not in BASELINES), key=lambda r: r["macro_f1"], default=None)
        small = [r for r in modules if r.get("trainable_pct") is not None and r["trainable_pct"] <= SMALL_PCT]
        best_small = max(small, key=lambda r: r["macro_f1"], default=None)
        out[task] = {
            "best_module": best and {"method": best["method"], "macro_f1": best["macro_f1"]},
            "tfidf_lr": base and base["macro_f1"], "full": full and full["macro_f1"],
            "ratio": (best["macro_f1"] / base["macro_f1"]) if best and base and base["macro_f1"] else None,
            "best_small_module": best_small and {"method": best_small["method"], "macro_f1": best_small["macro_f1"],
                                                 "trainable_pct": best_small["trainable_pct"]},
            "small_within_1_point_of_best": (best_small is not None and top is not None
                                             and 100 * (top["macro_f1"] - best_small["macro_f1"]) <= WITHIN_POINTS),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "quality.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override, e.g. adapt.epochs=3")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder of the results JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from modpipe.config import load_config
    from modpipe.executor import run_steps

    cfg = load_config(args.recipe, ["transfer.fractions=[1.0]", "transfer.curve_methods=[]", "transfer.router=false",
                                    *args.sets])
    t0 = time.perf_counter()
    results = run_steps(cfg, ["baseline", "transfer"])
    seconds = time.perf_counter() - t0
    baselines = json.loads(Path(results["baseline"].outputs["baselines"]).read_text())
    transfer = json.loads(Path(results["transfer"].outputs["results"]).read_text())
    rows = rows_of(transfer["rows"] if isinstance(transfer, dict) else transfer, baselines)
    tasks = summarise(rows)
    result = {"recipe": os.path.relpath(args.recipe, REPO), "sets": args.sets, "rows": rows, "tasks": tasks,
              "steps": {n: {"version": r.version, "skipped": r.skipped, "seconds": r.seconds}
                        for n, r in results.items()},
              "seconds": round(seconds, 1), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"quality-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2, default=str))

    print(f"\ntest macro-F1 per task and method ({result['recipe']} {' '.join(args.sets)})")
    print(f"{'task':<14} {'method':<14} {'macro-F1':>9} {'accuracy':>9} {'trainable %':>12} {'train s':>8}")
    for r in sorted(rows, key=lambda r: (r["task"], -(r.get("macro_f1") or -1))):
        if r.get("error"):
            print(f"{r['task']:<14} {r['method']:<14} failed: {str(r['error'])[:80]}")
            continue
        pct = "" if r.get("trainable_pct") is None else f"{r['trainable_pct']:.3f}"
        secs = "" if r.get("train_seconds") is None else f"{r['train_seconds']:.1f}"
        print(f"{r['task']:<14} {r['method']:<14} {r['macro_f1']:>9.4f} {r['accuracy']:>9.4f} {pct:>12} {secs:>8}")
    print(f"\n{'task':<14} {'best module':<26} {'TF-IDF + LR':>11} {'ratio':>6}  small module within 1 pt of best")
    for task, s in tasks.items():
        best = f"{s['best_module']['method']} {s['best_module']['macro_f1']:.4f}" if s["best_module"] else "none"
        ratio = "" if s["ratio"] is None else f"{s['ratio']:.2f}"
        base = "" if s["tfidf_lr"] is None else f"{s['tfidf_lr']:.4f}"
        print(f"{task:<14} {best:<26} {base:>11} {ratio:>6}  {'yes' if s['small_within_1_point_of_best'] else 'no'}")
    print(f"results: {path}  ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
