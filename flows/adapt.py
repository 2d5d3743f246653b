from prefect import flow, task

from flows.common import config, retry_transient, upstream
from modpipe import adapt


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def adapt_task(cfg, backbone: str, tasks_dir: str) -> dict:
    return adapt.run(cfg, backbone, tasks_dir)


@flow(name="adapt", log_prints=True)
def adapt_flow(
    config_path: str | None = None, overrides: list[str] | None = None,
    backbone: str | None = None, tasks_dir: str | None = None,
) -> dict:
    """Train one module per task, concurrently; upstream outputs are reused when not given."""
    cfg = config(config_path, overrides)
    return adapt_task(cfg, *upstream(cfg, backbone, tasks_dir))
