"""What the flows publish to Prefect (tables, links, markdown) and their transient-error retry rule."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from modpipe.config import PipelineConfig
from modpipe.report import stats_rows

# Only errors a rerun can fix are retried: lost Ray nodes, network blips. A bad config, a failed contract or
# a bug fails at once.
TRANSIENT = (ConnectionError, TimeoutError)
TRANSIENT_NAMES = {"RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "RaySystemError"}
MODULE_COLUMNS = ("method", "head", "freeze_policy", "train_fraction", "test_accuracy", "test_macro_f1",
                  "test_auroc_ovr", "test_ece", "trainable_pct", "train_seconds", "peak_memory_mb",
                  "latency_ms_per_batch")


def retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception as exc:  # noqa: BLE001 - we only classify
        return type(exc).__name__ in TRANSIENT_NAMES
    return False


def artifact_key(cfg: PipelineConfig, what: str) -> str:
    """Artifact keys must be lowercase letters, digits and dashes."""
    name = Path(cfg.run_dir).name.lower()
    return "".join(c if c.isalnum() else "-" for c in f"{name}-{what}")[:100]


def _read(path: str | None):
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


def _link(cfg: PipelineConfig, path: str | None, what: str, description: str | None = None) -> None:
    if path:
        create_link_artifact(link=Path(path).resolve().as_uri(), link_text=what, key=artifact_key(cfg, what),
                             description=description)


def curate_artifacts(cfg: PipelineConfig, out: dict) -> None:
    stats = _read(out.get("stats"))
    if stats is not None:
        rows = [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()}
                for r in stats_rows(stats)]
        create_table_artifact(table=rows, key=artifact_key(cfg, "curate-counts"), description="curate per-step counts")


def contract_artifacts(cfg: PipelineConfig, data_docs: str | None, results: str | None) -> None:
    """Link to the Data Docs index + a table of the expectations that failed (errors and warnings)."""
    from modpipe.contracts import describe

    record = _read(results) or {}
    counts = record.get("counts") or {}
    _link(cfg, data_docs, "data-docs", f"Data Docs: {counts.get('datasets', '?')} dataset(s), "
                                       f"{counts.get('errors', '?')} error(s), {counts.get('warnings', '?')} warning(s)")
    rows = [{"severity": "error" if f in d["errors"] else "warning", "suite": d["suite"], "data": d["data"],
             "expectation": describe(f)}
            for d in record.get("datasets", []) for f in d["errors"] + d["warnings"]]
    rows += [{"severity": "error", "suite": e["suite"], "data": e["data"], "expectation": e["exception"]}
             for e in record.get("structural_errors", [])]
    if rows:
        create_table_artifact(table=rows, key=artifact_key(cfg, "contract-failures"),
                              description=f"failed expectations ({results})")


def adapt_artifacts(cfg: PipelineConfig, out: dict) -> None:
    rows = [{"task": t, **{k: (_read(p) or {}).get(k) for k in MODULE_COLUMNS}}
            for t, p in sorted((out.get("metrics") or {}).items())]
    rows += [{"task": t, "failed": reason} for t, reason in sorted((out.get("failed") or {}).items())]
    create_table_artifact(table=rows, key=artifact_key(cfg, "adapt-modules"), description="modules (test split)")


def publish_artifacts_(cfg: PipelineConfig, out: dict) -> None:
    rows = [{"task": r["task"], "name": r["name"], "version": r["version"], "alias": r.get("alias"),
             "from": (out.get("candidates") or {}).get(r["task"], {}).get("from")} for r in out.get("registered", [])]
    rows += [{"task": r["task"], "rejected": r["reason"]} for r in out.get("rejected", [])]
    create_table_artifact(table=rows, key=artifact_key(cfg, "publish"), description="registry outcome")


def transfer_artifacts(cfg: PipelineConfig, out: dict) -> None:
    from modpipe.report.transfer import markdown_table, table_rows

    results = _read(out.get("results"))
    if results:
        create_table_artifact(table=table_rows(results, None), key=artifact_key(cfg, "transfer-table"))
        create_markdown_artifact(markdown=f"# Transfer ({results.get('metric')})\n\n"
                                          f"{markdown_table(table_rows(results, 1.0))}",
                                 key=artifact_key(cfg, "transfer-summary"))
    _link(cfg, out.get("report"), "transfer-report")


def drift_artifacts(cfg: PipelineConfig, out: dict) -> None:
    """Link to the drift report + a table of the checks that moved (an error fails the step: then the failed
    record's copy)."""
    record = _read(out.get("checks")) or {}
    _link(cfg, out.get("report"), "drift-report", f"drift: {record.get('status')}: {record.get('message')}")
    rows = [{k: c[k] for k in ("severity", "check", "subject", "value", "warn", "error", "detail")}
            for c in record.get("checks", []) if c["severity"] != "ok"]
    if rows:
        create_table_artifact(table=rows, key=artifact_key(cfg, "drift-checks"),
                              description=f"drift checks that moved against the reference ({out.get('checks')})")


PUBLISHERS = {
    "curate": curate_artifacts,
    "contracts": lambda cfg, out: contract_artifacts(cfg, out.get("data_docs"), out.get("results")),
    "adapt": adapt_artifacts,
    "drift": drift_artifacts,
    "publish": publish_artifacts_,
    "transfer": transfer_artifacts,
}


def publish_artifacts(cfg: PipelineConfig, step: str, result) -> None:
    if step in PUBLISHERS and not result.skipped:
        PUBLISHERS[step](cfg, result.outputs)


def publish_failure(cfg: PipelineConfig, step: str, err: BaseException) -> None:
    if step == "contracts" and hasattr(err, "data_docs"):
        contract_artifacts(cfg, err.data_docs, err.results)
    if step == "drift" and getattr(err, "results", None):
        drift_artifacts(cfg, {"checks": err.results, "report": str(Path(err.results).with_name("drift.html"))})


def run_summary(cfg: PipelineConfig) -> None:
    """The run's headline numbers as a markdown artifact (the content, not a link) and table artifacts of the
    curation funnel and the module table: the same numbers as the run report (``modpipe.report.facts``)."""
    from modpipe.report.facts import collect
    from modpipe.report.text import funnel_rows, markdown, module_rows

    summary = _read(str(cfg.run_path / "run_summary.json"))
    if not summary:
        return
    facts = collect(summary, cfg.run_path)
    create_markdown_artifact(markdown=markdown(facts, str(cfg.run_path / "report.html")),
                             key=artifact_key(cfg, "run-summary"),
                             description=f"modpipe run {summary['run_id']}: {summary['outcome']}")
    if facts["funnel"]:
        create_table_artifact(table=funnel_rows(facts), key=artifact_key(cfg, "curation-funnel"),
                              description="curation funnel: docs in/out per step, largest removal reasons")
    if facts["modules"]:
        create_table_artifact(table=module_rows(facts), key=artifact_key(cfg, "modules"),
                              description="modules per task (test split), as published")
