from prefect import flow, task

from flows.common import config, retry_transient, stats_table
from modpipe import pretrain
from modpipe.pipeline import run_stage


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def pretrain_task(cfg, curated: dict) -> dict:
    return pretrain.run(cfg, curated)


@flow(name="pretrain", log_prints=True)
def pretrain_flow(
    config_path: str | None = None, overrides: list[str] | None = None, curated: dict | None = None,
) -> dict:
    """Pretrain the backbone with DeepSpeed inside Ray Train; without `curated`, reuse (or build) curate's output."""
    cfg = config(config_path, overrides)
    curated = curated or run_stage(cfg, "curate")
    out = pretrain_task(cfg, curated)
    stats_table(cfg, out.get("metrics"), "pretrain-metrics")
    return out
