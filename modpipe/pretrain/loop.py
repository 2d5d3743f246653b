"""What each Ray Train worker runs: the pretraining loop, top to bottom like nanoGPT's train.py.

config -> setup (env, process group, device) -> data -> model -> optimizer (DeepSpeed engine) -> resume -> loop.

Every ``checkpoint_every`` steps and at the end all ranks write a DeepSpeed checkpoint (rank 0 the module
states, every rank its ZeRO partition) into a local temp dir and report it; Ray Train merges the ranks' files
into one checkpoint under the run's storage path, and a rerun with the same run name resumes from it. The final
checkpoint also carries ``hf/``: a plain fp32 ``save_pretrained`` export of the model plus the tokenizer, which
the driver copies into the stage output.

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


def train_loop_per_worker(job: dict[str, Any]) -> dict[str, Any]:
    # ---------------------------------------------------------------- config
    model_cfg = job["model"]  # ModelConfig
    pcfg = job["pretrain"]  # PretrainConfig
    seed, seq_len, vocab_size = job["seed"], job["seq_len"], job["vocab_size"]
    ga = pcfg.gradient_accumulation_steps

    # ---------------------------------------------------------------- setup
    import torch

    on_gpu = pcfg.use_gpu and torch.cuda.is_available()
    # Must precede `import deepspeed` (it picks its accelerator on import); explicit both ways, since a CPU
    # driver's DS_ACCELERATOR=cpu reaches GPU workers through the runtime env.
    os.environ["DS_ACCELERATOR"] = "cuda" if on_gpu else "cpu"
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from modpipe.models.backbone import (
        PAD_ID, build_causal_lm, count_params, estimate_mfu, flops_per_token, optim_groups,
    )
    from modpipe.pretrain.data import ShardStream, read_rank_rows
    from modpipe.pretrain.ds_config import build_ds_config
    from modpipe.pretrain.safe_load import guard

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _dist_env(ctx)
    device = ray.train.torch.get_device()  # cuda:<local> under use_gpu, else cpu
    if on_gpu:
        torch.cuda.set_device(device)
    log = _logger(rank)

    # ---------------------------------------------------------------- data
    # Streamed: this rank reads only its units (row-group pieces) of the shards, one at a time.
    stream = ShardStream(job["shards"], seq_len, vocab_size, pcfg.micro_batch_size, seed, rank, world)
    log.info("data: %d units (row-group pieces) over %d ranks, micro-batches of %d on rank 0", len(stream.units),
             world, stream.batch_size)
    heldout = None  # (n, T) this rank's held-out rows; the same n on every rank (below, once dist is up)
    if job.get("heldout_shard") and pcfg.eval_every > 0:
        heldout, _ = read_rank_rows([job["heldout_shard"]], seq_len, rank, world, vocab_size)
        heldout = heldout[:-(-pcfg.eval_rows // world)]

    # ---------------------------------------------------------------- model
    model = build_causal_lm(model_cfg, vocab_size, seed=seed)
    model.config.use_cache = False  # no KV cache while training
    model.set_attn_implementation(pcfg.attn_implementation)  # sdpa (transformers' default) or eager
    if pcfg.activation_checkpointing:  # keep only each block's input; recompute its activations in backward
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_params = count_params(model)
    flops_tok = flops_per_token(model_cfg, n_params, seq_len)  # recomputation is not counted (MFU, not HFU)
    log.info("model: %.2fM parameters (%.2fM non-embedding), attention %s, activation checkpointing %s",
             n_params / 1e6, count_params(model, non_embedding=True) / 1e6, pcfg.attn_implementation,
             "on" if pcfg.activation_checkpointing else "off")

    # ---------------------------------------------------------------- optimizer (DeepSpeed engine)
    ds_cfg = build_ds_config(job["ds_config"], pcfg, world, on_gpu)
    # Inside Ray Train the process group already exists: initialize() reuses it (no prepare_model).
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=optim_groups(model, pcfg.weight_decay), config=ds_cfg,
    )
    zero_stage = engine.zero_optimization_stage()
    global_batch = torch.tensor(float(stream.batch_size), device=device)
    dist.all_reduce(global_batch)  # sequences per micro-step over all ranks (a tiny rank may have fewer)
    tokens_per_step = int(global_batch.item()) * seq_len * ga
    log.info("deepspeed: ZeRO-%d, world %d, bf16 %s, device %s, %d tokens/step, optimizer %s%s", zero_stage,
             world, engine.bfloat16_enabled(), device, tokens_per_step, type(engine.basic_optimizer).__name__,
             " (fused)" if pcfg.fused_adam else "")

    if heldout is not None:
        n_held = torch.tensor(len(heldout), device=device)
        dist.all_reduce(n_held, op=dist.ReduceOp.MIN)  # ZeRO-3 gathers in every forward: equal work per rank
        heldout = heldout[:int(n_held.item())] if int(n_held.item()) > 0 else None
        log.info("held-out: %s rows per rank, every %d steps", len(heldout) if heldout is not None else 0,
                 pcfg.eval_every)

    def evaluate(step: int) -> dict:
        """Held-out loss (token-weighted mean NLL over the world) and perplexity at ``step``."""
        engine.eval()
        total = torch.zeros(2, device=device, dtype=torch.float64)  # (sum NLL, targets)
        with torch.no_grad():
            for i in range(0, len(heldout), stream.batch_size):
                x = torch.from_numpy(heldout[i:i + stream.batch_size]).to(device)  # (B, T)
                labels = x.masked_fill(x == PAD_ID, -100)
                n = (labels[:, 1:] != -100).sum()
                total += torch.stack([engine(input_ids=x, labels=labels).loss.double() * n, n.double()])
        engine.train()
        dist.all_reduce(total)
        val = float(total[0] / total[1]) if total[1] > 0 else float("nan")
        return {"step": step, "val_loss": round(val, 5), "val_ppl": round(math.exp(min(val, 50.0)), 4)}

    # ---------------------------------------------------------------- resume
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
            pos_file = Path(ckpt_dir, DATA_POS.format(rank=rank))
            data_pos = json.loads(pos_file.read_text()) if pos_file.is_file() else None
            loaded, _ = engine.load_checkpoint(os.path.join(ckpt_dir, DS_DIR), tag=f"step{int(state['step'])}")
        if loaded is None:
            raise RuntimeError(f"checkpoint {checkpoint.path} holds no DeepSpeed state for step {state['step']}")
        if data_pos is not None and data_pos.get("world") != world:
            raise RuntimeError(f"checkpoint {checkpoint.path} was written by {data_pos.get('world')} ranks, "
                               f"not {world}")
        state["resumed_from"] = state["step"]
        log.info("resumed from step %d (data at %s)", state["step"], data_pos)
    state.setdefault("eval_curve", [])  # a checkpoint written before held-out evaluation has none
    state["heldout_rows_scored"] = len(heldout) * world if heldout is not None else 0

    # ---------------------------------------------------------------- loop
    start = state["step"]
    base_skipped = state.get("skipped_rows", 0)  # malformed rows rank 0 met before this process
    if data_pos is not None:
        batches = stream.iter_from(data_pos)  # same batches as an uninterrupted run
    else:  # a fresh run, or a checkpoint without read positions: skip what the first `start` steps read
        batches = stream.iter_from(None)
        for _ in range(start * ga):
            next(batches)
    engine.train()
    window_loss = torch.zeros((), device=device)
    window_steps, t_window, t_warm = 0, time.perf_counter(), None
    epoch = 0
    for step in range(start + 1, pcfg.steps + 1):
        for _ in range(ga):
            epoch, batch = next(batches)
            x = torch.from_numpy(batch).to(device)  # (B, T) token ids
            labels = x.masked_fill(x == PAD_ID, -100)  # (B, T); the model shifts them by one inside
            loss = engine(input_ids=x, labels=labels).loss  # scalar, mean over B*(T-1) targets
            engine.backward(loss)  # scaled by 1/ga inside DeepSpeed
            engine.step()  # optimizer + LR schedule at the accumulation boundary
            window_loss += loss.detach().float() / ga
        window_steps += 1
        state["step"], state["tokens_seen"] = step, state["tokens_seen"] + tokens_per_step
        if step == start + 1:  # the first step pays for warm-up (allocations, comm buckets): time from here
            if on_gpu:
                torch.cuda.synchronize()
            t_warm = time.perf_counter()

        if step % pcfg.log_every == 0 or step == pcfg.steps:
            dist.all_reduce(window_loss)  # every rank joins: mean loss over the world
            mean_loss = window_loss.item() / world / window_steps
            dt = time.perf_counter() - t_window
            point = {"step": step, "epoch": epoch, "loss": round(mean_loss, 5), "lr": engine.get_lr()[0],
                     "ms_per_step": round(1000 * dt / window_steps, 2),
                     "tokens_per_s": round(tokens_per_step * window_steps / dt, 1)}
            if on_gpu:
                point["mfu"] = round(estimate_mfu(flops_tok, point["tokens_per_s"], world, pcfg.peak_tflops), 4)
            state["loss_curve"].append(point)
            log.info("step %d/%d | loss %.4f | %.1f ms/step | %.0f tokens/s%s", step, pcfg.steps, mean_loss,
                     point["ms_per_step"], point["tokens_per_s"],
                     f" | MFU {100 * point['mfu']:.1f}%" if on_gpu else "")
            window_loss.zero_()
            window_steps, t_window = 0, time.perf_counter()

        if heldout is not None and (step % pcfg.eval_every == 0 or step == pcfg.steps):
            t0 = time.perf_counter()
            point = evaluate(step)
            state["eval_curve"].append(point)
            log.info("step %d/%d | held-out loss %.4f | perplexity %.2f", step, pcfg.steps, point["val_loss"],
                     point["val_ppl"])
            paused = time.perf_counter() - t0  # keep evaluation time out of ms/step, tokens/s and MFU
            t_window += paused
            t_warm += paused

        if step % pcfg.checkpoint_every == 0 and step < pcfg.steps:
            t0 = time.perf_counter()
            state["skipped_rows"] = base_skipped + stream.skipped
            _checkpoint(engine, state, rank, final=None, data_pos={**stream.position(), "world": world})
            paused = time.perf_counter() - t0  # keep checkpoint time out of ms/step, tokens/s and MFU
            t_window += paused
            t_warm += paused  # set at the first step, before any checkpoint

    # ---------------------------------------------------------------- close
    if t_warm is not None and state["step"] > start + 1:
        steady = time.perf_counter() - t_warm  # steps start+2 .. end (warm-up step, checkpoints excluded)
        n = state["step"] - start - 1
        state["ms_per_step"] = round(1000 * steady / n, 2)
        state["tokens_per_s"] = round(tokens_per_step * n / steady, 1)
    state.update(
        params=n_params, flops_per_token=flops_tok, world_size=world, zero_stage=zero_stage,
        bf16=bool(engine.bfloat16_enabled()), device=str(device.type), micro_batch_size=stream.batch_size,
        gradient_accumulation_steps=ga, seq_len=seq_len, tokens_per_step=tokens_per_step,
        skipped_rows=base_skipped + stream.skipped,  # met while reading (a unit re-read after a resume counts again)
        attn_implementation=pcfg.attn_implementation, activation_checkpointing=pcfg.activation_checkpointing,
        fused_adam=pcfg.fused_adam,
        final_loss=state["loss_curve"][-1]["loss"] if state["loss_curve"] else None,
        mfu=(round(estimate_mfu(flops_tok, state["tokens_per_s"], world, pcfg.peak_tflops), 4)
             if on_gpu and state["tokens_per_s"] else None),
    )
    _checkpoint(engine, state, rank, final=job, data_pos={**stream.position(), "world": world})
    log.info("done: %d steps, final loss %s", state["step"], state["final_loss"])
    return state


def _checkpoint(engine, state: dict, rank: int, final: dict | None, data_pos: dict | None = None) -> None:
    """All ranks: DeepSpeed checkpoint into a local temp dir, then ``ray.train.report`` (a barrier).

    ``final``: the job dict; the checkpoint then also gets the HF export. ``data_pos``: where this rank's data
    stream resumes (each rank its own file; Ray merges the ranks' files into the one checkpoint).
    """
    import ray.train

    with tempfile.TemporaryDirectory(prefix="modpipe-ckpt-") as tmp:
        ds_dir = os.path.join(tmp, DS_DIR)
        os.makedirs(ds_dir, exist_ok=True)  # every rank writes its own ZeRO partition here
        engine.save_checkpoint(ds_dir, tag=f"step{state['step']}")
        if final is not None:
            _export_hf(engine, rank, Path(tmp, HF_DIR), final)
        if rank == 0:
            Path(tmp, STATE_FILE).write_text(json.dumps(state, indent=1))
        if data_pos is not None:
            Path(tmp, DATA_POS.format(rank=rank)).write_text(json.dumps(data_pos))
        last = state["loss_curve"][-1]["loss"] if state["loss_curve"] else float("nan")
        ray.train.report({"step": state["step"], "loss": last},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _full_state_dict(engine, rank: int) -> dict | None:
    """The module's full state dict on rank 0 (``None`` elsewhere): the engine's working weights (bf16 on GPU).

    ZeRO-3 keeps 1/world of each parameter per rank; ``deepspeed.zero.GatheredParameters`` (public API) gathers one
    module's own parameters at a time on every rank (a collective: all ranks walk the same modules), rank 0 copies
    them to CPU, and leaving the context partitions them again, so at most one module is ever whole. A tied weight
    (embeddings = LM head) is gathered under each name it has, as ``state_dict()`` lists it.
    """
    import deepspeed

    module = engine.module
    if not engine.zero_optimization_partition_weights():  # ZeRO-0/1/2: every rank holds the whole model
        return module.state_dict() if rank == 0 else None
    state: dict = {}
    for prefix, sub in module.named_modules():  # same order on every rank
        own = list(sub.named_parameters(recurse=False))
        if not own:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=None):  # read-only gather
            if rank == 0:
                for name, p in own:
                    state[f"{prefix}.{name}" if prefix else name] = p.detach().to("cpu", copy=True)
    if rank != 0:
        return None
    for key, value in module.state_dict().items():  # persistent buffers: never partitioned
        state.setdefault(key, value)
    return state


def _export_hf(engine, rank: int, out: Path, job: dict) -> None:
    """Full weights on rank 0 -> a fresh fp32 ``LlamaForCausalLM`` -> safetensors ``save_pretrained`` + tokenizer."""
    from modpipe.models.backbone import build_causal_lm, hf_tokenizer

    state_dict = _full_state_dict(engine, rank)  # every rank joins (ZeRO-3 gathers)
    if rank != 0:
        return
    model = build_causal_lm(job["model"], job["vocab_size"], seed=job["seed"])  # fp32, CPU
    model.load_state_dict({k: v.detach().float().cpu() for k, v in state_dict.items()}, strict=True)
    model.save_pretrained(out)  # transformers 5: always safetensors
    hf_tokenizer(job["tokenizer"]).save_pretrained(out)
