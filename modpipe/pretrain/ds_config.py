"""The DeepSpeed JSON (infra/deepspeed/zero*.json) with the run's numbers filled in from ``PretrainConfig``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from modpipe.config import PretrainConfig
from modpipe.paths import REPO_ROOT


def resolve_ds_path(path: str | Path) -> Path:
    """``path`` as given; a relative one missing from the current directory is looked up under the repo root, so a
    recipe's ``infra/deepspeed/zero3.json`` works from any directory (and in a Ray job's working dir)."""
    p = Path(path)
    if not p.is_absolute() and not p.is_file() and (REPO_ROOT / p).is_file():
        return REPO_ROOT / p
    return p


def load_ds_config(path: str | Path) -> dict:
    """The JSON as written, minus ``_comment``-style keys (DeepSpeed does not know them)."""
    p = resolve_ds_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"DeepSpeed config not found: {p} (pretrain.deepspeed_config)")
    return {k: v for k, v in json.loads(p.read_text()).items() if not k.startswith("_")}


def build_ds_config(base: dict, cfg: PretrainConfig, world_size: int, on_gpu: bool) -> dict:
    """Fill batch sizes, optimizer, schedule, ZeRO stage and precision; everything else stays as in ``base``.

    On CPU: fp32 (bf16 off) and torch's AdamW (``torch_adam``), since DeepSpeed's fused/C++ Adam ops are not
    built there. On GPU bf16 follows the JSON (on in the shipped files). ``cfg.fused_adam``: torch's AdamW with
    ``fused=True`` (DeepSpeed passes the optimizer params through to torch's constructor).
    """
    ds = copy.deepcopy(base)
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    ds["train_batch_size"] = cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size

    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    params = opt.setdefault("params", {})
    params["lr"] = cfg.lr
    params["weight_decay"] = cfg.weight_decay  # the no-decay group overrides it (see backbone.optim_groups)
    if not on_gpu:
        params["torch_adam"] = True
    if cfg.fused_adam:
        if opt.get("type", "").lower() not in ("adam", "adamw"):
            raise ValueError(f"pretrain.fused_adam needs an Adam or AdamW optimizer in the DeepSpeed JSON, "
                             f"not {opt.get('type')!r}")
        params["torch_adam"] = True  # torch's AdamW, not DeepSpeed's JIT-built FusedAdam
        params["fused"] = True
        params.pop("foreach", None)  # torch refuses fused together with foreach

    sched = ds.setdefault("scheduler", {"type": "WarmupCosineLR", "params": {}})
    sp = sched.setdefault("params", {})
    warmup = max(1, min(cfg.warmup_steps, cfg.steps - 1))
    if sched["type"] in ("WarmupCosineLR", "WarmupDecayLR"):
        sp["total_num_steps"] = cfg.steps
    if sched["type"] in ("WarmupDecayLR", "WarmupLR"):
        sp.setdefault("warmup_max_lr", cfg.lr)
    sp["warmup_num_steps"] = warmup

    ds.setdefault("zero_optimization", {})["stage"] = cfg.zero_stage
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bool(on_gpu and ds.get("bf16", {}).get("enabled", True))}
    if not on_gpu:
        ds.pop("fp16", None)  # CPU trains in fp32
    return ds
