"""Modules modpipe trains without PEFT, saved in PEFT's two-file layout (``adapter_config.json`` +
``adapter_model.safetensors``) so every module dir looks alike: ``linear_probe`` (the head alone on the frozen
backbone) and ``full`` (every weight). The bottleneck adapter (``bottleneck.py``) builds on the same class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class NativeModel(nn.Module):
    """A transformers sequence classifier (``base``) plus what the method adds; the call is the classifier's."""

    method = "linear_probe"

    def __init__(self, base: nn.Module, config: dict[str, Any]):
        super().__init__()
        self.base = base
        self.config = {**config, "method": self.method, "modules_to_save": ["score"]}

    def forward(self, *args, **kwargs):
        return self.base(*args, **kwargs)

    def module_state(self) -> dict[str, torch.Tensor]:
        """What the module adds to the backbone: here the head (``score``); ``full``: every weight."""
        return {f"base.{k}": v for k, v in self.base.state_dict().items()
                if self.method == "full" or k.startswith("score.")}

    def save_pretrained(self, out_dir: str | Path, extra: dict[str, torch.Tensor] | None = None) -> None:
        """``extra``: further weights to keep (backbone blocks a freeze policy let train), by parameter name."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {**self.module_state(), **(extra or {})}
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps(self.config, indent=2))

    @classmethod
    def from_pretrained(cls, base: nn.Module, module_dir: str | Path) -> "NativeModel":
        """Attach a saved module to ``base`` (a fresh classifier of the same backbone and head kind)."""
        from safetensors.torch import load_file

        root = Path(module_dir)
        config = json.loads((root / CONFIG_FILE).read_text())
        if config.get("method") != cls.method:
            raise ValueError(f"{root / CONFIG_FILE}: method {config.get('method')!r}, expected {cls.method!r}")
        model = cls(base, {k: v for k, v in config.items() if k not in ("method", "modules_to_save")})
        load_state(model, load_file(str(root / WEIGHTS_FILE)))
        return model


class FullModel(NativeModel):
    method = "full"


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model``; every key must name one of its tensors (no silent partial loads)."""
    unknown = sorted(set(state) - set(model.state_dict()))
    if unknown:
        raise KeyError(f"module weights name tensors the model lacks: {unknown[:5]}")
    model.load_state_dict(state, strict=False)
