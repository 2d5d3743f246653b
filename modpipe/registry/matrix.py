"""Compatibility matrix: every registered module version x every registered backbone version, through the one check.

Each cell runs ``policy.check`` on the module's verified files against that backbone's verified files (integrity
and compatibility; quality is the measurement the gate recorded on the module's own backbone, so an off-diagonal
cell that loads is *loadable*, not *measured*). A cell says ``loads`` or ``refused`` and which fields decided it:
the failing fields of a refusal, the compatibility fields that passed for a load. The diagonal (the backbone a
version links to) is marked. Off-diagonal cells matter once a backbone is continued from another (continued
pretraining) or re-exported: a re-export with the same files loads, a continued one is refused by its fingerprint.

``matrix(store, prefix)`` -> ``{"backbones": [...], "modules": [...], "cells": [...]}``; ``to_html(result)`` a
self-contained page; ``table_rows(result)`` one row per cell (for a Prefect table artifact).
"""

from __future__ import annotations

import html
import json
from typing import Any

from modpipe.registry.load import SHA_PREFIX, fetch_version, measurement, prefixed
from modpipe.registry.names import backbone_name, check_name, is_name, literal
from modpipe.registry.policy import Rules, check
from modpipe.registry.store import Store


def _versions(store: Store, name: str) -> list:
    found = store.retry(store.client.search_model_versions, f"name = {literal(check_name(name))}")
    return sorted((v for v in found if v.status in (None, "READY")), key=lambda v: int(v.version))


def matrix(store: Store, prefix: str, names: list[str] | None = None) -> dict[str, Any]:
    """The matrix of the registered models ``<prefix>-*`` (or ``names``) against ``<prefix>-backbone``."""
    bname = backbone_name(prefix)
    backbones = []
    for bv in _versions(store, bname):
        tags = dict(bv.tags or {})
        entry = {"name": bname, "version": str(bv.version), "fingerprint": tags.get("backbone_fingerprint", ""),
                 "dir": None, "problem": None}
        try:
            entry["dir"] = store.fetch(bv.source, store.cache / bname / f"{bv.version}-{entry['fingerprint'][:12]}",
                                       prefixed(tags, SHA_PREFIX))
        except Exception as err:  # noqa: BLE001 - an unfetchable backbone is a column of refusals, with the reason
            entry["problem"] = f"backbone files fail verification: {err}"
        backbones.append(entry)
    if names is None:
        like = literal(f"{prefix}-")[:-1] + "%'"
        names = sorted(rm.name for rm in store.retry(store.client.search_registered_models, filter_string=f"name LIKE {like}")
                       if rm.name.startswith(f"{prefix}-") and rm.name != bname and is_name(rm.name))
    modules, cells = [], []
    for name in names:
        aliases: dict[str, list[str]] = {}
        for alias, v in (store.retry(store.client.get_registered_model, name).aliases or {}).items():
            aliases.setdefault(str(v), []).append(alias)
        for mv in _versions(store, name):
            got = fetch_version(store, name, str(mv.version))
            modules.append({"name": name, "version": got.version, "aliases": sorted(aliases.get(got.version, [])),
                            "backbone": got.backbone.get("version"), "problem": "; ".join(got.problems) or None})
            for b in backbones:
                cells.append(_cell(got, b))
    return {"backbones": [{k: v for k, v in b.items() if k != "dir"} for b in backbones], "modules": modules,
            "cells": cells}


def _cell(got, b: dict[str, Any]) -> dict[str, Any]:
    cell = {"module": got.name, "version": got.version, "backbone": b["version"],
            "linked": got.backbone.get("version") == b["version"]}
    if got.module_dir is None:
        return {**cell, "loads": False, "decided_by": ["integrity.files.registered"],
                "reasons": [p for p in got.problems if not p.startswith("backbone")] or got.problems}
    if b["dir"] is None:
        return {**cell, "loads": False, "decided_by": ["compatibility.backbone"], "reasons": [b["problem"]]}
    tok = got.tags.get("backbone.tokenizer_files")
    v = check(got.module_dir, b["dir"], Rules.from_tags(got.tags), expected_files=prefixed(got.tags, SHA_PREFIX),
              expected_digest=got.tags.get("module_digest"), gated_tokenizer_files=json.loads(tok) if tok else None,
              recorded_measurement=measurement(got.tags) or None)
    failed = [f for f in v.fields if not f.ok]
    if failed:
        return {**cell, "loads": False, "decided_by": [f"{f.group}.{f.name}" for f in failed],
                "reasons": [f"{f.group}.{f.name}: {f.detail}" for f in failed]}
    return {**cell, "loads": True, "reasons": [],
            "decided_by": [f"{f.group}.{f.name}" for f in v.fields if f.group == "compatibility"]}


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"module": f"{c['module']} v{c['version']}", "backbone": f"v{c['backbone']}" + (" (linked)" if c["linked"]
                                                                                           else ""),
             "loads": "yes" if c["loads"] else "refused", "decided by": ", ".join(c["decided_by"][:6]),
             "why": "; ".join(c["reasons"])[:500]} for c in result["cells"]]


def to_html(result: dict[str, Any], title: str = "modpipe compatibility matrix") -> str:
    """Modules (rows) x backbones (columns): a cell says loads / refused; its title and the list below say why."""
    e = html.escape
    by = {(c["module"], c["version"], c["backbone"]): c for c in result["cells"]}
    head = "".join(f"<th>backbone v{e(b['version'])}<br><small>{e(b['fingerprint'][:12])}</small></th>"
                   for b in result["backbones"])
    rows = []
    for m in result["modules"]:
        tds = []
        for b in result["backbones"]:
            c = by.get((m["name"], m["version"], b["version"]))
            if c is None:
                tds.append("<td></td>")
                continue
            why = "; ".join(c["reasons"]) or "loads: " + ", ".join(c["decided_by"])
            cls, text = ("ok", "loads") if c["loads"] else ("no", "refused")
            tds.append(f"<td class='{cls}{' linked' if c['linked'] else ''}' title='{e(why)}'>{text}"
                       f"<br><small>{e(', '.join(c['decided_by'][:3]))}</small></td>")
        alias = f" ({e(', '.join(m['aliases']))})" if m["aliases"] else ""
        rows.append(f"<tr><th>{e(m['name'])} v{e(m['version'])}{alias}</th>{''.join(tds)}</tr>")
    details = "".join(f"<li><b>{e(c['module'])} v{e(c['version'])} on backbone v{e(c['backbone'])}</b>: "
                      f"{e('; '.join(c['reasons']))}</li>" for c in result["cells"] if not c["loads"])
    return (f"<!doctype html><meta charset=utf-8><title>{e(title)}</title><style>body{{font:14px sans-serif}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:center}"
            ".ok{background:#e3f6e3}.no{background:#fbe3e3}.linked{outline:2px solid #333}</style>"
            f"<h1>{e(title)}</h1><p>Rows: registered module versions; columns: registered backbone versions; a framed "
            "cell is the backbone the version links to. Each cell is the registry's one check (integrity and "
            "compatibility; quality as measured on the linked backbone).</p>"
            f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table><h2>Refusals</h2><ul>{details or '<li>none</li>'}"
            "</ul>")
