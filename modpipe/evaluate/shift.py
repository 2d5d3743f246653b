"""Domain shift between the pretraining corpus and each task: how far a task's text is from what the backbone saw.

``run(cfg, ctx)`` (the ``shift`` step) -> ``{"shift": <shift.json>}``; ``compute(...)`` is the same without the
contract gate. Two measures per task, on a bounded, seeded sample (CPU, seconds on the demo backbone):

- **perplexity**: the backbone's token-weighted mean next-token NLL, exponentiated, on the task's *test* texts
  (at most ``MAX_TEXTS`` of them; decontamination keeps test texts out of the pretraining corpus). Each text is
  tokenized with the backbone's tokenizer, preceded by ``<eos>`` (in the pretraining stream every document follows
  an ``<eos>``) and cut to curate's ``seq_len``: a window of at most ``seq_len`` ids whose text tokens are all
  predicted. Beside it, the same measure on ``REFERENCE_ROWS`` rows of a reference shard of pretraining text
  (``seq_len`` ids each, every token after the first predicted), and the ratio task / reference. The reference is
  the held-out shard the pretrain step names in its outputs (``heldout_shard``) when it names one; otherwise the
  last shard of curate's manifest, which pretraining *did* train on: ``held_out: false`` in ``shift.json`` says
  so, and that reference perplexity is an in-sample figure (lower than a held-out one would be).
- **JS divergence**: Jensen-Shannon divergence (base 2, in [0, 1]) between the unigram distribution of the task
  sample's tokens (whole texts, not cut) and that of the whole pretraining corpus (every manifest shard's
  ``input_ids``, counted with ``numpy.bincount``), special tokens (``<pad>``, ``<unk>``, ``<eos>``) left out of both.

Short task texts are scored with less context than the reference rows' full windows, which alone raises their
perplexity somewhat; the ratio is a shift indicator, not a calibrated distance.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from modpipe.lineage import sha256_file
from modpipe.models.backbone import EOS_ID, PAD_ID, SPECIAL_TOKENS

log = logging.getLogger("modpipe.shift")

SHIFT_FILE = "shift.json"
SPLIT = "test"
"""The task split whose texts are scored."""
MAX_TEXTS = 256
"""Task texts scored per task at most (a seeded sample when the split has more)."""
REFERENCE_ROWS = 64
"""Rows of the reference shard scored (a seeded sample)."""
BATCH_SIZE = 16
HELDOUT_KEY = "heldout_shard"
"""The pretrain step's output naming a shard held out of pretraining (a path; relative: to curate's dir)."""


def run(cfg, ctx) -> dict[str, Any]:
    from modpipe.gates import require_contracts

    require_contracts(ctx)
    curate, pretrain = ctx.inputs["curate"], ctx.inputs["pretrain"]
    return compute(curate["manifest"], curate["tasks_dir"], pretrain["backbone"], ctx.out, seed=cfg.seed,
                   heldout=pretrain.get(HELDOUT_KEY))


def compute(manifest_path: str | Path, tasks_dir: str | Path, backbone: str | Path, out: str | Path, *,
            seed: int = 0, heldout: Any = None, max_texts: int = MAX_TEXTS,
            reference_rows: int = REFERENCE_ROWS) -> dict[str, Any]:
    """Write ``<out>/shift.json`` (``{"reference": {...}, "tasks": {task: {...}}, ...}``) and return its path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modpipe.adapt.data import TaskDataError, list_tasks, load_task

    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    root = manifest_path.parent
    seq_len = int(manifest["seq_len"])
    shards = [root / s["path"] for s in manifest["shards"]]
    if not shards:
        raise ValueError(f"{manifest_path}: no token shard to compare the tasks with")

    corpus = np.zeros(0, dtype=np.int64)  # token counts over every shard, one shard in memory at a time
    for path in shards:
        corpus = _add(corpus, np.bincount(read_rows(path).ravel()))

    ref = _reference(manifest, root, heldout)
    rows = read_rows(ref["file"])
    rng = np.random.default_rng([seed, 1])
    pick = np.sort(rng.choice(len(rows), min(reference_rows, len(rows)), replace=False))

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(backbone)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    reference = perplexity(model, [r[:seq_len] for r in rows[pick]])
    result: dict[str, Any] = {
        "reference": {"shard": ref["shard"], "sha256": ref["sha256"], "held_out": ref["held_out"],
                      "n_rows": int(len(pick)), "n_tokens": reference["n_tokens"],
                      "perplexity": reference["perplexity"], "note": ref["note"]},
        "split": SPLIT, "seq_len": seq_len, "seed": seed, "max_texts": max_texts,
        "corpus": {"shards": len(shards), "tokens": int(corpus.sum())},
        "tasks": {},
    }
    for name in list_tasks(tasks_dir):
        try:
            texts = load_task(tasks_dir, name).splits[SPLIT].texts
        except TaskDataError as err:
            result["tasks"][name] = {"error": str(err)}
            log.warning("shift: %s skipped: %s", name, err)
            continue
        idx = np.arange(len(texts))
        if len(texts) > max_texts:
            idx = np.sort(np.random.default_rng([seed, 2]).choice(len(texts), max_texts, replace=False))
        ids = [np.asarray(x, dtype=np.int64) for x in
               tokenizer([texts[i] for i in idx], add_special_tokens=False)["input_ids"]]
        ids = [x for x in ids if len(x)]
        if not ids:
            result["tasks"][name] = {"error": f"no {SPLIT} text has a token"}
            continue
        scored = perplexity(model, [np.concatenate([[EOS_ID], x[:seq_len - 1]]) for x in ids])
        js = js_divergence(np.bincount(np.concatenate(ids)), corpus, ignore=range(len(SPECIAL_TOKENS)))
        result["tasks"][name] = {
            "perplexity": scored["perplexity"],
            "perplexity_ratio": scored["perplexity"] / reference["perplexity"],
            "js_divergence": js, "n_texts": len(ids), "n_texts_split": len(texts), "n_tokens": scored["n_tokens"],
            "n_unigram_tokens": int(sum(len(x) for x in ids))}
        log.info("shift: %s: perplexity %.1f (reference %.1f, x%.2f), JS divergence %.3f", name,
                 scored["perplexity"], reference["perplexity"], result["tasks"][name]["perplexity_ratio"], js)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SHIFT_FILE).write_text(json.dumps(result, indent=2))
    return {"shift": str(out / SHIFT_FILE)}


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two count vectors of possibly different lengths, summed."""
    if len(a) < len(b):
        a, b = b, a
    a = a.copy()
    a[: len(b)] += b
    return a


def _reference(manifest: dict, root: Path, heldout: Any) -> dict[str, Any]:
    """The shard scored as pretraining text: the held-out one pretrain names, else curate's last shard."""
    if heldout:
        path = heldout.get("path") if isinstance(heldout, dict) else heldout
        path = Path(path) if Path(path).is_absolute() else root / path
        if not path.is_file():
            raise FileNotFoundError(f"pretrain names held-out shard {path}, which does not exist")
        try:
            shard = path.relative_to(root).as_posix()
        except ValueError:
            shard = path.name
        return {"file": path, "shard": shard, "sha256": sha256_file(path), "held_out": True,
                "note": "held out of pretraining (named by the pretrain step)"}
    entry = manifest["shards"][-1]
    path = root / entry["path"]
    sha = sha256_file(path)
    if entry.get("sha256") and sha != entry["sha256"]:
        raise ValueError(f"{path}: sha256 does not match the manifest; the shard changed after curation")
    return {"file": path, "shard": entry["path"], "sha256": sha, "held_out": False,
            "note": "curate's last shard, which pretraining trained on: an in-sample reference"}


def read_rows(path: str | Path) -> np.ndarray:
    """A token shard's ``input_ids`` as a (rows, seq_len) int64 array."""
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["input_ids"]).column(0).combine_chunks()
    flat = col.flatten().to_numpy().astype(np.int64)
    return flat.reshape(len(col), -1) if len(col) else flat.reshape(0, 0)


def perplexity(model, sequences: Sequence[Sequence[int]], batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """exp of the token-weighted mean next-token NLL over ``sequences`` (every token after each sequence's first
    is predicted from those before it): ``{"perplexity", "nll", "n_tokens"}``."""
    import torch

    seqs = sorted((np.asarray(s, dtype=np.int64) for s in sequences if len(s) > 1), key=len)
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            batch = seqs[i:i + batch_size]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, s in enumerate(batch):
                ids[j, :len(s)] = torch.from_numpy(s)
                mask[j, :len(s)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target, keep = ids[:, 1:], mask[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                    reduction="none").reshape(target.shape)
            total += float(nll[keep].sum())
            n += int(keep.sum())
    if n == 0:
        raise ValueError("no token to score")
    return {"perplexity": float(np.exp(total / n)), "nll": total / n, "n_tokens": n}


def js_divergence(p: Sequence[float], q: Sequence[float], ignore: Sequence[int] = ()) -> float:
    """Jensen-Shannon divergence, base 2 (0: the same distribution, 1: disjoint supports), of two count or
    probability vectors (the shorter padded with zeros; entries at ``ignore`` left out of both)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    k = max(len(p), len(q))
    p, q = np.pad(p, (0, k - len(p))), np.pad(q, (0, k - len(q)))
    drop = [i for i in ignore if i < k]
    p[drop] = q[drop] = 0.0
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("an empty distribution has no divergence")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(min(max(0.5 * kl(p) + 0.5 * kl(q), 0.0), 1.0))
