"""Task heads: what turns the backbone's hidden state of the last non-pad token into class logits.

The transformers classifier (``AutoModelForSequenceClassification``) applies ``score`` to every position and keeps
the logits of the last non-pad token; a head here replaces ``score`` under the same name, so that pooling, PEFT's
``modules_to_save`` (which saves ``score``) and the module files keep working for every head kind.
"""

from __future__ import annotations

HEADS = ("linear", "mlp")


def mlp_head(hidden_size: int, num_labels: int):
    """linear(h, h) -> GELU -> linear(h, K): a small non-linear probe, (B, T, h) -> (B, T, K)."""
    from torch import nn

    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, num_labels))


def attach_head(model, kind: str, num_labels: int) -> None:
    """Put a fresh ``kind`` head on a transformers sequence classifier (``linear`` keeps its own ``score``, a
    bias-free ``Linear(h, K)``). Seed the torch RNG before calling for a reproducible initialisation."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
    if kind == "mlp":
        model.score = mlp_head(model.config.hidden_size, num_labels)


def head_param_names(model) -> list[str]:
    """Names of the head's parameters in ``model`` (anything under a ``score`` module)."""
    return [n for n, _ in model.named_parameters() if n.startswith("score.") or ".score." in n]
