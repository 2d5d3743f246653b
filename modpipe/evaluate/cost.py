"""Cost figures of a module: trainable parameters, wall time, peak memory, inference latency per batch."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any, Callable, Iterable


def trainable_params(model, backbone_params: int | None = None) -> dict[str, float]:
    """Trainable and total parameter counts; ``trainable_pct`` is against ``backbone_params`` when given
    (the frozen backbone's size, the literature's denominator), else against the model's total."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    denom = backbone_params or total
    return {"trainable_params": int(trainable), "total_params": int(total),
            "trainable_pct": round(100.0 * trainable / max(denom, 1), 4)}


def peak_memory_mb(device: Any = None) -> float:
    """Peak memory of this process: CUDA max allocated on a GPU device, else peak RSS (ru_maxrss)."""
    import torch

    if device is not None and getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def latency_per_batch(run_batch: Callable[[Any], Any], batches: Iterable[Any], warmup: int = 1) -> dict[str, float]:
    """Median and mean wall milliseconds of ``run_batch(b)`` over ``batches`` (the first ``warmup`` untimed)."""
    import statistics

    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        run_batch(b)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000.0)
    if not times:
        return {"latency_ms_per_batch": float("nan"), "latency_ms_mean": float("nan"), "latency_batches": 0}
    return {"latency_ms_per_batch": round(statistics.median(times), 3),
            "latency_ms_mean": round(statistics.fmean(times), 3), "latency_batches": len(times)}
