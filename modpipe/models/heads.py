"""Task heads: what turns the backbone's hidden states into class logits.

The transformers classifier (``AutoModelForSequenceClassification``) applies ``score`` to every position and keeps
the logits of the last non-pad token; a head here replaces ``score`` under the same name, so that pooling, PEFT's
``modules_to_save`` (which saves ``score``) and the module files keep working for every head kind.

- ``linear``: the classifier's own bias-free ``Linear(h, K)`` on the last non-pad token's state;
- ``mlp``: linear -> GELU -> linear on that state;
- ``mean``: ``Linear(h, K)`` on the running mean of the states (position t holds the mean of positions 0..t), so the
  last non-pad position of a right-padded batch carries the mean over every real token: mean pooling without
  the attention mask, which ``score`` never sees. Left-padded batches (method ``prompt``) would mix pads in, so
  that pairing is refused.
"""

from __future__ import annotations

HEADS = ("linear", "mlp", "mean")


def mlp_head(hidden_size: int, num_labels: int):
    """linear(h, h) -> GELU -> linear(h, K): a small non-linear probe, (B, T, h) -> (B, T, K)."""
    from torch import nn

    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, num_labels))


def running_mean():
    from torch import nn

    class RunningMean(nn.Module):
        """(B, T, h) -> (B, T, h): position t holds the mean of positions 0..t (no parameters)."""

        def forward(self, x):
            import torch

            steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
            return x.cumsum(1) / steps

    return RunningMean()


def mean_head(hidden_size: int, num_labels: int):
    from torch import nn

    return nn.Sequential(running_mean(), nn.Linear(hidden_size, num_labels, bias=False))


def attach_head(model, kind: str, num_labels: int) -> None:
    """Put a fresh ``kind`` head on a transformers sequence classifier (``linear`` keeps its own ``score``, a
    bias-free ``Linear(h, K)``). Seed the torch RNG before calling for a reproducible initialisation."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
    if kind == "mlp":
        model.score = mlp_head(model.config.hidden_size, num_labels)
    elif kind == "mean":
        model.score = mean_head(model.config.hidden_size, num_labels)


def head_param_names(model) -> list[str]:
    """Names of the head's parameters in ``model`` (anything under a ``score`` module)."""
    return [n for n, _ in model.named_parameters() if n.startswith("score.") or ".score." in n]
