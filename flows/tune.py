from prefect import flow, task

from flows.common import config, retry_transient, upstream
from modpipe import tune


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def tune_task(cfg, backbone: str, tasks_dir: str) -> dict:
    return tune.run(cfg, backbone, tasks_dir)


@flow(name="tune", log_prints=True)
def tune_flow(
    config_path: str | None = None, overrides: list[str] | None = None,
    backbone: str | None = None, tasks_dir: str | None = None,
) -> dict:
    """Ray Tune (ASHA) over module hyperparameters for one task."""
    cfg = config(config_path, overrides)
    return tune_task(cfg, *upstream(cfg, backbone, tasks_dir))
