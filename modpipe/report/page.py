"""The run report as one self-contained HTML page: headline, what failed (first, when something did), then one
collapsible section per stage with its figure (PNG embedded as a data: URI) and its table.

Links point at files of the run dir by their path relative to it; the page is written as
``<run_dir>/runs/<run_id>.html`` and copied to ``<run_dir>/report.html``. The copy in the run dir resolves them
as they are; the one in ``runs/`` prefixes ``../`` with a few lines of script (nothing else is scripted, nothing
is loaded from elsewhere).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Callable

from modpipe.report import figures

NOT_COMPUTED = "not computed"
ERROR_LINES = 12
"""Lines of a failed run's error shown at once; the rest is one click away."""

CSS = """
:root{--ok:#1a7f37;--bad:#c62828;--warn:#9a6700;--muted:#5f6b7a;--line:#e3e6ea}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;
  background:#f4f5f7;color:#1d2330}
main{max-width:1200px;margin:0 auto;padding:18px 24px 48px}
a{color:#0b5cad}
.head{background:#fff;border:1px solid var(--line);border-left:8px solid var(--ok);border-radius:8px;
  padding:14px 18px;margin-bottom:12px}
.head.failed{border-left-color:var(--bad)}
.head h1{font-size:22px;margin:0 0 8px}
.badge{display:inline-block;padding:1px 10px;border-radius:12px;color:#fff;background:var(--ok);font-size:15px;
  vertical-align:2px}
.failed .badge{background:var(--bad)}
.facts{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:4px 18px;margin:0}
.facts div{min-width:0;overflow-wrap:anywhere}
.facts dt{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.facts dd{margin:0;font-size:14px}
.versions{font-size:12px;color:var(--muted);margin-top:8px;overflow-wrap:anywhere}
.promoted{margin-top:8px}
.why{background:#fff5f5;border:1px solid #f0b4b4;border-radius:8px;padding:12px 18px;margin-bottom:12px}
.why h2{margin:0 0 6px;font-size:18px;color:var(--bad)}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#fbfbfc;border:1px solid var(--line);padding:8px 10px;
  border-radius:6px;font-size:12.5px;margin:6px 0}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:8px;margin-bottom:12px}
.tile{background:#fff;border:1px solid var(--line);border-radius:8px;padding:7px 12px;min-width:0}
.tile b{display:block;font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
details{background:#fff;border:1px solid var(--line);border-radius:8px;margin:8px 0}
summary{padding:9px 14px;cursor:pointer;font-weight:600;font-size:16px}
summary .sub{font-weight:400;color:var(--muted);font-size:14px;margin-left:8px}
summary .sub.bad{color:var(--bad)}
.body{padding:2px 16px 14px;min-width:0}
.scroll{overflow-x:auto;max-width:100%;margin:6px 0}
table{border-collapse:collapse;font-size:13px}
th,td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap;vertical-align:top}
th{font-weight:600;background:#f7f8fa}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{white-space:normal;min-width:320px;max-width:640px;overflow-wrap:anywhere}
img{display:block;max-width:100%;height:auto;margin:6px 0}
.nc{color:var(--muted);font-style:italic}
.ok{color:var(--ok)} .bad{color:var(--bad)} .warn{color:var(--warn)}
h3{font-size:14px;margin:12px 0 2px}
p.note{color:var(--muted);font-size:13px;margin:4px 0}
"""

FIX_LINKS = """<script>
(function(){ // this copy lives in <run_dir>/runs/: links are relative to the run dir
  if (!location.pathname.endsWith("/runs/" + %s + ".html")) return;
  document.querySelectorAll("a[data-rel]").forEach(function(a){ a.setAttribute("href", "../" + a.dataset.rel); });
})();
</script>"""

esc = html.escape


# ----------------------------------------------------------------------------------------------------- pieces


def _link(rel: str | None, text: str | None = None) -> str:
    if not rel:
        return f"<span class=nc>{NOT_COMPUTED}</span>"
    if Path(rel).is_absolute():
        return f"<a href='{esc(Path(rel).as_uri())}'>{esc(text or rel)}</a>"
    return f"<a data-rel='{esc(rel)}' href='{esc(rel)}'>{esc(text or rel)}</a>"


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{esc(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _figure(draw: Callable[[], bytes], alt: str) -> str:
    """A figure, or a line saying why it is missing (a plot must never take the report down)."""
    try:
        return _img(draw(), alt)
    except Exception as err:  # noqa: BLE001
        return f"<p class=nc>figure not drawn: {esc(type(err).__name__)}: {esc(str(err))[:200]}</p>"


def _fmt(v: Any) -> str:
    """Numbers as a table shows them: 3 decimals below 10, 1 up to 1000, thousands separated above, tiny values
    in e-notation."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        a = abs(v)
        return (f"{v:,.0f}" if a >= 1000 else f"{v:.1f}" if a >= 10 else f"{v:.3f}" if a >= 0.01 or a == 0
                else f"{v:.2e}")
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _table(cols: list[tuple[str, str]], rows: list[dict[str, Any]], raw: tuple[str, ...] = (),
           wrap: tuple[str, ...] = ()) -> str:
    """``cols``: (key, header). Numbers right-aligned; ``raw`` keys hold HTML already; ``wrap`` keys wrap."""
    if not rows:
        return "<p class=nc>none</p>"
    head = "".join(f"<th>{esc(h)}</th>" for _, h in cols)
    body = []
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            cls = " class=n" if number else " class=wrap" if k in wrap else ""
            cells.append(f"<td{cls}>{v if k in raw else esc(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class=scroll><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _section(sid: str, title: str, sub: str, body: str, *, open_: bool = False, bad: bool = False) -> str:
    return (f"<details id='{sid}'{' open' if open_ else ''}><summary>{esc(title)}"
            f"<span class='sub{' bad' if bad else ''}'>{sub}</span></summary><div class=body>{body}</div></details>")


def _not_computed(facts: dict[str, Any], step: str) -> str:
    """Why a section has no data: the step was not part of the run, did not run because an earlier one failed,
    or recorded none."""
    row = next((r for r in facts["timeline"] if r["step"] == step), None)
    failed = (facts.get("failure") or {}).get("step")
    if row is None:
        return f"{NOT_COMPUTED}: {step} is not among this run's steps"
    if row["state"] == "not run":
        return f"{NOT_COMPUTED}: " + (f"the run stopped at {failed} before {step}" if failed else f"{step} did not run")
    if row["state"] == "failed":
        return f"{NOT_COMPUTED}: {step} failed (see above)"
    return f"{NOT_COMPUTED}: {step} recorded no such data"


def _missing(sid: str, title: str, facts: dict[str, Any], step: str) -> str:
    """A section the run has no data for: it stays, and says why."""
    why = _not_computed(facts, step)
    return _section(sid, title, esc(why), f"<p class=nc>{esc(why)}</p>")


# ---------------------------------------------------------------------------------------------------- sections


def _headline(facts: dict[str, Any]) -> str:
    h = facts["headline"]
    ok = h["outcome"] == "succeeded"
    promoted = ", ".join(esc(p) for p in h["promoted"]) or "nothing"
    items = [("run id", h["run_id"]), ("started", h["started"]), ("total time", f"{h['seconds'] or 0:.1f} s"),
             ("config fingerprint", h["config_fingerprint"] or "–"), ("git commit", (h["git_commit"] or "–")[:12]),
             ("steps", " · ".join(f"{sum(r['state'] == s for r in facts['timeline'])} {s}"
                                  for s in ("ran", "reused", "failed", "not run")
                                  if any(r["state"] == s for r in facts["timeline"]))),
             ("run dir", h["run_dir"]), ("promoted", f"{len(h['promoted'])} module(s)")]
    dl = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(str(v))}</dd></div>" for k, v in items)
    versions = " · ".join(f"{k} {v}" for k, v in h["versions"].items())
    rejected = "".join(f" · {n} {what} (see Registry)" for n, what in (
        (len(h.get("challengers") or []), "stay challenger"), (h.get("rejected"), "refused by the gate")) if n)
    return (f"<header class='head{'' if ok else ' failed'}'><h1>modpipe run "
            f"<span class=badge>{esc(h['outcome'])}</span></h1><dl class=facts>{dl}</dl><div class=promoted><b>Promoted:</b> {promoted}{esc(rejected)}</div>"
            f"<div class=versions>{esc(versions)}</div></header>")


def _failure(facts: dict[str, Any]) -> str:
    f = facts.get("failure")
    if not f:
        return ""
    c = facts.get("contracts")
    extra = ""
    if f["step"] == "contracts" and c:
        rows = [{"data": d["asset"], "suite": d["suite"], "severity": x["severity"], "detail": x["detail"]}
                for d in c["datasets"] for x in d["failed"] if x["severity"] != "warning"]
        rows += [{"data": s["data"], "suite": "contracts", "severity": "error", "detail": s["detail"]}
                 for s in c["structural"]]
        extra = ("<h3>Failed expectations</h3>" + _table([("data", "data asset"), ("suite", "suite"),
                                                            ("severity", "severity"), ("detail", "expectation")],
                                                           rows, wrap=("detail",))
                 + f"<p class=note>Data Docs: {_link(c['data_docs'], 'index of this run’s validations')}</p>")
    tb = f"<details><summary>traceback</summary><pre>{esc(f['traceback'])}</pre></details>" \
        if f.get("traceback") else ""
    lines = (f["error"] or "").splitlines()
    message = f"<pre>{esc(chr(10).join(lines[:ERROR_LINES]))}</pre>"
    if len(lines) > ERROR_LINES:  # e.g. Ray's OOM report: the first lines say what happened, the rest on demand
        message += (f"<details><summary>the whole message ({len(lines)} lines)</summary>"
                    f"<pre>{esc(f['error'])}</pre></details>")
    return (f"<section class=why><h2>What failed: {esc(f['step'] or 'the run')}</h2>{message}"
            f"{extra}<p class=note>Failed attempt kept in {_link(f['record'])}; fix the cause, then rerun with "
            f"<code>--force</code>.</p>{tb}</section>")


def _tiles(facts: dict[str, Any]) -> str:
    if not facts["metrics"]:
        return ""
    return "<div class=tiles>" + "".join(f"<div class=tile><b>{esc(k)}</b>{esc(v)}</div>"
                                         for k, v in facts["metrics"]) + "</div>"


def _timeline(facts: dict[str, Any]) -> str:
    rows = facts["timeline"]
    n = {s: sum(r["state"] == s for r in rows) for s in ("ran", "reused", "failed", "not run")}
    sub = " · ".join(f"{v} {k}" for k, v in n.items() if v) + f" · {facts['headline']['seconds'] or 0:.1f} s in all"
    sub += f" · failed at {facts['failure']['step']}" if facts.get("failure") else ""
    table_rows = [{**r, "dir": _link(r["dir"]) if r["dir"] else "", "built": (f"run {r['built_by']} ({_fmt(r['built_seconds'])} s)"
                                                          if r.get("built_by") else "")} for r in rows]
    cols = [("step", "step"), ("state", "state"), ("seconds", "seconds"), ("version", "version")]
    cols += [("built", "reused from")] if n["reused"] else []
    body = _figure(lambda: figures.timeline(rows), "stage timeline") + _table(cols + [("dir", "step dir")],
                                                                              table_rows, raw=("dir",))
    return _section("timeline", "Stage timeline", esc(sub), body, open_=True, bad=bool(n["failed"]))


def _funnel(facts: dict[str, Any]) -> str:
    f = facts["funnel"]
    if not f:
        return _missing("curation", "Curation funnel", facts, "curate")
    biggest = max(f["steps"], key=lambda s: s["removed"] or 0, default=None)
    q = f.get("quarantine") or {}
    sub = f"{_fmt(f['docs_in'])} → {_fmt(f['docs_out'])} docs"
    if biggest and biggest["removed"]:
        sub += f" · largest removal: {biggest['step']} −{_fmt(biggest['removed'])}"
    sub += f" · {_fmt(q.get('total'))} rows quarantined" if q else ""
    steps = [{"step": s["step"], "in": s["in"], "out": s["out"], "removed": s["removed"],
              "reasons": ", ".join(f"{r} {n:,}" for r, n in s["reasons"])
                         + (f", other {s['other_reasons']:,}" if s["other_reasons"] else "")} for s in f["steps"]]
    steps += [{"step": s["step"], "in": s["in"], "out": s["out"], "removed": s["removed"],
               "reasons": f"({s['unit']})"} for s in f["token_steps"]]
    body = _figure(lambda: figures.funnel(f), "curation funnel")
    body += _table([("step", "step"), ("in", "in"), ("out", "out"), ("removed", "removed"),
                    ("reasons", "largest reasons")], steps)
    body += (f"<p class=note>{_fmt(f['tokens'])} tokens in {_fmt(f['rows'])} rows, {_fmt(f['shards'])} shard(s). "
             f"Per-step counts: {_link(f['stats_file'])}</p>")
    body += "<h3>Quarantine</h3>"
    if q:
        body += _table([("step", "step"), ("reason", "reason"), ("rows", "rows")], q["by_reason"][:12])
        more = len(q["by_reason"]) - 12
        body += (f"<p class=note>{_fmt(q['total'])} rows{f' ({more} more step/reason pairs)' if more > 0 else ''}, "
                 f"each with file, line and detail: {_link(f['quarantine_file'])}</p>")
    else:
        body += f"<p class=nc>{NOT_COMPUTED}: no quarantine file</p>"
    body += "<h3>Task splits</h3>" + _table(
        [("task", "task"), ("labels", "labels"), ("train", "train"), ("val", "val"), ("test", "test"),
         ("dropped", "dropped")], [{**t, "dropped": ", ".join(f"{k} {v:,}" for k, v in t["dropped"].items())}
                                   for t in f["tasks"]])
    return _section("curation", "Curation funnel", esc(sub), body)


def _contracts(facts: dict[str, Any]) -> str:
    c = facts["contracts"]
    if not c:
        return _missing("contracts", "Data contracts", facts, "contracts")
    n = c["counts"]
    passed = sum(d["passed"] for d in c["datasets"])
    total = sum(d["evaluated"] for d in c["datasets"])
    sub = (f"{_plural(n.get('datasets', 0), 'dataset')} · {passed}/{total} expectations passed · "
           f"{_plural(n.get('errors', 0), 'error')} · {_plural(n.get('warnings', 0), 'warning')}")
    rows = [{"asset": _link(d["page"], d["asset"]) if d["page"] else esc(d["asset"]), "suite": d["suite"],
             "result": ("<span class=ok>passed</span>" if d["success"] else "<span class=bad>failed</span>")
             + (f" <span class=warn>({d['warnings']} warning{'s' if d['warnings'] > 1 else ''})</span>"
                if d["warnings"] else ""),
             "expectations": f"{d['passed']}/{d['evaluated']}",
             "rows": d["rows"], "rows_total": d["rows_total"]} for d in c["datasets"]]
    body = _table([("asset", "data asset (Data Docs page)"), ("suite", "suite"), ("result", "result"),
                   ("expectations", "passed"), ("rows", "rows checked"), ("rows_total", "rows")], rows,
                  raw=("asset", "result"))
    failed = [{"asset": d["asset"], "severity": x["severity"], "detail": x["detail"]}
              for d in c["datasets"] for x in d["failed"]]
    failed += [{"asset": s["data"], "severity": "error", "detail": s["detail"]} for s in c["structural"]]
    body += "<h3>Failed expectations</h3>" + (_table([("asset", "data asset"), ("severity", "severity"),
                                                      ("detail", "expectation and what was observed")], failed,
                                                     wrap=("detail",)) if failed else "<p>none</p>")
    body += (f"<p class=note>Data Docs (browsable offline): {_link(c['data_docs'], 'index')} · results: "
             f"{_link(c['results'])} · GX run name {esc(str(c['run_id']))}</p>")
    return _section("contracts", "Data contracts", esc(sub), body, open_=not c["success"], bad=not c["success"])


def _pretrain(facts: dict[str, Any]) -> str:
    p = facts["pretrain"]
    if not p:
        return _missing("pretrain", "Pretraining", facts, "pretrain")
    sub = (f"loss {_fmt(p['initial_loss'])} → {_fmt(p['final_loss'])} over {_fmt(p['steps'])} steps · "
           f"{_fmt(p['tokens_per_s'])} tokens/s")
    body = _figure(lambda: figures.pretrain(p), "pretraining loss and throughput")
    if not p["heldout_curve"]:
        body += f"<p class=note>held-out loss: {NOT_COMPUTED} (pretraining records no held-out evaluation)</p>"
    body += _table([(k, k.replace("_", " ")) for k in ("steps", "tokens_seen", "tokens_per_s", "ms_per_step",
                                                       "mfu", "params", "world_size", "zero_stage", "device",
                                                       "seq_len", "vocab_size")], [p])
    body += f"<p class=note>backbone fingerprint {esc(str(p['fingerprint'] or '–'))[:16]}</p>"
    return _section("pretrain", "Pretraining", esc(sub), body)


def _vs_baseline(r: dict[str, Any]) -> str:
    """Module minus classical baseline on the gate's metric, with its 95% paired-bootstrap interval; red when the
    module is worse beyond noise, green when better beyond noise (for RMSE/MAE, lower is better)."""
    from modpipe.evaluate.problems import higher_is_better

    base = r.get("baseline") or {}
    d = base.get("delta")
    if not d:
        return f"<span class=nc>{NOT_COMPUTED}</span>"
    worse, better = (d["high"] < 0, d["low"] > 0) if higher_is_better(base.get("metric") or "macro_f1") \
        else (d["low"] > 0, d["high"] < 0)
    cls = "bad" if worse else "ok" if better else ""
    name = (base.get("metric") or "test_macro_f1").removeprefix("test_")
    label = "" if name == "macro_f1" else f"{esc(name)} "
    return f"<span class='{cls}'>{label}{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]</span>"


def _problem_metrics(r: dict[str, Any]) -> str:
    """The metrics of a multilabel or regression module that the classification columns do not show."""
    keys = {"multilabel": (("test_micro_f1", "micro-F1"), ("test_map", "mAP")),
            "regression": (("test_rmse", "RMSE"), ("test_mae", "MAE"), ("test_spearman", "Spearman"))}
    return " · ".join(f"{name} {_fmt(r.get(k))}" for k, name in keys.get(r.get("problem") or "", ())
                      if r.get(k) is not None)


def _worse_than_baseline(r: dict[str, Any]) -> bool:
    from modpipe.evaluate.problems import higher_is_better

    base = r.get("baseline") or {}
    d = base.get("delta") or {}
    if not d:
        return False
    return d["high"] < 0 if higher_is_better(base.get("metric") or "macro_f1") else d["low"] > 0


def _modules(facts: dict[str, Any]) -> str:
    rows = facts["modules"]
    if not rows:
        return _missing("modules", "Modules per task", facts, "adapt")
    good = [r for r in rows if not r.get("failed")]
    best = max(good, key=lambda r: r.get("test_macro_f1") or 0, default=None)
    sub = _plural(len(good), "module")
    sub += f" · best macro-F1 {_fmt(best['test_macro_f1'])} ({best['task']})" if best else ""
    beaten = [r for r in good if _worse_than_baseline(r)]
    sub += f" · {len(beaten)} worse than the classical baseline" if beaten else ""
    sub += f" · {len(rows) - len(good)} failed" if len(rows) > len(good) else ""
    nc = f"<span class=nc>{NOT_COMPUTED}</span>"

    def other(r, key):
        if not r.get(key):
            return nc
        metric = r[key].get("metric") or "test_macro_f1"
        value = r[key].get("value", r[key].get("test_macro_f1"))
        return esc(_fmt(value) if metric == "test_macro_f1" else f"{metric.removeprefix('test_')} {_fmt(value)}")

    table = [{**r, "dir": _link(r.get("dir"), r["from"]) if r.get("dir") else "", "baseline": other(r, "baseline"),
              "vs": _vs_baseline(r), "full": other(r, "full"), "failed": r.get("failed") or "",
              "other_metrics": _problem_metrics(r)} for r in rows]
    cols = [("task", "task"), ("dir", "from"), ("method", "method"), ("test_accuracy", "accuracy"),
            ("test_macro_f1", "macro-F1"), ("test_auroc_ovr", "AUROC"), ("test_ece", "ECE"),
            ("test_max_slice_gap", "max slice gap"),
            ("other_metrics", "multilabel / regression metrics"),
            ("trainable_pct", "trainable %"), ("train_seconds", "train s"), ("baseline", "baseline"),
            ("vs", "Δ vs baseline (95% CI)"), ("full", "full FT")]
    cols += [("failed", "failed")] if len(good) < len(rows) else []
    if not any(t["other_metrics"] for t in table):
        cols.remove(("other_metrics", "multilabel / regression metrics"))
    body = _table(cols, table, raw=("dir", "baseline", "vs", "full"), wrap=("failed",))
    notes = []
    if not any(r.get("baseline") for r in good):
        notes.append("classical baseline: not computed (the <code>baseline</code> step did not run)")
    if not any(r.get("full") for r in good):
        notes.append("full FT: not computed for this backbone (<code>modpipe transfer</code> trains it; its result "
                     "shows here when present)")
    if any((r.get("baseline") or {}).get("delta") for r in good):
        notes.insert(0, "baseline: the classical baseline's test macro-F1 (the <code>baseline</code> step's TF-IDF "
                        "over character 2–4-grams + logistic regression); Δ: module minus baseline macro-F1 on the "
                        "same test rows, with a paired-bootstrap 95% interval (red: worse beyond noise); full FT: "
                        "full fine-tuning's macro-F1")
    body += "".join(f"<p class=note>{n}</p>" for n in notes)
    if good:
        body += _figure(lambda: figures.module_scores(rows), "test scores per task")
    for r in good:
        if r.get("problem", "classification") != "classification":
            body += (f"<h3>{esc(r['task'])}: a {esc(r['problem'])} task ({_fmt(r.get('trainable_pct'))}% of the "
                     f"backbone trainable)</h3><p class=note>calibration and confusion: classifiers only</p>")
            if r.get("grad_flow"):
                body += _figure(lambda r=r: figures.grad_flow(r["grad_flow"], f"{r['task']}: gradient flow"),
                                f"{r['task']} gradient norm per block")
            continue
        body += (f"<h3>{esc(r['task'])}: calibration and confusion ({len(r.get('labels') or [])} labels, "
                 f"{_fmt(r.get('trainable_pct'))}% of the backbone trainable)</h3>")
        body += _figure(lambda r=r: figures.module_detail(r), f"{r['task']} reliability and confusion")
        if r.get("grad_flow"):
            body += _figure(lambda r=r: figures.grad_flow(r["grad_flow"], f"{r['task']}: gradient flow"),
                            f"{r['task']} gradient norm per block")
        else:
            body += (f"<p class=nc>gradient flow: {NOT_COMPUTED} (<code>adapt.grad_profile_every</code> is 0, or "
                     f"the module was trained before it was recorded)</p>")
    if any(r.get("grad_flow") for r in good):
        body += ("<p class=note>gradient flow: the L2 norm of each block's gradient (every parameter of the block that "
                 "trains: the module's, and the backbone's where the freeze policy opens them) at the optimizer steps "
                 "recorded, log scale; a block the freeze policy keeps frozen has no line, a gap means the block had "
                 "no gradient yet (progressive unfreezing). Per module parameter group (LoRA A/B, adapters, ...): "
                 "<code>grad_profile</code> in the module's metrics.json.</p>")
    return _section("modules", "Modules per task", esc(sub), body, bad=bool(beaten))


def _tune(facts: dict[str, Any]) -> str:
    t = facts["tune"]
    if not t:
        return _missing("tune", "Tune", facts, "tune")
    chosen = next((x for x in t["trials"] if x["chosen"]), None)
    sub = f"{_plural(len(t['trials']), 'trial')} on {t.get('task') or '?'}"
    if chosen:
        sub += (f" · chosen: {chosen['method']} lr {_lr(chosen['lr'])}, r {chosen['r']} · "
                f"{t.get('metric')} {_fmt(chosen['metric'])}")
    rows = [{**x, "lr": _lr(x["lr"]), "chosen": "✓" if x["chosen"] else "", "error": x.get("error") or ""}
            for x in t["trials"]]
    body = _figure(lambda: figures.tune(t), "tune trials") if any(x.get("metric") is not None for x in t["trials"]) \
        else f"<p class=nc>{NOT_COMPUTED}: no trial reported a metric</p>"
    cols = [("trial", "trial"), ("method", "method"), ("lr", "lr"), ("r", "r"), ("epochs_run", "epochs run"),
            ("metric", t.get("metric") or "metric"), ("chosen", "chosen")]
    body += _table(cols + ([("error", "error")] if any(x["error"] for x in rows) else []), rows, wrap=("error",))
    body += (f"<p class=note>ASHA over {_fmt(t.get('epochs'))} epoch(s); {_fmt(t.get('stopped_early'))} trial(s) "
             "stopped early; the chosen trial's module is the task's candidate for publish.</p>")
    return _section("tune", "Tune", esc(sub), body)


def _lr(v: float | None) -> str:
    return "–" if v is None else f"{v:.2e}"


def _registry(facts: dict[str, Any]) -> str:
    g = facts["registry"]
    if not g:
        return _missing("registry", "Registry", facts, "publish")
    promoted = [r for r in g["registered"] if r["promoted"]]
    challengers = [r for r in g["registered"] if not r["promoted"]]
    sub = (f"{len(promoted)} promoted · {len(challengers)} challenger{'' if len(challengers) == 1 else 's'} · "
           f"{len(g['rejected'])} refused by the gate")

    def rows(rs):
        return [{**r, "move": (f"{r['alias']} → v{r['version']}" if r.get("moved", True) else
                               f"{r['alias']} already at v{r['version']}") if r.get("alias") else "",
                 "version": f"v{r['version']}" + (" (new)" if r.get("new") else " (same content as before)"),
                 "metric": ", ".join(f"{k} {_fmt(v)}" for k, v in (r.get("metric") or {}).items()),
                 "reason": r.get("reason") or ""} for r in rs]

    cols = [("task", "task"), ("name", "registered model"), ("version", "version"), ("move", "alias move"),
            ("from", "candidate from"), ("metric", "gate metric"), ("reason", "why")]
    body = f"<h3>Promoted ({esc(g['champion_alias'])})</h3>" + _table(cols, rows(promoted), wrap=("reason",))
    body += "<h3>Registered, stays challenger</h3>" + _table(cols, rows(challengers), wrap=("reason",))
    body += "<h3>Refused by the gate (not registered)</h3>" + _table(
        [("task", "task"), ("from", "candidate from"), ("reason", "why")], g["rejected"], wrap=("reason",))
    body += f"<p class=note>registry: {esc(str(g['tracking_uri']))} · record: {_link(g['record'])}</p>"
    return _section("registry", "Registry", esc(sub), body, bad=bool(g["rejected"]) and not g["registered"])


def _shift(facts: dict[str, Any]) -> str:
    s = facts.get("shift")
    if not s:
        return _missing("shift", "Domain shift", facts, "shift")
    ref = s["reference"]
    held = "held out of pretraining" if ref.get("held_out") else "not held out: pretraining trained on it"
    sub = f"reference perplexity {_fmt(ref.get('perplexity'))} ({held})"
    worse = [r for r in s["rows"] if r.get("gain") and r["gain"]["points"] < 0]
    sub += f" · {len(worse)} task(s) where the module is below the baseline" if worse else ""

    def gain(g: dict[str, Any] | None) -> str:
        if not g:
            return f"<span class=nc>{NOT_COMPUTED}</span>"
        ci = f" [{g['low']:+.1f}, {g['high']:+.1f}]" if g.get("low") is not None and g.get("high") is not None else ""
        flag = " ▼ below baseline" if g["points"] < 0 else ""
        return f"<span class='{'bad' if g['points'] < 0 else ''}'>{g['points']:+.1f}{esc(ci)}{flag}</span>"

    rows = [{**r, "reference": ref.get("perplexity"), "gain": gain(r.get("gain")), "error": r.get("error") or ""}
            for r in s["rows"]]
    cols = [("task", "task"), ("perplexity", f"perplexity ({s.get('split') or 'task'} text)"),
            ("reference", "perplexity (reference)"), ("perplexity_ratio", "ratio"),
            ("js_divergence", "unigram JS divergence"), ("gain", "module − baseline (macro-F1 points, 95% CI)"),
            ("n_texts", "texts"), ("n_tokens", "tokens scored")]
    cols += [("error", "error")] if any(r["error"] for r in rows) else []
    body = _table(cols, rows, raw=("gain",), wrap=("error",))
    body += (f"<p class=note>Perplexity: the backbone's exp(mean next-token NLL) on a seeded sample of each task's "
             f"{esc(str(s.get('split')))} texts, each cut to {_fmt(s.get('seq_len'))} tokens, against "
             f"{_fmt(ref.get('n_rows'))} rows of the reference shard {esc(str(ref.get('shard')))} "
             f"({esc(held)}{'' if ref.get('held_out') else ', so its perplexity is an in-sample, optimistic figure'}"
             f"). Ratio: task / reference. JS divergence (base 2, 0 to 1): task tokens' unigram distribution vs the "
             f"whole pretraining corpus's. Module − baseline: the module's test macro-F1 minus the TF-IDF + LR "
             f"baseline's, in points (red: below). Data: {_link(s.get('file'))}</p>")
    return _section("shift", "Domain shift", esc(sub), body)


def render(facts: dict[str, Any]) -> str:
    h = facts["headline"]
    parts = [_headline(facts), _failure(facts), _tiles(facts), _timeline(facts), _funnel(facts), _contracts(facts),
             _pretrain(facts), _modules(facts), _shift(facts), _tune(facts), _registry(facts)]
    title = f"modpipe run {h['run_id']}: {h['outcome']}"
    return ("<!doctype html><html lang=en><head><meta charset='utf-8'>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{''.join(parts)}</main>"
            f"{FIX_LINKS % json.dumps(str(h['run_id']))}</body></html>")
