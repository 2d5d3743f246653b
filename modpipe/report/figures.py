"""The run report's figures, drawn with matplotlib (Agg) from ``facts.collect``'s sections; each returns PNG bytes.

One look per figure: colours mean the same thing everywhere (``COLORS``), widths fit the report's 1180 px column
at ``DPI``.
"""

from __future__ import annotations

import io
from typing import Any

DPI = 110
WIDTH = 10.4  # inches: 1144 px at DPI, inside the page's column at 1280 px
COLORS = {"ran": "#4c78a8", "reused": "#b0b0b0", "failed": "#d62728", "not run": "#e8e8e8",
          "kept": "#4c78a8", "removed": "#e45756", "train": "#4c78a8", "heldout": "#f58518", "tps": "#54a24b",
          "ideal": "#999999"}
METHOD_COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.titlesize": 11, "axes.titleweight": "bold", "figure.dpi": DPI})
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    _plt().close(fig)
    return buf.getvalue()


def timeline(rows: list[dict[str, Any]]) -> bytes:
    """Gantt of the run: one bar per step from its start (s after the run's start) for its seconds, coloured by
    what happened; reused and not-run steps are labelled at the left."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH, 0.3 * len(rows) + 0.75))
    total = max([(r["start"] or 0) + (r["seconds"] or 0) for r in rows] + [1.0])
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        if r["state"] in ("ran", "failed") and r["seconds"] is not None:
            start = r["start"] or 0.0
            ax.barh(y, max(r["seconds"], total * 0.004), left=start, color=COLORS[r["state"]], height=0.7)
            label = f"{r['seconds']:.1f} s" + (" — failed" if r["state"] == "failed" else "")
            ax.text(start + r["seconds"] + total * 0.01, y, label, va="center", fontsize=9)
        else:
            text = "reused" + (f" (built by run {r['built_by']})" if r.get("built_by") else "") \
                if r["state"] == "reused" else "not run"
            ax.barh(y, total * 0.004, left=0, color=COLORS[r["state"]], height=0.62)
            ax.text(total * 0.01, y, text, va="center", fontsize=9, color="#555555")
    ax.set_yticks(range(len(rows)), [r["step"] for r in reversed(rows)])
    ax.set_xlim(0, total * 1.12)
    ax.set_xlabel("seconds since the run started")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[s]) for s in ("ran", "reused", "failed")]
    ax.legend(handles, ["ran", "reused (already built)", "failed"], loc="lower left", bbox_to_anchor=(0, 1.0),
              ncol=3, fontsize=8, frameon=False)
    return _png(fig)


def funnel(f: dict[str, Any]) -> bytes:
    """Docs per curate step: kept (blue) and removed (red) out of what came in, the removed count and its
    largest reasons beside each bar."""
    plt = _plt()
    steps = f["steps"]
    fig, ax = plt.subplots(figsize=(WIDTH, 0.34 * len(steps) + 0.9))
    top = max([s["in"] or 0 for s in steps] + [1])
    for i, s in enumerate(steps):
        y = len(steps) - 1 - i
        ax.barh(y, s["out"] or 0, color=COLORS["kept"], height=0.66)
        ax.barh(y, s["removed"] or 0, left=s["out"] or 0, color=COLORS["removed"], height=0.66)
        if s["removed"]:
            why = ", ".join(f"{r} {n:,}" for r, n in s["reasons"]) or "no reason recorded"
            ax.text((s["in"] or 0) + top * 0.01, y, f"−{s['removed']:,}  ({why})", va="center", fontsize=9)
        ax.text(top * 0.005, y, f"{s['out']:,}", va="center", fontsize=8, color="white")
    ax.set_yticks(range(len(steps)), [s["step"] for s in reversed(steps)])
    ax.set_xlim(0, top * 1.45)
    ax.set_xlabel("documents")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[k]) for k in ("kept", "removed")]
    ax.legend(handles, ["kept", "removed by this step"], loc="lower right", fontsize=8, frameon=False)
    return _png(fig)


def _dots(points: list) -> str | None:
    return "." if len(points) < 30 else None  # a short curve shows its points


def pretrain(p: dict[str, Any]) -> bytes:
    """Loss per step (train; held-out when recorded, else why not) and throughput per step (MFU beside it on GPU)."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(WIDTH, 3.0))
    if p["train_curve"]:
        a.plot(*zip(*p["train_curve"]), color=COLORS["train"], label="train", marker=_dots(p["train_curve"]))
    if p["heldout_curve"]:
        a.plot(*zip(*p["heldout_curve"]), color=COLORS["heldout"], label="held-out", marker="o")
    a.set_title("loss")
    a.set_xlabel("step")
    a.xaxis.set_major_locator(MaxNLocator(integer=True))
    if p["heldout_curve"]:
        title = f"held-out: {p['heldout_shard']}" if p.get("heldout_shard") else None
    else:
        title = "held-out: none (one shard)" if p.get("heldout_note") and not p.get("heldout_shard") else \
            "held-out: not computed"
    a.legend(frameon=False, fontsize=8, title=title, title_fontsize=7)
    if p["tokens_per_s_curve"]:
        b.plot(*zip(*p["tokens_per_s_curve"]), color=COLORS["tps"], marker=_dots(p["tokens_per_s_curve"]))
    mfu = p.get("mfu_curve") or []
    if mfu:  # GPU runs only
        m = b.twinx()
        m.plot(*zip(*[(st, 100 * v) for st, v in mfu]), color="#888888", linestyle="--", marker=_dots(mfu))
        m.set_ylabel("MFU %", fontsize=8)
        m.set_ylim(bottom=0)
    b.set_title("tokens/s" + (" (dashed: MFU)" if mfu else ""))
    b.set_xlabel("step")
    b.xaxis.set_major_locator(MaxNLocator(integer=True))
    b.set_ylim(bottom=0)
    fig.tight_layout()
    return _png(fig)


def module_scores(rows: list[dict[str, Any]]) -> bytes:
    """Test macro-F1 and accuracy per task's module, with the classical baseline and full fine-tuning marked
    where a transfer result has them."""
    plt = _plt()
    rows = [r for r in rows if not r.get("failed") and r.get("test_macro_f1") is not None]
    fig, ax = plt.subplots(figsize=(WIDTH, 0.55 * len(rows) + 1.0))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        ax.barh(y + 0.17, r["test_macro_f1"], height=0.32, color=COLORS["train"], label="macro-F1" if i == 0 else None)
        ax.barh(y - 0.17, r["test_accuracy"], height=0.32, color="#9ecae9", label="accuracy" if i == 0 else None)
        ax.text(r["test_macro_f1"] + 0.01, y + 0.17, f"{r['test_macro_f1']:.3f}", va="center", fontsize=8)
        ax.text(r["test_accuracy"] + 0.01, y - 0.17, f"{r['test_accuracy']:.3f}", va="center", fontsize=8)
        marks = (("baseline", "test_macro_f1", "D", "#333333", "classical baseline (macro-F1)"),
                 ("baseline", "majority_macro_f1", "x", "#888888", "majority class (macro-F1)"),
                 ("full", "test_macro_f1", "|", COLORS["heldout"], "full fine-tuning (macro-F1)"))
        for key, field, marker, color, name in marks:
            value = (r.get(key) or {}).get(field)
            if value is not None:
                first = not any((rr.get(key) or {}).get(field) is not None for rr in rows[:i])
                ax.plot(value, y + 0.17, marker=marker, color=color, markersize=9, mew=2, linestyle="none",
                        label=name if first else None)
    ax.set_yticks(range(len(rows)), [f"{r['task']}\n{r.get('method') or ''} ({r['from']})" for r in reversed(rows)])
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("test split")
    ax.legend(frameon=False, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=5)
    return _png(fig)


def module_detail(r: dict[str, Any]) -> bytes:
    """A module's reliability diagram (accuracy vs confidence per bin, bar width = bin, count as shade) and its
    confusion matrix (rows: true label, normalised per row)."""
    import numpy as np

    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(WIDTH * 0.8, 3.3), gridspec_kw={"width_ratios": [1, 1.1]})
    bins = r.get("reliability") or []
    a.plot([0, 1], [0, 1], color=COLORS["ideal"], linestyle="--", linewidth=1, label="perfectly calibrated")
    if bins:
        n = max(x["count"] for x in bins)
        for x in bins:
            a.bar(x["lo"], x["accuracy"], width=x["hi"] - x["lo"], align="edge", color=COLORS["train"],
                  alpha=0.35 + 0.65 * x["count"] / n, edgecolor="white")
        a.plot([x["confidence"] for x in bins], [x["accuracy"] for x in bins], "o", color=COLORS["heldout"],
               markersize=4, label="mean confidence")
    else:
        a.text(0.5, 0.5, "not computed (no test predictions)", ha="center", fontsize=9)
    ece = r.get("test_ece")
    a.set_title("reliability" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    a.set_xlabel("confidence (top-class probability)")
    a.set_ylabel("accuracy")
    a.set_xlim(0, 1)
    a.set_ylim(0, 1)
    a.legend(frameon=False, fontsize=8, loc="upper left")
    cm = r.get("confusion")
    if cm:
        m = np.asarray(cm, dtype=float)
        norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        b.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        labels = r.get("labels") or [str(i) for i in range(len(m))]
        k = len(labels)
        fs = 8 if k <= 12 else 6
        b.set_xticks(range(k), labels, rotation=90 if k > 8 else 0, fontsize=fs)
        b.set_yticks(range(k), labels, fontsize=fs)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if m[i, j]:
                        b.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                               color="white" if norm[i, j] > 0.5 else "black")
        b.set_xlabel("predicted")
        b.set_ylabel("true")
        for side in ("top", "right"):
            b.spines[side].set_visible(True)
    else:
        b.text(0.5, 0.5, "not computed", ha="center")
        b.axis("off")
    b.set_title(f"confusion matrix (test, n={r.get('n_test') or '?'})")
    fig.tight_layout()
    return _png(fig)


def tune(t: dict[str, Any]) -> bytes:
    """Each trial's best validation metric against the compute it used (seconds when recorded, else epochs
    run; ASHA stops weak trials early), coloured by method; the chosen trial starred."""
    plt = _plt()
    trials = [x for x in t["trials"] if x.get("metric") is not None]
    use_s = all(x.get("seconds") for x in trials) and trials
    key = "seconds" if use_s else "epochs_run"
    methods = sorted({x["method"] for x in trials})
    fig, ax = plt.subplots(figsize=(WIDTH * 0.62, 3.3))
    for i, m in enumerate(methods):
        pts = [x for x in trials if x["method"] == m]
        ax.scatter([x[key] or 0 for x in pts], [x["metric"] for x in pts], color=METHOD_COLORS[i % 8], label=m,
                   s=36, alpha=0.85, zorder=3)
    for x in trials:
        if x["chosen"]:
            ax.scatter([x[key] or 0], [x["metric"]], marker="*", s=260, facecolor="none", edgecolor="black",
                       linewidth=1.2, zorder=4, label="chosen")
            lr = f"lr {x['lr']:.2g}" if x.get("lr") is not None else ""
            ax.annotate(f"{lr}, r {x.get('r')}", (x[key] or 0, x["metric"]), xytext=(12, 0),
                        textcoords="offset points", fontsize=8, va="center")
    ax.set_xlabel("seconds trained" if use_s else "epochs run (compute)")
    ax.set_ylabel(t.get("metric") or "metric")
    ax.set_title(f"tune trials{' on ' + t['task'] if t.get('task') else ''}")
    if not use_s:
        top = max([x["epochs_run"] or 0 for x in trials] + [1])
        ax.set_xlim(0, top + 0.5)
        ax.set_xticks(range(0, int(top) + 1))
    ax.legend(frameon=False, fontsize=8, title="method", title_fontsize=8)
    return _png(fig)


def grad_flow(g: dict[str, Any], title: str = "gradient flow") -> bytes:
    """A module's gradient-flow profile (``facts`` ``grad_flow``: ``gradflow.by_block``): the gradient norm per
    block (log scale) against the optimizer step, one line per block (layers light to dark, bottom to top; the
    head in black, embeddings and prompt in their own colours). A gap: the block had no gradient at that step
    (progressive unfreezing had not opened it yet); a block the freeze policy kept frozen has no line."""
    import math

    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    steps = g["steps"]
    lines = g["lines"]
    layers = [label for label, _ in lines if label.startswith("layer")]
    ramp = colormaps["viridis"]
    fixed = {"head": "#222222", "embeddings": "#9d755d", "prompt": COLORS["heldout"], "norm": "#b279a2",
             "other": "#999999"}
    fig, ax = plt.subplots(figsize=(WIDTH * 0.62, 2.9))
    drawn = 0
    for label, values in lines:
        ys = [v if v is not None and v > 0 and math.isfinite(v) else float("nan") for v in values]
        if all(math.isnan(y) for y in ys):
            continue
        if label in layers:
            color = ramp(0.85 - 0.75 * (layers.index(label) / max(1, len(layers) - 1)))
        else:
            color = fixed.get(label, "#999999")
        ax.plot(steps, ys, color=color, label=label, linewidth=1.4, marker=_dots(steps), markersize=3)
        drawn += 1
    if drawn:
        ax.set_yscale("log")
        ax.legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        ax.text(0.5, 0.5, "no gradient recorded", ha="center", va="center", transform=ax.transAxes, fontsize=9)
    every = f", every {g['every']} steps" if g.get("every") else ""
    policy = f" (freeze: {g['freeze_policy']})" if g.get("freeze_policy") else ""
    ax.set_title(f"{title}{policy}")
    ax.set_xlabel(f"optimizer step{every}")
    ax.set_ylabel("gradient L2 norm")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _png(fig)
