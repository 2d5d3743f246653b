"""Evaluate a merged LoRA adapter (``MultiModuleModel.merge``): every source task's test split through the merged
adapter with that task's own head, next to the task's own module on the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def evaluate_merge(model, merged: str, tasks_dir: str | Path, max_length: int, batch_size: int = 32
                   ) -> dict[str, dict[str, Any]]:
    """task -> {merged_test_*, own_test_*, delta_macro_f1 (points)} for each source of ``merged``."""
    from modpipe.adapt.data import load_task
    from modpipe.evaluate import classification_metrics

    info = model.merged[merged]
    out: dict[str, dict[str, Any]] = {}
    for task, weight in zip(info["sources"], info["weights"]):
        test = load_task(tasks_dir, task).splits["test"]
        row: dict[str, Any] = {"weight": weight, "n_test": len(test)}
        for tag, adapter in (("merged", merged), ("own", task)):
            probs = model.predict_proba(adapter, test.texts, max_length, batch_size, head=task)
            row.update(classification_metrics(test.label_ids, probs.argmax(1).tolist(), f"{tag}_test_", probs=probs))
        row["delta_macro_f1"] = round(100.0 * (row["merged_test_macro_f1"] - row["own_test_macro_f1"]), 2)
        out[task] = row
    return out
