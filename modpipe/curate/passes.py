"""The per-shard passes of curation, each run as one Ray Data task per shard and each writing its outputs
atomically (temp file in ``<work>/.tmp`` + ``os.replace``), the file that marks a shard done last.

A shard is one raw JSONL part (``part-NNNNN.jsonl``).  For shard ``NNNNN`` under the work dir:

normalize   raw part -> ``normalized/part-NNNNN.parquet``: every raw row (rejects too) with the text through
            ``curate.normalize`` and n_chars, n_words, key (``normalize.text_key``), sig (``dedup.MinHasher``
            signature of the alive rows, when MinHash dedup is on)
filter      normalized rows -> the step chain (dedup verdicts, quality filters, PII, decontamination) ->
            ``docs/docs-NNNNN.parquet`` (kept rows, id order), ``quarantine/part-NNNNN.jsonl`` (rejected rows,
            (source, line, id) order), ``filtered/part-NNNNN.json`` (reason counts; the done marker)
encode      docs -> ``tokenizers`` ``encode_batch`` -> ``doc EOS doc EOS ...`` -> ``shards/shard-NNNNN-MMM.parquet``
            (``rows_per_shard`` rows each) and ``encoded/part-NNNNN.json`` (the shard list; the done marker)

Nothing depends on timing or on which worker ran a shard, so a rerun after a kill gives the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

log = logging.getLogger("modpipe.curate")

DOC_COLUMNS = ["id", "text", "source", "n_chars", "n_words"]
ROW_COLUMNS = ["id", "text", "source", "line", "reason", "detail", "n_chars", "n_words", "key", "sig"]


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename onto ``path``: a file that exists is complete (a kill leaves only temp files)."""
    tmp_dir = path.parent.parent / ".tmp" if path.parent.name != ".tmp" else path.parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.parent.name}-{path.name}.{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def _write_parquet(df: pd.DataFrame, schema, path: Path, row_group_rows: int | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_rows))


# --- normalize -------------------------------------------------------------------------------------------------


def row_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("line", pa.int64()),
                      ("reason", pa.string()), ("detail", pa.string()), ("n_chars", pa.int64()),
                      ("n_words", pa.int64()), ("key", pa.string()), ("sig", pa.binary())])


def normalize_shard(item: dict[str, Any], steps: list[str], max_bytes: int, minhash=None) -> dict[str, Any]:
    """Raw part -> normalized rows (Ray Data ``map`` over shards); ``minhash``: ``CurateConfig.minhash`` or None."""
    from modpipe.curate import readers
    from modpipe.curate.normalize import apply_steps, count_words, text_key

    rows = []
    for r in readers.read_file(item["part"], "text", "id", keep_origin=True, max_bytes=max_bytes):
        line = r.get("line")
        line = int(line) if isinstance(line, int) and not isinstance(line, bool) else -1
        if readers.is_reject(r):
            rows.append({"id": "", "text": "", "source": str(r["source"]), "line": line, "reason": r["reason"],
                         "detail": r["detail"]})
            continue
        text = apply_steps(r["text"], steps, r.get("markup"))
        row = {"id": str(r["id"]), "text": text, "source": str(r["source"]), "line": line, "reason": "",
               "detail": ""}
        if not text:
            row.update(reason="empty_text", detail="blank after normalisation")
        rows.append(row)
    df = pd.DataFrame(rows, columns=ROW_COLUMNS[:6])
    df["n_chars"] = np.array([len(t) for t in df["text"]], dtype=np.int64)
    df["n_words"] = np.array([count_words(t) for t in df["text"]], dtype=np.int64)
    df["key"] = [text_key(t) if t else "" for t in df["text"]]
    df["sig"] = b""
    if minhash is not None and len(df):
        from modpipe.curate.dedup import MinHasher

        sigs = MinHasher(minhash)(df)  # alive rows only
        df.loc[(df["reason"] == "").to_numpy(), "sig"] = sigs["sig"].to_numpy()
    _write_parquet(df, row_schema(), Path(item["out"]))
    return {"index": item["index"], "rows": len(df)}


# --- filter ----------------------------------------------------------------------------------------------------


def _quarantine_lines(rejected: pd.DataFrame, step_of: dict[str, str]) -> str:
    out = []
    for r in rejected.sort_values(["source", "line", "id"], kind="mergesort").itertuples(index=False):
        rec = {"step": step_of.get(r.reason, "read"), "id": r.id or None, "source": r.source,
               "line": None if r.line < 0 else int(r.line), "reason": r.reason, "detail": r.detail}
        out.append(json.dumps(rec, ensure_ascii=False) + "\n")
    return "".join(out)


def filter_shard(item: dict[str, Any], chain: list, step_of: dict[str, str]) -> dict[str, Any]:
    """Normalized rows -> the step chain -> kept docs, quarantine part, reason counts (the done marker last)."""
    import pyarrow as pa

    df = pd.read_parquet(item["normalized"])
    for step in chain:
        df = step(df)
    kept = df[df["reason"] == ""].sort_values("id", kind="mergesort").reset_index(drop=True)
    fields = [("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("n_chars", pa.int64()),
              ("n_words", pa.int64())]
    if "lang" in kept:  # the language filter ran: its answer is a column of the docs
        fields.append(("lang", pa.string()))
    _write_parquet(kept, pa.schema(fields), Path(item["docs"]))
    lines = _quarantine_lines(df[df["reason"] != ""], step_of)
    atomic_write(Path(item["quarantine"]), lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    pii = {k[4:]: int(kept[k].sum()) for k in sorted(kept.columns) if k.startswith("pii_")}
    counts = {"rows": len(df), "kept": len(kept), "reasons": dict(sorted(Counter(df["reason"]).items())),
              "pii": pii}
    atomic_write(Path(item["done"]), lambda tmp: tmp.write_text(json.dumps(counts, sort_keys=True)))
    return {"index": item["index"], "kept": len(kept)}


# --- encode + pack ---------------------------------------------------------------------------------------------


def encode_shard(item: dict[str, Any], tokenizer_json: str, seq_len: int, rows_per_shard: int,
                 rows_per_row_group: int, batch_size: int) -> dict[str, Any]:
    """Docs -> token ids in ``encode_batch`` batches -> EOS-packed rows -> token shards + the shard list."""
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    from modpipe.curate.shards import pack, write_shard

    tok = Tokenizer.from_str(tokenizer_json)
    texts = pq.read_table(item["docs"], columns=["text"]).column("text").to_pylist()
    docs = []
    for start in range(0, len(texts), batch_size):
        enc = tok.encode_batch(texts[start:start + batch_size], add_special_tokens=False)
        docs.extend(np.asarray(e.ids, dtype=np.int32) for e in enc)
    rows = pack(docs, seq_len)
    out_dir = Path(item["shards_dir"])
    shards = []
    for j, start in enumerate(range(0, len(rows), rows_per_shard)):
        path = out_dir / f"shard-{item['index']:05d}-{j:03d}.parquet"
        block = rows[start:start + rows_per_shard]
        atomic_write(path, lambda tmp, b=block: write_shard(b, tmp, rows_per_row_group))
        shards.append({"path": f"{out_dir.name}/{path.name}", "rows": int(len(block)), "tokens": int(block.size)})
    from modpipe.lineage import sha256_file

    for s in shards:
        s["sha256"] = sha256_file(out_dir.parent / s["path"])
    summary = {"docs": len(texts), "doc_tokens": int(sum(len(d) for d in docs)), "shards": shards}
    atomic_write(Path(item["done"]), lambda tmp: tmp.write_text(json.dumps(summary, sort_keys=True)))
    return {"index": item["index"], "rows": int(len(rows))}


# --- running a pass --------------------------------------------------------------------------------------------


def run_pass(name: str, items: list[dict], fn: Callable, parallelism: int, **kwargs) -> None:
    """``fn(item, **kwargs)`` for every pending shard as Ray Data tasks, at most ``parallelism`` at once."""
    import ray

    if not items:
        return
    log.info("curate: %s: %d shard(s) on %d Ray Data worker(s)", name, len(items), parallelism)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    done = 0
    for _ in ds.map(fn, fn_kwargs=kwargs, compute=ray.data.TaskPoolStrategy(size=min(parallelism, len(items))),
                    num_cpus=1).iter_rows():
        done += 1
        if done == len(items) or done % max(1, len(items) // 10) == 0:
            log.info("curate: %s: %d/%d shard(s) done", name, done, len(items))
