"""A run's data profile, computed from curate's outputs: what the drift step compares between runs.

``build(curate_outputs, drift_cfg) -> dict`` (JSON-ready):

- ``docs``: the curated documents' length in characters (``n_chars``) and in tokens under the run's tokenizer;
- ``languages``: each language's share of the documents (the language filter's ``lang`` column; None when the
  filter did not run);
- ``tasks``: per task under curate's tasks dir, its example count, example lengths in characters and, when its
  splits hold a string ``label`` column, each label's share of the examples (all splits together; multilabel: the
  share of the examples holding each label; regression tasks have no label shares);
- ``top_tokens``: the most frequent tokens of the token shards as strings (ids differ between tokenizers).

A distribution is kept as its own quantile bin edges (used when this profile becomes the reference) and at most
``max_values`` of its values (evenly spaced quantiles when there are more), so any later profile can be binned on
these edges.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from modpipe.config_drift import DriftConfig

SPLITS = ("train", "val", "test")
"""A task's split files under curate's tasks dir (``<task>/<split>.parquet``)."""
SCHEMA = 1
"""Bumped when the profile's layout changes (a reference of another schema is not compared)."""
TEXT_BATCH = 256


def distribution(values: np.ndarray, cfg: DriftConfig) -> dict[str, Any]:
    """Count, mean, inner quantile edges (``bins`` bins) and the values (at most ``max_values`` quantiles)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    if values.size == 0:
        return {"n": 0, "mean": None, "edges": [], "values": []}
    inner = np.unique(np.quantile(values, np.linspace(0, 1, cfg.bins + 1)[1:-1]))
    kept = values if values.size <= cfg.max_values else np.quantile(values, np.linspace(0, 1, cfg.max_values))
    return {"n": int(values.size), "mean": float(values.mean()), "edges": inner.tolist(),
            "values": [round(float(v), 3) for v in kept]}


def _doc_lengths(docs_dir: Path, tokenizer: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """(characters, tokens, languages or None) of every curated document, one docs part at a time."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    chars, tokens, langs = [], [], []
    has_lang = True
    for part in sorted(docs_dir.glob("*.parquet")):
        schema = pq.read_schema(part)
        has_lang = has_lang and "lang" in schema.names
        table = pq.read_table(part, columns=["text", "n_chars", *(["lang"] if "lang" in schema.names else [])])
        chars.append(table.column("n_chars").to_numpy())
        texts = table.column("text").to_pylist()
        for start in range(0, len(texts), TEXT_BATCH):
            enc = tok.encode_batch(texts[start:start + TEXT_BATCH], add_special_tokens=False)
            tokens.append(np.fromiter((len(e.ids) for e in enc), dtype=np.int64, count=len(enc)))
        if "lang" in schema.names:
            langs.extend(table.column("lang").to_pylist())
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))  # noqa: E731
    return cat(chars), cat(tokens), (langs if has_lang and chars else None)


def shares(values: list[str]) -> dict[str, float]:
    """Each distinct value's share of ``values`` (sorted by value)."""
    if not values:
        return {}
    counts = pc.value_counts(pa.array(values, pa.string()))
    n = len(values)
    return {str(v["values"]): int(v["counts"]) / n
            for v in sorted(counts.to_pylist(), key=lambda x: str(x["values"]))}


def _task(task_dir: Path, cfg: DriftConfig) -> dict[str, Any]:
    """One task's example count, example lengths and label shares over all its splits: each label's share of the
    examples (multilabel: of the examples holding it; regression tasks have no labels to share)."""
    from modpipe.evaluate.problems import read_problem

    try:
        problem = read_problem(task_dir)["problem"]
    except ValueError:
        problem = None  # an unreadable problem.json: the task's contract says so; no label shares here
    lengths, labels = [], []
    string_labels = problem in ("classification", "multilabel")
    for split in (task_dir / f"{name}.parquet" for name in SPLITS):
        if not split.is_file():
            continue
        schema = pq.read_schema(split)
        label_type = schema.field("label").type if "label" in schema.names else None
        string_labels = string_labels and label_type is not None and pa.types.is_string(label_type)
        table = pq.read_table(split, columns=["text", *(["label"] if string_labels else [])])
        lengths.append(pc.utf8_length(table.column("text")).to_numpy(zero_copy_only=False))
        if string_labels:
            labels.extend(table.column("label").to_pylist())
    chars = np.concatenate(lengths) if lengths else np.zeros(0)
    if problem == "multilabel" and string_labels and labels:
        held = [lab for row in labels for lab in set((row or "").split("|")) if lab]
        label_shares = {lab: n / len(labels) for lab, n in sorted(Counter(held).items())}
    else:
        label_shares = shares(labels) if string_labels and labels else None
    return {"examples": int(chars.size), "example_chars": distribution(chars, cfg), "label_shares": label_shares}


def _top_tokens(curate_dir: Path, manifest: dict, tokenizer: Path, k: int) -> list[list]:
    """[[token, share of all non-special tokens], ...] for the ``k`` most frequent tokens of the shards."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    counts = np.zeros(int(manifest["vocab_size"]), dtype=np.int64)
    for shard in manifest["shards"]:
        for batch in pq.ParquetFile(curate_dir / shard["path"]).iter_batches(columns=["input_ids"]):
            ids = pc.list_flatten(batch.column(0)).to_numpy(zero_copy_only=False)
            counts += np.bincount(ids, minlength=counts.size)[: counts.size]
    special = [i for i in tok.get_added_tokens_decoder() if i < counts.size]  # ids of <pad>, <eos>, ...
    counts[special] = 0
    total = int(counts.sum())
    top = np.argsort(-counts, kind="stable")[:k]
    return [[tok.id_to_token(int(i)), int(counts[i]) / total] for i in top if counts[i] > 0] if total else []


def build(curate: dict[str, Any], cfg: DriftConfig, curate_version: str) -> dict[str, Any]:
    """The profile of one curate output (its step outputs: ``curate_dir``, ``docs_dir``, ``tokenizer``,
    ``tasks_dir``, ``manifest``)."""
    curate_dir = Path(curate["curate_dir"])
    manifest = json.loads(Path(curate["manifest"]).read_text())
    chars, tokens, langs = _doc_lengths(Path(curate["docs_dir"]), Path(curate["tokenizer"]))
    tasks_dir = Path(curate["tasks_dir"])
    tasks = {d.name: _task(d, cfg) for d in sorted(tasks_dir.iterdir()) if d.is_dir() and (d / "train.parquet").is_file()} \
        if tasks_dir.is_dir() else {}
    return {
        "schema": SCHEMA, "curate_version": curate_version, "manifest_digest": manifest.get("digest"),
        "docs": {"count": int(chars.size), "chars": distribution(chars, cfg), "tokens": distribution(tokens, cfg)},
        "languages": shares(langs) if langs is not None else None,
        "tasks": tasks,
        "top_tokens": _top_tokens(curate_dir, manifest, Path(curate["tokenizer"]), cfg.top_tokens),
    }
