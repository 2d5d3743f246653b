"""The final checkpoint's HF export: the full weights gathered on rank 0 (ZeRO-3 partitions included), saved as a
plain fp32 ``LlamaForCausalLM`` (safetensors) beside the curated tokenizer."""

from __future__ import annotations

from pathlib import Path


def full_state_dict(engine, rank: int) -> dict | None:
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


def export_hf(engine, rank: int, out: Path, job: dict) -> None:
    """Full weights on rank 0 -> a fresh fp32 ``LlamaForCausalLM`` -> safetensors ``save_pretrained`` + tokenizer."""
    from modpipe.models.backbone import build_causal_lm, hf_tokenizer

    state_dict = full_state_dict(engine, rank)  # every rank joins (ZeRO-3 gathers)
    if rank != 0:
        return
    model = build_causal_lm(job["model"], job["vocab_size"], seed=job["seed"])  # fp32, CPU
    model.load_state_dict({k: v.detach().float().cpu() for k, v in state_dict.items()}, strict=True)
    model.save_pretrained(out)  # transformers 5: always safetensors
    hf_tokenizer(job["tokenizer"]).save_pretrained(out)
