"""A task's resumable training state as safetensors + JSON (nothing in a checkpoint is unpickled).

An epoch checkpoint holds, besides the module's weight files (``adapter/``) and ``train_state.json``:

- ``optimizer.safetensors`` + ``optimizer.json`` (rank 0): AdamW's per-parameter tensors (``exp_avg``,
  ``exp_avg_sq``, ``step``) keyed ``state.<param index>.<name>``, and its param groups (lr, betas, ...) as JSON;
- ``rng-rank<r>.safetensors`` (every rank): the torch CPU generator (and the CUDA one on GPU) at the end of the
  epoch, so dropout (LoRA's, the backbone's) draws after a resume what it would have drawn without the kill.

A checkpoint written before this format (``optimizer.pt``) still resumes, read with ``weights_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OPTIM_TENSORS = "optimizer.safetensors"
OPTIM_META = "optimizer.json"
LEGACY_OPTIM = "optimizer.pt"  # torch.save'd state dict of older checkpoints


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


def save_optimizer(opt, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    save_file(tensors, str(out / OPTIM_TENSORS))
    (out / OPTIM_META).write_text(json.dumps({"format": 1, "param_groups": sd["param_groups"], "scalars": scalars}))


def load_optimizer(opt, ckpt: Path, device) -> None:
    """Restore ``opt`` (built for the same parameters) from a checkpoint dir."""
    import torch
    from safetensors.torch import load_file

    if not (ckpt / OPTIM_TENSORS).is_file() and (ckpt / LEGACY_OPTIM).is_file():
        opt.load_state_dict(torch.load(ckpt / LEGACY_OPTIM, map_location=device, weights_only=True))
        return
    meta = json.loads((ckpt / OPTIM_META).read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in load_file(str(ckpt / OPTIM_TENSORS)).items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = tensor
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    # JSON turned tuples (betas) into lists: give each group value the type the live optimizer uses
    live = opt.state_dict()["param_groups"]
    groups = [{k: (tuple(v) if isinstance(now.get(k), tuple) and isinstance(v, list) else v) for k, v in g.items()}
              for g, now in zip(meta["param_groups"], live)]
    opt.load_state_dict({"state": state, "param_groups": groups})  # tensors moved to the params' device


def save_rng(out: Path, rank: int, device) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {"cpu": torch.get_rng_state()}
    if getattr(device, "type", "cpu") == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    save_file(tensors, str(out / rng_file(rank)))


def load_rng(ckpt: Path, rank: int, device) -> bool:
    """Restore this rank's generators; False when the checkpoint has none for it (an older checkpoint)."""
    import torch
    from safetensors.torch import load_file

    path = ckpt / rng_file(rank)
    if not path.is_file():
        return False
    tensors = load_file(str(path))
    torch.set_rng_state(tensors["cpu"])
    if "cuda" in tensors and getattr(device, "type", "cpu") == "cuda":
        torch.cuda.set_rng_state(tensors["cuda"], device)
    return True
