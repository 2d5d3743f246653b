"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021), the function-composition module kind.

PEFT has no bottleneck adapter, so it is written here once, with PEFT's two-file layout: ``adapter_config.json``
(this config) and ``adapter_model.safetensors`` (the adapters and the head), saved by ``save_pretrained`` and read
by ``from_pretrained`` (``native.NativeModel``).

An adapter is ``x + up(act(down(x)))`` on a sublayer's output (before the block adds its residual), with ``up``
initialised to zero so a fresh adapter is the identity. Placement ``pfeiffer`` puts one after each block's
feed-forward (``mlp``), ``houlsby`` one after attention (``self_attn``) and one after the feed-forward. They are
attached with forward hooks, so the backbone's modules and parameter names stay as they are (a frozen backbone
is untouched, and activation checkpointing recomputes the hooks with the block).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modpipe.models.native import NativeModel

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
SITES = {"pfeiffer": ("mlp",), "houlsby": ("self_attn", "mlp")}


class Adapter(nn.Module):
    """(B, T, h) -> (B, T, h): ``x + up(act(down(x)))`` with a width-``bottleneck`` middle."""

    def __init__(self, hidden_size: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)  # identity at initialisation: training starts from the backbone's function
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def _hook(adapter: Adapter):
    def add_adapter(module, args, output):
        if isinstance(output, tuple):  # attention returns (attn_output, attn_weights)
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    return add_adapter


class BottleneckModel(NativeModel):
    """A transformers sequence classifier with bottleneck adapters in every decoder block; the call is the
    classifier's. ``adapters[f"{layer}_{site}"]`` holds the adapter after ``layers[layer].<site>``; saving and
    loading are ``NativeModel``'s (``save_pretrained`` / ``from_pretrained``)."""

    method = "bottleneck"

    def __init__(self, base: nn.Module, config: dict[str, Any]):
        super().__init__(base, {"reduction_factor": int(config["reduction_factor"]),
                                "placement": config["placement"], "activation": config["activation"]})
        if self.config["placement"] not in SITES:
            raise ValueError(f"bottleneck placement {self.config['placement']!r}: choose pfeiffer or houlsby")
        if self.config["activation"] not in ACTIVATIONS:
            raise ValueError(f"bottleneck activation {self.config['activation']!r}: choose {', '.join(ACTIVATIONS)}")
        hidden = base.config.hidden_size
        width = max(1, hidden // self.config["reduction_factor"])
        layers = base.model.layers
        self.adapters = nn.ModuleDict({
            f"{i}_{site}": Adapter(hidden, width, self.config["activation"])
            for i in range(len(layers)) for site in SITES[self.config["placement"]]
        })
        for key, adapter in self.adapters.items():
            i, site = key.split("_", 1)
            getattr(layers[int(i)], site).register_forward_hook(_hook(adapter))

    def module_state(self) -> dict[str, torch.Tensor]:
        """What the module adds to the backbone: every adapter and the head (``score``)."""
        return {**{f"adapters.{k}": v for k, v in self.adapters.state_dict().items()}, **super().module_state()}
