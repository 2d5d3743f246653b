"""Driver side of one task: build and fit its TorchTrainer, pick the best epoch, test it, write the module dir.

``fit_task`` runs inside a ``@ray.remote(num_cpus=0)`` task (see ``modpipe.adapt.run``) so several tasks' trainers
run at once; ``make_trainer`` is shared with the tune stage, whose trials build the same trainer.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from modpipe.adapt.loop import ADAPTER_DIR, module_spec, train_loop_per_worker

log = logging.getLogger("modpipe.adapt")

METRICS_FILE = "metrics.json"
MODULE_FILE = "module.json"
PREDICTIONS_FILE = "test_predictions.parquet"
COST_KEYS = ("trainable_params", "trainable_pct", "backbone_params", "train_seconds", "peak_memory_mb",
             "latency_ms_per_batch")


def make_trainer(job: dict[str, Any], scaling: dict[str, Any], name: str, storage: str, max_failures: int,
                 callbacks: list | None = None):
    """A TorchTrainer for one task's train function (gloo on CPU, nccl on GPU); runs named ``name`` resume."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = bool(scaling["use_gpu"])
    return TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config=job,
        scaling_config=ScalingConfig(num_workers=scaling["num_workers"], use_gpu=use_gpu,
                                     resources_per_worker=worker_resources(scaling)),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=name, storage_path=storage,
            checkpoint_config=CheckpointConfig(),  # keep every epoch's adapter (small); the best is picked after
            failure_config=FailureConfig(max_failures=max_failures),
            callbacks=callbacks or [],
        ),
    )


def worker_resources(scaling: dict[str, Any]) -> dict[str, float]:
    """Ray resources of one trainer worker: ``cpus_per_worker`` CPUs, and with ``use_gpu`` ``gpus_per_worker``
    GPUs (a fraction lets several trainers share a GPU; 0 means one whole GPU)."""
    res = {"CPU": float(scaling["cpus_per_worker"])}
    if scaling["use_gpu"]:
        res["GPU"] = float(scaling.get("gpus_per_worker") or 1.0)
    return res


def trainer_demand(scaling: dict[str, Any]) -> dict[str, float]:
    """What one task's trainer holds while it runs: its workers' resources (its driver task holds none)."""
    return {k: v * scaling["num_workers"] for k, v in worker_resources(scaling).items()}


def best_checkpoint(result, metric: str):
    """(checkpoint, metrics) of the reported epoch with the highest ``metric`` (ties: the later epoch)."""
    reported = [(c, m) for c, m in (result.best_checkpoints or []) if m and metric in m]
    if not reported:
        raise RuntimeError(f"Ray run {result.path} reported no checkpoint with {metric!r}")
    return max(reported, key=lambda cm: (cm[1][metric], cm[1].get("epoch", 0)))


def fit_task(job: dict[str, Any], scaling: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Train one task, evaluate its best epoch on the test split, write ``run["step_dir"]``.

    Never raises: returns ``{"task", "module", "metrics"}`` or ``{"task", "error"}`` so other tasks go on.
    """
    task = job["task"]
    _worker_logging()
    try:
        from ray.train import TrainingFailedError
    except ImportError:  # pragma: no cover - older layouts
        TrainingFailedError = Exception  # noqa: N806
    try:
        trainer = make_trainer(job, scaling, run["name"], run["storage"], run["max_failures"])
        t0 = time.time()
        log.info("%s: training (%d epochs, %d worker(s)) as Ray run %s/%s", task, job["epochs"],
                 scaling["num_workers"], run["storage"], run["name"])
        result = trainer.fit()
        seconds = time.time() - t0
        if result.error is not None:
            raise result.error
        return write_module(job, run, result, seconds, fit_started=t0)
    except TrainingFailedError as err:
        log.error("%s: training failed after %d retries: %s", task, run["max_failures"], err)
        return {"task": task, "error": f"training failed (Ray run {run['storage']}/{run['name']}): {err}"}
    except Exception as err:  # noqa: BLE001 - one task's failure must not stop the others
        log.exception("%s: failed", task)
        return {"task": task, "error": f"{type(err).__name__}: {err}"}


def write_module(job: dict, run: dict, result, seconds: float, fit_started: float) -> dict[str, Any]:
    """Copy the best epoch's module files into the step dir, write its manifest, test it through the loading
    contract (``load_module``: manifest + sha256 checked, then real predictions), record metrics and costs."""
    import numpy as np
    from transformers import AutoTokenizer

    from modpipe.adapt.data import read_split
    from modpipe.evaluate import classification_metrics, confusion, latency_per_batch
    from modpipe.lineage import StepDir, library_versions
    from modpipe.models.manifest import backbone_facts, write_manifest
    from modpipe.models.modules import encode, get_method, load_module, predict_proba

    task, metric = job["task"], job["select_metric"]
    ckpt, best = best_checkpoint(result, metric)
    history = sorted((m for _, m in result.best_checkpoints or [] if m), key=lambda m: m.get("epoch", 0))
    test = read_split(job["task_dir"], "test", job["num_labels"])
    spec = module_spec(job)
    step = StepDir(run["step_root"], task, run["fp"])
    with step.building(config=run["config"], inputs=run["inputs"]) as tmp:
        with ckpt.as_directory() as d:
            for f in Path(d, ADAPTER_DIR).iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        facts = backbone_facts(job["backbone"])
        if facts["backbone_fingerprint"] != run["backbone_fingerprint"]:
            raise RuntimeError(f"backbone {job['backbone']} changed while {task} trained")
        record = {
            "task": task, "labels": job["labels"], "num_labels": job["num_labels"],
            "module": {**spec, "family": get_method(spec["method"]).family, "freeze": job["freeze"],
                       "trained_backbone_weights": best["trained_backbone_weights"]},
            "method": spec["method"], "head": spec["head"], "freeze_policy": job["freeze"]["policy"],
            **({get_method(spec["method"]).config_section: spec["config"]}
               if get_method(spec["method"]).config_section else {}),
            "backbone": job["backbone"], **facts,
            "lr": job["lr"], "epochs": job["epochs"], "batch_size": job["batch_size"],
            "max_length": job["max_length"], "weight_decay": job["weight_decay"], "best_epoch": best["epoch"],
            "train_fraction": job["train_fraction"], "n_train": best["n_train"],
            "train_data_digest": run["inputs"]["data_digests"]["train"], "data_digests": run["inputs"]["data_digests"],
            "seed": job["seed"], "stage_fingerprint": run["fp"], "versions": library_versions(),
        }
        write_manifest(tmp, record)  # weights only so far: what load_module verifies below

        # test through the loading contract, as any consumer loads it
        model = load_module(job["backbone"], tmp)
        tokenizer = AutoTokenizer.from_pretrained(job["backbone"])
        probs = predict_proba(model, tokenizer, test.texts, job["max_length"], job["batch_size"])
        preds = probs.argmax(-1).tolist()
        _write_predictions(tmp / PREDICTIONS_FILE, test, preds, probs)
        batches = [encode(tokenizer, test.texts[i:i + job["batch_size"]], job["max_length"], model.padding_side)
                   for i in range(0, len(test), job["batch_size"])]
        with _no_grad():
            latency = latency_per_batch(lambda b: model(**b), batches)

        trainable, backbone_params = best["trainable_params"], best["backbone_params"]
        metrics = {
            **classification_metrics(test.label_ids, preds, prefix="test_", probs=probs,
                                     num_labels=job["num_labels"]),
            **{k: best[k] for k in best if k.startswith("val_")},
            "best_epoch": best["epoch"], "selected_by": metric,
            "method": spec["method"], "head": spec["head"], "freeze_policy": job["freeze"]["policy"],
            "train_fraction": job["train_fraction"],
            "n_train": best["n_train"], "n_val": best["n_val"], "n_test": len(test),
            "trainable_params": trainable, "total_params": best["total_params"],
            "backbone_params": backbone_params,
            "trainable_pct": round(100.0 * trainable / max(1, backbone_params), 4),
            "train_seconds": round(seconds, 3), "world_size": best["world_size"],
            "peak_memory_mb": max(m.get("peak_memory_mb", 0.0) for m in history) if history else None,
            **latency, "latency_batch_size": job["batch_size"],
            "train_started": history[0]["started_at"] if history else fit_started,
            "train_finished": history[-1]["reported_at"] if history else fit_started + seconds,
            "fit_started": fit_started, "fit_finished": fit_started + seconds,
            "test_confusion": confusion(test.label_ids, preds, job["num_labels"]),
            "history": [{k: m.get(k) for k in ("epoch", "train_loss", "val_accuracy", "val_macro_f1", "val_ece")}
                        for m in history],
            "ray_run": str(result.path),
        }
        metrics = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in metrics.items()}
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        summary = {k: metrics[k] for k in metrics if (k.startswith(("test_", "val_")) and k != "test_confusion")
                   or k in COST_KEYS}
        write_manifest(tmp, {**record, "metrics": summary})  # now with metrics and every file's sha256
    log.info("%s: %s: test acc %.3f, macro-F1 %.3f, ECE %.3f (best epoch %d by %s), %d trainable (%.3f%%) -> %s",
             task, spec["method"], metrics["test_accuracy"], metrics["test_macro_f1"], metrics["test_ece"] or 0.0,
             best["epoch"], metric, trainable, metrics["trainable_pct"], step.path)
    return {"task": task, "module": str(step.path), "metrics": str(step.path / METRICS_FILE)}


def _no_grad():
    import torch

    return torch.no_grad()


def _write_predictions(path: Path, split, preds: list[int], probs) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": split.ids, "label_id": pa.array(split.label_ids, pa.int64()),
                             "pred_id": pa.array(preds, pa.int64()),
                             "probs": pa.array([[float(x) for x in row] for row in probs],
                                               pa.list_(pa.float32()))}), path)


def _worker_logging() -> None:
    """A Ray task process has no logging configured: send modpipe.adapt INFO to stderr (reaches the driver)."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
