"""What each Ray Train worker runs: the pretraining loop, top to bottom like nanoGPT's train.py.

config -> setup (env, process group, device) -> data -> model -> optimizer (DeepSpeed engine) -> resume -> loop.

Every ``checkpoint_every`` steps and at the end all ranks write a DeepSpeed checkpoint (rank 0 the module
states, every rank its ZeRO partition) into a local temp dir and report it; Ray Train merges the ranks' files
into one checkpoint under the run's storage path, and a rerun with the same run name resumes from it. The final
checkpoint also carries ``hf/``: a plain fp32 ``save_pretrained`` export of the model plus the tokenizer
(``export.export_hf``), which the driver copies into the stage output.

Held-out evaluation (``eval_every`` steps and the last, when the driver names a held-out shard): every rank scores
the same number of the shard's rows (its share of the first ``eval_rows``) in eval mode under ``no_grad``; the
token-weighted NLL is summed over the world. It reads the weights only, so resume stays bitwise; its time, like a
checkpoint's, is kept out of ms/step, tokens/s and MFU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DS_DIR = "ds"  # DeepSpeed checkpoint inside a Ray checkpoint
STATE_FILE = "train_state.json"  # step, loss curve, throughput (rank 0)
HF_DIR = "hf"  # final checkpoint only: the HF export
DATA_POS = "data_rank{rank}.json"  # each rank: where its data stream resumes (epoch, unit, row; world size)


def _logger(rank: int) -> logging.Logger:
    log = logging.getLogger("modpipe.pretrain")
    if not log.handlers:  # a Ray worker process has no logging set up; its stderr reaches the driver
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(name)s [rank {rank}] %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    return log


def _dist_env(ctx) -> None:
    """DeepSpeed outside its launcher wants the torchrun variables; Ray's torch backend normally sets them."""
    os.environ.setdefault("RANK", str(ctx.get_world_rank()))
    os.environ.setdefault("WORLD_SIZE", str(ctx.get_world_size()))
    os.environ.setdefault("LOCAL_RANK", str(ctx.get_local_rank()))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(ctx.get_local_world_size()))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")


@dataclass
class _Worker:
    """This process's place in the run: its job (the driver's dict), rank, world size, device and logger."""

    job: dict[str, Any]
    rank: int
    world: int
    device: Any  # torch.device: cuda:<local> under use_gpu, else cpu
    on_gpu: bool
    log: logging.Logger

    @property
    def pcfg(self):
        return self.job["pretrain"]  # PretrainConfig


@dataclass
class _Engine:
    """The DeepSpeed engine and the model facts the loop reports."""

    engine: Any
    n_params: int
    flops_per_token: float
    zero_stage: int
    tokens_per_step: int  # over the world, per optimizer step


class _Clock:
    """Training time for ms/step, tokens/s and MFU: a window since the last log line, and the steady state since the
    first (warm-up) step; evaluation and checkpoint time are paused out of both."""

    def __init__(self):
        self.window = time.perf_counter()
        self.warm: float | None = None

    def warmed_up(self, on_gpu: bool) -> None:
        if on_gpu:
            import torch

            torch.cuda.synchronize()
        self.warm = time.perf_counter()

    def pause_since(self, t0: float) -> None:
        paused = time.perf_counter() - t0
        self.window += paused
        self.warm += paused  # set at the first step, before any evaluation or checkpoint


def train_loop_per_worker(job: dict[str, Any]) -> dict[str, Any]:
    """config -> setup -> data -> model/engine -> resume -> steps -> close; returns the run state (rank 0's is
    the one the driver reads)."""
    w = _setup(job)
    stream, heldout = _data(w)
    m = _model_engine(w, stream)
    heldout = _equal_heldout(w, heldout)
    state, data_pos = _resume(w, m.engine, heldout)
    start, base_skipped = state["step"], state.get("skipped_rows", 0)  # rows rank 0 skipped before this process
    batches = _batches(stream, data_pos, start, w.pcfg.gradient_accumulation_steps)
    clock = _train_steps(w, m, stream, batches, state, heldout, base_skipped)
    _close(w, m, stream, state, start, clock, base_skipped)
    return state


def _setup(job: dict[str, Any]) -> _Worker:
    """Environment, process group and device of this Ray Train worker."""
    import torch

    on_gpu = job["pretrain"].use_gpu and torch.cuda.is_available()
    # Must precede `import deepspeed` (it picks its accelerator on import); explicit both ways, since a CPU
    # driver's DS_ACCELERATOR=cpu reaches GPU workers through the runtime env.
    os.environ["DS_ACCELERATOR"] = "cuda" if on_gpu else "cpu"
    import deepspeed  # noqa: F401 - imported here, after DS_ACCELERATOR is set
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _dist_env(ctx)
    device = ray.train.torch.get_device()  # cuda:<local> under use_gpu, else cpu
    if on_gpu:
        torch.cuda.set_device(device)
    return _Worker(job, rank, world, device, on_gpu, _logger(rank))


def _data(w: _Worker):
    """(this rank's ShardStream, its held-out rows (n, T) or ``None``)."""
    from modpipe.pretrain.data import ShardStream, read_rank_rows

    job, pcfg = w.job, w.pcfg
    # Streamed: this rank reads only its units (row-group pieces) of the shards, one at a time.
    stream = ShardStream(job["shards"], job["seq_len"], job["vocab_size"], pcfg.micro_batch_size, job["seed"],
                         w.rank, w.world)
    w.log.info("data: %d units (row-group pieces) over %d ranks, micro-batches of %d on rank 0", len(stream.units),
               w.world, stream.batch_size)
    heldout = None  # (n, T) this rank's held-out rows; the same n on every rank (_equal_heldout, once dist is up)
    if job.get("heldout_shard") and pcfg.eval_every > 0:
        heldout, _ = read_rank_rows([job["heldout_shard"]], job["seq_len"], w.rank, w.world, job["vocab_size"])
        heldout = heldout[:-(-pcfg.eval_rows // w.world)]
    return stream, heldout


def _model_engine(w: _Worker, stream) -> _Engine:
    """The backbone, wrapped in a DeepSpeed engine (ZeRO, optimizer, LR schedule)."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from modpipe.models.backbone import build_causal_lm, count_params, flops_per_token, optim_groups
    from modpipe.pretrain.ds_config import build_ds_config

    job, pcfg, model_cfg, seq_len = w.job, w.pcfg, w.job["model"], w.job["seq_len"]
    model = build_causal_lm(model_cfg, job["vocab_size"], seed=job["seed"])
    if job.get("init_from"):  # continued pretraining: the checkpoint's weights (safetensors; checked by the driver)
        from modpipe.pretrain.init_from import load_weights

        load_weights(model, job["init_from"])
        w.log.info("model: weights from %s", job["init_from"])
    model.config.use_cache = False  # no KV cache while training
    model.set_attn_implementation(pcfg.attn_implementation)  # sdpa (transformers' default) or eager
    if pcfg.activation_checkpointing:  # keep only each block's input; recompute its activations in backward
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_params = count_params(model)
    flops_tok = flops_per_token(model_cfg, n_params, seq_len)  # recomputation is not counted (MFU, not HFU)
    w.log.info("model: %.2fM parameters (%.2fM non-embedding), attention %s, activation checkpointing %s",
               n_params / 1e6, count_params(model, non_embedding=True) / 1e6, pcfg.attn_implementation,
               "on" if pcfg.activation_checkpointing else "off")

    ds_cfg = build_ds_config(job["ds_config"], pcfg, w.world, w.on_gpu)
    # Inside Ray Train the process group already exists: initialize() reuses it (no prepare_model).
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=optim_groups(model, pcfg.weight_decay), config=ds_cfg,
    )
    zero_stage = engine.zero_optimization_stage()
    global_batch = torch.tensor(float(stream.batch_size), device=w.device)
    dist.all_reduce(global_batch)  # sequences per micro-step over all ranks (a tiny rank may have fewer)
    tokens_per_step = int(global_batch.item()) * seq_len * pcfg.gradient_accumulation_steps
    w.log.info("deepspeed: ZeRO-%d, world %d, bf16 %s, device %s, %d tokens/step, optimizer %s%s", zero_stage,
               w.world, engine.bfloat16_enabled(), w.device, tokens_per_step, type(engine.basic_optimizer).__name__,
               " (fused)" if pcfg.fused_adam else "")
    return _Engine(engine, n_params, flops_tok, zero_stage, tokens_per_step)


def _equal_heldout(w: _Worker, heldout):
    """Every rank's held-out rows cut to the fewest any rank has (``None`` when that is none)."""
    if heldout is None:
        return None
    import torch
    import torch.distributed as dist

    n_held = torch.tensor(len(heldout), device=w.device)
    dist.all_reduce(n_held, op=dist.ReduceOp.MIN)  # ZeRO-3 gathers in every forward: equal work per rank
    heldout = heldout[:int(n_held.item())] if int(n_held.item()) > 0 else None
    w.log.info("held-out: %s rows per rank, every %d steps", len(heldout) if heldout is not None else 0,
               w.pcfg.eval_every)
    return heldout


def _resume(w: _Worker, engine, heldout) -> tuple[dict[str, Any], dict | None]:
    """(run state, where this rank's stream resumes or ``None``): fresh, or from Ray Train's latest checkpoint."""
    import ray.train

    from modpipe.pretrain.safe_load import guard

    state: dict[str, Any] = {"step": 0, "loss_curve": [], "eval_curve": [], "tokens_seen": 0, "resumed_from": None,
                             "tokens_per_s": None, "ms_per_step": None}
    data_pos = None  # where this rank's stream resumes
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        # Nothing in the run dir is unpickled: DeepSpeed's files are read with weights_only=True and an allow-list
        # (safe_load.guard), the run state is JSON, and the tag comes from it (DeepSpeed's `latest` file is not read).
        guard(engine)
        with checkpoint.as_directory() as ckpt_dir:
            state = json.loads(Path(ckpt_dir, STATE_FILE).read_text())
            pos_file = Path(ckpt_dir, DATA_POS.format(rank=w.rank))
            data_pos = json.loads(pos_file.read_text()) if pos_file.is_file() else None
            loaded, _ = engine.load_checkpoint(os.path.join(ckpt_dir, DS_DIR), tag=f"step{int(state['step'])}")
        if loaded is None:
            raise RuntimeError(f"checkpoint {checkpoint.path} holds no DeepSpeed state for step {state['step']}")
        if data_pos is not None and data_pos.get("world") != w.world:
            raise RuntimeError(f"checkpoint {checkpoint.path} was written by {data_pos.get('world')} ranks, "
                               f"not {w.world}")
        state["resumed_from"] = state["step"]
        w.log.info("resumed from step %d (data at %s)", state["step"], data_pos)
    state.setdefault("eval_curve", [])  # a checkpoint written before held-out evaluation has none
    state["heldout_rows_scored"] = len(heldout) * w.world if heldout is not None else 0
    return state, data_pos


def _batches(stream, data_pos: dict | None, start: int, ga: int):
    """This rank's (epoch, micro-batch) iterator, positioned after the first ``start`` steps."""
    if data_pos is not None:
        return stream.iter_from(data_pos)  # same batches as an uninterrupted run
    batches = stream.iter_from(None)  # a fresh run, or a checkpoint without read positions: skip what was read
    for _ in range(start * ga):
        next(batches)
    return batches


def _train_steps(w: _Worker, m: _Engine, stream, batches, state: dict, heldout, base_skipped: int) -> _Clock:
    """Optimizer steps ``state["step"] + 1 .. pcfg.steps``: log every ``log_every``, evaluate every ``eval_every``,
    checkpoint every ``checkpoint_every`` (and log and evaluate at the last)."""
    import torch

    from modpipe.models.backbone import PAD_ID

    pcfg, engine, ga = w.pcfg, m.engine, w.pcfg.gradient_accumulation_steps
    start = state["step"]
    engine.train()
    window_loss = torch.zeros((), device=w.device)
    window_steps, clock, epoch = 0, _Clock(), 0
    for step in range(start + 1, pcfg.steps + 1):
        for _ in range(ga):
            epoch, batch = next(batches)
            x = torch.from_numpy(batch).to(w.device)  # (B, T) token ids
            labels = x.masked_fill(x == PAD_ID, -100)  # (B, T); the model shifts them by one inside
            loss = engine(input_ids=x, labels=labels).loss  # scalar, mean over B*(T-1) targets
            engine.backward(loss)  # scaled by 1/ga inside DeepSpeed
            engine.step()  # optimizer + LR schedule at the accumulation boundary
            window_loss += loss.detach().float() / ga
        window_steps += 1
        state["step"], state["tokens_seen"] = step, state["tokens_seen"] + m.tokens_per_step
        if step == start + 1:  # the first step pays for warm-up (allocations, comm buckets): time from here
            clock.warmed_up(w.on_gpu)

        if step % pcfg.log_every == 0 or step == pcfg.steps:
            state["loss_curve"].append(_log_point(w, m, step, epoch, window_loss, window_steps, clock))
            window_loss.zero_()
            window_steps, clock.window = 0, time.perf_counter()

        if heldout is not None and (step % pcfg.eval_every == 0 or step == pcfg.steps):
            t0 = time.perf_counter()
            point = _evaluate(w, engine, heldout, stream.batch_size, step)
            state["eval_curve"].append(point)
            w.log.info("step %d/%d | held-out loss %.4f | perplexity %.2f", step, pcfg.steps, point["val_loss"],
                       point["val_ppl"])
            clock.pause_since(t0)  # keep evaluation time out of ms/step, tokens/s and MFU

        if step % pcfg.checkpoint_every == 0 and step < pcfg.steps:
            t0 = time.perf_counter()
            state["skipped_rows"] = base_skipped + stream.skipped
            _checkpoint(engine, state, w.rank, final=None, data_pos={**stream.position(), "world": w.world})
            clock.pause_since(t0)  # keep checkpoint time out of ms/step, tokens/s and MFU
    return clock


def _log_point(w: _Worker, m: _Engine, step: int, epoch: int, window_loss, window_steps: int, clock: _Clock) -> dict:
    """One loss-curve point: the mean loss over the world and the window's speed (every rank joins)."""
    import torch.distributed as dist

    from modpipe.models.backbone import estimate_mfu

    pcfg = w.pcfg
    dist.all_reduce(window_loss)  # every rank joins: mean loss over the world
    mean_loss = window_loss.item() / w.world / window_steps
    dt = time.perf_counter() - clock.window
    point = {"step": step, "epoch": epoch, "loss": round(mean_loss, 5), "lr": m.engine.get_lr()[0],
             "ms_per_step": round(1000 * dt / window_steps, 2),
             "tokens_per_s": round(m.tokens_per_step * window_steps / dt, 1)}
    if w.on_gpu:
        point["mfu"] = round(estimate_mfu(m.flops_per_token, point["tokens_per_s"], w.world, pcfg.peak_tflops), 4)
    w.log.info("step %d/%d | loss %.4f | %.1f ms/step | %.0f tokens/s%s", step, pcfg.steps, mean_loss,
               point["ms_per_step"], point["tokens_per_s"], f" | MFU {100 * point['mfu']:.1f}%" if w.on_gpu else "")
    return point


def _evaluate(w: _Worker, engine, heldout, batch_size: int, step: int) -> dict:
    """Held-out loss (token-weighted mean NLL over the world) and perplexity at ``step``."""
    import torch
    import torch.distributed as dist

    from modpipe.models.backbone import PAD_ID

    engine.eval()
    total = torch.zeros(2, device=w.device, dtype=torch.float64)  # (sum NLL, targets)
    with torch.no_grad():
        for i in range(0, len(heldout), batch_size):
            x = torch.from_numpy(heldout[i:i + batch_size]).to(w.device)  # (B, T)
            labels = x.masked_fill(x == PAD_ID, -100)
            n = (labels[:, 1:] != -100).sum()
            total += torch.stack([engine(input_ids=x, labels=labels).loss.double() * n, n.double()])
    engine.train()
    dist.all_reduce(total)
    val = float(total[0] / total[1]) if total[1] > 0 else float("nan")
    return {"step": step, "val_loss": round(val, 5), "val_ppl": round(math.exp(min(val, 50.0)), 4)}


def _close(w: _Worker, m: _Engine, stream, state: dict, start: int, clock: _Clock, base_skipped: int) -> None:
    """Steady-state speed and the run's facts into ``state``, then the final checkpoint (with the HF export)."""
    from modpipe.models.backbone import estimate_mfu

    pcfg, engine = w.pcfg, m.engine
    if clock.warm is not None and state["step"] > start + 1:
        steady = time.perf_counter() - clock.warm  # steps start+2 .. end (warm-up step, checkpoints excluded)
        n = state["step"] - start - 1
        state["ms_per_step"] = round(1000 * steady / n, 2)
        state["tokens_per_s"] = round(m.tokens_per_step * n / steady, 1)
    state.update(
        params=m.n_params, flops_per_token=m.flops_per_token, world_size=w.world, zero_stage=m.zero_stage,
        bf16=bool(engine.bfloat16_enabled()), device=str(w.device.type), micro_batch_size=stream.batch_size,
        gradient_accumulation_steps=pcfg.gradient_accumulation_steps, seq_len=w.job["seq_len"],
        tokens_per_step=m.tokens_per_step,
        skipped_rows=base_skipped + stream.skipped,  # met while reading (a unit re-read after a resume counts again)
        attn_implementation=pcfg.attn_implementation, activation_checkpointing=pcfg.activation_checkpointing,
        fused_adam=pcfg.fused_adam,
        final_loss=state["loss_curve"][-1]["loss"] if state["loss_curve"] else None,
        mfu=(round(estimate_mfu(m.flops_per_token, state["tokens_per_s"], w.world, pcfg.peak_tflops), 4)
             if w.on_gpu and state["tokens_per_s"] else None),
    )
    _checkpoint(engine, state, w.rank, final=w.job, data_pos={**stream.position(), "world": w.world})
    w.log.info("done: %d steps, final loss %s", state["step"], state["final_loss"])


def _checkpoint(engine, state: dict, rank: int, final: dict | None, data_pos: dict | None = None) -> None:
    """All ranks: DeepSpeed checkpoint into a local temp dir, then ``ray.train.report`` (a barrier).

    ``final``: the job dict; the checkpoint then also gets the HF export. ``data_pos``: where this rank's data
    stream resumes (each rank its own file; Ray merges the ranks' files into the one checkpoint).
    """
    import ray.train

    from modpipe.pretrain.export import export_hf

    with tempfile.TemporaryDirectory(prefix="modpipe-ckpt-") as tmp:
        ds_dir = os.path.join(tmp, DS_DIR)
        os.makedirs(ds_dir, exist_ok=True)  # every rank writes its own ZeRO partition here
        engine.save_checkpoint(ds_dir, tag=f"step{state['step']}")
        if final is not None:
            export_hf(engine, rank, Path(tmp, HF_DIR), final)
        if rank == 0:
            Path(tmp, STATE_FILE).write_text(json.dumps(state, indent=1))
        if data_pos is not None:
            Path(tmp, DATA_POS.format(rank=rank)).write_text(json.dumps(data_pos))
        last = state["loss_curve"][-1]["loss"] if state["loss_curve"] else float("nan")
        ray.train.report({"step": state["step"], "loss": last},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp))
