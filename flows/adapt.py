import json
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from flows.common import artifact_key, config, retry_transient, upstream
from modpipe import adapt

METRIC_COLUMNS = ("method", "head", "freeze_policy", "train_fraction", "test_accuracy", "test_macro_f1",
                  "test_auroc_ovr", "test_ece", "trainable_pct", "train_seconds", "peak_memory_mb",
                  "latency_ms_per_batch")


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def adapt_task(cfg, backbone: str, tasks_dir: str) -> dict:
    return adapt.run(cfg, backbone, tasks_dir)


@flow(name="adapt", log_prints=True)
def adapt_flow(
    config_path: str | None = None, overrides: list[str] | None = None,
    backbone: str | None = None, tasks_dir: str | None = None,
) -> dict:
    """Train one module per task, concurrently; upstream outputs are reused when not given. The modules' test
    metrics and costs (and the failed tasks with their reasons) become a table artifact."""
    cfg = config(config_path, overrides)
    out = adapt_task(cfg, *upstream(cfg, backbone, tasks_dir))
    rows = [{"task": t, **{k: json.loads(Path(p).read_text()).get(k) for k in METRIC_COLUMNS}}
            for t, p in sorted(out["metrics"].items())]
    rows += [{"task": t, "failed": reason} for t, reason in sorted(out["failed"].items())]
    create_table_artifact(table=rows, key=artifact_key(cfg, "adapt-modules"), description="modules (test split)")
    return out
