"""Evaluation: metrics computed from real predictions (scikit-learn), shared by adapt, tune and the report."""

from modpipe.evaluate.metrics import classification_metrics, confusion

__all__ = ["classification_metrics", "confusion"]
