"""Resume without unpickling: DeepSpeed's checkpoint files are read with ``torch.load(weights_only=True)``.

DeepSpeed 0.19 saves its state with ``torch.save`` and reads every file back through its checkpoint engine,
whose ``load`` is ``torch.load(path, weights_only=False)``: a file planted in the run dir's Ray checkpoints would
run code in every training worker on resume. ``guard(engine)`` swaps in a ``load`` that uses PyTorch's restricted
unpickler (tensors, containers, numbers, strings) plus an allow-list of the few plain DeepSpeed types its ZeRO
checkpoints hold (``ALLOWED``); anything else in a file (a callable, an unknown class) stops the load with
``UnsafeCheckpointError`` naming the file, and nothing in it runs.

Every other part of a pretrain checkpoint is JSON (``train_state.json``, the ``latest`` tag is not read: the
loop passes the tag itself) or safetensors (the final HF export).
"""

from __future__ import annotations

import os
from typing import Any


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file that holds more than tensors, containers and the allow-listed DeepSpeed types."""


def allowed_globals() -> list:
    """The DeepSpeed types a ZeRO-0..3 checkpoint pickles besides tensors: plain data classes and enums whose
    restore runs no code of the file's choosing."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_torch_load(path: str | os.PathLike, map_location: Any = None) -> Any:
    """``torch.load`` with ``weights_only=True`` and ``allowed_globals()``; UnsafeCheckpointError otherwise."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        raise UnsafeCheckpointError(f"{path}: refused to load a checkpoint file holding more than tensors and "
                                    f"plain DeepSpeed state ({first[0] if first else 'unpickling error'})") from None


class _SafeLoad:
    """DeepSpeed's checkpoint engine with ``load`` replaced by ``safe_torch_load``; everything else delegated."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        return safe_torch_load(path, map_location=map_location)


def guard(engine) -> None:
    """Make every ``engine.load_checkpoint`` read go through ``safe_torch_load``."""
    if not isinstance(engine.checkpoint_engine, _SafeLoad):
        engine.checkpoint_engine = _SafeLoad(engine.checkpoint_engine)
