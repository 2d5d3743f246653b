"""What each Ray Train worker runs for one task: a module (``job.module``) + head on the backbone.

config -> setup -> data -> model (module kind, head, freeze policy) -> optimizer -> resume -> epochs.

Every epoch ends with a validation pass (val rows split over the ranks, probabilities gathered) and a
``ray.train.report`` from every rank (a barrier) with a checkpoint: rank 0's holds the module's weight files
(``adapter/``, safetensors), the optimizer state (safetensors + JSON) and the run state (JSON); every rank's holds
its RNG state (``resume.py``), merged by Ray Train into one checkpoint. Ray Train V2 keeps only metrics that come
with a checkpoint, so every epoch's metrics ride on one. A rerun under the same run name (or a restarted worker
group) resumes after the latest reported epoch with the weights, optimizer, data order and dropout RNG an
uninterrupted run would have had there: its module is bitwise the same. Per-rank batch = ``batch_size``; global =
``batch_size * world``.

Every ``job.grad_profile_every`` optimizer steps rank 0 takes the gradient norm per block and module parameter
group (``gradflow.py``; it only reads the gradients) and keeps it in the run state, so it survives a resume too.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modpipe.adapt.job import AdaptJob, ModuleConfig
    from modpipe.config_adapt import FreezeConfig

ADAPTER_DIR = "adapter"  # the module's weight files inside a Ray checkpoint
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


# ---------------------------------------------------------------- the trainable model (shared with tests)


@dataclass
class Trainable:
    """A module model ready to train: which weights train, at which rates, and when they unlock."""

    model: Any
    spec: dict[str, Any]
    backbone_params: int
    num_layers: int
    opened: list[str] = field(default_factory=list)
    """Backbone weights the freeze policy lets train (progressive: over time)."""
    unfreezer: Any = None

    def trained_backbone(self, steps_done: int) -> list[str]:
        """Backbone weights that did train in ``steps_done`` steps (saved beside the module)."""
        if self.spec["method"] == "full":
            return []  # the module itself holds every weight
        return self.unfreezer.trainable_names(steps_done) if self.unfreezer else list(self.opened)

    def trainable_params(self, steps_done: int) -> int:
        """Effective trainable parameters: the module's, the head's and the backbone weights that trained."""
        opened = set(self.opened)
        own = sum(p.numel() for n, p in self.model.named_parameters() if p.requires_grad and n not in opened)
        params = dict(self.model.named_parameters())
        if self.spec["method"] == "full":
            return own + sum(params[n].numel() for n in opened)
        return own + sum(params[n].numel() for n in self.trained_backbone(steps_done))


def build_trainable(backbone: str, num_labels: int, module: ModuleConfig, head: str, freeze: FreezeConfig,
                    seed: int) -> Trainable:
    """Module + head on the backbone (seeded), the freeze policy applied, activation checkpointing if asked."""
    from modpipe.models import freeze as policies
    from modpipe.models.modules import _classifier, build_task_model, num_blocks

    spec = {"method": module.kind, "head": head, "config": module.hyperparameters()}
    if module.kind == "prefix" and freeze.gradient_checkpointing:
        # PEFT hands the prefixes to the backbone as a key/value cache, which transformers drops from checkpointed
        # blocks in training (the attention mask then covers more keys than there are): refuse it by name.
        raise ValueError("method prefix does not train with freeze.gradient_checkpointing on (its prefixes travel "
                         "as a KV cache that activation checkpointing drops); turn one of them off")
    model, n_backbone = build_task_model(backbone, num_labels, spec, seed)
    layers = num_blocks(model)
    opened = policies.apply_policy(model, freeze.model_dump(), layers, module.kind)
    unfreezer = None
    if freeze.policy == "progressive" and module.kind != "full":
        named = dict(model.named_parameters())
        unfreezer = policies.Unfreezer([(n, named[n]) for n in opened], layers, freeze.unfreeze_every)
    if freeze.gradient_checkpointing:
        policies.enable_checkpointing(_classifier(model))
    return Trainable(model, spec, n_backbone, layers, opened, unfreezer)


def make_optimizer(t: Trainable, lr: float, weight_decay: float, layer_lr_decay: float):
    import torch

    from modpipe.models.freeze import param_groups

    return torch.optim.AdamW(param_groups(t.model, lr, weight_decay, layer_lr_decay, t.num_layers), lr=lr)


def train_step(model, opt, enc: dict, y, step: int, unfreezer=None, on_grads=None, problem=None):
    """One optimizer step on a tokenized batch (``enc``: input_ids, attention_mask (B, T); ``y``: the problem's
    ``target_tensor``); the blocks progressive unfreezing still locks get no update. ``on_grads(step)`` sees the
    gradients the optimizer is about to apply (the gradient-flow profile; it must only read them). ``problem``:
    an ``evaluate.problems.Problem`` (None: classification). Returns the loss (detached)."""
    from modpipe.evaluate import problems

    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits  # (B, K)
    loss = problems.loss(problem or problems.CLASSIFICATION, logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # DDP all-reduces the trainable gradients here
    if unfreezer is not None:
        unfreezer.mask_grads(step)
    if on_grads is not None:
        on_grads(step)
    opt.step()
    return loss.detach()


def epoch_order(n: int, world: int, seed: int, epoch: int):
    """The same shuffled row order on every rank, padded by wrap-around to a multiple of ``world`` so every rank
    runs the same number of steps (DDP needs matching collectives)."""
    import numpy as np

    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return np.concatenate([perm, perm[: (-n) % world]])


# ---------------------------------------------------------------- the worker


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    # ---------------------------------------------------------------- config
    job: AdaptJob = config["job"]
    task, backbone, num_labels = job.task, job.backbone, job.num_labels
    seed, epochs, batch_size = job.seed, job.epochs, job.batch_size
    started = time.time()

    # ---------------------------------------------------------------- setup
    import ray.train
    import ray.train.torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoTokenizer

    from modpipe.adapt.data import read_split, stratified_subset
    from modpipe.adapt.gradflow import GradProfiler
    from modpipe.evaluate import peak_memory_mb
    from modpipe.models.fingerprint import check_backbone_dir
    from modpipe.models.modules import get_method

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    device = ray.train.torch.get_device()  # cuda:<local> under use_gpu, else cpu
    log = _logger(rank, task)

    # ---------------------------------------------------------------- data
    train = stratified_subset(read_split(job.task_dir, "train", num_labels, job.problem), job.train_fraction, seed)
    val = read_split(job.task_dir, "val", num_labels, job.problem)
    check_backbone_dir(backbone)  # refuses symlinks before any backbone file is read
    tokenizer = AutoTokenizer.from_pretrained(backbone)  # <pad> = 0
    padding_side = get_method(job.method).padding_side
    steps_per_epoch = -(-len(epoch_order(len(train), world, seed, 0)) // world // batch_size)
    log.info("data: %s task, %d train (fraction %g) / %d val rows, %d outputs, %d steps/epoch/rank (batch %d x %d "
             "ranks)", job.problem, len(train), job.train_fraction, len(val), num_labels, steps_per_epoch, batch_size,
             world)

    # ---------------------------------------------------------------- model
    t = _build_logged(job, log)
    model = ray.train.torch.prepare_model(t.model)  # to device; DDP when world > 1
    core = model.module if isinstance(model, DistributedDataParallel) else model

    # ---------------------------------------------------------------- optimizer
    opt = make_optimizer(t, job.lr, job.weight_decay, job.freeze.layer_lr_decay)
    # gradient-flow profile (rank 0 writes the run state; DDP gives every rank the same gradients)
    profiler = GradProfiler(core.named_parameters(), job.grad_profile_every) \
        if rank == 0 and job.grad_profile_every > 0 else None

    # ---------------------------------------------------------------- resume
    state = _resume(core, opt, job.method, rank, device, started, log)

    # ---------------------------------------------------------------- epochs
    batches = Batches(job, tokenizer, padding_side, device, rank, world, distributed)
    for epoch in range(state["epoch"] + 1, epochs + 1):
        train_loss = batches.train_epoch(model, opt, t, train, epoch, state, profiler)
        metrics = batches.validate(core, val)
        trainable = t.trainable_params(state["step"])
        metrics.update(epoch=epoch, step=state["step"], train_loss=round(train_loss, 5), n_train=len(train),
                       n_val=len(val), trainable_params=trainable, backbone_params=t.backbone_params,
                       total_params=sum(p.numel() for p in core.parameters()), world_size=world,
                       trained_backbone_weights=len(t.trained_backbone(state["step"])),
                       peak_memory_mb=peak_memory_mb(device), started_at=state["started_at"],
                       reported_at=time.time())
        log.info("epoch %d/%d | train loss %.4f | %s %.3f | %d trainable (%.3f%%)", epoch, epochs, train_loss,
                 job.select_metric, metrics[job.select_metric], trainable, 100.0 * trainable / t.backbone_params)
        state["epoch"] = epoch
        state["history"].append(metrics)
        if profiler is not None:
            profiler.flush(state)  # the epoch's gradient norms into the run state the checkpoint carries
        _report(core, t, opt, state, metrics, rank, device)
    return {"epochs": state["epoch"], "trainable_params": t.trainable_params(state["step"])}


def _build_logged(job: AdaptJob, log) -> Trainable:
    """``build_trainable`` for the job, with one log line saying what trains."""
    policy = job.freeze
    t = build_trainable(job.backbone, job.num_labels, job.module, job.head, policy, job.seed)
    log.info("model: %s module + %s head, freeze %s (%d backbone weights may train%s), lr decay %g, "
             "checkpointing %s; %d trainable at start / %d backbone parameters",
             job.method, job.head, policy.policy, len(t.opened),
             f", one more block every {policy.unfreeze_every} steps" if t.unfreezer else "",
             policy.layer_lr_decay, "on" if policy.gradient_checkpointing else "off",
             t.trainable_params(0), t.backbone_params)
    return t


def _resume(core, opt, method: str, rank: int, device, started: float, log) -> dict[str, Any]:
    """The run state: fresh, or (Ray Train handed this worker a checkpoint) the module's weights, the optimizer, the
    run state and this rank's RNG state as they were after the latest reported epoch."""
    import ray.train

    from modpipe.adapt.resume import load_optimizer, load_rng
    from modpipe.models.modules import load_weights

    state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "started_at": started}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt:
            load_weights(core, method, Path(ckpt, ADAPTER_DIR))
            load_optimizer(opt, Path(ckpt), device)
            state = {"step": 0, **json.loads(Path(ckpt, STATE_FILE).read_text())}
            rng = load_rng(Path(ckpt), rank, device)  # last: nothing may draw from the generators after this
        log.info("resumed after epoch %d (step %d)%s", state["epoch"], state["step"],
                 "" if rng else "; the checkpoint has no RNG state, dropout draws differ from an uninterrupted run")
    return state


@dataclass
class Batches:
    """One rank's view of the task's batches: a training epoch over its rows, a validation pass over its share."""

    job: Any
    tokenizer: Any
    padding_side: str
    device: Any
    rank: int
    world: int
    distributed: bool

    def train_epoch(self, model, opt, t: Trainable, train, epoch: int, state: dict, profiler) -> float:
        """The epoch's optimizer steps on this rank's rows; the mean train loss over every rank."""
        import torch
        import torch.distributed as dist

        from modpipe.evaluate.problems import target_tensor
        from modpipe.models.modules import encode

        job, problem = self.job, self.job.kind
        model.train()
        mine = epoch_order(len(train), self.world, job.seed, epoch)[self.rank::self.world]  # this rank's rows
        loss_sum = torch.zeros((), device=self.device)
        n_steps = 0
        for start in range(0, len(mine), job.batch_size):
            idx = mine[start:start + job.batch_size]
            enc = encode(self.tokenizer, [train.texts[i] for i in idx], job.max_length, self.padding_side)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            y = target_tensor(problem, [train.targets[i] for i in idx], job.num_labels, job.target_scale,
                              self.device)
            loss_sum += train_step(model, opt, enc, y, state["step"], t.unfreezer,
                                   profiler.record if profiler else None, problem)
            state["step"] += 1
            n_steps += 1
        if self.distributed:
            dist.all_reduce(loss_sum)
        return loss_sum.item() / max(1, n_steps * self.world)

    def validate(self, core, val) -> dict[str, Any]:
        """Val rows rank::world on each rank, scores gathered so every rank sees all of them, then the problem's
        metrics (multilabel: the decision threshold is chosen here, ``val_threshold``)."""
        import numpy as np
        import torch.distributed as dist

        from modpipe.evaluate import problems
        from modpipe.models.modules import predict_proba

        job, problem = self.job, self.job.kind
        val_idx = list(range(self.rank, len(val), self.world))
        scores = predict_proba(core, self.tokenizer, [val.texts[i] for i in val_idx], job.max_length,
                               job.batch_size, self.device, self.padding_side, problems.activation(problem))
        if self.distributed:
            parts: list = [None] * self.world
            dist.all_gather_object(parts, (val_idx, scores))
            by_row = {i: p for idx_part, probs_part in parts for i, p in zip(idx_part, probs_part)}
            scores = np.stack([by_row[i] for i in range(len(val))])
        values = problems.to_values(problem, scores, job.target_scale)
        metrics = problems.evaluate(problem, val.targets, values, prefix="val_", labels=job.labels)
        metrics.pop("val_label_f1", None)  # per-label detail: the test split's, in metrics.json
        return metrics


def _report(core, t: Trainable, opt, state: dict, metrics: dict, rank: int, device) -> None:
    """All ranks report (a barrier) a checkpoint: its RNG state; rank 0 also the module, optimizer and run state."""
    import ray.train

    from modpipe.adapt.resume import save_optimizer, save_rng
    from modpipe.models.modules import save_weights

    with tempfile.TemporaryDirectory(prefix="modpipe-adapt-") as tmp:
        save_rng(Path(tmp), rank, device)  # the generators as the next epoch will find them
        if rank == 0:
            save_weights(core, t.spec["method"], Path(tmp, ADAPTER_DIR), t.trained_backbone(state["step"]))
            save_optimizer(opt, Path(tmp))
            Path(tmp, STATE_FILE).write_text(json.dumps(state, indent=1))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"epoch-{metrics['epoch']:04d}")
