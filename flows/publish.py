from prefect import flow, task

from flows.common import config
from modpipe import registry
from modpipe.pipeline import run_stage


@task
def publish_task(cfg, backbone: str, modules: dict, manifest: str) -> dict:
    return registry.publish(cfg, backbone, modules, manifest)


@flow(name="publish", log_prints=True)
def publish_flow(
    config_path: str | None = None, overrides: list[str] | None = None,
    backbone: str | None = None, modules: dict | None = None, manifest: str | None = None,
) -> dict:
    """Register the modules that pass the gate in the MLflow registry; list the rejected ones with reasons."""
    cfg = config(config_path, overrides)
    if manifest is None or backbone is None or modules is None:
        curated = run_stage(cfg, "curate")
        manifest = manifest or curated["manifest"]
        backbone = backbone or run_stage(cfg, "pretrain", curated=curated)["backbone"]
        modules = modules or run_stage(cfg, "adapt", curated=curated, backbone=backbone)["modules"]
    out = publish_task(cfg, backbone, modules, manifest)
    for r in out.get("rejected", []):
        print(f"not published: {r['task']}: {r['reason']}")
    return out
