"""The problems a task can be (``TaskSpec.problem``) as data: what the config validates against.

The table lives here, among the config modules, because the config checks gate rules against it (a rule's
direction, a metric a problem measures) and config modules import no stage code; ``evaluate.problems`` adds
everything that computes (losses, scores, metrics).
"""

from __future__ import annotations

from dataclasses import dataclass

PROBLEMS = ("classification", "multilabel", "regression")


@dataclass(frozen=True)
class Problem:
    name: str
    primary: str
    """The metric (without its split prefix) that picks the epoch and the tuned trial."""
    direction: str
    """Which way ``primary`` is better: ``higher`` or ``lower``."""
    target_column: str
    """The task split's column holding the target: ``label_id``, ``label_ids`` or ``target``."""
    metrics: tuple[str, ...]
    """Test metrics it measures (without prefix), all numeric."""
    gate_metric: str
    """The publish gate's default metric (higher is better; ``PublishConfig.rule``)."""

    @property
    def mode(self) -> str:
        """Ray Tune's ``mode`` for ``primary``."""
        return "max" if self.direction == "higher" else "min"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "higher" else a < b


CLASSIFICATION = Problem("classification", "macro_f1", "higher", "label_id",
                         ("accuracy", "macro_f1", "auroc_ovr", "ece"), "macro_f1")
MULTILABEL = Problem("multilabel", "macro_f1", "higher", "label_ids",
                     ("accuracy", "micro_f1", "macro_f1", "map"), "macro_f1")
REGRESSION = Problem("regression", "rmse", "lower", "target", ("rmse", "mae", "spearman"), "spearman")
BY_NAME = {p.name: p for p in (CLASSIFICATION, MULTILABEL, REGRESSION)}


def get(name: str | None) -> Problem:
    if name is None:
        return CLASSIFICATION
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; choose one of {', '.join(PROBLEMS)}") from None


LOWER_IS_BETTER = ("rmse", "mae", "ece", "max_slice_gap")


def higher_is_better(metric: str) -> bool:
    """Which way a metric (with or without its split prefix) is better."""
    return metric.split("_", 1)[-1] not in LOWER_IS_BETTER
