"""Thin Prefect flows over modpipe's one step list: the whole DAG, and one step (with what it reads).

Both flows parse the config once and hand it to ``modpipe.pipeline.run``, which walks ``modpipe/steps.py``
through the executor; here each step becomes a Prefect task (retried only on transient errors) and publishes
its artifacts. Every deployment in prefect.yaml points at one of these two flows.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from flows.artifacts import publish_artifacts, publish_failure, retry_transient, run_summary
from modpipe import pipeline, steps
from modpipe.config import load_config


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def step_task(call, step, cfg, force: bool):
    # A retry (transient errors only) must rebuild what the failed attempt recorded as failed.
    try:
        result = call(force or (task_run.run_count or 1) > 1)
    except Exception as err:
        publish_failure(cfg, step.name, err)
        raise
    publish_artifacts(cfg, step.name, result)
    return result


def _run(config_path: str | None, overrides: list[str] | None, targets: list[str], force: bool,
         run_id: str | None = None) -> dict:
    cfg = load_config(config_path, overrides or [])

    def runner(call, step):
        return step_task.with_options(name=step.name)(call, step, cfg, force)

    try:
        summary = pipeline.run(cfg, targets, run_id=run_id, force=force, runner=runner)
    except Exception:
        run_summary(cfg)
        raise
    run_summary(cfg)
    return summary


@flow(name="modpipe-dag", log_prints=True)
def dag_flow(config_path: str | None = None, overrides: list[str] | None = None, force: bool = False,
             run_id: str | None = None) -> dict:
    """The whole DAG: every step of modpipe/steps.py marked in_dag, in order; finished steps are reused."""
    return _run(config_path, overrides, steps.dag_targets(), force, run_id)


@flow(name="modpipe-step", log_prints=True)
def step_flow(step: str, config_path: str | None = None, overrides: list[str] | None = None,
              force: bool = False, run_id: str | None = None) -> dict:
    """One step and every step it reads (reused when already built); gates hold as in the whole DAG."""
    steps.get(step)  # an unknown name fails before anything starts
    return _run(config_path, overrides, [step], force, run_id)
