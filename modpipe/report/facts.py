"""What a run report shows, as plain data: read from the run summary and the files its steps wrote.

``collect(summary, run_dir)`` returns one dict with a key per section (``headline``, ``failure``, ``timeline``,
``funnel``, ``contracts``, ``pretrain``, ``modules``, ``tune``, ``registry``); a section whose data the run did
not produce is ``None`` (the page says "not computed"). The HTML page (``page.py``), the figures
(``figures.py``), the end of ``modpipe run`` and the Prefect artifacts all draw from this one dict, so they
cannot disagree. Paths are relative to the run dir (``rel``); nothing here writes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

MODULE_METRICS = ("test_accuracy", "test_macro_f1", "test_auroc_ovr", "test_ece", "test_max_slice_gap",
                  "test_micro_f1", "test_map", "test_rmse", "test_mae", "test_spearman")
TOP_REASONS = 3
BOOTSTRAP = 200
"""Paired resamples of the test rows for the module-vs-baseline interval (sklearn's F1 costs ~2 ms each on 2
cores: 1000 would add seconds per task to the end of every run)."""


def read_json(path: str | Path | None) -> Any:
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class RunPaths:
    """Paths as a person reads them: relative to the run dir when inside it."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).resolve()

    def rel(self, path: str | Path | None) -> str | None:
        if not path:
            return None
        p = Path(path)
        p = p if p.is_absolute() else self.run_dir / p
        try:
            return os.path.relpath(p.resolve(), self.run_dir) if p.resolve().is_relative_to(self.run_dir) else str(p)
        except (OSError, ValueError):
            return str(p)

    def scrub(self, text: str | None) -> str | None:
        """An error message with the run dir's absolute prefix taken out of its paths."""
        return None if text is None else text.replace(f"{self.run_dir}{os.sep}", "").replace(str(self.run_dir), ".")


def _failed_record(run_dir: Path, step: str, run_id: str) -> dict[str, Any] | None:
    """This run's failed attempt of ``step`` (``<step>-<version>.failed-<run_id>[-n]/status.json``), else None."""
    recs = [r for d in (run_dir / step).glob(f"{step}-*.failed-{run_id}*") if (r := read_json(d / "status.json"))]
    return max(recs, key=lambda r: r.get("finished", 0)) if recs else None


def _step_records(summary: dict[str, Any], run_dir: Path) -> dict[str, dict[str, Any]]:
    """status.json of each step the run reached (a failed step: its failed record of this run)."""
    out = {}
    for name, s in (summary.get("steps") or {}).items():
        rec = read_json(Path(s["dir"]) / "status.json") if s.get("dir") else None
        if rec is None and s.get("state") == "failed":
            rec = _failed_record(run_dir, name, summary.get("run_id", ""))
        out[name] = rec or {}
    return out


def _planned(summary: dict[str, Any]) -> list[str]:
    try:
        from modpipe.steps import plan

        return [s.name for s in plan(summary.get("targets") or [])]
    except Exception:  # noqa: BLE001 - an unknown target: show what the summary has
        return list(summary.get("steps") or {})


# ---------------------------------------------------------------------------------------------------- sections


def timeline(summary: dict[str, Any], records: dict[str, dict], paths: RunPaths) -> list[dict[str, Any]]:
    """One row per planned step: ran / reused / failed / not run, this run's seconds, when it started (s after
    the run's start; None when reused or not run) and, for a reused step, the run that built it."""
    t0 = summary.get("started") or 0.0
    rows = []
    for name in _planned(summary):
        s = (summary.get("steps") or {}).get(name)
        rec = records.get(name) or {}
        if s is None:
            rows.append({"step": name, "state": "not run", "seconds": None, "start": None, "version": None,
                         "built_by": None, "dir": None})
            continue
        state = "reused" if s.get("skipped") else "failed" if s.get("state") == "failed" else "ran"
        seconds = 0.0 if state == "reused" else s.get("seconds") if s.get("seconds") is not None else rec.get("seconds")
        start = rec.get("started") if state != "reused" else None
        rows.append({"step": name, "state": state, "seconds": seconds,
                     "start": None if start is None else max(0.0, start - t0),
                     "version": s.get("version") or rec.get("version"),
                     "built_by": rec.get("run_id") if state == "reused" else None,
                     "built_seconds": rec.get("seconds"),
                     "dir": paths.rel(s.get("dir") or rec.get("record_dir"))})
    return rows


def funnel(curate: dict[str, Any] | None, paths: RunPaths) -> dict[str, Any] | None:
    """Docs in/out per curate step (stats.json ``steps`` with a docs unit), the largest removal reasons, tokens
    packed, the quarantine by step and reason, the task splits."""
    stats = read_json((curate or {}).get("stats"))
    if not isinstance(stats, dict) or not isinstance(stats.get("steps"), list):
        return None
    steps, token_steps = [], []
    for st in stats["steps"]:
        reasons = sorted(((r, n) for r, n in (st.get("removed_by_reason") or {}).items() if n), key=lambda x: -x[1])
        row = {"step": st.get("name"), "in": st.get("in"), "out": st.get("out"), "removed": st.get("removed"),
               "unit": st.get("unit", "docs"), "reasons": reasons[:TOP_REASONS],
               "other_reasons": sum(n for _, n in reasons[TOP_REASONS:])}
        (token_steps if row["unit"] != "docs" else steps).append(row)
    quarantine = _quarantine((curate or {}).get("quarantine"))
    tasks = [{"task": t, "labels": len(v.get("labels") or []), "train": v.get("train"), "val": v.get("val"),
              "test": v.get("test"), "dropped": {k: n for k, n in (v.get("dropped") or {}).items() if n}}
             for t, v in sorted((stats.get("tasks") or {}).items())]
    manifest = read_json((curate or {}).get("manifest")) or {}
    return {"steps": steps, "token_steps": token_steps,
            "docs_in": steps[0]["in"] if steps else None, "docs_out": steps[-1]["out"] if steps else None,
            "tokens": manifest.get("total_tokens"), "rows": manifest.get("total_rows"),
            "shards": stats.get("shards"), "quarantine": quarantine, "tasks": tasks,
            "stats_file": paths.rel(curate.get("stats")), "quarantine_file": paths.rel(curate.get("quarantine"))}


def _quarantine(path: str | None) -> dict[str, Any] | None:
    """Rows of quarantine.jsonl counted by (step, reason), largest first; the file is read line by line."""
    if not path or not Path(path).is_file():
        return None
    counts: Counter = Counter()
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                rec = {"step": "?", "reason": "unreadable line"}
            counts[(rec.get("step") or "?", rec.get("reason") or "?")] += 1
    return {"total": sum(counts.values()),
            "by_reason": [{"step": s, "reason": r, "rows": n} for (s, r), n in counts.most_common()]}


def contracts(summary: dict[str, Any], records: dict[str, dict], paths: RunPaths) -> dict[str, Any] | None:
    """Per dataset: asset, suite, rows, expectations passed of evaluated, failed ones with severity and a line
    each, its Data Docs page; from the contracts step's results.json (a failed attempt's too)."""
    out = summary.get("contracts") or {}
    step_dir = (records.get("contracts") or {}).get("record_dir")
    results_path = out.get("results") or (Path(step_dir) / "results.json" if step_dir else None)
    record = read_json(results_path)
    if not isinstance(record, dict):
        return None
    from modpipe.contracts import describe
    from modpipe.contracts.gx import _safe, asset_name, validation_pages  # _safe: pages named before asset_name
    from modpipe.contracts.suites import STOPS

    base = Path(results_path).parent
    index = base / record.get("data_docs", "")
    pages = {}
    if index.is_file():
        for p in validation_pages(index.parent):
            if p["run_name"] in (record.get("run_id"), "__none__"):
                pages.setdefault(p["asset"], index.parent / p["page"])
    datasets = []
    for d in record.get("datasets", []):
        exps = d.get("expectations") or []
        failed = [{"severity": "error" if f.get("severity") == STOPS else f.get("severity"),
                   "expectation": f.get("type"), "column": f.get("column"), "detail": describe(f)}
                  for f in d.get("errors", []) + d.get("warnings", [])]
        asset = asset_name(d["data"])
        datasets.append({"data": d["data"], "asset": asset, "suite": d["suite"], "success": d.get("success"),
                         "rows": d.get("rows_validated"), "rows_total": d.get("rows_total"),
                         "passed": sum(bool(e.get("success")) for e in exps), "evaluated": len(exps),
                         "errors": len(d.get("errors", [])), "warnings": len(d.get("warnings", [])),
                         "failed": failed, "page": paths.rel(pages.get(asset) or pages.get(_safe(d["data"]))),
                         "notes": d.get("notes") or []})
    structural = [{"severity": "error", "data": e.get("data"), "detail": paths.scrub(e.get("exception"))}
                  for e in record.get("structural_errors", [])]
    return {"success": record.get("success"), "counts": record.get("counts") or {}, "datasets": datasets,
            "structural": structural, "data_docs": paths.rel(index) if index.is_file() else None,
            "results": paths.rel(results_path), "run_id": record.get("run_id"), "seconds": record.get("seconds")}


def pretrain(out: dict[str, Any] | None) -> dict[str, Any] | None:
    m = read_json((out or {}).get("metrics"))
    if not isinstance(m, dict):
        return None
    curve = [c for c in m.get("loss_curve") or [] if isinstance(c, dict) and c.get("loss") is not None]
    held = [c for c in m.get("loss_curve") or [] if isinstance(c, dict) and c.get("val_loss") is not None]
    held += [c for c in m.get("val_curve") or m.get("eval_curve") or [] if isinstance(c, dict)]
    return {"train_curve": [(c.get("step"), c["loss"]) for c in curve],
            "heldout_curve": [(c.get("step"), c.get("val_loss", c.get("loss"))) for c in held],
            "tokens_per_s_curve": [(c.get("step"), c["tokens_per_s"]) for c in curve if c.get("tokens_per_s")],
            "ms_per_step_curve": [(c.get("step"), c["ms_per_step"]) for c in curve if c.get("ms_per_step")],
            "mfu_curve": [(c.get("step"), c["mfu"]) for c in curve if c.get("mfu") is not None],
            "heldout_shard": (m.get("heldout") or {}).get("path"),
            **{k: m.get(k) for k in ("initial_loss", "final_loss", "steps", "tokens_seen", "tokens_per_s",
                                     "ms_per_step", "mfu", "params", "world_size", "zero_stage", "device",
                                     "seq_len", "vocab_size", "final_heldout_loss", "final_heldout_ppl",
                                     "heldout_note")},
            "fingerprint": (out or {}).get("fingerprint") or m.get("backbone_fingerprint")}


def modules(summary: dict[str, Any], paths: RunPaths, pretrain_version: str | None) -> list[dict[str, Any]] | None:
    """Per task, the module publish takes (tune's best trial where tuned, else adapt's): test metrics,
    trainable %, calibration bins and the confusion matrix from its test predictions; beside it the classical
    baseline (the baseline step's TF-IDF + LR, with a paired bootstrap of the macro-F1 difference on the same
    test rows; else an external baseline of a transfer result on the same backbone) and full fine-tuning (a
    transfer result on the same backbone)."""
    adapt = summary.get("adapt") or {}
    tuned = (summary.get("tune") or {}).get("modules") or {}
    chosen = {t: ("adapt", d) for t, d in (adapt.get("modules") or {}).items()}
    chosen.update({t: ("tune", d) for t, d in tuned.items()})
    failed = adapt.get("failed") or {}
    if not chosen and not failed:
        return None
    transfer = _transfer_rows(paths.run_dir, pretrain_version)
    rows = []
    for task in sorted(set(chosen) | set(failed)):
        if task not in chosen:
            rows.append({"task": task, "failed": paths.scrub(str(failed[task]))})
            continue
        origin, mdir = chosen[task]
        m = read_json(Path(mdir) / "metrics.json") or {}
        manifest = read_json(Path(mdir) / "module.json") or {}
        labels = list(manifest.get("labels") or [])
        row = {"task": task, "from": origin, "dir": paths.rel(mdir), "problem": manifest.get("problem") or
               "classification", "method": m.get("method") or manifest.get("method"),
               **{k: m.get(k) for k in MODULE_METRICS}, "trainable_pct": m.get("trainable_pct"),
               "train_seconds": m.get("train_seconds"), "n_test": m.get("n_test"), "labels": labels,
               "confusion": m.get("test_confusion"),
               "reliability": _reliability(Path(mdir) / "test_predictions.parquet"),
               "grad_flow": _grad_flow(m), "baseline": None, "full": None}
        for r in transfer.get(task, []):
            if r.get("method") == "full" and r.get("train_fraction") in (1.0, None):
                row["full"] = {k: r.get(k) for k in ("test_accuracy", "test_macro_f1", "trainable_pct")}
            elif "external" in str(r.get("method")):
                row["baseline"] = {"name": r["method"], **{k: r.get(k) for k in ("test_accuracy", "test_macro_f1")}}
        gated = {r.get("task"): r.get("baseline") for r in (summary.get("publish") or {}).get("decisions") or []}
        row["baseline"] = _baseline(summary.get("baseline"), task, Path(mdir), gated.get(task)) or row["baseline"]
        rows.append(row)
    return rows


def _baseline(out: dict[str, Any] | None, task: str, module_dir: Path,
              gated: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The baseline step's TF-IDF + LR (ridge for regression) on ``task`` (majority beside it) and module minus
    baseline on the gate's metric (when the gate made no comparison: the problem's default, macro-F1 or Spearman),
    with its 95% paired-bootstrap interval over the test rows both predicted: the publish gate's own comparison
    (``gated``, the numbers that decided the alias) where it made one, else ``baseline.compare``."""
    b = (read_json((out or {}).get("baselines")) or {}).get(task) or {}
    lr = b.get("tfidf_lr")
    if not lr:
        return None
    from modpipe.evaluate.problems import get

    try:
        own = f"test_{get(b.get('problem')).gate_metric}"
    except ValueError:
        own = "test_macro_f1"
    metric = (gated or {}).get("metric") or own  # no gate comparison: the problem's default rule's metric
    row = {"name": "TF-IDF + ridge" if b.get("problem") == "regression" else "TF-IDF + LR", "metric": metric,
           "value": lr.get(metric), "test_accuracy": lr.get("test_accuracy"), "test_macro_f1": lr.get("test_macro_f1"),
           "majority_macro_f1": (b.get("majority") or {}).get("test_macro_f1"), "delta": None}
    if gated and gated.get("name") == "tfidf_lr" and "high" in gated:
        row["delta"] = {k: gated[k] for k in ("delta", "low", "high", "rows", "resamples")} | {"source": "publish gate"}
        return row
    preds = Path(((out or {}).get("tasks") or {}).get(task, "")) / str(lr.get("predictions", ""))
    if preds.is_file() and (module_dir / "test_predictions.parquet").is_file():
        try:
            from modpipe.baseline import compare

            row["delta"] = {**compare(module_dir / "test_predictions.parquet", preds, n=BOOTSTRAP, metric=metric),
                            "resamples": BOOTSTRAP}
        except Exception:  # noqa: BLE001 - no comparison is "not computed", not a broken report
            pass
    return row


def _grad_flow(m: dict[str, Any]) -> dict[str, Any] | None:
    """The module's gradient-flow profile (metrics.json ``grad_profile``) as the report draws it: one line per
    block (``gradflow.by_block``), with the freeze policy it trained under; None when it was not recorded."""
    try:
        from modpipe.adapt.gradflow import by_block

        lines = by_block(m.get("grad_profile"))
    except Exception:  # noqa: BLE001 - a malformed profile is "not computed", not a broken report
        return None
    return {**lines, "freeze_policy": m.get("freeze_policy")} if lines else None


def _transfer_rows(run_dir: Path, pretrain_version: str | None) -> dict[str, list[dict]]:
    """Rows of the newest transfer step dir built on this run's backbone (same pretrain version), by task."""
    if not pretrain_version:
        return {}
    best, best_t = None, -1.0
    for d in (run_dir / "transfer").glob("transfer-*"):
        rec = read_json(d / "status.json") or {}
        if rec.get("state") == "succeeded" and ((rec.get("upstream") or {}).get("pretrain") or {}).get(
                "version") == pretrain_version and rec.get("finished", 0) > best_t:
            best, best_t = d, rec.get("finished", 0)
    by_task: dict[str, list[dict]] = {}
    for r in (read_json(best / "results.json") or {}).get("rows", []) if best else []:
        by_task.setdefault(r.get("task"), []).append(r)
    return by_task


def _reliability(path: Path, bins: int = 10) -> list[dict[str, float]] | None:
    """Reliability diagram data from test predictions: per confidence bin (top-class probability), the mean
    confidence, the accuracy and the count (empty bins left out)."""
    if not path.is_file():
        return None
    try:
        import numpy as np
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["label_id", "pred_id", "probs"]).to_pydict()
    except Exception:  # noqa: BLE001 - an unreadable file: not computed
        return None
    if not t["probs"]:
        return None
    conf = np.array([max(p) for p in t["probs"]], dtype=float)
    correct = np.array(t["label_id"]) == np.array(t["pred_id"])
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "confidence": float(conf[sel].mean()),
                        "accuracy": float(correct[sel].mean()), "count": int(sel.sum())})
    return out


def tune(out: dict[str, Any] | None) -> dict[str, Any] | None:
    trials = read_json((out or {}).get("trials"))
    if not isinstance(trials, list):
        return None
    best = read_json((out or {}).get("best_config")) or {}
    method = best.get("method") or "?"
    rows = [{"trial": t.get("trial_id"), "method": t.get("method") or method, "lr": t.get("lr"), "r": t.get("r"),
             "epochs_run": t.get("epochs_run"), "seconds": t.get("seconds") or t.get("time_total_s"),
             "metric": t.get("best_metric"), "error": t.get("error"),
             "chosen": t.get("trial_id") == best.get("trial_id")} for t in trials]
    return {"trials": rows, "task": best.get("task"), "metric": best.get("metric"), "best": best,
            "epochs": best.get("epochs"), "stopped_early": best.get("stopped_early")}


def registry(out: dict[str, Any] | None, paths: RunPaths, record: dict[str, Any] | None = None) -> dict | None:
    """Registered versions (promoted: took the champion alias; else challenger, with the decision's reason),
    candidates the gate refused and why; the alias names from the publish step's recorded config."""
    if not out:
        return None
    cands = out.get("candidates") or {}
    pcfg = ((record or {}).get("config") or {}).get("publish") or {}
    champion = pcfg.get("alias") or "champion"
    registered = [{"task": r["task"], "name": r.get("name"), "version": r.get("version"), "alias": r.get("alias"),
                   "new": r.get("new"), "from": (cands.get(r["task"]) or {}).get("from"),
                   "metric": r.get("metric") or {}, "promoted": r.get("alias") == champion,
                   "moved": (r.get("decision") or {}).get("moved", True),
                   "reason": paths.scrub((r.get("decision") or {}).get("reason"))}
                  for r in out.get("registered", [])]
    rejected = [{"task": r["task"], "reason": paths.scrub(r.get("reason")),
                 "from": (cands.get(r["task"]) or {}).get("from")} for r in out.get("rejected", [])]
    uri = str(out.get("tracking_uri") or "")
    if uri.startswith("sqlite:///"):
        uri = f"{paths.rel(uri.removeprefix('sqlite://'))} (sqlite)"
    return {"registered": registered, "rejected": rejected, "tracking_uri": uri or None, "champion_alias": champion,
            "record": paths.rel(out.get("record"))}


def shift(out: dict[str, Any] | None, modules: list[dict[str, Any]] | None, paths: RunPaths) -> dict | None:
    """The shift step's ``shift.json``: the reference (which shard, held out of pretraining or not, its
    perplexity) and per task the backbone's perplexity on the task's text, the ratio to the reference and the
    unigram JS divergence; beside each task the module's gain over the classical baseline in macro-F1 points (the
    ``modules`` rows' ``baseline.delta``: the publish gate's comparison where it made one), None where none."""
    data = read_json((out or {}).get("shift"))
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        return None
    by_task = {m["task"]: m for m in modules or [] if not m.get("failed")}
    rows = []
    for task, t in sorted(data["tasks"].items()):
        base = (by_task.get(task) or {}).get("baseline") or {}
        d = base.get("delta") or {}
        gain = None
        if d.get("delta") is not None:
            gain = {"points": 100 * d["delta"], "low": 100 * d["low"] if d.get("low") is not None else None,
                    "high": 100 * d["high"] if d.get("high") is not None else None, "source": d.get("source")}
        elif base.get("test_macro_f1") is not None and by_task.get(task, {}).get("test_macro_f1") is not None:
            gain = {"points": 100 * (by_task[task]["test_macro_f1"] - base["test_macro_f1"]), "low": None,
                    "high": None, "source": None}
        rows.append({"task": task, "error": t.get("error"),
                     **{k: t.get(k) for k in ("perplexity", "perplexity_ratio", "js_divergence", "n_texts",
                                              "n_tokens")}, "gain": gain})
    ref = data.get("reference") or {}
    return {"reference": {k: ref.get(k) for k in ("shard", "held_out", "n_rows", "n_tokens", "perplexity")},
            "split": data.get("split"), "seq_len": data.get("seq_len"), "rows": rows,
            "file": paths.rel(out.get("shift"))}


# ---------------------------------------------------------------------------------------------------- headline


def _config_fingerprint(records: dict[str, dict]) -> str | None:
    """sha256 (12 hex) over the versioned config sections every step of the run read (status.json ``config``)."""
    from modpipe.lineage import fingerprint

    sections: dict[str, Any] = {}
    for rec in records.values():
        sections.update(rec.get("config") or {})
    return fingerprint(dict(sorted(sections.items()))) if sections else None


def headline(summary: dict[str, Any], records: dict[str, dict], paths: RunPaths, facts: dict[str, Any]) -> dict:
    from modpipe.lineage import git_commit, library_versions

    import time

    reg = facts.get("registry") or {}
    # the commit and libraries the run's own steps recorded (a report rendered later still names the run's)
    own = [r for r in records.values() if r.get("run_id") == summary.get("run_id") and r.get("libraries")]
    return {
        "outcome": summary.get("outcome"), "run_id": summary.get("run_id"), "run_dir": str(paths.run_dir),
        "targets": summary.get("targets") or [],
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(summary["started"]))
        if summary.get("started") else None,
        "seconds": summary.get("seconds"), "config_fingerprint": _config_fingerprint(records),
        "git_commit": own[0].get("git_commit") if own else git_commit(),
        "versions": own[0]["libraries"] if own else library_versions(),
        "promoted": [f"{r['name']} v{r['version']}" + (f" ({r['alias']})" if r.get("alias") else "")
                     for r in reg.get("registered", []) if r["promoted"]],
        "challengers": [f"{r['name']} v{r['version']}" + (f" ({r['alias']})" if r.get("alias") else "")
                        for r in reg.get("registered", []) if not r["promoted"]],
        "rejected": len(reg.get("rejected", [])),
    }


def failure(summary: dict[str, Any], records: dict[str, dict], paths: RunPaths) -> dict[str, Any] | None:
    """What failed and why: the step, the error (paths relative), its failed record and traceback."""
    if summary.get("outcome") != "failed":
        return None
    step = summary.get("failed_step")
    rec = records.get(step) or {} if step else {}
    tb = rec.get("traceback") or ""
    return {"step": step, "error": paths.scrub(summary.get("error")),
            "record": paths.rel(rec.get("record_dir")), "traceback": paths.scrub(tb[-6000:]) if tb else None}


def metrics_line(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline numbers, label and value: what the report's tiles, ``modpipe run``'s last screen and the
    Prefect markdown artifact show."""
    out: list[tuple[str, str]] = []
    f = facts.get("funnel")
    if f and f.get("docs_in") is not None:
        tok = f" · {_num(f['tokens'])} tokens" if f.get("tokens") else ""
        out.append(("curated docs", f"{_num(f['docs_in'])} → {_num(f['docs_out'])}{tok}"))
    c = facts.get("contracts")
    if c:
        n = c["counts"]
        out.append(("data contracts", " · ".join(_plural(n.get(k + "s", 0), k) for k in ("dataset", "error", "warning"))))
    p = facts.get("pretrain")
    if p and p.get("final_loss") is not None:
        tps = f" · {_num(p['tokens_per_s'])} tokens/s" if p.get("tokens_per_s") else ""
        out.append(("pretrain loss", f"{p['initial_loss']:.3g} → {p['final_loss']:.3g}{tps}"))
    for m in facts.get("modules") or []:
        if m.get("failed"):
            out.append((m["task"], "failed"))
        elif m.get("problem") == "regression" and m.get("test_rmse") is not None:
            base = m.get("baseline") or {}
            vs = f" (baseline {base['value']:.3f})" if base.get("metric") == "test_rmse" and base.get("value") \
                is not None else ""
            rho = f" · Spearman {m['test_spearman']:.3f}" if m.get("test_spearman") is not None else ""
            out.append((m["task"], f"RMSE {m['test_rmse']:.3f}{vs}{rho} · {m['trainable_pct']:.2g}% trainable"))
        elif m.get("test_macro_f1") is not None:
            base = m.get("baseline") or {}
            vs = f" (baseline {base['test_macro_f1']:.3f})" if base.get("test_macro_f1") is not None else ""
            out.append((m["task"], f"macro-F1 {m['test_macro_f1']:.3f}{vs} · acc {m['test_accuracy']:.3f} · "
                                   f"{m['trainable_pct']:.2g}% trainable"))
    t = facts.get("tune")
    if t:
        best = next((r for r in t["trials"] if r["chosen"]), None)
        if best and best.get("metric") is not None:
            out.append(("tune", f"{_plural(len(t['trials']), 'trial')} · best {t.get('metric')} {best['metric']:.3f}"))
    return out


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _num(v: Any) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
    return f"{int(v):,}" if isinstance(v, (int, float)) else str(v)


def collect(summary: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Every section's data (None: not computed by this run)."""
    paths = RunPaths(run_dir)
    records = _step_records(summary, paths.run_dir)
    facts: dict[str, Any] = {
        "timeline": timeline(summary, records, paths),
        "funnel": funnel(summary.get("curate"), paths),
        "contracts": contracts(summary, records, paths),
        "pretrain": pretrain(summary.get("pretrain")),
        "modules": modules(summary, paths, ((summary.get("steps") or {}).get("pretrain") or {}).get("version")),
        "tune": tune(summary.get("tune")),
        "registry": registry(summary.get("publish"), paths, records.get("publish")),
    }
    facts["shift"] = shift(summary.get("shift"), facts["modules"], paths)
    facts["failure"] = failure(summary, records, paths)
    facts["headline"] = headline(summary, records, paths, facts)
    facts["metrics"] = metrics_line(facts)
    return facts
