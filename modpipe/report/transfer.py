"""The transfer report: per task x method table (metric, gap to full fine-tuning, trainable %, cost), routing and
external baselines, and the sample-efficiency curve (PNG, matplotlib Agg) in one HTML page beside results.json."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from modpipe.report import _fmt, _table

CURVE_FILE = "curve.png"
REPORT_FILE = "report.html"
TABLE_COLUMNS = ("task", "method", "train_fraction", "metric", "vs_tfidf", "gap_to_full", "test_accuracy",
                 "test_auroc_ovr", "test_ece", "test_max_slice_gap", "trainable_pct", "trainable_params",
                 "train_seconds", "peak_memory_mb", "latency_ms_per_batch", "n_train", "error")
SHIFT_COLUMNS = ("task", "perplexity", "perplexity_ratio", "js_divergence", "best_module", "best_vs_tfidf")


def table_rows(results: dict[str, Any], fraction: float | None = 1.0) -> list[dict[str, Any]]:
    """Rows of the main table (one train fraction; ``None`` = every row), headline metric as ``metric``."""
    metric = results["metric"]
    out = []
    for r in results["rows"]:
        if fraction is not None and r.get("train_fraction") not in (fraction, None):
            continue
        row = {**r, "metric": r.get(metric)}
        if row.get("below_baseline"):
            row["vs_tfidf"] = f"{row['vs_tfidf']:+.2f} (below)"
        out.append({c: row.get(c) for c in TABLE_COLUMNS if c != "error" or row.get("error")})
    return sorted(out, key=lambda r: (r["task"], r["method"] != "full", -(r.get("metric") or -1.0)))


def shift_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task: the backbone's perplexity on the task vs the pretraining reference, JS divergence of the token
    distributions, and the task's best module (whole train split) with its gap to TF-IDF + LR in points."""
    metric, out = results["metric"], []
    for task, s in sorted((results.get("shift") or {}).items()):
        mods = [r for r in results["rows"] if r["task"] == task and r.get("train_fraction") == 1.0
                and r.get(metric) is not None and r["method"] not in ("majority", "tfidf_lr")]
        best = max(mods, key=lambda r: r[metric], default=None)
        out.append({"task": task, **{k: s.get(k) for k in SHIFT_COLUMNS[1:4]},
                    "best_module": best["method"] if best else None,
                    "best_vs_tfidf": best.get("vs_tfidf") if best else None})
    return out


def draw_grad_flow(results: dict[str, Any], out: Path) -> list[tuple[str, str, str]]:
    """``grad-<task>-<method>.png`` per module trained on the whole train split whose metrics.json holds a
    gradient-flow profile (``adapt.grad_profile_every``); -> [(task, method, file name)]."""
    import json

    from modpipe.adapt.gradflow import by_block
    from modpipe.report.figures import grad_flow

    drawn = []
    for r in sorted(results["rows"], key=lambda r: (r["task"], r["method"])):
        metrics = Path(r["module"]) / "metrics.json" if r.get("module") and r.get("train_fraction") == 1.0 else None
        if metrics is None or not metrics.is_file():
            continue
        g = by_block(json.loads(metrics.read_text()).get("grad_profile"))
        if g is None:
            continue
        name = f"grad-{r['task']}-{r['method']}.png"
        (out / name).write_bytes(grad_flow(g, f"{r['task']}: {r['method']}"))
        drawn.append((r["task"], r["method"], name))
    return drawn


def curve_points(results: dict[str, Any]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """task -> method -> [(fraction, metric)] for methods measured at two or more fractions."""
    metric = results["metric"]
    pts: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in results["rows"]:
        if r.get(metric) is None or r.get("train_fraction") is None or r["method"] == "router":
            continue
        pts.setdefault(r["task"], {}).setdefault(r["method"], []).append((r["train_fraction"], r[metric]))
    return {t: {m: sorted(v) for m, v in ms.items() if len(v) > 1} for t, ms in pts.items()}


def draw_curve(results: dict[str, Any], path: str | Path) -> str | None:
    """One panel per task: metric vs train fraction (log x), one line per method; None when nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    pts = {t: ms for t, ms in curve_points(results).items() if ms}
    if not pts:
        return None
    fig, axes = plt.subplots(1, len(pts), figsize=(4.5 * len(pts), 3.6), squeeze=False)
    for ax, (task, methods) in zip(axes[0], sorted(pts.items())):
        for method, xy in sorted(methods.items()):
            ax.plot([x * 100 for x, _ in xy], [y for _, y in xy], marker="o", label=method)
        baseline = (results.get("baselines") or {}).get(task) or {}
        if results["metric"] in baseline:
            ax.axhline(baseline[results["metric"]], color="grey", linestyle="--",
                       label=baseline.get("method", "baseline"))
        ax.set_xscale("log")
        ticks = sorted({x * 100 for xy in methods.values() for x, _ in xy})
        ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("% of the train split")
        ax.set_ylabel(results["metric"])
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = ("task", "method", "metric", "gap_to_full",
                                                                           "trainable_pct", "train_seconds")) -> str:
    """The table as Markdown (README, Prefect markdown artifact)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_transfer_report(results: dict[str, Any], out_dir: str | Path) -> str:
    """``report.html`` (+ ``curve.png``) in ``out_dir``; returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curve = draw_curve(results, out / CURVE_FILE)
    metric = results["metric"]
    sections = [f"<p>Headline metric: <b>{html.escape(metric)}</b> on each task's test split; vs_tfidf and "
                f"gap_to_full in points (100 x difference) against the classical TF-IDF + logistic regression "
                f"baseline (the baseline step, same test split; '(below)' marks a module that loses to it) and "
                f"against full fine-tuning at the same train fraction; test_max_slice_gap: the largest macro-F1 "
                f"gap between test slices; trainable % of the backbone's parameters.</p>",
                _table(table_rows(results, 1.0), "Task x method (whole train split)"),
                _table(shift_rows(results), "Domain shift (the shift step) beside each task's best module")]
    if curve:
        sections.append(f"<h2>Sample efficiency</h2><img src='{CURVE_FILE}' alt='sample-efficiency curve'>")
    grads = draw_grad_flow(results, out)
    if grads:
        sections.append("<h2>Gradient flow (whole train split)</h2><p>Gradient norm per block against the optimizer "
                        "step (log scale), from each module's metrics.json: which layers learn under the module "
                        "kind and freeze policy.</p>" + "".join(
                            f"<figure style='display:inline-block'><img src='{html.escape(f)}' width='360' "
                            f"alt='gradient flow {html.escape(t)} {html.escape(m)}'><figcaption>{html.escape(t)}: "
                            f"{html.escape(m)}</figcaption></figure>" for t, m, f in grads))
    curve_rows = [r for r in table_rows(results, None) if r["method"] in results.get("curve_methods", [])]
    sections.append(_table(sorted(curve_rows, key=lambda r: (r["task"], r["method"], r["train_fraction"] or 0)),
                           "Sample efficiency (every fraction)"))
    routing = [{"task": t, "router_" + metric: c["router"].get(metric), "fresh_lora_" + metric: c["fresh"].get(metric),
                "delta_points": round(100 * c["delta_macro_f1"], 2) if metric == "test_macro_f1" else None,
                "sources": ", ".join(c["router"].get("sources", [])),
                "mean_attention": c["router"].get("mean_attention"),
                "router_trainable_params": c["router"].get("trainable_params")}
               if "router" in c else {"task": t, "error": c.get("error")}
               for t, c in sorted((results.get("routing") or {}).items())]
    sections.append(_table(routing, "Routing: learned router over the other tasks' modules vs a fresh LoRA module"))
    base_rows = [{"task": t, **{k: v for k, v in b.items() if not isinstance(v, (dict, list))},
                  "shared_codes": b.get("shared_codes")} for t, b in (results.get("baselines") or {}).items()]
    sections.append(_table(base_rows, "External baselines"))
    page = ("<!doctype html><meta charset='utf-8'><title>modpipe transfer</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}</style><h1>modpipe transfer</h1>"
            + "".join(sections))
    path = out / REPORT_FILE
    path.write_text(page)
    return str(path)
