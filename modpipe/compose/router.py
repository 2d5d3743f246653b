"""A learned soft router over existing task modules for a new task (AdapterFusion-style), and its comparison
with a fresh module trained for that task.

AdapterFusion (Pfeiffer et al., 2021) attends, in every block, from the backbone's output (query) over the outputs
of the frozen task adapters (keys, values).  Here the attention sits once, on the top: the last real token's
hidden state of the bare backbone is the query and the same state through each existing module (its LoRA on the
backbone) gives a key and a value; a new head classifies the attention-weighted value.  Backbone and modules stay
frozen, so their states are computed once per example and only the router (Q, K, V projections + head) trains:
seconds on CPU.  Per-block fusion would need the modules' per-layer outputs at every step (a forward pass per
module per step); top-level fusion keeps the contract that attaching a module never changes the backbone.

Shapes: base (B, H); sources (B, S, H); attention (B, S); logits (B, K).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("modpipe.compose")

ROUTER_WEIGHTS = "router.safetensors"
ROUTER_FILE = "router.json"


def fusion_router(hidden: int, n_sources: int, num_labels: int):
    """The router module (built lazily so importing this file does not import torch)."""
    import torch
    from torch import nn

    class FusionRouter(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden, bias=False)
            with torch.no_grad():  # AdapterFusion starts V at the identity: the fused state starts as the average
                self.value.weight.copy_(torch.eye(hidden))
            self.head = nn.Linear(hidden, num_labels)
            self.n_sources = n_sources

        def forward(self, base, sources):
            q = self.query(base)  # (B, H)
            k = self.key(sources)  # (B, S, H)
            v = self.value(sources)  # (B, S, H)
            attention = torch.softmax((k @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(hidden), -1)  # (B, S)
            fused = (attention.unsqueeze(-1) * v).sum(1)  # (B, H)
            return self.head(fused), attention

    return FusionRouter()


def _features(model, texts: list[str], sources: list[str], max_length: int, batch_size: int):
    import torch

    base = model.pooled(texts, max_length, adapter=None, batch_size=batch_size)  # (N, H)
    outs = torch.stack([model.pooled(texts, max_length, adapter=s, batch_size=batch_size) for s in sources], 1)
    return base, outs  # (N, H), (N, S, H)


def train_router(backbone: str, module_dirs: dict[str, str], task_dir: str | Path, out_dir: str | Path, *,
                 epochs: int = 30, lr: float = 3e-3, batch_size: int = 32, max_length: int = 256, seed: int = 0,
                 select_metric: str = "val_macro_f1", train_fraction: float = 1.0) -> dict[str, Any]:
    """Train a router over ``module_dirs`` (frozen) for the task in ``task_dir``; pick the epoch by ``select_metric``
    on val; test it.  Writes ``router.safetensors`` + ``router.json`` (sources with their manifests' sha256,
    metrics) under ``out_dir`` and returns the metrics (keys as a module's metrics.json)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from modpipe.adapt.data import load_task
    from modpipe.compose.multi import MultiModuleModel
    from modpipe.evaluate import classification_metrics
    from modpipe.lineage import library_versions, sha256_file
    from modpipe.models.fingerprint import read_backbone_fingerprint

    t0 = time.time()
    task = load_task(Path(task_dir).parent, Path(task_dir).name)
    sources = sorted(module_dirs)
    model = MultiModuleModel.load(backbone, {s: module_dirs[s] for s in sources})
    train = task.splits["train"]
    keep = _subsample(train.label_ids, train_fraction, seed)
    texts = {"train": [train.texts[i] for i in keep], "val": task.splits["val"].texts,
             "test": task.splits["test"].texts}
    labels = {"train": [train.label_ids[i] for i in keep], "val": task.splits["val"].label_ids,
              "test": task.splits["test"].label_ids}
    feats = {s: _features(model, texts[s], sources, max_length, batch_size) for s in ("train", "val", "test")}
    log.info("router %s: states of %d sources computed for %d/%d/%d rows in %.1f s", task.name, len(sources),
             *(len(texts[s]) for s in ("train", "val", "test")), time.time() - t0)

    torch.manual_seed(seed)
    router = fusion_router(model.hidden, len(sources), len(task.labels))
    best_epoch, history = _fit_router(router, feats, labels, epochs, lr, batch_size, seed, select_metric)
    n = len(labels["train"])
    with torch.no_grad():
        test_logits, attention = router(*feats["test"])
    probs = torch.softmax(test_logits, -1).numpy()
    seconds = time.time() - t0
    trainable = sum(p.numel() for p in router.parameters())
    backbone_params = sum(p.numel() for n_, p in model.base.named_parameters() if "lora_" not in n_)
    metrics = {
        **classification_metrics(labels["test"], probs.argmax(-1).tolist(), "test_", probs=probs),
        **{k: v for k, v in history[best_epoch - 1].items() if k.startswith("val_")},
        "best_epoch": best_epoch, "method": "router", "head": "linear", "freeze_policy": "frozen",
        "sources": sources, "mean_attention": dict(zip(sources, np.round(attention.mean(0).numpy(), 4).tolist())),
        "trainable_params": trainable, "total_params": backbone_params + trainable,
        "trainable_pct": round(100.0 * trainable / backbone_params, 4), "train_seconds": round(seconds, 3),
        "n_train": n, "train_fraction": train_fraction, "history": history,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in router.state_dict().items()}, str(out / ROUTER_WEIGHTS))
    (out / ROUTER_FILE).write_text(json.dumps({
        "task": task.name, "labels": task.labels, "backbone_fingerprint": read_backbone_fingerprint(backbone),
        "sources": {s: {"dir": str(module_dirs[s]), "module_json_sha256": sha256_file(Path(module_dirs[s],
                                                                                         "module.json"))}
                    for s in sources},
        "hidden_size": model.hidden, "epochs": epochs, "lr": lr, "seed": seed, "data_digests": task.digests,
        "metrics": metrics, "versions": library_versions(),
        "files": {ROUTER_WEIGHTS: sha256_file(out / ROUTER_WEIGHTS)},
    }, indent=2))
    log.info("router %s over %s: test macro-F1 %.3f (epoch %d) in %.1f s", task.name, sources,
             metrics["test_macro_f1"], best_epoch, seconds)
    return metrics


def _fit_router(router, feats: dict, labels: dict, epochs: int, lr: float, batch_size: int, seed: int,
                select_metric: str) -> tuple[int, list[dict[str, Any]]]:
    """Train ``router`` on the train features; keep (load back) the epoch with the best ``select_metric`` on val.
    Returns (that epoch, the per-epoch val metrics); the router is left in eval mode."""
    import torch
    import torch.nn.functional as F

    from modpipe.evaluate import classification_metrics

    opt = torch.optim.AdamW(router.parameters(), lr=lr)
    y_train = torch.tensor(labels["train"])
    n = len(y_train)
    best: tuple[float, int, dict] | None = None
    history = []
    for epoch in range(1, epochs + 1):
        router.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            logits, _ = router(feats["train"][0][idx], feats["train"][1][idx])
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        router.eval()
        with torch.no_grad():
            val_logits, _ = router(*feats["val"])
        m = classification_metrics(labels["val"], val_logits.argmax(-1).tolist(), prefix="val_")
        history.append({"epoch": epoch, **m})
        if best is None or m[select_metric] > best[0]:
            best = (m[select_metric], epoch, {k: v.detach().clone() for k, v in router.state_dict().items()})
    assert best is not None
    router.load_state_dict(best[2])
    router.eval()
    return best[1], history


def _subsample(label_ids: list[int], fraction: float, seed: int) -> list[int]:
    """Seeded, label-stratified subsample (at least one row per label); all rows at fraction 1."""
    import numpy as np

    if fraction >= 1.0:
        return list(range(len(label_ids)))
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(label_ids):
        by_label.setdefault(y, []).append(i)
    for y in sorted(by_label):
        rows = by_label[y]
        k = max(1, round(len(rows) * fraction))
        keep += rng.choice(rows, size=k, replace=False).tolist()
    return sorted(keep)


def route_vs_fresh(backbone: str, module_dirs: dict[str, str], task_dir: str | Path, fresh_metrics: str | Path,
                   out_dir: str | Path, **router_kw: Any) -> dict[str, Any]:
    """The router over ``module_dirs`` for a new task next to the fresh module trained for it (its metrics.json,
    same splits): ``{"router": metrics, "fresh": metrics, "delta_macro_f1": router - fresh}``."""
    fresh = json.loads(Path(fresh_metrics).read_text())
    routed = train_router(backbone, module_dirs, task_dir, out_dir, **router_kw)
    return {"router": routed, "fresh": fresh,
            "delta_macro_f1": round(routed["test_macro_f1"] - fresh["test_macro_f1"], 4)}
