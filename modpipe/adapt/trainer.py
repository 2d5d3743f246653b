"""Driver side of one task: build and fit its TorchTrainer, pick the best epoch, test it, write the module dir.

``fit_task`` runs inside a ``@ray.remote(num_cpus=0)`` task (see ``modpipe.adapt.train_tasks``) so several tasks'
trainers run at once; ``make_trainer`` and ``write_module`` are shared with the tune stage, whose trials build the
same trainer and write the same module dir.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

from modpipe.adapt.job import AdaptJob, Scaling, TrainRun
from modpipe.adapt.loop import ADAPTER_DIR, STATE_FILE, train_loop_per_worker

log = logging.getLogger("modpipe.adapt")

METRICS_FILE = "metrics.json"
MODULE_FILE = "module.json"
PREDICTIONS_FILE = "test_predictions.parquet"
COST_KEYS = ("trainable_params", "trainable_pct", "backbone_params", "train_seconds", "peak_memory_mb",
             "latency_ms_per_batch")


def make_trainer(job: AdaptJob, scaling: Scaling, name: str, storage: str, max_failures: int,
                 callbacks: list | None = None):
    """A TorchTrainer for one task's train function (gloo on CPU, nccl on GPU); runs named ``name`` resume."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config={"job": job},  # Ray Train hands its workers a dict
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=scaling.worker_resources()),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name, storage_path=storage,
            checkpoint_config=CheckpointConfig(),  # keep every epoch's adapter (small); the best is picked after
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks or [],
        ),
    )


def best_checkpoint(checkpoints: list, metric: str, direction: str = "higher"):
    """(checkpoint, metrics) of the reported epoch with the best ``metric`` (highest, or lowest with ``direction``
    ``lower``; ties: the later epoch; an epoch whose metric is not a number never wins)."""
    sign = 1.0 if direction == "higher" else -1.0
    reported = [(c, m) for c, m in checkpoints if m and isinstance(m.get(metric), (int, float))
                and math.isfinite(m[metric])]
    if not reported:
        raise RuntimeError(f"no reported checkpoint has a numeric {metric!r}")
    return max(reported, key=lambda cm: (sign * cm[1][metric], cm[1].get("epoch", 0)))


EPOCH_FIELDS = ("train_loss", "val_macro_f1", "val_rmse")
"""What a task's progress bar shows beside its epochs."""


def fit_task(job: AdaptJob, scaling: Scaling, run: TrainRun, bar=None) -> dict[str, Any]:
    """Train one task, evaluate its best epoch on the test split, write its module dir; ``bar``: a
    ``modpipe.progress`` bar (of a ``Relay``: this runs in a Ray task) moved at every epoch's report.

    Never raises: returns ``{"task", "module", "metrics"}`` or ``{"task", "error"}`` so other tasks go on.
    """
    _worker_logging()
    try:
        from ray.train import TrainingFailedError
    except ImportError:  # pragma: no cover - older layouts
        TrainingFailedError = Exception  # noqa: N806
    try:
        from modpipe.progress import train_callback

        callbacks = [train_callback(bar, "epoch", EPOCH_FIELDS)] if bar is not None else None
        trainer = make_trainer(job, scaling, run.name, run.storage, run.max_failures, callbacks)
        t0 = time.time()
        log.info("%s: training (%d epochs, %d worker(s)) as Ray run %s/%s", job.task, job.epochs,
                 scaling.num_workers, run.storage, run.name)
        result = trainer.fit()
        seconds = time.time() - t0
        if result.error is not None:
            raise result.error
        return write_module(job, run, result.best_checkpoints or [], str(result.path), seconds, fit_started=t0)
    except TrainingFailedError as err:
        log.error("%s: training failed after %d retries: %s", job.task, run.max_failures, err)
        return {"task": job.task, "error": f"training failed (Ray run {run.storage}/{run.name}): {err}"}
    except Exception as err:  # noqa: BLE001 - one task's failure must not stop the others
        log.exception("%s: failed", job.task)
        return {"task": job.task, "error": f"{type(err).__name__}: {err}"}


def write_module(job: AdaptJob, run: TrainRun, checkpoints: list, ray_run: str, seconds: float,
                 fit_started: float) -> dict[str, Any]:
    """The module dir ``<run.module_root>/<task>-<run.fp>`` from a Ray Train run's reported ``checkpoints``
    (``(Checkpoint, metrics)`` pairs, one per epoch): the best epoch's module files and manifest, then a test
    through the loading contract (``load_module``: manifest + sha256 checked, then real predictions), metrics and
    costs. Returns ``{"task", "module", "metrics"}``; a dir already finished (same fingerprint) is kept as is."""
    from modpipe.adapt.data import read_split
    from modpipe.adapt.gradflow import from_checkpoints
    from modpipe.lineage import StepDir
    from modpipe.models.manifest import backbone_facts, write_manifest

    from modpipe.evaluate.problems import higher_is_better

    problem = job.kind
    direction = "higher" if higher_is_better(job.select_metric) else "lower"
    ckpt, best = best_checkpoint(checkpoints, job.select_metric, direction)
    history = sorted((m for _, m in checkpoints if m), key=lambda m: m.get("epoch", 0))
    test = read_split(job.task_dir, "test", job.num_labels, job.problem)
    step = StepDir(run.module_root, job.task, run.fp)
    with step.building(config=run.config, inputs=run.inputs) as tmp:
        with ckpt.as_directory() as d:
            for f in Path(d, ADAPTER_DIR).iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        facts = backbone_facts(job.backbone)
        if facts["backbone_fingerprint"] != run.backbone_fingerprint:
            raise RuntimeError(f"backbone {job.backbone} changed while {job.task} trained")
        record = _manifest(job, run, best, facts)
        write_manifest(tmp, record)  # weights only so far: what load_module verifies below
        metrics = {**_test_through_contract(job, tmp, test), **_train_metrics(job, best, history, seconds,
                                                                               fit_started), "ray_run": ray_run}
        if best.get("val_threshold") is not None:
            metrics["decision_threshold"] = best["val_threshold"]
        metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        metrics.update(from_checkpoints(checkpoints, STATE_FILE))  # the gradient-flow profile, where recorded
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        summary = {k: metrics[k] for k in metrics if (k.startswith(("test_", "val_"))
                                                      and k not in ("test_confusion", "test_slices", "test_label_f1"))
                   or k in COST_KEYS}
        write_manifest(tmp, {**record, "metrics": summary})  # now with metrics and every file's sha256
    shown = ", ".join(f"{k.removeprefix('test_')} {metrics[k]:.3f}" for k in (f"test_{m}" for m in problem.metrics)
                      if isinstance(metrics.get(k), float))
    log.info("%s: %s: test %s (best epoch %d by %s), %d trainable (%.3f%%) -> %s", job.task, job.method, shown,
             best["epoch"], job.select_metric, metrics["trainable_params"], metrics["trainable_pct"], step.path)
    return {"task": job.task, "module": str(step.path), "metrics": str(step.path / METRICS_FILE)}


def _manifest(job: AdaptJob, run: TrainRun, best: dict, facts: dict) -> dict[str, Any]:
    """module.json before metrics: what the module is, what it sits on, what it was trained with and on."""
    from modpipe.lineage import library_versions
    from modpipe.models.modules import get_method

    spec = job.spec()
    freeze = job.freeze.model_dump(mode="json")
    digests = run.inputs["data_digests"]
    return {
        "task": job.task, "labels": list(job.labels), "num_labels": job.num_labels, "problem": job.problem,
        **({"target_scale": dict(job.target_scale)} if job.target_scale else {}),
        **({"decision_threshold": best["val_threshold"]} if best.get("val_threshold") is not None else {}),
        "module": {**spec, "family": get_method(job.method).family, "freeze": freeze,
                   "trained_backbone_weights": best["trained_backbone_weights"]},
        "method": job.method, "head": job.head, "freeze_policy": freeze["policy"],
        **({job.module.section: spec["config"]} if job.module.section else {}),
        "backbone": job.backbone, **facts,
        "lr": job.lr, "epochs": job.epochs, "batch_size": job.batch_size, "max_length": job.max_length,
        "weight_decay": job.weight_decay, "best_epoch": best["epoch"], "train_fraction": job.train_fraction,
        "n_train": best["n_train"], "train_data_digest": digests["train"], "data_digests": digests,
        "seed": job.seed, "stage_fingerprint": run.fp, "versions": library_versions(),
    }


def _test_through_contract(job: AdaptJob, module_dir: Path, test) -> dict[str, Any]:
    """Load the module as any consumer does, predict the test split (predictions written beside it), time it."""
    from transformers import AutoTokenizer

    from modpipe.evaluate import confusion, latency_per_batch
    from modpipe.evaluate.slices import slice_metrics
    from modpipe.models.modules import encode, load_module, predict_proba
    from modpipe.evaluate.scoring import score_split

    model = load_module(job.backbone, module_dir)
    tokenizer = AutoTokenizer.from_pretrained(job.backbone)
    scores = predict_proba(model, tokenizer, test.texts, job.max_length, job.batch_size)  # (N, K)
    measured = score_split(model.modpipe_manifest, test, scores, module_dir / PREDICTIONS_FILE)
    batches = [encode(tokenizer, test.texts[i:i + job.batch_size], job.max_length, model.padding_side)
               for i in range(0, len(test), job.batch_size)]
    with _no_grad():
        latency = latency_per_batch(lambda b: model(**b), batches)
    extra = {"test_confusion": confusion(test.targets, measured["preds"], job.num_labels)} \
        if job.problem == "classification" else {}
    return {**measured["metrics"], **slice_metrics(job.task_dir, test.ids, test.targets, measured["preds"],
                                                   problem=job.kind),
            **latency, "latency_batch_size": job.batch_size, "n_test": len(test), **extra}


def _train_metrics(job: AdaptJob, best: dict, history: list[dict], seconds: float,
                   fit_started: float) -> dict[str, Any]:
    """The chosen epoch's val metrics, sizes and costs, and the per-epoch history."""
    trainable, backbone_params = best["trainable_params"], best["backbone_params"]
    return {
        **{k: best[k] for k in best if k.startswith("val_")},
        "best_epoch": best["epoch"], "selected_by": job.select_metric,
        "method": job.method, "head": job.head, "freeze_policy": job.freeze.policy,
        "train_fraction": job.train_fraction, "n_train": best["n_train"], "n_val": best["n_val"],
        "trainable_params": trainable, "total_params": best["total_params"], "backbone_params": backbone_params,
        "trainable_pct": round(100.0 * trainable / max(1, backbone_params), 4),
        "train_seconds": round(seconds, 3), "world_size": best["world_size"],
        "peak_memory_mb": max(m.get("peak_memory_mb", 0.0) for m in history) if history else None,
        "train_started": history[0]["started_at"] if history else fit_started,
        "train_finished": history[-1]["reported_at"] if history else fit_started + seconds,
        "fit_started": fit_started, "fit_finished": fit_started + seconds,
        "history": [{k: m.get(k) for k in ("epoch", "train_loss", *(f"val_{x}" for x in job.kind.metrics))}
                    for m in history],
    }


def _no_grad():
    import torch

    return torch.no_grad()


def _worker_logging() -> None:
    """A Ray task process has no logging configured: send modpipe.adapt INFO to stderr (reaches the driver)."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
