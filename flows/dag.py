"""The whole DAG: curate (+contracts) -> pretrain -> adapt -> tune -> publish, each stage a subflow."""

import time

from prefect import flow

from flows.adapt import adapt_flow
from flows.curate import curate_flow
from flows.pretrain import pretrain_flow
from flows.publish import publish_flow
from flows.tune import tune_flow
from modpipe.config import load_config
from modpipe.pipeline import write_summary


@flow(name="modpipe-dag", log_prints=True)
def dag_flow(config_path: str | None = None, overrides: list[str] | None = None) -> dict:
    args = {"config_path": config_path, "overrides": overrides}
    timings: dict[str, float] = {}

    def timed(name, fn, **kw):
        t0 = time.perf_counter()
        out = fn(**args, **kw)
        timings[name] = round(time.perf_counter() - t0, 2)
        print(f"stage {name}: {timings[name]:.1f} s")
        return out

    curated = timed("curate", curate_flow)
    trained = timed("pretrain", pretrain_flow, curated=curated)
    adapted = timed("adapt", adapt_flow, backbone=trained["backbone"], tasks_dir=curated["tasks_dir"])
    tuned = timed("tune", tune_flow, backbone=trained["backbone"], tasks_dir=curated["tasks_dir"])
    published = timed(
        "publish", publish_flow,
        backbone=trained["backbone"], modules=adapted["modules"], manifest=curated["manifest"],
    )
    return write_summary(load_config(config_path, overrides), {
        "curate": curated, "pretrain": trained, "adapt": adapted, "tune": tuned,
        "publish": published, "timings_s": timings,
    })
