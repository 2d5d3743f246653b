"""Composition of task modules on one backbone: several at once (mixed batches), weighted LoRA merges, in-place
swaps, and a learned AdapterFusion-style router over existing modules for a new task."""

from modpipe.compose.multi import ComposeError, MultiModuleModel

__all__ = ["ComposeError", "MultiModuleModel"]
