"""External baseline for the man_language task: offline language identification by py3langid (no training on
the task), scored on the same test split with the same metrics as the modules.

The task's labels are man language folders (``de``, ``pt_BR``, ``zh_CN``, ``sr@latin``); py3langid answers ISO 639-1
codes.  A label's code is its folder name up to ``_``/``@``/``.`` (``pt_BR`` -> ``pt``).  py3langid is restricted
to the codes the labels use (a label whose code it lacks is never predicted).  Folders sharing a code (``pt`` and
``pt_BR``) split that code's probability in proportion to their train-split counts, so the argmax picks the more
frequent folder: a language identifier cannot tell regional variants apart, and the table says so.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def iso_code(label: str) -> str:
    """``pt_BR`` -> ``pt``, ``sr@latin`` -> ``sr``, ``zh_CN.UTF-8`` -> ``zh``."""
    for sep in ("_", "@", ".", "-"):
        label = label.split(sep)[0]
    return label.lower()


def label_probabilities(identifier, texts: list[str], labels: list[str], prior: list[float]) -> np.ndarray:
    """N x K probabilities over the task's labels from py3langid's normalised probabilities over codes."""
    codes = [iso_code(lab) for lab in labels]
    share = np.zeros(len(labels))  # a label's share of its code's probability
    for code in set(codes):
        idx = [i for i, c in enumerate(codes) if c == code]
        weights = np.array([max(prior[i], 1e-9) for i in idx])
        share[idx] = weights / weights.sum()
    out = np.zeros((len(texts), len(labels)))
    for n, text in enumerate(texts):
        probs = dict(identifier.rank(text))
        out[n] = [probs.get(c, 0.0) * share[i] for i, c in enumerate(codes)]
        total = out[n].sum()
        out[n] = out[n] / total if total > 0 else np.full(len(labels), 1.0 / len(labels))
    return out


def evaluate(task_dir: str | Path) -> dict[str, Any]:
    """py3langid on the task's test split: metrics (``test_*`` like a module's), the code mapping, cost."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from modpipe.adapt.data import load_task
    from modpipe.evaluate import classification_metrics

    task = load_task(Path(task_dir).parent, Path(task_dir).name)
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)  # numpy model file, no pickle
    known = set(identifier.labels)
    codes = {lab: iso_code(lab) for lab in task.labels}
    usable = sorted({c for c in codes.values() if c in known})
    if len(usable) < 2:
        raise ValueError(f"{task_dir}: labels {task.labels} map to fewer than two py3langid codes")
    identifier.set_languages(usable)
    counts = Counter(task.splits["train"].label_ids)
    prior = [counts.get(i, 0) / max(1, len(task.splits["train"])) for i in range(len(task.labels))]
    test = task.splits["test"]
    t0 = time.perf_counter()
    probs = label_probabilities(identifier, test.texts, task.labels, prior)
    seconds = time.perf_counter() - t0
    preds = probs.argmax(1).tolist()
    metrics = classification_metrics(test.label_ids, preds, "test_", probs=probs)
    return {
        **metrics, "method": "py3langid", "trainable_params": 0, "trainable_pct": 0.0, "train_seconds": 0.0,
        "latency_ms_per_example": round(1000.0 * seconds / max(1, len(test)), 3), "n_test": len(test),
        "label_codes": codes, "unmapped_labels": sorted(lab for lab, c in codes.items() if c not in known),
        "shared_codes": {c: [lab for lab in task.labels if codes[lab] == c]
                         for c in usable if sum(v == c for v in codes.values()) > 1},
    }


def write(task_dir: str | Path, out_path: str | Path) -> dict[str, Any]:
    result = evaluate(task_dir)
    Path(out_path).write_text(json.dumps(result, indent=2))
    return result
