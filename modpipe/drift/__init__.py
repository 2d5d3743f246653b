"""Drift between runs: the ``profile`` step (a run's data profile) and the ``drift`` step (the gate comparing it
with the reference profile of the same pipeline name in the same registry).

- ``profile.py``: ``build`` the profile from curate's outputs (lengths, token counts, language mix, label shares
  per task, top tokens);
- ``compare.py``: the checks and their severities (``DriftConfig``: ``modpipe/config_drift.py``);
- ``reference.py``: the reference store (MLflow runs in the registry's store; sha256-checked);
- ``report.py``: the HTML drift report.

The drift step's version hashes the reference's sha256 (``reference_digest``), so a new reference re-runs the
check; its consumers list it in ``Step.gates``: they require it to have succeeded in the run without its version
entering theirs (a new reference re-runs no pretraining). After a run succeeds, ``pipeline.run`` makes its
profile the reference (``remember``); ``modpipe drift accept`` does the same by hand, with who and why.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modpipe.config import PipelineConfig
from modpipe.contracts import ContractViolation

if TYPE_CHECKING:
    from modpipe.executor import StepContext, StepResult

log = logging.getLogger("modpipe.drift")

PROFILE_FILE, CHECKS_FILE, REPORT_FILE = "profile.json", "drift.json", "drift.html"


class DriftError(ContractViolation):
    """Error-severity drift checks failed: the data moved further from the reference than the config allows."""


def reference_digest(cfg: PipelineConfig) -> dict[str, Any]:
    """The drift step's external input (see ``reference.digest``)."""
    from modpipe.drift.reference import digest

    return digest(cfg)


def run_profile(cfg: PipelineConfig, ctx: StepContext) -> dict[str, Any]:
    """The ``profile`` step: ``profile.json`` of curate's output."""
    from modpipe.drift.profile import build

    curate = ctx.inputs["curate"]
    prof = build(curate.outputs, cfg.drift, curate.version)
    path = ctx.out / PROFILE_FILE
    path.write_text(json.dumps(prof, sort_keys=True, separators=(",", ":")))
    log.info("profile: %d docs, %d task(s), %d language(s)", prof["docs"]["count"], len(prof["tasks"]),
             len(prof["languages"] or {}))
    return {"profile": str(path), "curate_version": curate.version, "docs": prof["docs"]["count"],
            "tasks": sorted(prof["tasks"])}


def _compare(cfg: PipelineConfig, current: dict[str, Any]) -> tuple[str, str, list[dict], Any]:
    """(status, message, checks, reference or None)."""
    from modpipe.drift import reference as refs
    from modpipe.drift.compare import compare
    from modpipe.drift.profile import SCHEMA

    if not cfg.drift.enabled:
        return "disabled", "drift checks are off (drift.enabled: false)", [], None
    ref = refs.load(cfg)
    if ref is None:
        return ("no_reference", f"no reference yet for pipeline {cfg.name!r}: this is its first profile in this "
                                f"registry; it becomes the reference when the run succeeds", [], None)
    if ref.profile.get("schema") != SCHEMA:
        return ("no_reference", f"the reference profile has schema {ref.profile.get('schema')}, this one {SCHEMA}: "
                                f"not comparable; it becomes the reference when the run succeeds", [], None)
    checks = [c.as_dict() for c in compare(current, ref.profile, cfg.drift)]
    n_err = sum(c["severity"] == "error" for c in checks)
    n_warn = sum(c["severity"] == "warn" for c in checks)
    status = "error" if n_err else "warn" if n_warn else "ok"
    return status, f"{n_err} error(s), {n_warn} warning(s) against the reference", checks, ref


def run(cfg: PipelineConfig, ctx: StepContext) -> dict[str, Any]:
    """The ``drift`` step: compare the profile with the reference; errors raise ``DriftError`` (a gate)."""
    from modpipe.drift.report import write

    prof = ctx.inputs["profile"]
    current = json.loads(Path(prof["profile"]).read_text())
    status, message, checks, ref = _compare(cfg, current)
    result = {"pipeline": cfg.name, "status": status, "message": message, "checks": checks,
              "errors": sum(c["severity"] == "error" for c in checks),
              "warnings": sum(c["severity"] == "warn" for c in checks),
              "reference": ref.describe() if ref is not None else None, "profile": prof["profile"],
              "curate_version": ctx.inputs["curate"].version}
    (ctx.out / CHECKS_FILE).write_text(json.dumps(result, indent=2))
    report = write(ctx.out / REPORT_FILE, result, current, ref.profile if ref is not None else None)
    for c in checks:
        if c["severity"] != "ok":
            log.warning("drift %s: %s %s = %s (warn at %s, error at %s): %s", c["severity"], c["check"], c["subject"],
                        c["value"], c["warn"], c["error"], c["detail"])
    log.info("drift: %s: %s", status, message)
    if status == "error":
        failed = [c for c in checks if c["severity"] == "error"]
        where = (ctx.failed_dir or ctx.out) / REPORT_FILE
        lines = [f"- {c['check']} {c['subject']}: {c['value']} (error at {c['error']}): {c['detail']}" for c in failed]
        raise DriftError(f"data drift against the reference of pipeline {cfg.name!r} (run "
                         f"{(ref.tags.get('run_id') or '?')}): {len(failed)} check(s) failed\n" + "\n".join(lines)
                         + f"\nreport: {where}\nif the change is intended: modpipe drift accept --why '...'",
                         failures=failed, results=str((ctx.failed_dir or ctx.out) / CHECKS_FILE))
    return {"report": str(report), "checks": str(ctx.out / CHECKS_FILE), "status": status,
            "warnings": result["warnings"], "errors": 0, "curate_version": result["curate_version"],
            "reference": result["reference"]}


def remember(cfg: PipelineConfig, results: dict[str, StepResult], run_id: str) -> None:
    """After a succeeded run: its profile becomes the reference (unless it already is)."""
    from modpipe.drift import reference as refs
    from modpipe.lineage import sha256_file

    prof, gate = results.get("profile"), results.get("drift")
    if prof is None or gate is None or not (prof.succeeded and gate.succeeded):  # an unchecked profile is no reference
        return
    current = refs.digest(cfg).get("reference")
    if current == sha256_file(prof["profile"]):
        return
    refs.record(cfg, prof["profile"], kind=refs.SUCCEEDED_RUN, run_id=run_id)


def latest_profile(cfg: PipelineConfig) -> Path:
    """The newest succeeded profile step output of this run dir (by finish time)."""
    from modpipe.executor import load_result

    found = [r for d in (cfg.run_path / "profile").glob("profile-*") if d.is_dir() and "." not in d.name
             and (r := load_result(d)) is not None and r.succeeded]
    if not found:
        raise FileNotFoundError(f"no profile step output under {cfg.run_path / 'profile'}: run the pipeline (or "
                                f"`modpipe profile`) first")
    return Path(max(found, key=lambda r: r.record.get("finished", 0))["profile"])


def latest_check(cfg: PipelineConfig) -> dict[str, Any] | None:
    """The newest drift step record of this run dir (succeeded or failed): its outcome and the checks that moved."""
    from modpipe.executor import read_status

    dirs = [d for d in (cfg.run_path / "drift").glob("drift-*") if (d / CHECKS_FILE).is_file()]
    if not dirs:
        return None
    newest = max(dirs, key=lambda d: (read_status(d) or {}).get("finished", 0))
    result = json.loads((newest / CHECKS_FILE).read_text())
    return {"dir": str(newest), "state": (read_status(newest) or {}).get("state"),
            **{k: result[k] for k in ("status", "message", "errors", "warnings", "reference")},
            "moved": [c for c in result["checks"] if c["severity"] != "ok"]}


def accept(cfg: PipelineConfig, why: str, who: str | None = None) -> dict[str, Any]:
    """``modpipe drift accept``: the latest profile becomes the reference, recorded with who and why."""
    from modpipe.drift import reference as refs

    if not why.strip():
        raise ValueError("drift accept: say why the change is intended (--why)")
    path = latest_profile(cfg)
    run_id = json.loads((path.parent / "status.json").read_text()).get("run_id")
    ref = refs.record(cfg, path, kind=refs.ACCEPTED, run_id=run_id, why=why.strip(), accepted_by=who)
    return {"pipeline": cfg.name, "profile": str(path), **ref.describe()}
