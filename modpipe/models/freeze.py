"""Freeze policies: which backbone weights train besides the module, at which learning rate, and when.

By name (``adapt.freeze.policy``): ``frozen`` (only the module and the head train), ``top_k`` (the top ``top_k``
decoder blocks train too), ``progressive`` (one more block, from the top, unfreezes every ``unfreeze_every``
optimizer steps; ULMFiT's gradual unfreezing by steps). Orthogonal knobs: layer-wise learning-rate decay and
activation (gradient) checkpointing. Method ``full`` trains every weight whatever the policy.

Progressive unfreezing masks gradients instead of toggling ``requires_grad``: every block's weights require grad
from the start (DDP registers its hooks once), and the still-locked blocks' gradients are dropped before each
optimizer step, so AdamW never touches them (it skips parameters without a gradient).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

POLICIES = ("frozen", "top_k", "progressive")
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EMBED = re.compile(r"(?:^|\.)embed_tokens\.")


def block_index(name: str) -> int | None:
    """Decoder block of a parameter name (``...layers.3.mlp...`` -> 3), None outside the blocks."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def is_backbone_param(name: str, method_params: set[str]) -> bool:
    """A weight of the backbone itself (not the module's, not the head's)."""
    return name not in method_params and "score." not in name


def top_blocks(num_layers: int, k: int) -> set[int]:
    return set(range(max(0, num_layers - k), num_layers))


def apply_policy(model, policy: dict[str, Any], num_layers: int, method: str) -> list[str]:
    """Set ``requires_grad`` on the backbone's weights for ``policy``; the module's and head's parameters keep
    what their method gave them. Returns the names of the backbone weights that may train (for ``progressive``:
    every block's, unlocked over time by ``Unfreezer``)."""
    if policy["policy"] not in POLICIES:
        raise ValueError(f"unknown freeze policy {policy['policy']!r}; choose one of {', '.join(POLICIES)}")
    trainable_before = {n for n, p in model.named_parameters() if p.requires_grad}
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return [n for n, _ in model.named_parameters() if n not in trainable_before]
    if policy["policy"] == "top_k" and policy["top_k"] > num_layers:
        raise ValueError(f"freeze.top_k={policy['top_k']} but the backbone has {num_layers} blocks")
    blocks = {"frozen": set(), "top_k": top_blocks(num_layers, policy["top_k"]),
              "progressive": set(range(num_layers))}[policy["policy"]]
    opened = []
    for name, p in model.named_parameters():
        if name in trainable_before:
            continue
        i = block_index(name)
        if i is not None and i in blocks and is_backbone_param(name, trainable_before):
            p.requires_grad_(True)
            opened.append(name)
    return opened


class Unfreezer:
    """Progressive unfreezing by gradient masking: after ``step`` optimizer steps the top
    ``min(L, step // every)`` blocks train (none at first, one more every ``every`` steps)."""

    def __init__(self, named_params: Iterable[tuple[str, Any]], num_layers: int, every: int):
        """``named_params``: the backbone block weights ``apply_policy`` opened."""
        self.num_layers, self.every = num_layers, every
        self.by_block: dict[int, list] = {}
        self.names: dict[int, list[str]] = {}
        for name, p in named_params:
            i = block_index(name)
            if i is not None:
                self.by_block.setdefault(i, []).append(p)
                self.names.setdefault(i, []).append(name)

    def unlocked(self, step: int) -> set[int]:
        return top_blocks(self.num_layers, min(self.num_layers, step // self.every))

    def mask_grads(self, step: int) -> None:
        """Drop the gradients of blocks still locked at optimizer step ``step`` (0-based)."""
        open_blocks = self.unlocked(step)
        for i, params in self.by_block.items():
            if i not in open_blocks:
                for p in params:
                    p.grad = None

    def trainable_names(self, steps_done: int) -> list[str]:
        """Backbone weights unlocked during the first ``steps_done`` steps."""
        if steps_done <= 0:
            return []
        open_blocks = self.unlocked(steps_done - 1)
        return [n for i, names in self.names.items() if i in open_blocks for n in names]


def param_groups(model, lr: float, weight_decay: float, decay: float, num_layers: int) -> list[dict]:
    """AdamW groups of the trainable parameters with layer-wise learning-rate decay: block i trains at
    ``lr * decay ** (L - i)``, the embeddings at ``lr * decay ** (L + 1)``, everything else (head, final norm,
    prompt encoders) at ``lr``. Weight decay only on >= 2-D tensors. Empty groups are left out."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        i = block_index(name)
        depth = num_layers - i if i is not None else (num_layers + 1 if _EMBED.search(name) else 0)
        wd = weight_decay if p.dim() >= 2 else 0.0
        groups.setdefault((lr * decay ** depth, wd), []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in sorted(groups.items())]


def enable_checkpointing(classifier) -> None:
    """Activation checkpointing of every decoder block (non-reentrant: works with frozen inputs and hooks)."""
    classifier.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
