"""EOS-separated packing into fixed-length rows, Parquet shards and manifest.json.

Documents (in id order, one curation shard at a time) are concatenated as ``doc EOS doc EOS ...`` and cut into
rows of exactly ``seq_len`` tokens; each curation shard's last partial row is dropped (so shards are packed,
and resumed, independently).  Token shards hold ``rows_per_shard`` rows each in row groups of
``rows_per_row_group`` (``shards/shard-NNNNN-MMM.parquet``, column ``input_ids: list<int32>``); the manifest
lists every shard with its rows, tokens and sha256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from modpipe.models.backbone import EOS_ID


def pack(docs: list[np.ndarray], seq_len: int) -> np.ndarray:
    """(rows, seq_len) int32 array of EOS-separated, concatenated docs; the tail (< seq_len) is dropped."""
    if not docs:
        return np.zeros((0, seq_len), dtype=np.int32)
    eos = np.array([EOS_ID], dtype=np.int32)
    stream = np.concatenate([part for d in docs for part in (d.astype(np.int32), eos)])
    rows = len(stream) // seq_len
    return stream[: rows * seq_len].reshape(rows, seq_len)


def write_shard(rows: np.ndarray, path: Path, rows_per_row_group: int) -> None:
    """(rows, seq_len) int32 -> Parquet ``input_ids: list<int32>`` in row groups of ``rows_per_row_group`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    seq_len = rows.shape[1]
    flat = pa.array(rows.reshape(-1), type=pa.int32())
    offsets = pa.array(np.arange(0, len(rows) * seq_len + 1, seq_len, dtype=np.int32))
    col = pa.ListArray.from_arrays(offsets, flat)
    pq.write_table(pa.table({"input_ids": col}), path, row_group_size=rows_per_row_group)


def write_manifest(path: Path, *, seq_len: int, vocab_size: int, tokenizer_rel: str, tokenizer_sha: str,
                   shards: list[dict], tasks: dict[str, Any], extra: dict | None = None) -> dict[str, Any]:
    digest = hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()
    manifest = {
        "seq_len": seq_len,
        "vocab_size": vocab_size,
        "tokenizer": tokenizer_rel,
        "tokenizer_sha256": tokenizer_sha,
        "shards": shards,
        "total_rows": sum(s["rows"] for s in shards),
        "total_tokens": sum(s["tokens"] for s in shards),
        "digest": digest,
        "tasks": tasks,
        **(extra or {}),
    }
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest
