"""The DAG as plain function calls: what `modpipe run --engine local` and `ray job submit` run.

The Prefect DAG flow (flows/dag.py) chains the same stage entry functions, one subflow each.
Every stage is fingerprinted, so rerunning after a failure resumes at the first unfinished stage.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from modpipe.config import PipelineConfig

log = logging.getLogger("modpipe.pipeline")


def _timed(name: str, fn: Callable[[], dict], timings: dict[str, float]) -> dict:
    log.info("stage %s: start", name)
    t0 = time.perf_counter()
    out = fn()
    timings[name] = round(time.perf_counter() - t0, 2)
    log.info("stage %s: done in %.1f s", name, timings[name])
    return out


def run_all(cfg: PipelineConfig) -> dict[str, Any]:
    from modpipe import adapt, contracts, curate, pretrain, registry, tune

    timings: dict[str, float] = {}
    curated = _timed("curate", lambda: curate.run(cfg), timings)
    checked = _timed("contracts", lambda: contracts.run(cfg, curated), timings) if cfg.contracts.enabled else {}
    trained = _timed("pretrain", lambda: pretrain.run(cfg, curated), timings)
    adapted = _timed("adapt", lambda: adapt.run(cfg, trained["backbone"], curated["tasks_dir"]), timings)
    tuned = _timed("tune", lambda: tune.run(cfg, trained["backbone"], curated["tasks_dir"]), timings)
    published = _timed(
        "publish",
        lambda: registry.publish(cfg, trained["backbone"], adapted["modules"], curated["manifest"]),
        timings,
    )
    return write_summary(cfg, {
        "curate": curated, "contracts": checked, "pretrain": trained, "adapt": adapted,
        "tune": tuned, "publish": published, "timings_s": timings,
    })


def write_summary(cfg: PipelineConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Write <run_dir>/run_summary.json and report.html (paths, metrics, registry result, timings)."""
    from modpipe.report import write_run_report

    cfg.run_path.mkdir(parents=True, exist_ok=True)
    path = cfg.run_path / "run_summary.json"
    report = write_run_report(summary, cfg.run_path / "report.html")
    summary = {**summary, "summary": str(path), "report": report}
    path.write_text(json.dumps(summary, indent=2, default=str))
    return summary
