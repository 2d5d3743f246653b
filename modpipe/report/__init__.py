"""The run report: one self-contained HTML page from a run summary (paths in, path out)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any


def _read_json(path: str | None) -> Any:
    if path and Path(path).is_file():
        try:
            return json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError):
            return None
    return None


def _table(rows: list[dict[str, Any]], title: str) -> str:
    if not rows:
        return f"<h2>{html.escape(title)}</h2><p>none</p>"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)[:200]
    return "" if v is None else str(v)


def stats_rows(stats: Any) -> list[dict[str, Any]]:
    """Rows for a table: a stats file's per-step list when it has one, else its top-level entries."""
    if isinstance(stats, dict) and isinstance(stats.get("steps"), list):
        stats = stats["steps"]
    if isinstance(stats, list):
        return stats
    if isinstance(stats, dict):
        return [{"step": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in stats.items()]
    return []


def write_run_report(summary: dict[str, Any], out_path: str | Path) -> str:
    """Render timings, curation counts, contract results, pretraining and module metrics, registry outcome."""
    curate = summary.get("curate") or {}
    outcome = summary.get("outcome", "?")
    head = (f"<p><b>{html.escape(str(outcome))}</b> &middot; run {html.escape(str(summary.get('run_id')))}"
            f" &middot; {summary.get('seconds', '?')} s</p>")
    if summary.get("error"):
        head += f"<pre>{html.escape(str(summary['error']))}</pre>"
    steps = [{"step": k, "state": v.get("state"), "skipped (already built)": v.get("skipped"),
              "seconds": v.get("seconds"), "version": v.get("version")}
             for k, v in (summary.get("steps") or {}).items()]
    sections = [head, _table(steps, "Steps")]
    sections.append(_table(stats_rows(_read_json(curate.get("stats"))), "Curation counts"))
    dd = curate.get("data_docs") or (summary.get("contracts") or {}).get("data_docs")
    if dd:
        sections.append(f'<h2>Data contracts</h2><p><a href="{Path(dd).resolve().as_uri()}">Data Docs</a></p>')
    warnings = curate.get("contract_warnings") or (summary.get("contracts") or {}).get("warnings") or []
    if warnings:
        sections.append(_table([{"warning": w} for w in warnings], "Data contract warnings"))
    pm = _read_json((summary.get("pretrain") or {}).get("metrics")) or {}
    sections.append(_table([{k: v for k, v in pm.items() if not isinstance(v, (list, dict))}], "Pretraining"))
    mod_rows = []
    for task, path in ((summary.get("adapt") or {}).get("metrics") or {}).items():
        m = _read_json(path) or {}
        mod_rows.append({"task": task, **{k: v for k, v in m.items() if not isinstance(v, (list, dict))}})
    sections.append(_table(mod_rows, "Modules (test split)"))
    tune = summary.get("tune") or {}
    sections.append(_table([_read_json(tune.get("best_config")) or {}], "Tuning: best trial"))
    pub = summary.get("publish") or {}
    sections.append(_table(pub.get("registered") or [], "Registered"))
    sections.append(_table(pub.get("rejected") or [], "Not published (gate)"))
    page = (
        "<!doctype html><meta charset='utf-8'><title>modpipe run</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}</style><h1>modpipe run</h1>"
        + "".join(sections)
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return str(out)
