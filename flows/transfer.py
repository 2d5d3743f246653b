from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import artifact_key, config, link, retry_transient, upstream
from modpipe.evaluate import transfer
from modpipe.report.transfer import markdown_table, table_rows


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def transfer_task(cfg, backbone: str, tasks_dir: str) -> dict:
    return transfer.run(cfg, backbone, tasks_dir)


@flow(name="transfer", log_prints=True)
def transfer_flow(
    config_path: str | None = None, overrides: list[str] | None = None,
    backbone: str | None = None, tasks_dir: str | None = None,
) -> dict:
    """Every task x module method (and train fraction) through adapt: table, curve and HTML report as artifacts."""
    cfg = config(config_path, overrides)
    out = transfer_task(cfg, *upstream(cfg, backbone, tasks_dir))
    results = {"metric": cfg.transfer.metric, "rows": out["rows"]}
    rows = table_rows(results, None)
    create_table_artifact(table=rows, key=artifact_key(cfg, "transfer-table"), description=out["results"])
    create_markdown_artifact(
        markdown=f"# Transfer ({cfg.transfer.metric})\n\n{markdown_table(table_rows(results, 1.0))}\n\n"
                 f"Report: {out['report']}  \nSample-efficiency curve: {out['curve']}",
        key=artifact_key(cfg, "transfer-summary"))
    link(cfg, out["report"], "transfer-report")
    return {k: v for k, v in out.items() if k != "rows"}
