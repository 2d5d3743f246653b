"""The run report's numbers as text: a markdown summary and plain table rows (for Prefect artifacts, which carry
the content itself, readable from a Prefect UI on another machine than the run dir)."""

from __future__ import annotations

from typing import Any


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def funnel_rows(facts: dict[str, Any]) -> list[dict[str, Any]]:
    """Docs in/out per curate step with its largest removal reasons (stats.json ``steps``)."""
    f = facts.get("funnel") or {}
    return [{"step": s["step"], "in": s["in"], "out": s["out"], "removed": s["removed"], "unit": s["unit"],
             "largest reasons": ", ".join(f"{r} {n}" for r, n in s["reasons"])}
            for s in f.get("steps", []) + f.get("token_steps", [])]


def module_rows(facts: dict[str, Any]) -> list[dict[str, Any]]:
    """The module each task publishes from, its test metrics, trainable %, the baseline where one exists."""
    out = []
    for m in facts.get("modules") or []:
        if m.get("failed"):
            out.append({"task": m["task"], "from": "failed", "method": None, "test_accuracy": None,
                        "test_macro_f1": None, "test_ece": None, "trainable_pct": None,
                        "classical_baseline_macro_f1": None, "minus_baseline": None, "full_ft_macro_f1": None})
            continue
        out.append({"task": m["task"], "from": m["from"], "method": m.get("method"),
                    "test_accuracy": m.get("test_accuracy"), "test_macro_f1": m.get("test_macro_f1"),
                    "test_ece": m.get("test_ece"), "trainable_pct": m.get("trainable_pct"),
                    "classical_baseline_macro_f1": (m.get("baseline") or {}).get("test_macro_f1", "not computed"),
                    "minus_baseline": ((m.get("baseline") or {}).get("delta") or {}).get("delta", "not computed"),
                    "full_ft_macro_f1": (m.get("full") or {}).get("test_macro_f1", "not computed")})
    return out


def markdown(facts: dict[str, Any], report: str | None = None) -> str:
    """Headline, what failed (first), the headline numbers, steps, registry outcome."""
    h = facts["headline"]
    lines = [f"# modpipe run {h['run_id']}: {h['outcome']}", "",
             f"**total** {h['seconds'] or 0:.1f} s · **config** `{h['config_fingerprint']}` · "
             f"**commit** `{(h['git_commit'] or '–')[:12]}` · **started** {h['started']}", ""]
    f = facts.get("failure")
    if f:
        lines += [f"## What failed: {f['step']}", "", "```", (f["error"] or "")[:3000], "```", ""]
    if facts["metrics"]:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in facts["metrics"]] + [""]
    lines += ["## Steps", "", markdown_table([{"step": r["step"], "state": r["state"], "seconds": r["seconds"],
                                               "version": r["version"]} for r in facts["timeline"]]), ""]
    reg = facts.get("registry")
    lines += ["## Registry", ""]
    if reg:
        lines += [f"- {'promoted' if r['promoted'] else 'registered, stays'} **{r['name']} v{r['version']}**"
                  + (f" → `{r['alias']}`" if r.get("alias") else "") + f" (from {r.get('from')})"
                  + ("" if r["promoted"] or not r.get("reason") else f": {r['reason']}")
                  for r in reg["registered"]] or ["- nothing registered"]
        lines += [f"- refused by the gate: {r['task']}: {r['reason']}" for r in reg["rejected"]]
    else:
        lines.append("- not computed (publish did not run)")
    if report:
        lines += ["", f"Full report (figures, every section): `{report}` on the machine that ran it."]
    return "\n".join(lines)
