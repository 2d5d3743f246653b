"""A run: some steps of the DAG (``modpipe/steps.py``) through the executor, then the run summary and report.

``run(cfg, targets)`` is what every entry point calls: ``modpipe run`` / ``modpipe <step>`` (local engine and Ray
jobs), the Prefect flows (which pass a ``runner`` that makes each step a task). A failed run still writes its
summary and report (outcome, the failed step and why) before the error propagates.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from modpipe.config import PipelineConfig, check_name
from modpipe.executor import Runner, StepResult, new_run_id, run_steps

log = logging.getLogger("modpipe.pipeline")


def run(cfg: PipelineConfig, targets: list[str], *, run_id: str | None = None, force: bool = False,
        runner: Runner | None = None) -> dict[str, Any]:
    """Run ``targets`` (and what they read); returns the run summary (also in ``<run_dir>/runs/<run_id>.json``)."""
    run_id = check_name(run_id or new_run_id(), "run id")  # it becomes runs/<run_id>.json: a name, never a path
    results: dict[str, StepResult] = {}
    t0 = time.time()

    failed: list[str] = []

    def record(call, step):
        try:
            res = runner(call, step) if runner else call()
        except BaseException:
            failed.append(step.name)
            raise
        results[step.name] = res
        return res

    try:
        run_steps(cfg, targets, run_id=run_id, force=force, runner=record)
    except BaseException as err:
        write_summary(cfg, run_id, targets, results, t0, error=err, failed_step=failed[-1] if failed else None)
        raise
    unusable = failed_tasks(results)
    if unusable:  # the other tasks went on; the run ends failed for these
        err = TaskDataError("; ".join(unusable.values()))
        write_summary(cfg, run_id, targets, results, t0, error=err)
        raise err
    from modpipe.drift import remember

    try:
        remember(cfg, results, run_id)  # a succeeded run's profile is the next run's drift reference
    except Exception as err:  # noqa: BLE001 - the run succeeded; the next run compares with the older reference
        log.warning("drift: this run's profile could not be recorded as the reference: %s: %s",
                    type(err).__name__, err)
    return write_summary(cfg, run_id, targets, results, t0)


class TaskDataError(RuntimeError):
    """Some tasks' data could not make a task (curate's ``failed_tasks``); every other task ran."""


def failed_tasks(results: dict[str, StepResult]) -> dict[str, str]:
    """Task name -> why curate could not build it, from the curate step's manifest (built or reused)."""
    res = results.get("curate")
    manifest = Path(res.outputs.get("manifest", "")) if res is not None and res.outputs else None
    if manifest is None or not manifest.is_file():
        return {}
    return json.loads(manifest.read_text()).get("failed_tasks") or {}


def write_summary(cfg: PipelineConfig, run_id: str, targets: list[str], results: dict[str, StepResult],
                  started: float, error: BaseException | None = None,
                  failed_step: str | None = None) -> dict[str, Any]:
    """``<run_dir>/runs/<run_id>.json`` + ``.html``; ``run_summary.json`` / ``report.html`` point at the latest."""
    from modpipe.report import write_run_report

    summary: dict[str, Any] = {
        "run_id": run_id, "targets": list(targets), "outcome": "failed" if error else "succeeded",
        "error": None if error is None else f"{type(error).__name__}: {str(error).strip()}",
        "failed_step": failed_step, "failed_tasks": failed_tasks(results),
        "started": started, "seconds": round(time.time() - started, 2),
        "steps": {**{n: r.summary() for n, r in results.items()},
                  **({failed_step: {"step": failed_step, "state": "failed", "skipped": False, "seconds": None,
                                    "error": f"{type(error).__name__}: {error}"}} if failed_step else {})},
        "timings_s": {n: r.seconds for n, r in results.items()},
        **{n: r.outputs for n, r in results.items()},
    }
    runs = cfg.run_path / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / f"{run_id}.json"
    report = write_run_report(summary, runs / f"{run_id}.html")
    summary = {**summary, "summary": str(path), "report": report}
    _atomic_write(path, json.dumps(summary, indent=2, default=str))
    for latest, src in (("run_summary.json", path), ("report.html", Path(report))):
        _atomic_write(cfg.run_path / latest, src.read_text())  # the latest run, replaced whole
    return summary


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
