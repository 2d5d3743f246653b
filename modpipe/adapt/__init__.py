"""Adapt stage: one plug-in module + classification head per task on the backbone, tasks in parallel.

Step entry ``run(cfg, ctx)``: the contracts gate, then ``train_tasks`` on the backbone of ``ctx.inputs["pretrain"]``
and the tasks of ``ctx.inputs["curate"]``; writes ``modules.json`` into the step dir. Library function
``train_tasks(cfg, backbone, tasks_dir)`` -> ``{"modules": {task: dir}, "metrics": {task: metrics.json}, "failed":
{task: reason}}`` (transfer and the tests call it on their own task dirs).

Each task trains the module kind ``cfg.adapt.methods.get(task, cfg.adapt.method)`` (``modpipe.models.modules``)
with the ``cfg.adapt.head`` head under the ``cfg.adapt.freeze`` policy (its frozen ``job.AdaptJob``), on its own Ray
Train ``TorchTrainer`` (``cfg.adapt.num_workers_per_task`` workers of ``cpus_per_worker`` CPUs / ``gpus_per_worker``
GPUs; DDP over gloo on CPU, nccl on GPU). Every ``fit()`` runs inside a ``@ray.remote(num_cpus=0)`` task, so the
trainers run at once and only their workers hold CPUs/GPUs; ``schedule.run_jobs`` starts them only while their
demand fits what the cluster has free (waves otherwise) and retries a failed task ``cfg.adapt.task_retries`` times
after the others started. A task whose data is unusable or whose training fails every attempt is reported in
``failed`` and the others go on; ``train_tasks`` raises only when no task produced a module.

Module dir ``<run_dir>/adapt/<task>-<fp>``: the best epoch's module files (``adapter_config.json``,
``adapter_model.safetensors``: PEFT's for PEFT kinds, with ``score`` saved through ``modules_to_save``; plus
``backbone_delta.safetensors`` when backbone blocks trained), ``metrics.json`` (test accuracy, macro-F1, AUROC,
ECE from real predictions of the reloaded module, val metrics of the chosen epoch, trainable %, train seconds, peak
memory, latency per batch), ``test_predictions.parquet`` and ``module.json`` (the module contract,
``modpipe.models.manifest``). ``fp`` (``job.task_fingerprint``) hashes the task's job (its method and that method's
hyperparameters, head, freeze policy, train fraction, ...), the trainer's world size, the seed, the backbone
fingerprint and the task's split + label digests: a finished dir is reused as is, whichever step or run asks for
it. Ray runs live under ``<run_dir>/adapt/ray/<task>-<fp>``; rerunning after a crash resumes them from their latest
epoch.

Load a module: ``modpipe.models.modules.load_module(backbone_dir, module_dir)`` (checks module.json against the
backbone and every file's sha256).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modpipe.adapt.data import Task, TaskDataError, list_tasks, load_task
from modpipe.adapt.job import AdaptJob, Scaling, TrainRun, make_job, task_fingerprint, training_fields
from modpipe.config import PipelineConfig
from modpipe.lineage import StepDir

if TYPE_CHECKING:
    from modpipe.executor import StepContext

log = logging.getLogger("modpipe.adapt")

MODULES_FILE = "modules.json"


class AdaptError(RuntimeError):
    """No task produced a module; the message lists each task's reason."""


def select_tasks(cfg: PipelineConfig, tasks_dir: str | Path) -> list[str]:
    """``cfg.adapt.tasks`` that exist in ``tasks_dir`` (config order); when none is given or none exists, every
    task there."""
    available = list_tasks(tasks_dir)
    chosen = [t for t in cfg.adapt.tasks if t in available]
    if not cfg.adapt.tasks:
        return available
    if not chosen:
        log.warning("adapt: none of %s in %s; adapting every task found there: %s", cfg.adapt.tasks, tasks_dir,
                    available)
        chosen = available
    return chosen


def _write_quarantine(root: Path, task: str, records: list[dict]) -> None:
    qdir = root / "quarantine"
    path = qdir / f"{task}.jsonl"
    if not records:
        path.unlink(missing_ok=True)
        return
    qdir.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    log.warning("adapt: %s: %d row(s) quarantined -> %s", task, len(records), path)


def run(cfg: PipelineConfig, ctx: StepContext) -> dict[str, Any]:
    """Step entry: the contracts gate, then every selected task on the pretrained backbone; ``modules.json`` (the
    result below) in the step dir."""
    from modpipe.gates import require_contracts

    require_contracts(ctx)
    out = train_tasks(cfg, ctx.inputs["pretrain"]["backbone"], ctx.inputs["curate"]["tasks_dir"])
    (ctx.out / MODULES_FILE).write_text(json.dumps(out, indent=2))
    return {**out, "modules_json": str(ctx.out / MODULES_FILE)}


def train_tasks(cfg: PipelineConfig, backbone: str | Path, tasks_dir: str | Path) -> dict[str, Any]:
    """Adapt every selected task (see the module docstring); finished module dirs are reused."""
    from modpipe.models.fingerprint import read_backbone_fingerprint

    root = cfg.run_path / "adapt"
    backbone_fp = read_backbone_fingerprint(backbone)  # refuses a backbone whose files changed since export
    names = select_tasks(cfg, tasks_dir)
    if not names:
        raise AdaptError(f"no tasks in {tasks_dir}")
    scaling = Scaling.of(cfg.adapt)
    modules: dict[str, str] = {}
    metrics: dict[str, str] = {}
    failed: dict[str, str] = {}
    pending: list[tuple[AdaptJob, TrainRun]] = []
    for name in names:
        try:
            task = load_task(tasks_dir, name)
        except TaskDataError as err:
            log.error("adapt: %s rejected: %s", name, err)
            failed[name] = f"bad task data: {err}"
            continue
        _write_quarantine(root, name, task.rejects)
        job = make_job(cfg, task, backbone)
        fp = task_fingerprint(job, scaling, backbone_fp, task.digests)
        step = StepDir(root, name, fp)
        if step.done():
            log.info("adapt: %s: reusing %s", name, step.path)
            modules[name], metrics[name] = str(step.path), str(step.path / "metrics.json")
            continue
        pending.append((job, train_run(cfg, job, scaling, task, backbone_fp, fp)))

    for job, run_ in pending:
        log.info("adapt: %s: %d labels, %s module -> %s/%s-%s", job.task, job.num_labels, job.method,
                 run_.module_root, job.task, run_.fp)
    for out in _fit_all(cfg, scaling, pending) if pending else []:
        if "error" in out:
            failed[out["task"]] = out["error"]
        else:
            modules[out["task"]], metrics[out["task"]] = out["module"], out["metrics"]

    for name, reason in failed.items():
        log.error("adapt: %s failed: %s", name, reason)
    if not modules:
        raise AdaptError("every task failed: " + "; ".join(f"{t}: {r}" for t, r in failed.items()))
    return {"modules": modules, "metrics": metrics, "failed": failed}


def train_run(cfg: PipelineConfig, job: AdaptJob, scaling: Scaling, task: Task, backbone_fp: str,
              fp: str) -> TrainRun:
    """The task's Ray run ``<run_dir>/adapt/ray/<task>-<fp>`` and module dir ``<run_dir>/adapt/<task>-<fp>``."""
    root = cfg.run_path / "adapt"
    return TrainRun(
        name=f"{task.name}-{fp}", storage=str(root / "ray"), max_failures=cfg.adapt.max_failures,
        module_root=str(root), fp=fp, backbone_fingerprint=backbone_fp,
        config={"adapt": training_fields(job, scaling), "seed": job.seed},
        inputs={"backbone": job.backbone, "task_dir": str(task.dir), "data_digests": task.digests,
                "rows": {s: len(task.splits[s]) for s in task.splits}, "quarantined_rows": len(task.rejects)},
    )


def _fit_all(cfg: PipelineConfig, scaling: Scaling, pending: list[tuple[AdaptJob, TrainRun]]) -> list[dict]:
    """One ``fit_task`` per task, as many at once as the cluster's free resources hold (``schedule.run_jobs``);
    each trainer's ``fit()`` runs in a zero-CPU Ray task, its workers hold the resources."""
    import ray

    from modpipe.adapt.schedule import Job, capacity, run_jobs
    from modpipe.adapt.trainer import fit_task
    from modpipe.progress import Relay
    from modpipe.raycluster import ensure_ray

    ensure_ray(cfg.ray)
    remote_fit = ray.remote(num_cpus=0, max_retries=0)(fit_task)
    demand = scaling.demand()
    free, total = capacity()
    log.info("adapt: %d task(s), each trainer holds %s; Ray has %s free of %s", len(pending), demand, free, total)
    jobs = [Job(job.task, demand, (job, run_)) for job, run_ in pending]
    with Relay() as relay:  # each trainer's controller reports its epochs to this process's progress sink
        bars = {job.task: relay.task(f"adapt/{job.task}", job.epochs, f"adapt {job.task} (epochs)")
                for job, _ in pending}
        sched = run_jobs(jobs, lambda payload: remote_fit.remote(payload[0], scaling, payload[1],
                                                                 bars[payload[0].task]),
                         retries=cfg.adapt.task_retries, free=free, total=total)
    log.info("adapt: at most %s held at once", sched.peak_in_use)
    return [{"task": task, **out} for task, out in sched.results.items()]
