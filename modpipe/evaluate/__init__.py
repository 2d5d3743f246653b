"""Evaluation: metrics computed from real predictions (scikit-learn, torchmetrics) and cost figures, shared by
adapt, tune and the reports."""

from modpipe.evaluate.cost import latency_per_batch, peak_memory_mb, trainable_params
from modpipe.evaluate.metrics import auroc_ovr, classification_metrics, confusion, expected_calibration_error

__all__ = ["auroc_ovr", "classification_metrics", "confusion", "expected_calibration_error", "latency_per_batch",
           "peak_memory_mb", "trainable_params"]
