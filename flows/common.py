"""What every flow shares: config loading, the transient-error retry rule, small artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from prefect.artifacts import create_link_artifact, create_table_artifact

from modpipe.config import PipelineConfig, load_config
from modpipe.report import stats_rows

# Only errors a rerun can fix are retried: lost Ray nodes, network blips. A bad config, a failed contract or
# a bug fails at once.
TRANSIENT = (ConnectionError, TimeoutError)
TRANSIENT_NAMES = {"RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "RaySystemError"}


def retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception as exc:  # noqa: BLE001 - we only classify
        return type(exc).__name__ in TRANSIENT_NAMES
    return False


def config(config: str | None, overrides: list[str] | None) -> PipelineConfig:
    return load_config(config, overrides or [])


def artifact_key(cfg: PipelineConfig, what: str) -> str:
    """Artifact keys must be lowercase letters, digits and dashes."""
    name = Path(cfg.run_dir).name.lower()
    return "".join(c if c.isalnum() else "-" for c in f"{name}-{what}")[:100]


def stats_table(cfg: PipelineConfig, stats_path: str | None, what: str) -> None:
    """Publish a JSON stats file ({step: {in, out, removed, ...}}) as a Prefect table artifact."""
    if not stats_path or not Path(stats_path).is_file():
        return
    rows = [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()}
            for r in stats_rows(json.loads(Path(stats_path).read_text()))]
    create_table_artifact(table=rows, key=artifact_key(cfg, what), description=f"{what} ({stats_path})")


def link(cfg: PipelineConfig, path: str | None, what: str, description: str | None = None) -> None:
    if path:
        create_link_artifact(
            link=Path(path).resolve().as_uri(), link_text=what, key=artifact_key(cfg, what),
            description=description,
        )


def contract_artifacts(cfg: PipelineConfig, data_docs: str | None, results: str | None) -> None:
    """Link to the Data Docs index + a table of the expectations that failed (errors and warnings)."""
    from modpipe.contracts import describe

    record = json.loads(Path(results).read_text()) if results and Path(results).is_file() else {}
    counts = record.get("counts") or {}
    link(cfg, data_docs, "data-docs", f"Data Docs: {counts.get('datasets', '?')} dataset(s), "
                                      f"{counts.get('errors', '?')} error(s), {counts.get('warnings', '?')} warning(s)")
    rows = [{"severity": "error" if f in d["errors"] else "warning", "suite": d["suite"], "data": d["data"],
             "expectation": describe(f)}
            for d in record.get("datasets", []) for f in d["errors"] + d["warnings"]]
    if rows:
        create_table_artifact(table=rows, key=artifact_key(cfg, "contract-failures"),
                              description=f"failed expectations ({results})")


def upstream(cfg: PipelineConfig, backbone: str | None, tasks_dir: str | None) -> tuple[str, str]:
    """A stage flow run on its own: reuse (by fingerprint) or build the backbone and task datasets."""
    from modpipe.pipeline import run_stage

    if backbone is None or tasks_dir is None:
        curated = run_stage(cfg, "curate")
        tasks_dir = tasks_dir or curated["tasks_dir"]
        backbone = backbone or run_stage(cfg, "pretrain", curated=curated)["backbone"]
    return backbone, tasks_dir
