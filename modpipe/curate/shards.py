"""EOS-separated packing into fixed-length rows, Parquet shards and manifest.json.

Documents (in id order) are concatenated as ``doc EOS doc EOS ...`` and cut into rows of exactly ``seq_len``
tokens; the last partial row is dropped.  Shards hold ``rows_per_shard`` rows each
(``shards/shard-NNNNN.parquet``, column ``input_ids: list<int32>``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from modpipe.lineage import sha256_file
from modpipe.models.backbone import EOS_ID


def pack(docs: list[np.ndarray], seq_len: int) -> np.ndarray:
    """(rows, seq_len) int32 array of EOS-separated, concatenated docs; the tail (< seq_len) is dropped."""
    if not docs:
        return np.zeros((0, seq_len), dtype=np.int32)
    eos = np.array([EOS_ID], dtype=np.int32)
    stream = np.concatenate([part for d in docs for part in (d.astype(np.int32), eos)])
    rows = len(stream) // seq_len
    return stream[: rows * seq_len].reshape(rows, seq_len)


def write_shards(rows: np.ndarray, out: Path, rows_per_shard: int) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    seq_len = rows.shape[1]
    shards = []
    for i, start in enumerate(range(0, len(rows), rows_per_shard)):
        block = rows[start:start + rows_per_shard]
        flat = pa.array(block.reshape(-1), type=pa.int32())
        offsets = pa.array(np.arange(0, len(block) * seq_len + 1, seq_len, dtype=np.int32))
        col = pa.ListArray.from_arrays(offsets, flat)
        path = out / f"shard-{i:05d}.parquet"
        pq.write_table(pa.table({"input_ids": col}), path)
        shards.append({"path": f"{out.name}/{path.name}", "rows": int(len(block)),
                       "tokens": int(block.size), "sha256": sha256_file(path)})
    return shards


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
