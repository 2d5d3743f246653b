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


STAGES = ("curate", "contracts", "pretrain", "adapt", "tune", "publish")


def run_stage(cfg: PipelineConfig, name: str, *, curated: dict | None = None, backbone: str | None = None,
              modules: dict | None = None) -> dict[str, Any]:
    """Run one stage; upstream outputs not given are built, or reused by fingerprint when already there."""
    from modpipe import adapt, contracts, curate, pretrain, registry, tune

    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    if name == "curate":
        return curate.run(cfg)
    curated = curated or curate.run(cfg)
    if name == "contracts":
        return contracts.run(cfg, curated)
    if name == "pretrain":
        return pretrain.run(cfg, curated)
    backbone = backbone or pretrain.run(cfg, curated)["backbone"]
    if name == "adapt":
        return adapt.run(cfg, backbone, curated["tasks_dir"])
    if name == "tune":
        return tune.run(cfg, backbone, curated["tasks_dir"])
    modules = modules or adapt.run(cfg, backbone, curated["tasks_dir"])["modules"]
    return registry.publish(cfg, backbone, modules, curated["manifest"])
