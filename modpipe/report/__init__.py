"""Reports: the run report (``write_run_report``: ``facts`` -> ``figures`` + ``page``) and the table helpers the
transfer report (``transfer.py``) shares."""

from __future__ import annotations

import html
import json
import logging
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


def run_dir_of(report_path: str | Path) -> Path:
    """The run dir of a report written as ``<run_dir>/runs/<run_id>.html`` (or ``<run_dir>/report.html``)."""
    parent = Path(report_path).resolve().parent
    return parent.parent if parent.name == "runs" else parent


def write_run_report(summary: dict[str, Any], out_path: str | Path) -> str:
    """The run report (``page.py``) of a run summary (``modpipe.pipeline.write_summary``): a self-contained HTML
    page, headline and what failed first, then a section per stage with its figure; returns its path."""
    from modpipe.report.facts import collect
    from modpipe.report.page import render

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        page = render(collect(summary, run_dir_of(out)))
    except Exception as err:  # noqa: BLE001 - a report bug must not fail the run it reports on
        logging.getLogger("modpipe.report").exception("run report not rendered; writing the bare summary")
        page = (f"<!doctype html><meta charset='utf-8'><title>modpipe run {html.escape(str(summary.get('run_id')))}"
                f"</title><h1>modpipe run: {html.escape(str(summary.get('outcome')))}</h1><p>report not rendered: "
                f"{html.escape(f'{type(err).__name__}: {err}')}</p><pre>"
                f"{html.escape(json.dumps(summary, indent=2, default=str))}</pre>")
    out.write_text(page)
    return str(out)
