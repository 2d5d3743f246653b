"""The drift report: one plain HTML page in the drift step's output dir (what moved, by how much, against which
thresholds), with the length histograms of current and reference side by side on the reference's bins."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from modpipe.drift.compare import bin_shares

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}.warn{background:#fff3cd}"
         ".error{background:#f8d7da}.bar{display:inline-block;height:.8em}.cur{background:#4a7}.ref{background:#aaa}")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def _checks_table(checks: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("severity", "check", "subject", "value", "warn at", "error at",
                                             "what moved"))
    rows = "".join(
        f"<tr class='{c['severity']}'><td>{c['severity']}</td><td>{html.escape(c['check'])}</td>"
        f"<td>{html.escape(c['subject'])}</td><td>{_fmt(c['value'])}</td><td>{_fmt(c['warn'])}</td>"
        f"<td>{_fmt(c['error'])}</td><td>{html.escape(c['detail'])}</td></tr>" for c in checks)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _histogram(title: str, cur: dict[str, Any], ref: dict[str, Any]) -> str:
    """Current vs reference shares on the reference's quantile bins, as bars."""
    if not cur.get("values") or not ref.get("values"):
        return ""
    edges = ref["edges"]
    c, r = bin_shares(cur["values"], edges), bin_shares(ref["values"], edges)
    labels = [f"<= {edges[0]:g}"] + [f"{a:g} - {b:g}" for a, b in zip(edges, edges[1:])] + [f"> {edges[-1]:g}"] \
        if edges else ["all"]
    rows = "".join(f"<tr><td>{html.escape(lab)}</td><td>{rv:.3f} <span class='bar ref' style='width:{rv * 20:.2f}em'></span></td>"
                   f"<td>{cv:.3f} <span class='bar cur' style='width:{cv * 20:.2f}em'></span></td></tr>"
                   for lab, rv, cv in zip(labels, r, c))
    return (f"<h3>{html.escape(title)}</h3><table><tr><th>bin</th><th>reference share</th><th>current share</th>"
            f"</tr>{rows}</table>")


def write(path: Path, result: dict[str, Any], current: dict[str, Any], reference: dict[str, Any] | None) -> Path:
    """``result``: the drift step's record (status, counts, checks, reference tags)."""
    counts = f"{result['errors']} error(s), {result['warnings']} warning(s) in {len(result['checks'])} check(s)"
    ref = result.get("reference") or {}
    parts = [f"<h1>Drift between runs: pipeline {html.escape(result['pipeline'])}</h1>",
             f"<p>Status: <b>{html.escape(result['status'])}</b>. {html.escape(result['message'])}</p>"]
    if reference is not None:
        parts.append(f"<p>{counts}. Reference: {html.escape(ref.get('kind') or '?')} of run "
                     f"{html.escape(ref.get('run_id') or '?')}"
                     + (f", accepted by {html.escape(ref['accepted_by'])}: {html.escape(ref.get('why') or '')}"
                        if ref.get("accepted_by") else "")
                     + f" (profile sha256 {html.escape(ref.get('sha256') or '?')[:16]}...).</p>")
        parts.append(_checks_table(result["checks"]))
        parts.append(_histogram("Document length (characters)", current["docs"]["chars"],
                                reference["docs"]["chars"]))
        parts.append(_histogram("Document length (tokens)", current["docs"]["tokens"], reference["docs"]["tokens"]))
    parts.append("<p>An intended change: <code>modpipe drift accept --why '...'</code> makes this run's profile the "
                 "reference (recorded with who and why).</p>")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>drift</title><style>{STYLE}</style>"
                    f"</head><body>{''.join(parts)}</body></html>", encoding="utf-8")
    return path
