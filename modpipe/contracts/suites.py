"""Expectation suites as data: GX ExpectationSuite JSON files in ``data_contracts/``, one per dataset kind.

A suite file is ``{"name", "meta", "expectations": [{"type", "kwargs", "meta"}]}`` (GX's own format, so a suite
exported from GX loads as is).  Two modpipe conventions on top:

- ``meta.severity``: ``"error"`` (default; a failure stops the pipeline) or ``"warning"`` (reported only).
  GX's native top-level ``"severity"`` (``critical``/``warning``/``info``) is honoured too.
- Config values enter through GX suite parameters: ``{"$PARAMETER": "curate_seq_len"}`` reads
  ``cfg.curate.seq_len``.  Every scalar field of every config section is available as ``<section>_<field>``.

Nothing here imports great_expectations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from modpipe.config import PipelineConfig

# modpipe severity (meta.severity) -> GX FailureSeverity value
SEVERITIES = {"error": "critical", "critical": "critical", "warning": "warning", "info": "info"}
STOPS = "critical"  # the GX severity that makes a failure stop the run


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the file and the problem."""


def suite_path(name_or_path: str | Path, suites_dir: str | Path) -> Path:
    """A suite by name (``task_dataset`` -> ``<suites_dir>/task_dataset.json``) or by path."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.is_file():
        return p
    return Path(suites_dir) / f"{name_or_path}.json"


def load_suite_spec(name_or_path: str | Path, suites_dir: str | Path) -> dict[str, Any]:
    """Read and check a suite file; each expectation gets a resolved ``severity`` (GX value)."""
    path = suite_path(name_or_path, suites_dir)
    if not path.is_file():
        raise SuiteError(f"expectation suite not found: {path}")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SuiteError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("expectations"), list):
        raise SuiteError(f"{path}: expected an object with an 'expectations' list")
    spec.setdefault("name", path.stem)
    out = []
    for i, e in enumerate(spec["expectations"]):
        if not isinstance(e, dict) or not isinstance(e.get("type"), str):
            raise SuiteError(f"{path}: expectation #{i} needs a 'type'")
        meta = dict(e.get("meta") or {})
        raw = str(meta.get("severity") or e.get("severity") or "error").lower()
        if raw not in SEVERITIES:
            raise SuiteError(f"{path}: expectation #{i} ({e['type']}): severity {raw!r} not in {sorted(SEVERITIES)}")
        out.append({"type": e["type"], "kwargs": dict(e.get("kwargs") or {}), "meta": meta,
                    "severity": SEVERITIES[raw]})
    return {"name": spec["name"], "meta": spec.get("meta") or {}, "expectations": out, "path": str(path)}


def config_parameters(cfg: PipelineConfig) -> dict[str, Any]:
    """``<section>_<field>`` -> value for every scalar field of every config section (GX suite parameters)."""
    params: dict[str, Any] = {}
    for section, fields in cfg.model_dump(mode="json").items():
        if not isinstance(fields, dict):
            if isinstance(fields, (int, float, str, bool)):
                params[section] = fields
            continue
        for k, v in fields.items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                params[f"{section}_{k}"] = v
    return params


def referenced_parameters(spec: dict[str, Any]) -> set[str]:
    """Names used in ``{"$PARAMETER": expr}`` anywhere in the suite's kwargs (expr may be ``a - 1``)."""
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if "$PARAMETER" in x:
                found.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(x["$PARAMETER"])))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for e in spec["expectations"]:
        walk(e["kwargs"])
    return found


def check_parameters(spec: dict[str, Any], params: dict[str, Any]) -> None:
    """Refuse a suite that names a config value that does not exist (before GX's harder-to-read error)."""
    missing = sorted(n for n in referenced_parameters(spec) if n not in params)
    if missing:
        raise SuiteError(
            f"{spec['path']}: unknown $PARAMETER name(s) {missing}; config values are named <section>_<field>, "
            f"e.g. curate_seq_len"
        )
