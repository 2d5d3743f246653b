from prefect import flow, task

from flows.common import config, link, retry_transient, stats_table
from modpipe import contracts, curate


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def curate_task(cfg) -> dict:
    return curate.run(cfg)


@task
def contracts_task(cfg, curated: dict) -> dict:
    return contracts.run(cfg, curated)


@flow(name="curate", log_prints=True)
def curate_flow(config_path: str | None = None, overrides: list[str] | None = None) -> dict:
    """Curate raw text into tokenized shards, then validate them against the data contracts."""
    cfg = config(config_path, overrides)
    curated = curate_task(cfg)
    stats_table(cfg, curated.get("stats"), "curate-counts")
    if cfg.contracts.enabled:
        checked = contracts_task(cfg, curated)
        link(cfg, checked.get("data_docs"), "data-docs")
        print(f"Data Docs: {checked.get('data_docs')}")
        curated = {**curated, "data_docs": checked.get("data_docs")}
    return curated
