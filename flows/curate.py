from prefect import flow, task

from flows.common import config, contract_artifacts, retry_transient, stats_table
from modpipe import contracts, curate


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def curate_task(cfg) -> dict:
    return curate.run(cfg)


@task
def contracts_task(cfg, curated: dict) -> dict:
    return contracts.run(cfg, curated)


@flow(name="contracts", log_prints=True)
def contracts_flow(curated: dict, config_path: str | None = None, overrides: list[str] | None = None) -> dict:
    """Validate a curate output against the data contracts; a failed error-severity expectation fails the flow.
    Data Docs link and failed-expectation table are published either way."""
    cfg = config(config_path, overrides)
    try:
        checked = contracts_task(cfg, curated)
    except contracts.ContractViolation as err:
        contract_artifacts(cfg, err.data_docs, err.results)
        raise
    contract_artifacts(cfg, checked["data_docs"], checked["results"])
    for w in checked.get("warnings", []):
        print(f"contract warning: {w}")
    print(f"Data Docs: {checked['data_docs']}")
    return checked


@flow(name="curate", log_prints=True)
def curate_flow(config_path: str | None = None, overrides: list[str] | None = None) -> dict:
    """Curate raw text into tokenized shards, then validate them against the data contracts."""
    cfg = config(config_path, overrides)
    curated = curate_task(cfg)
    stats_table(cfg, curated.get("stats"), "curate-counts")
    if cfg.contracts.enabled:
        checked = contracts_flow(curated, config_path, overrides)
        curated = {**curated, "data_docs": checked["data_docs"], "contract_results": checked["results"],
                   "contract_warnings": checked.get("warnings", [])}
    return curated
