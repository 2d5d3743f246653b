"""Pretrain stage: DeepSpeed ZeRO data-parallel training of the backbone, run by Ray Train.

``run(cfg, ctx)`` (the ``pretrain`` step) -> ``{"backbone", "fingerprint", "metrics", "heldout_shard"}``; ``train(cfg,
curate_out, out, work)`` is the same without the contract gate, for callers that bring their own shards:

- ``backbone``: the step dir ``<run_dir>/pretrain/pretrain-<version>`` with the HF export (``config.json``, ``model.safetensors``,
  tokenizer files), ``fingerprint.json`` (models.fingerprint) and ``metrics.json``;
- ``fingerprint``: the backbone fingerprint (sha256 over every file that changes behaviour: weights, configs,
  tokenizer files; ``models.fingerprint``);
- ``metrics``: path of ``metrics.json`` (loss curve with ms/step, tokens/s and MFU on GPU; the held-out curve;
  final loss, params);
- ``heldout_shard``: the shard held out of training (its path relative to curate's manifest, as the manifest lists
  it), or ``None``. With two or more shards curate's last one is never trained on: every ``pretrain.eval_every``
  steps and at the last the ranks score its first ``pretrain.eval_rows`` rows (held-out loss and perplexity). With
  one shard nothing is held out (``metrics.json``'s ``heldout_note`` says so).

The step's version (``modpipe/steps.py``) hashes the model section, the versioned pretrain fields, the DeepSpeed
JSON's content, the seed, curate's version and, with ``pretrain.init_from`` (continued pretraining from a local HF
checkpoint, ``init_from.py``), the checkpoint's content digest. Ray Train's run lives in the step's work dir
(``<run_dir>/pretrain/.work-pretrain-<version>/ray/backbone``), so rerunning after a crash resumes from the latest
checkpoint (each rank's data stream, ``data.ShardStream``, resumes from the read position stored in it).
Multi-node: shards, tokenizer and ``run_dir`` must be on storage every node sees.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from modpipe.config import PipelineConfig
from modpipe.lineage import sha256_file
from modpipe.models.fingerprint import read_backbone_fingerprint, write_backbone_fingerprint
from modpipe.pretrain.ds_config import load_ds_config
from modpipe.pretrain.init_from import checkpoint_digest
from modpipe.pretrain.loop import HF_DIR, STATE_FILE, train_loop_per_worker

log = logging.getLogger("modpipe.pretrain")

METRICS_FILE = "metrics.json"


class PretrainError(RuntimeError):
    """Training failed; the message carries the worker's error and where the Ray run lives."""


def deepspeed_digest(cfg: PipelineConfig) -> dict:
    """The pretrain step's external inputs, part of its version: the DeepSpeed JSON's content (the file's path is
    not) and, with ``pretrain.init_from``, the checkpoint's content digest (``init_from.checkpoint_digest``)."""
    ds = load_ds_config(cfg.pretrain.deepspeed_config)
    if not cfg.pretrain.init_from:
        return ds  # unchanged for runs that start from fresh weights (their versions stay)
    return {"deepspeed": ds, "init_from": checkpoint_digest(cfg.pretrain.init_from)}


def _check_init_from(cfg: PipelineConfig, tokenizer: Path, vocab_size: int) -> dict | None:
    """With ``pretrain.init_from``: check the checkpoint against the config and curate's output before Ray starts
    (its architecture is the model section, its tokenizer is curate's, its weights fit); its lineage record
    (``{"path", "digest"}``) or ``None``."""
    from tokenizers import Tokenizer

    from modpipe.pretrain import init_from as ckpt

    if not cfg.pretrain.init_from:
        return None
    root = ckpt.check_dir(cfg.pretrain.init_from)
    model = ckpt.model_section(root, {})
    if model != cfg.model.model_dump():
        raise ckpt.InitFromError(f"pretrain.init_from {root}: its architecture {model} is not the model section "
                                 f"{cfg.model.model_dump()} (load the config with load_config)")
    if ckpt.read_tokenizer(root).get_vocab(True) != Tokenizer.from_file(str(tokenizer)).get_vocab(True):
        raise ckpt.InitFromError(f"pretrain.init_from {root}: its tokenizer is not curate's {tokenizer} (curate "
                                 f"must run with the same pretrain.init_from)")
    ckpt.check_weights(root, cfg.model, vocab_size)
    return {"path": str(root), "digest": ckpt.checkpoint_digest(root)}


def _outputs(path: Path) -> dict[str, Any]:
    metrics = json.loads((path / METRICS_FILE).read_text())
    return {
        "backbone": str(path),
        "fingerprint": read_backbone_fingerprint(path, verify=False),
        "metrics": str(path / METRICS_FILE),
        "heldout_shard": (metrics.get("heldout") or {}).get("path"),
    }


def split_heldout(manifest: dict) -> tuple[list[dict], dict | None]:
    """(manifest entries trained on, the held-out entry or ``None``): curate's last shard is held out when there
    are two or more; with one, nothing is."""
    entries = list(manifest["shards"])
    if len(entries) >= 2:
        return entries[:-1], entries[-1]
    return entries, None


def _read_inputs(curate_out: dict, num_workers: int) -> tuple[dict, list[str], Path, int]:
    """Manifest, shard paths, tokenizer.json and the vocabulary size; fails early and clearly on bad input.
    Every shard is checked, the held-out one included; the rows that must feed the workers are the training ones."""
    from tokenizers import Tokenizer

    manifest_path = Path(curate_out["manifest"])
    manifest = json.loads(manifest_path.read_text())
    root = manifest_path.parent
    shards = [str(root / s["path"]) for s in manifest["shards"]]
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(f"{manifest_path}: {len(missing)} shard(s) missing, e.g. {missing[0]}")
    for entry, path in zip(manifest["shards"], shards):
        if sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{path}: sha256 does not match {manifest_path}; the shard changed after curation")
    train_entries, _ = split_heldout(manifest)
    total_rows = sum(s["rows"] for s in train_entries)
    if total_rows < num_workers:
        raise ValueError(f"{manifest_path}: {total_rows} training rows cannot feed {num_workers} workers")
    tokenizer = root / manifest["tokenizer"]
    if manifest.get("tokenizer_sha256") and sha256_file(tokenizer) != manifest["tokenizer_sha256"]:
        raise ValueError(f"{tokenizer}: sha256 does not match {manifest_path}")
    vocab_size = Tokenizer.from_file(str(tokenizer)).get_vocab_size(with_added_tokens=True)
    return manifest, shards, tokenizer, vocab_size


def _fit(cfg: PipelineConfig, job: dict, storage: Path, name: str):
    """One TorchTrainer run; returns Ray's Result (its checkpoint is the final one, with ``hf/``). Progress: the
    steps of each checkpoint's report (every ``checkpoint_every`` steps and the last), with the loss."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    from modpipe.progress import Relay, train_callback

    p = cfg.pretrain
    try:
        with Relay() as relay:  # the callback runs in the run's controller actor; its events come back here
            bar = relay.task("pretrain", p.steps, "pretrain (steps)")
            trainer = TorchTrainer(
                train_loop_per_worker=train_loop_per_worker,
                train_loop_config=job,
                scaling_config=ScalingConfig(num_workers=p.num_workers, use_gpu=p.use_gpu),
                torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo"),
                run_config=RunConfig(
                    name=name,
                    storage_path=str(storage),
                    checkpoint_config=CheckpointConfig(num_to_keep=p.keep_checkpoints),
                    failure_config=FailureConfig(max_failures=p.max_failures),
                    callbacks=[train_callback(bar, "step", ("loss",))],
                ),
            )
            result = trainer.fit()
    except TrainingFailedError as err:
        raise PretrainError(f"pretraining failed (Ray run {storage / name}): {err}") from err
    if result.checkpoint is None:
        raise PretrainError(f"pretraining reported no checkpoint (Ray run {storage / name})")
    return result


def run(cfg: PipelineConfig, ctx) -> dict[str, Any]:
    """The pretrain step: refuses curate output whose contracts did not pass, then ``train`` into the step dir."""
    from modpipe.gates import require_contracts

    require_contracts(ctx)
    return train(cfg, ctx.inputs["curate"].outputs, ctx.out, ctx.work)


def train(cfg: PipelineConfig, curate_out: dict, out: Path, work: Path) -> dict[str, Any]:
    """Pretrain the backbone on curate's shards and export it to ``out``; Ray Train's run (checkpoints) lives in
    ``work/ray/backbone``, so calling again with the same ``work`` after a crash resumes from the latest one."""
    from modpipe.raycluster import ensure_ray

    p = cfg.pretrain
    ds_base = load_ds_config(p.deepspeed_config)
    manifest, shards, tokenizer, vocab_size = _read_inputs(curate_out, p.num_workers)
    init_from = _check_init_from(cfg, tokenizer, vocab_size)
    train_entries, held = split_heldout(manifest)
    train_shards, heldout_shard = shards[:len(train_entries)], (shards[-1] if held else None)
    ensure_ray(cfg.ray)
    job = {
        "model": cfg.model, "pretrain": p, "seed": cfg.seed, "ds_config": ds_base, "shards": train_shards,
        "heldout_shard": heldout_shard, "seq_len": manifest["seq_len"], "vocab_size": vocab_size,
        "tokenizer": str(tokenizer), "init_from": init_from["path"] if init_from else None,
    }
    log.info("pretrain: %d steps on %d rows of %d shard(s), held out: %s, %d %s workers, ZeRO-%d", p.steps,
             sum(s["rows"] for s in train_entries), len(train_entries), held["path"] if held else "nothing",
             p.num_workers, "GPU" if p.use_gpu else "CPU", p.zero_stage)
    if init_from:
        log.info("pretrain: starting from %s (digest %s)", init_from["path"], init_from["digest"][:12])
    result = _fit(cfg, job, Path(work) / "ray", name="backbone")
    _export(cfg, result, Path(out), vocab_size, held, init_from)
    return _outputs(Path(out))


def _export(cfg: PipelineConfig, result, tmp: Path, vocab_size: int, held: dict | None = None,
            init_from: dict | None = None) -> None:
    """The final checkpoint's HF export, its fingerprint (with ``init_from``: the checkpoint it started from) and
    the run's metrics, into ``tmp``."""
    p = cfg.pretrain
    with result.checkpoint.as_directory() as ckpt:
        hf = Path(ckpt, HF_DIR)
        if not (hf / "config.json").is_file():
            raise PretrainError(f"final checkpoint {result.checkpoint.path} has no {HF_DIR}/ export")
        shutil.copytree(hf, tmp, dirs_exist_ok=True)
        state = json.loads(Path(ckpt, STATE_FILE).read_text())
    backbone_fp = write_backbone_fingerprint(tmp, lineage={"init_from": init_from} if init_from else None)
    eval_curve = state.get("eval_curve") or []  # .get: a run checkpointed before held-out evaluation existed
    metrics = {
        "final_loss": state["final_loss"],
        "initial_loss": state["loss_curve"][0]["loss"] if state["loss_curve"] else None,
        "steps": state["step"],
        "tokens_seen": state["tokens_seen"],
        "tokens_per_s": state["tokens_per_s"],
        "ms_per_step": state["ms_per_step"],
        "mfu": state["mfu"],
        "peak_tflops": p.peak_tflops if state["mfu"] is not None else None,
        "params": state["params"],
        "flops_per_token": state["flops_per_token"],
        "world_size": state["world_size"],
        "zero_stage": state["zero_stage"],
        "bf16": state["bf16"],
        "device": state["device"],
        "micro_batch_size": state["micro_batch_size"],
        "gradient_accumulation_steps": state["gradient_accumulation_steps"],
        "seq_len": state["seq_len"],
        "tokens_per_step": state["tokens_per_step"],
        "attn_implementation": state.get("attn_implementation"),  # .get: a run checkpointed before these existed
        "activation_checkpointing": state.get("activation_checkpointing"),
        "fused_adam": state.get("fused_adam"),
        "skipped_rows_rank0": state["skipped_rows"],
        "resumed_from_step": state["resumed_from"],
        "vocab_size": vocab_size,
        "backbone_fingerprint": backbone_fp,
        "init_from": init_from,
        "loss_curve": state["loss_curve"],
        "heldout": ({"path": held["path"], "sha256": held["sha256"], "rows": held["rows"],
                     "rows_scored": state.get("heldout_rows_scored")} if held else None),
        "heldout_note": ("curate's last shard, never trained on" if held else
                         "curate wrote one shard: nothing held out, no held-out loss"),
        "eval_every": p.eval_every,
        "final_heldout_loss": eval_curve[-1]["val_loss"] if eval_curve else None,
        "final_heldout_ppl": eval_curve[-1]["val_ppl"] if eval_curve else None,
        "eval_curve": eval_curve,
    }
    (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    log.info("pretrain: final loss %s, %s tokens/s", metrics["final_loss"], metrics["tokens_per_s"])
