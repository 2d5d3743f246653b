"""Adapt stage: one plug-in module + classification head per task on the backbone, tasks in parallel.

``run(cfg, backbone, tasks_dir)`` -> ``{"modules": {task: dir}, "metrics": {task: metrics.json}, "failed":
{task: reason}}``.

Each task trains the module kind ``cfg.adapt.methods.get(task, cfg.adapt.method)`` (``modpipe.models.modules``)
with the ``cfg.adapt.head`` head under the ``cfg.adapt.freeze`` policy, on its own Ray Train ``TorchTrainer``
(``cfg.adapt.num_workers_per_task`` workers of ``cpus_per_worker`` CPUs / ``gpus_per_worker`` GPUs; DDP over gloo
on CPU, nccl on GPU). Every ``fit()`` runs inside a ``@ray.remote(num_cpus=0)`` task, so the trainers run at once
and only their workers hold CPUs/GPUs; ``schedule.run_jobs`` starts them only while their demand fits what the
cluster has free (waves otherwise) and retries a failed task ``cfg.adapt.task_retries`` times after the others
started. A task whose data is unusable or whose training fails every attempt is reported in ``failed`` and the
others go on; ``run`` raises only when no task produced a module.

Module dir ``<run_dir>/adapt/<task>-<fp>``: the best epoch's module files (``adapter_config.json``,
``adapter_model.safetensors``: PEFT's for PEFT kinds, with ``score`` saved through ``modules_to_save``; plus
``backbone_delta.safetensors`` when backbone blocks trained), ``metrics.json`` (test accuracy, macro-F1, AUROC,
ECE from real predictions of the reloaded module, val metrics of the chosen epoch, trainable %, train seconds, peak
memory, latency per batch), ``test_predictions.parquet`` and ``module.json`` (the module contract,
``modpipe.models.manifest``). ``fp`` hashes the task's training fields (its method and that method's section, head,
freeze policy, train fraction, ...), the seed, the backbone fingerprint and the task's split + label digests: a
finished dir is reused as is. Ray runs live under ``<run_dir>/adapt/ray/<task>-<fp>``; rerunning after a crash
resumes them from their latest epoch.

Load a module: ``modpipe.models.modules.load_module(backbone_dir, module_dir)`` (checks module.json against the
backbone and every file's sha256).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from modpipe.adapt.data import Task, TaskDataError, list_tasks, load_task
from modpipe.config import PipelineConfig
from modpipe.lineage import StepDir, fingerprint

log = logging.getLogger("modpipe.adapt")

# Fields that change where or how robustly training runs, not what it learns.
COSMETIC_FIELDS = ("tasks", "cpus_per_worker", "gpus_per_worker", "max_failures", "task_retries")
# Method sections: a task's fingerprint keeps only its own method's.
METHOD_SECTIONS = ("lora", "ia3", "prefix", "bottleneck")


class AdaptError(RuntimeError):
    """No task produced a module; the message lists each task's reason."""


def select_tasks(cfg: PipelineConfig, tasks_dir: str | Path) -> list[str]:
    """``cfg.adapt.tasks`` that exist in ``tasks_dir`` (config order); when none do, every task there."""
    available = list_tasks(tasks_dir)
    chosen = [t for t in cfg.adapt.tasks if t in available]
    if not chosen:
        log.warning("adapt: none of %s in %s; adapting every task found there: %s", cfg.adapt.tasks, tasks_dir,
                    available)
        chosen = available
    return chosen


def hparams(cfg: PipelineConfig, **overrides: Any) -> dict[str, Any]:
    """The training fields of ``cfg.adapt`` (sections as dicts) with overrides (tune's lr / r)."""
    a = {k: v for k, v in cfg.adapt.model_dump(mode="json").items() if k not in COSMETIC_FIELDS}
    lora = dict(a["lora"])
    if "r" in overrides:
        lora["r"] = int(overrides.pop("r"))
    if "lr" in overrides:  # a learning rate given by the caller (tune) wins over the per-method defaults
        a["method_lr"] = {}
    a.update(overrides, lora=lora)
    return a


def task_hparams(hp: dict[str, Any], task: str) -> dict[str, Any]:
    """One task's training fields: its method (``methods`` override, else ``method``) and only that method's
    section, so adding another task's override or changing an unused section reuses this task's module."""
    from modpipe.models.modules import get_method

    method = hp.get("methods", {}).get(task, hp["method"])
    section = get_method(method).config_section
    out = {k: v for k, v in hp.items() if k not in ("methods", "method_lr") and k not in METHOD_SECTIONS}
    out["method"] = method
    out["lr"] = hp.get("method_lr", {}).get(method, hp["lr"])
    if section:
        out[section] = hp[section]
    return out


def make_job(cfg: PipelineConfig, task: Task, backbone: str, hp: dict[str, Any]) -> dict[str, Any]:
    """The worker's config: plain JSON (paths + the task's hparams)."""
    thp = task_hparams(hp, task.name)
    job = {
        "task": task.name, "task_dir": str(task.dir), "backbone": str(Path(backbone).resolve()),
        "labels": task.labels, "num_labels": len(task.labels), "method": thp["method"], "head": thp["head"],
        "freeze": thp["freeze"], "train_fraction": thp["train_fraction"], "lora": hp["lora"], "lr": thp["lr"],
        "epochs": thp["epochs"], "batch_size": thp["batch_size"], "max_length": thp["max_length"],
        "weight_decay": thp["weight_decay"], "select_metric": thp["select_metric"], "seed": cfg.seed,
    }
    job.update({k: thp[k] for k in METHOD_SECTIONS if k in thp})
    return job


def scaling(cfg: PipelineConfig) -> dict[str, Any]:
    a = cfg.adapt
    return {"num_workers": a.num_workers_per_task, "use_gpu": a.use_gpu, "cpus_per_worker": a.cpus_per_worker,
            "gpus_per_worker": a.gpus_per_worker}


def task_fingerprint(hp: dict[str, Any], seed: int, backbone_fp: str, task: Task) -> str:
    return fingerprint({"adapt": task_hparams(hp, task.name), "seed": seed, "backbone": backbone_fp,
                        "task": task.name, "labels": task.labels, "data": task.digests})


def _write_quarantine(root: Path, task: str, records: list[dict]) -> None:
    qdir = root / "quarantine"
    path = qdir / f"{task}.jsonl"
    if not records:
        path.unlink(missing_ok=True)
        return
    qdir.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    log.warning("adapt: %s: %d row(s) quarantined -> %s", task, len(records), path)


def run(cfg: PipelineConfig, backbone: str, tasks_dir: str) -> dict[str, Any]:
    """Adapt every selected task (see the module docstring); finished modules are reused."""
    from modpipe.models.fingerprint import read_backbone_fingerprint

    root = cfg.run_path / "adapt"
    backbone_fp = read_backbone_fingerprint(backbone)  # refuses a backbone whose files changed since export
    names = select_tasks(cfg, tasks_dir)
    if not names:
        raise AdaptError(f"no tasks in {tasks_dir}")
    hp = hparams(cfg)
    modules: dict[str, str] = {}
    metrics: dict[str, str] = {}
    failed: dict[str, str] = {}
    pending: list[tuple[dict, dict]] = []
    for name in names:
        try:
            task = load_task(tasks_dir, name)
        except TaskDataError as err:
            log.error("adapt: %s rejected: %s", name, err)
            failed[name] = f"bad task data: {err}"
            continue
        _write_quarantine(root, name, task.rejects)
        fp = task_fingerprint(hp, cfg.seed, backbone_fp, task)
        step = StepDir(root, name, fp)
        if step.done():
            log.info("adapt: %s: reusing %s", name, step.path)
            modules[name], metrics[name] = str(step.path), str(step.path / "metrics.json")
            continue
        job = make_job(cfg, task, backbone, hp)
        run_info = {
            "name": f"{name}-{fp}", "storage": str(root / "ray"), "max_failures": cfg.adapt.max_failures,
            "step_root": str(root), "fp": fp, "backbone_fingerprint": backbone_fp,
            "config": {"adapt": task_hparams(hp, name), "seed": cfg.seed},
            "inputs": {"backbone": str(backbone), "task_dir": str(task.dir), "data_digests": task.digests,
                       "rows": {s: len(task.splits[s]) for s in task.splits},
                       "quarantined_rows": len(task.rejects)},
        }
        pending.append((job, run_info))

    if pending:
        for job, run_info in pending:
            log.info("adapt: %s: %d labels -> %s", job["task"], job["num_labels"],
                     Path(run_info["step_root"]) / run_info["name"])
        for out in _fit_all(cfg, pending):
            if "error" in out:
                failed[out["task"]] = out["error"]
            else:
                modules[out["task"]], metrics[out["task"]] = out["module"], out["metrics"]

    for name, reason in failed.items():
        log.error("adapt: %s failed: %s", name, reason)
    if not modules:
        raise AdaptError("every task failed: " + "; ".join(f"{t}: {r}" for t, r in failed.items()))
    return {"modules": modules, "metrics": metrics, "failed": failed}


def _fit_all(cfg: PipelineConfig, pending: list[tuple[dict, dict]]) -> list[dict]:
    """One ``fit_task`` per task, as many at once as the cluster's free resources hold (``schedule.run_jobs``);
    each trainer's ``fit()`` runs in a zero-CPU Ray task, its workers hold the resources."""
    import ray

    from modpipe.adapt.schedule import Job, capacity, run_jobs
    from modpipe.adapt.trainer import fit_task, trainer_demand
    from modpipe.raycluster import ensure_ray

    ensure_ray(cfg.ray)
    remote_fit = ray.remote(num_cpus=0, max_retries=0)(fit_task)
    sc = scaling(cfg)
    demand = trainer_demand(sc)
    free, total = capacity()
    log.info("adapt: %d task(s), each trainer holds %s; Ray has %s free of %s", len(pending),
             demand, free, total)
    jobs = [Job(job["task"], demand, (job, run_info)) for job, run_info in pending]
    sched = run_jobs(jobs, lambda payload: remote_fit.remote(payload[0], sc, payload[1]),
                     retries=cfg.adapt.task_retries, free=free, total=total)
    log.info("adapt: at most %s held at once", sched.peak_in_use)
    return [{"task": task, **out} for task, out in sched.results.items()]
