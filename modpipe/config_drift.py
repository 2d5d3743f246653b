"""Drift between runs (``modpipe/drift``): what a run's data profile holds and how far it may move from the
reference profile (the last succeeded run of the same ``PipelineConfig.name`` against the same registry).

Each check has a warning and an error threshold; ``None`` turns that severity off. Warnings are reported (drift
report, run log); an error fails the drift step, the gate of every consumer of curated data.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from modpipe.config_base import PositiveInt, _Section


class DriftConfig(_Section):
    """Thresholds of the drift step; PSI bands follow the usual credit-scoring convention (0.1 / 0.25)."""

    enabled: bool = True
    """False: the drift step records that it checked nothing and passes (the profile is still written)."""
    bins: int = Field(10, ge=2, le=100)
    """Quantile bins of the length and token-count histograms; their edges come from the reference profile."""
    max_values: PositiveInt = 50_000
    """Lengths kept per distribution in a profile (more are summarised by this many evenly spaced quantiles)."""
    top_tokens: int = Field(50, ge=1, le=10_000)
    """Most frequent tokens of the token shards kept in a profile (special tokens left out)."""
    psi_warn: float | None = Field(0.1, ge=0)
    """Population-stability index of a length distribution (document characters, document tokens, task example
    characters) at which a warning is reported: 0.1 = a small shift."""
    psi_error: float | None = Field(0.25, ge=0)
    """PSI at which the drift step fails: 0.25 = a major shift."""
    label_share_warn: float | None = Field(0.05, ge=0, le=1)
    """Absolute change of one label's share of a task's examples (all splits) that is reported."""
    label_share_error: float | None = Field(0.15, ge=0, le=1)
    """Absolute change of one label's share that fails the step."""
    language_share_warn: float | None = Field(0.05, ge=0, le=1)
    """Absolute change of one language's share of the curated documents that is reported."""
    language_share_error: float | None = Field(0.2, ge=0, le=1)
    """Absolute change of one language's share that fails the step."""
    top_tokens_jaccard_warn: float | None = Field(0.5, ge=0, le=1)
    """Jaccard similarity of the top tokens (as strings) below which a warning is reported."""
    top_tokens_jaccard_error: float | None = Field(None, ge=0, le=1)
    """Jaccard similarity below which the step fails (off by default: a retrained tokenizer moves it)."""
    task_change: Literal["warn", "error"] | None = "warn"
    """Severity of a task that appeared or disappeared since the reference: ``warn``, ``error`` or None (off)."""

    @model_validator(mode="after")
    def _error_beyond_warning(self) -> DriftConfig:
        for name in ("psi", "label_share", "language_share"):
            warn, error = getattr(self, f"{name}_warn"), getattr(self, f"{name}_error")
            if warn is not None and error is not None and error < warn:
                raise ValueError(f"{name}_error ({error}) must be >= {name}_warn ({warn})")
        warn, error = self.top_tokens_jaccard_warn, self.top_tokens_jaccard_error
        if warn is not None and error is not None and error > warn:
            raise ValueError(f"top_tokens_jaccard_error ({error}) must be <= top_tokens_jaccard_warn ({warn})")
        return self
