"""Gradient-flow profile of an adaptation run: which blocks learn, and how hard, as training goes.

Every ``adapt.grad_profile_every`` optimizer steps (0: off) the worker takes the L2 norm of the gradient of each
parameter *group*: a block of the model (``layer.<i>``, ``embeddings``, ``norm`` (the final norm), ``prompt``
(prefix / prompt tuning's virtual tokens), ``head``) split by what trains in it (``lora_A``, ``lora_B``, ``ia3``,
``adapter`` (bottleneck), ``backbone`` (weights a freeze policy opened, or every weight under method ``full``)).
Group ``"layer.1/lora_B"`` is the norm of every LoRA B gradient of block 1 together (the square root of the sum of
the squared per-parameter norms).

Only parameters that require grad are grouped: a block the freeze policy keeps frozen has no group at all. A
group whose parameters got no gradient at a recorded step (progressive unfreezing drops a still-locked block's
gradients before the optimizer sees them) is ``None`` there.

The norms are taken after backward (and after progressive unfreezing's masking, so they are the gradients the
optimizer applies), before the optimizer step, on rank 0 (DDP has all-reduced the gradients by then, every rank
holds the same). It reads the gradients and nothing else: no RNG, no collective, no write, so training is bitwise
what it is without it; the norms stay on the device until the end of the epoch (one copy to the host per epoch).

The profile lives in the run state (``train_state.json`` of each epoch checkpoint, so a resumed run continues it)
and lands in the module dir's ``metrics.json`` as ``"grad_profile"``::

    {"every": 10, "steps": [0, 10, 20, ...], "groups": {"layer.0/lora_A": [norm or null, ...], ...}}

``steps`` are 0-based optimizer step indices (the step whose gradient was measured). ``by_block`` folds the groups
into at most ``max_lines`` block lines for the run report.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

PROFILE_KEY = "grad_profile"
"""Key of the profile in the run state and in the module dir's metrics.json."""
MAX_LINES = 8
"""Lines in the report's plot (layers are binned into contiguous ranges beyond this)."""

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_ADAPTER = re.compile(r"(?:^|\.)adapters\.(\d+)_")  # bottleneck adapters: adapters.<layer>_<site>
_PARTS = ("lora_A", "lora_B", "ia3", "adapter", "backbone")
_BEFORE_LAYERS = ("prompt", "embeddings")
_AFTER_LAYERS = ("norm", "head", "other")


# ---------------------------------------------------------------- grouping


def group_of(name: str) -> str:
    """The profile group of a parameter name: ``"<block>/<part>"`` (``"layer.0/lora_B"``,
    ``"embeddings/backbone"``), or ``"head"`` / ``"prompt"`` for the head and the virtual tokens."""
    if ".score." in f".{name}" or name.startswith("score."):
        return "head"
    if "prompt_encoder." in name:
        return "prompt"
    m = _LAYER.search(name) or _ADAPTER.search(name)
    if m:
        block = f"layer.{int(m.group(1))}"
    elif "embed_tokens." in name:
        block = "embeddings"
    elif re.search(r"(?:^|\.)norm\.", name):
        block = "norm"
    else:
        block = "other"
    if ".lora_A." in name or ".lora_embedding_A" in name:
        part = "lora_A"
    elif ".lora_B." in name or ".lora_embedding_B" in name:
        part = "lora_B"
    elif ".ia3_" in name:
        part = "ia3"
    elif _ADAPTER.search(name):
        part = "adapter"
    else:
        part = "backbone"
    return f"{block}/{part}"


def block_of(group: str) -> str:
    return group.split("/", 1)[0]


def _block_key(block: str) -> tuple:
    if block.startswith("layer."):
        return (1, int(block.split(".", 1)[1]), "")
    if block in _BEFORE_LAYERS:
        return (0, _BEFORE_LAYERS.index(block), block)
    return (2, _AFTER_LAYERS.index(block) if block in _AFTER_LAYERS else len(_AFTER_LAYERS), block)


def _group_key(group: str) -> tuple:
    part = group.split("/", 1)[1] if "/" in group else ""
    return (*_block_key(block_of(group)), _PARTS.index(part) if part in _PARTS else len(_PARTS), part)


def group_params(named_params: Iterable[tuple[str, Any]]) -> dict[str, list]:
    """``{group: [parameter, ...]}`` of the parameters that require grad, groups in model order (embeddings,
    layers bottom to top, final norm, head)."""
    groups: dict[str, list] = {}
    for name, p in named_params:
        if p.requires_grad:
            groups.setdefault(group_of(name), []).append(p)
    return {g: groups[g] for g in sorted(groups, key=_group_key)}


def grad_norms(groups: dict[str, list]) -> dict[str, Any]:
    """``{group: 0-d float32 tensor or None}``: each group's gradient L2 norm as it is now (None: no parameter of
    the group has a gradient). Reads ``.grad`` only; the tensors stay on the parameters' device."""
    import torch

    out: dict[str, Any] = {}
    with torch.no_grad():
        for g, params in groups.items():
            norms = [torch.linalg.vector_norm(p.grad, dtype=torch.float32) for p in params if p.grad is not None]
            out[g] = torch.stack(norms).square().sum().sqrt() if norms else None
    return out


class GradProfiler:
    """Records ``grad_norms`` at every ``every``-th optimizer step (``record(step)``, 0-based, called between
    backward and the optimizer step); ``flush(state)`` moves what it recorded into ``state[PROFILE_KEY]`` (one
    host copy) and returns the profile."""

    def __init__(self, named_params: Iterable[tuple[str, Any]], every: int):
        self.every = int(every)
        self.groups = group_params(named_params)
        self._pending: list[tuple[int, dict[str, Any]]] = []

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def record(self, step: int) -> None:
        if self.due(step):
            self._pending.append((int(step), grad_norms(self.groups)))

    def flush(self, state: dict[str, Any]) -> dict[str, Any]:
        import torch

        profile = state.get(PROFILE_KEY) or {"steps": [], "groups": {}}
        steps, groups = list(profile.get("steps") or []), {g: list(v) for g, v in (profile.get("groups") or {}).items()}
        for g in self.groups:
            groups.setdefault(g, [None] * len(steps))
        tensors = [t for _, row in self._pending for t in row.values() if t is not None]
        values = iter(torch.stack(tensors).cpu().tolist() if tensors else [])
        for step, row in self._pending:
            now = {g: _finite(next(values)) for g, t in row.items() if t is not None}  # the order stacked above
            steps.append(step)
            for g in groups:
                groups[g].append(now.get(g))
        self._pending = []
        profile = {"every": self.every, "steps": steps, "groups": groups}
        state[PROFILE_KEY] = profile
        return profile


def _finite(v: float) -> float | None:
    """JSON has no NaN/inf: a diverged norm is recorded as None."""
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------- from the checkpoints to metrics.json


def from_checkpoints(checkpoints: list, state_file: str = "train_state.json") -> dict[str, Any]:
    """``{PROFILE_KEY: profile}`` from the run state of the latest reported checkpoint among ``checkpoints``
    (``(Checkpoint, metrics)`` pairs), ``{}`` when it has none (profiling off, or a run from before it)."""
    reported = [(c, m) for c, m in checkpoints if m]
    if not reported:
        return {}
    ckpt, _ = max(reported, key=lambda cm: cm[1].get("epoch", 0))
    try:
        with ckpt.as_directory() as d:
            state = json.loads(Path(d, state_file).read_text())
    except (OSError, ValueError):
        return {}
    profile = state.get(PROFILE_KEY)
    return {PROFILE_KEY: profile} if isinstance(profile, dict) and profile.get("steps") else {}


# ---------------------------------------------------------------- for the report


def _combine(columns: list[list]) -> list[float | None]:
    """Per step, the L2 norm of several groups' gradients together (None where none of them has one)."""
    out = []
    for values in zip(*columns):
        present = [v for v in values if v is not None]
        out.append(math.sqrt(sum(v * v for v in present)) if present else None)
    return out


def by_block(profile: dict[str, Any] | None, max_lines: int = MAX_LINES) -> dict[str, Any] | None:
    """The profile folded into at most ``max_lines`` lines, one per block (its groups' norms combined), layers
    binned into contiguous ranges (``"layers 0-3"``) when there are too many: ``{"every", "steps", "lines":
    [(label, [norm or None, ...]), ...]}`` in model order; None when there is nothing to draw."""
    if not isinstance(profile, dict) or not profile.get("steps") or not profile.get("groups"):
        return None
    steps = list(profile["steps"])
    blocks: dict[str, list[list]] = {}
    for g, values in profile["groups"].items():
        blocks.setdefault(block_of(g), []).append(list(values)[:len(steps)])
    order = sorted(blocks, key=_block_key)
    layers = [b for b in order if b.startswith("layer.")]
    others = [b for b in order if not b.startswith("layer.")]
    bins = max(1, max_lines - len(others))
    if len(layers) <= bins:
        layer_lines = [(b.replace("layer.", "layer "), blocks[b]) for b in layers]
    else:
        layer_lines = []
        size = -(-len(layers) // bins)  # equal ranges (the top one may be shorter)
        for k in range(0, len(layers), size):
            part = layers[k:k + size]
            lo, hi = (int(b.split(".", 1)[1]) for b in (part[0], part[-1]))
            layer_lines.append((f"layers {lo}-{hi}" if hi > lo else f"layer {lo}",
                                [c for b in part for c in blocks[b]]))
    lines = [(b, blocks[b]) for b in others if _block_key(b)[0] == 0] + layer_lines \
        + [(b, blocks[b]) for b in others if _block_key(b)[0] == 2]
    return {"every": profile.get("every"), "steps": steps,
            "lines": [(label, _combine(cols)) for label, cols in lines]}
