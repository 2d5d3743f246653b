"""What each Ray Train worker runs for one task: LoRA + ``score`` head on the frozen backbone.

config -> setup -> data -> model (PEFT LoRA, backbone frozen) -> optimizer -> resume -> epochs.

Every epoch ends with a validation pass (val rows split over the ranks, predictions gathered) and a
``ray.train.report`` from every rank (a barrier): rank 0 attaches a checkpoint with the PEFT adapter
(``adapter/``, safetensors), the optimizer state and the run state, the other ranks attach none. Ray Train V2
keeps only metrics that come with a checkpoint, so every epoch's metrics ride on one. A rerun under the same
run name resumes after the latest reported epoch. Per-rank batch = ``batch_size``; global = ``batch_size * world``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

ADAPTER_DIR = "adapter"  # PEFT save_pretrained inside a Ray checkpoint
OPTIM_FILE = "optimizer.pt"  # torch AdamW state (tensors and numbers only: loaded with weights_only=True)
STATE_FILE = "train_state.json"


def _logger(rank: int, task: str) -> logging.Logger:
    log = logging.getLogger("modpipe.adapt")
    if not log.handlers:  # a Ray worker process has no logging set up; its stderr reaches the driver
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(name)s [{task} rank {rank}] %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    return log


# ---------------------------------------------------------------- model policy (shared with the driver)


def build_model(backbone: str, num_labels: int, lora: dict[str, Any], seed: int):
    """``AutoModelForSequenceClassification`` on the backbone + LoRA (task SEQ_CLS: ``score`` is trainable and
    saved through ``modules_to_save``); every backbone weight is frozen."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from modpipe.models.backbone import PAD_ID

    torch.manual_seed(seed)  # the fresh `score` head and LoRA A matrices
    base = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=num_labels)
    if base.config.pad_token_id is None:  # the classifier pools the last non-pad token
        base.config.pad_token_id = PAD_ID
    peft_cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=int(lora["r"]), lora_alpha=int(lora["alpha"]),
        lora_dropout=float(lora["dropout"]), target_modules=list(lora["target_modules"]),
    )
    return get_peft_model(base, peft_cfg)


def load_module(backbone: str, num_labels: int, module_dir: str | Path):
    """The loading contract: the backbone's classifier + ``PeftModel.from_pretrained`` of a module dir."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=num_labels)
    return PeftModel.from_pretrained(base, str(module_dir)).eval()


def param_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def predict(model, tokenizer, texts: list[str], max_length: int, batch_size: int, device=None) -> list[int]:
    """Arg-max class ids, batches in the given order (right padding; the head pools the last real token)."""
    import torch

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds: list[int] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            logits = model(input_ids=enc["input_ids"].to(device),
                           attention_mask=enc["attention_mask"].to(device)).logits  # (B, K)
            preds += logits.argmax(-1).tolist()
    model.train(was_training)
    return preds


def epoch_order(n: int, world: int, seed: int, epoch: int):
    """The same shuffled row order on every rank, padded by wrap-around to a multiple of ``world`` so every rank
    runs the same number of steps (DDP needs matching collectives)."""
    import numpy as np

    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return np.concatenate([perm, perm[: (-n) % world]])


# ---------------------------------------------------------------- the worker


def train_loop_per_worker(job: dict[str, Any]) -> dict[str, Any]:
    # ---------------------------------------------------------------- config
    task, backbone, num_labels = job["task"], job["backbone"], job["num_labels"]
    seed, epochs, batch_size, max_length = job["seed"], job["epochs"], job["batch_size"], job["max_length"]
    started = time.time()

    # ---------------------------------------------------------------- setup
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoTokenizer

    from modpipe.adapt.data import read_split
    from modpipe.evaluate import classification_metrics

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    device = ray.train.torch.get_device()  # cuda:<local> under use_gpu, else cpu
    log = _logger(rank, task)

    # ---------------------------------------------------------------- data
    train = read_split(job["task_dir"], "train", num_labels)
    val = read_split(job["task_dir"], "val", num_labels)
    tokenizer = AutoTokenizer.from_pretrained(backbone)  # <pad> = 0, right padding
    steps_per_epoch = -(-len(epoch_order(len(train), world, seed, 0)) // world // batch_size)
    log.info("data: %d train / %d val rows, %d labels, %d steps/epoch/rank (batch %d x %d ranks)",
             len(train), len(val), num_labels, steps_per_epoch, batch_size, world)

    # ---------------------------------------------------------------- model
    model = build_model(backbone, num_labels, job["lora"], seed)
    trainable, total = param_counts(model)
    log.info("model: %d trainable / %d parameters (%.3f%%): LoRA r=%s on %s + score head; backbone frozen",
             trainable, total, 100.0 * trainable / total, job["lora"]["r"], ",".join(job["lora"]["target_modules"]))
    model = ray.train.torch.prepare_model(model)  # to device; DDP when world > 1
    core = model.module if isinstance(model, DistributedDataParallel) else model  # the PeftModel

    # ---------------------------------------------------------------- optimizer
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job["lr"],
                            weight_decay=job["weight_decay"])

    # ---------------------------------------------------------------- resume
    state: dict[str, Any] = {"epoch": 0, "history": [], "started_at": started}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        with checkpoint.as_directory() as ckpt:
            set_peft_model_state_dict(core, load_file(str(Path(ckpt, ADAPTER_DIR, "adapter_model.safetensors"))))
            opt.load_state_dict(torch.load(Path(ckpt, OPTIM_FILE), map_location=device, weights_only=True))
            state = json.loads(Path(ckpt, STATE_FILE).read_text())
        log.info("resumed after epoch %d", state["epoch"])

    # ---------------------------------------------------------------- epochs
    for epoch in range(state["epoch"] + 1, epochs + 1):
        model.train()
        mine = epoch_order(len(train), world, seed, epoch)[rank::world]  # this rank's rows
        loss_sum = torch.zeros((), device=device)
        n_steps = 0
        for start in range(0, len(mine), batch_size):
            idx = mine[start:start + batch_size]
            enc = tokenizer([train.texts[i] for i in idx], truncation=True, max_length=max_length,
                            padding=True, return_tensors="pt")
            y = torch.tensor([train.label_ids[i] for i in idx], device=device)  # (B,)
            logits = model(input_ids=enc["input_ids"].to(device),
                           attention_mask=enc["attention_mask"].to(device)).logits  # (B, K)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces the LoRA + head gradients here
            opt.step()
            loss_sum += loss.detach()
            n_steps += 1
        if distributed:
            dist.all_reduce(loss_sum)
        train_loss = loss_sum.item() / max(1, n_steps * world)

        # validation: rows rank::world on each rank, predictions gathered so every rank sees all of them
        val_idx = list(range(rank, len(val), world))
        val_pred = predict(core, tokenizer, [val.texts[i] for i in val_idx], max_length, batch_size, device)
        if distributed:
            parts: list = [None] * world
            dist.all_gather_object(parts, (val_idx, val_pred))
            by_row = {i: p for idx_part, pred_part in parts for i, p in zip(idx_part, pred_part)}
            val_pred = [by_row[i] for i in range(len(val))]
        metrics = classification_metrics(val.label_ids, val_pred, prefix="val_")
        metrics.update(epoch=epoch, train_loss=round(train_loss, 5), n_train=len(train), n_val=len(val),
                       trainable_params=trainable, total_params=total, world_size=world,
                       started_at=state["started_at"], reported_at=time.time())
        log.info("epoch %d/%d | train loss %.4f | val acc %.3f | val macro-F1 %.3f", epoch, epochs, train_loss,
                 metrics["val_accuracy"], metrics["val_macro_f1"])
        state["epoch"] = epoch
        state["history"].append(metrics)
        _report(core, opt, state, metrics, rank)
    return {"epochs": state["epoch"], "trainable_params": trainable, "total_params": total}


def _report(core, opt, state: dict, metrics: dict, rank: int) -> None:
    """All ranks report (a barrier); rank 0 attaches the adapter + optimizer + state as the checkpoint."""
    import ray.train
    import torch

    with tempfile.TemporaryDirectory(prefix="modpipe-adapt-") as tmp:
        checkpoint = None
        if rank == 0:
            core.save_pretrained(Path(tmp, ADAPTER_DIR))  # adapter_model.safetensors + adapter_config.json
            torch.save(opt.state_dict(), Path(tmp, OPTIM_FILE))
            Path(tmp, STATE_FILE).write_text(json.dumps(state, indent=1))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch-{metrics['epoch']:04d}")
