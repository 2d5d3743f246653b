"""The per-shard passes of curation, each run as one Ray Data task per shard and each writing its outputs
atomically (temp file in ``<work>/.tmp`` + ``os.replace``), the file that marks a shard done last.

A shard is one raw JSONL part (``part-NNNNN.jsonl``).  For shard ``NNNNN`` under the work dir (``Work``):

normalize   raw part -> read (``readers``) -> ``normalize.NormalizeText`` -> ``normalized/part-NNNNN.parquet``:
            every raw row (rejects too) with n_chars, n_words, key (``normalize.text_key``), sig (``dedup.MinHasher``
            signature of the alive rows, when MinHash dedup is on); ``normalized/stats-NNNNN.json`` (the read and
            normalize steps' stats) is written first, the Parquet file (the done marker) last
filter      normalized rows -> the step chain (dedup verdicts, decontamination, quality filters, PII) ->
            ``docs/docs-NNNNN.parquet`` (kept rows, id order), ``quarantine/part-NNNNN.jsonl`` (rejected rows,
            (source, line, id) order), ``filtered/part-NNNNN.json`` (per-step stats; the done marker)
encode      docs -> ``tokenizers`` ``encode_batch`` -> ``doc EOS doc EOS ...`` -> ``shards/shard-NNNNN-MMM.parquet``
            (``rows_per_shard`` rows each) and ``encoded/part-NNNNN.json`` (the shard list; the done marker)

Nothing depends on timing or on which worker ran a shard, so a rerun after a kill gives the same bytes.  Each
pass reports its shards as they finish (``modpipe.progress``) and logs one line when it ends (shards run and
skipped, summed counts, seconds); Ray Data's own progress output is turned off while it runs (``quiet_ray_data``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from modpipe.curate.base import Stats

log = logging.getLogger("modpipe.curate")

ROW_COLUMNS = ["id", "text", "source", "line", "reason", "detail", "step", "n_chars", "n_words", "key", "sig"]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename onto ``path``: a file that exists is complete (a kill leaves only temp files)."""
    tmp_dir = path.parent.parent / ".tmp" if path.parent.name != ".tmp" else path.parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.parent.name}-{path.name}.{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, sort_keys=True)))


def _write_parquet(df: pd.DataFrame, schema, path: Path, row_group_rows: int | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_rows))


# --- the work dir ----------------------------------------------------------------------------------------------


class Work:
    """The step's work dir (``StepContext.work``, kept across killed attempts): per-shard files of each pass, which
    shards are done, and the timings of this attempt."""

    def __init__(self, root: Path, raw_dir: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.resumed = any(self.root.iterdir())  # an earlier attempt left something
        shutil.rmtree(self.root / ".tmp", ignore_errors=True)  # a killed attempt's half-written files
        self.parts = sorted(Path(raw_dir).glob("part-*.jsonl"))
        if not self.parts:
            log.warning("curate: %s holds no records", raw_dir)
        self.index = [int(p.stem.split("-")[1]) for p in self.parts]
        self.skipped: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.normalized = self.paths("normalized", "part-{:05d}.parquet")
        self.normalize_stats = self.paths("normalized", "stats-{:05d}.json")
        self.docs = self.paths("docs", "docs-{:05d}.parquet")
        self.quarantine = self.paths("quarantine", "part-{:05d}.jsonl")
        self.filtered = self.paths("filtered", "part-{:05d}.json")
        self.encoded = self.paths("encoded", "part-{:05d}.json")
        self.tokenizer = self.root / "tokenizer" / "tokenizer.json"

    def paths(self, sub: str, fmt: str) -> list[Path]:
        return [self.root / sub / fmt.format(i) for i in self.index]

    def pending(self, what: str, markers: list[Path]) -> list[int]:
        """Positions of the shards whose done marker is missing (the others are skipped: resume)."""
        todo = [k for k, m in enumerate(markers) if not m.is_file()]
        self.skipped[what] = len(markers) - len(todo)
        return todo

    @contextmanager
    def timed(self, what: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.timings[what] = time.perf_counter() - t


# --- running a pass --------------------------------------------------------------------------------------------


@contextmanager
def quiet_ray_data() -> Iterator[None]:
    """Ray Data without progress bars, without the "Running Dataset" dumps it logs every few seconds when stdout is
    not a terminal, and without its start/finish lines: a pass logs one line itself.  Its warnings still show."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start
    ctx.enable_progress_bars = ctx.print_on_execution_start = False
    log_once("ray_data_progress_manager_disabled")  # its "progress bars disabled" warning: we turned them off
    consoles = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]
    levels = [h.level for h in consoles]
    for h in consoles:  # the console only: Ray Data's session log file keeps everything
        h.setLevel(max(h.level, logging.WARNING))
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        for h, level in zip(consoles, levels):
            h.setLevel(level)


def run_pass(name: str, items: list[dict], fn: Callable, parallelism: int, skipped: int = 0, **kwargs) -> None:
    """``fn(item, **kwargs)`` for every pending shard as Ray Data tasks, at most ``parallelism`` at once; one log
    line at the end with the sum of each count ``fn`` returns."""
    import ray

    from modpipe import progress

    t = time.perf_counter()
    totals: Counter = Counter()
    if items:
        bar = progress.task(f"curate/{name}", len(items) + skipped, f"curate {name} (shards)", completed=skipped)
        with quiet_ray_data():
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            for row in ds.map(fn, fn_kwargs=kwargs, num_cpus=1,
                              compute=ray.data.TaskPoolStrategy(size=min(parallelism, len(items)))).iter_rows():
                totals.update({k: v for k, v in row.items() if k != "index"})
                bar.advance()
        bar.done()
    counts = ", ".join(f"{k} {v}" for k, v in totals.items())
    log.info("curate: %-9s %d shard(s) in %.1f s on %d worker(s)%s%s", name + ":", len(items),
             time.perf_counter() - t, min(parallelism, len(items)), f", {skipped} already done" if skipped else "",
             f"; {counts}" if counts else "")


# --- normalize -------------------------------------------------------------------------------------------------


def row_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("line", pa.int64()),
                      ("reason", pa.string()), ("detail", pa.string()), ("step", pa.string()),
                      ("n_chars", pa.int64()), ("n_words", pa.int64()), ("key", pa.string()), ("sig", pa.binary())])


def read_rows(part: str, max_bytes: int) -> pd.DataFrame:
    """Every record and reader reject of a raw part (modpipe's own file: no caps but ``max_bytes``) as rows: id,
    text, source, line, reason, detail, step (a reject: reason set, step ``read``)."""
    from modpipe.curate import guard, readers

    rows = []
    for r in readers.read_file(part, "text", "id", keep_origin=True, max_bytes=max_bytes, limits=guard.UNLIMITED):
        line = r.get("line")
        line = int(line) if isinstance(line, int) and not isinstance(line, bool) else -1
        if readers.is_reject(r):
            rows.append(("", "", str(r["source"]), line, r["reason"], r["detail"], "read"))
        else:
            rows.append((str(r["id"]), r["text"], str(r["source"]), line, "", "", ""))
    return pd.DataFrame(rows, columns=ROW_COLUMNS[:7])


def normalize_shard(item: dict[str, Any], steps: list[str], max_bytes: int, minhash=None,
                    markup: str | None = None) -> dict[str, Any]:
    """Raw part -> normalized rows + the read/normalize stats; ``minhash``: ``CurateConfig.minhash`` or None;
    ``markup``: the raw corpus's markup (``harvest.MARKUP``), never a field of its records."""
    from modpipe.curate.normalize import NormalizeText, count_words, text_key

    stats = Stats()
    df = read_rows(item["part"], max_bytes)
    stats.add("read", len(df), Counter(df.loc[df["reason"] != "", "reason"].tolist()))
    df = NormalizeText(steps, markup).run(df, stats)
    df["n_chars"] = np.array([len(t) for t in df["text"]], dtype=np.int64)
    df["n_words"] = np.array([count_words(t) for t in df["text"]], dtype=np.int64)
    df["key"] = [text_key(t) if t else "" for t in df["text"]]
    df["sig"] = b""
    if minhash is not None and len(df):
        from modpipe.curate.dedup import MinHasher

        sigs = MinHasher(minhash)(df)  # alive rows only
        df.loc[(df["reason"] == "").to_numpy(), "sig"] = sigs["sig"].to_numpy()
    write_json(Path(item["stats"]), stats.as_dict())
    _write_parquet(df, row_schema(), Path(item["out"]))
    return {"index": item["index"], "rows": len(df), "rejected": int((df["reason"] != "").sum())}


def normalize_pass(w: Work, c, max_bytes: int, markup: str | None = None) -> None:
    """``c``: ``CurateConfig``; ``max_bytes``: ``corpus.max_record_bytes``; ``markup``: the raw corpus's."""
    todo = w.pending("normalize", w.normalized)
    items = [{"index": w.index[k], "part": str(w.parts[k]), "out": str(w.normalized[k]),
              "stats": str(w.normalize_stats[k])} for k in todo]
    run_pass("normalize", items, normalize_shard, c.parallelism, w.skipped["normalize"], steps=list(c.normalize),
             max_bytes=max_bytes, minhash=c.minhash if c.minhash.enabled else None, markup=markup)


# --- filter ----------------------------------------------------------------------------------------------------


def _quarantine_lines(rejected: pd.DataFrame) -> str:
    out = []
    for r in rejected.sort_values(["source", "line", "id"], kind="mergesort").itertuples(index=False):
        rec = {"step": r.step, "id": r.id or None, "source": r.source, "line": None if r.line < 0 else int(r.line),
               "reason": r.reason, "detail": r.detail}
        out.append(json.dumps(rec, ensure_ascii=False) + "\n")
    return "".join(out)


def filter_shard(item: dict[str, Any], chain: list) -> dict[str, Any]:
    """Normalized rows -> the step chain -> kept docs, quarantine part, per-step stats (the done marker last)."""
    import pyarrow as pa

    df = pd.read_parquet(item["normalized"])
    stats = Stats()
    for step in chain:
        df = step.run(df, stats)
    kept = df[df["reason"] == ""].sort_values("id", kind="mergesort").reset_index(drop=True)
    fields = [("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("n_chars", pa.int64()),
              ("n_words", pa.int64())]
    if "lang" in kept:  # the language filter ran: its answer is a column of the docs
        fields.append(("lang", pa.string()))
    _write_parquet(kept, pa.schema(fields), Path(item["docs"]))
    lines = _quarantine_lines(df[df["reason"] != ""])
    atomic_write(Path(item["quarantine"]), lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    pii = {k[4:]: int(kept[k].sum()) for k in sorted(kept.columns) if k.startswith("pii_")}
    write_json(Path(item["done"]), {"rows": len(df), "kept": len(kept), "steps": stats.as_dict(), "pii": pii})
    return {"index": item["index"], "rows": len(df), "kept": len(kept)}


def filter_pass(w: Work, c, todo: list[int], chain: list) -> None:
    """``c``: ``CurateConfig``; ``todo``: ``w.pending("filter", ...)`` (asked first: dedup runs only if any)."""
    items = [{"index": w.index[k], "normalized": str(w.normalized[k]), "docs": str(w.docs[k]),
              "quarantine": str(w.quarantine[k]), "done": str(w.filtered[k])} for k in todo]
    run_pass("filter", items, filter_shard, c.parallelism, w.skipped["filter"], chain=chain)


# --- encode + pack ---------------------------------------------------------------------------------------------


def encode_shard(item: dict[str, Any], tokenizer_json: str, seq_len: int, rows_per_shard: int,
                 rows_per_row_group: int, batch_size: int) -> dict[str, Any]:
    """Docs -> token ids in ``encode_batch`` batches -> EOS-packed rows -> token shards + the shard list."""
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    from modpipe.curate.shards import pack, write_shard
    from modpipe.lineage import sha256_file

    tok = Tokenizer.from_str(tokenizer_json)
    texts = pq.read_table(item["docs"], columns=["text"]).column("text").to_pylist()
    docs = []
    for start in range(0, len(texts), batch_size):
        enc = tok.encode_batch(texts[start:start + batch_size], add_special_tokens=False)
        docs.extend(np.asarray(e.ids, dtype=np.int32) for e in enc)
    rows = pack(docs, seq_len)  # (rows, seq_len) int32
    out_dir = Path(item["shards_dir"])
    shards = []
    for j, start in enumerate(range(0, len(rows), rows_per_shard)):
        path = out_dir / f"shard-{item['index']:05d}-{j:03d}.parquet"
        block = rows[start:start + rows_per_shard]
        atomic_write(path, lambda tmp, b=block: write_shard(b, tmp, rows_per_row_group))
        shards.append({"path": f"{out_dir.name}/{path.name}", "rows": int(len(block)), "tokens": int(block.size),
                       "sha256": sha256_file(path)})
    summary = {"docs": len(texts), "doc_tokens": int(sum(len(d) for d in docs)), "shards": shards}
    write_json(Path(item["done"]), summary)
    return {"index": item["index"], "docs": len(texts), "rows": int(len(rows))}


def encode_pass(w: Work, c, tokenizer_json: str) -> None:
    """``c``: ``CurateConfig``."""
    todo = w.pending("encode", w.encoded)
    items = [{"index": w.index[k], "docs": str(w.docs[k]), "shards_dir": str(w.root / "shards"),
              "done": str(w.encoded[k])} for k in todo]
    run_pass("encode", items, encode_shard, c.parallelism, w.skipped["encode"], tokenizer_json=tokenizer_json,
             seq_len=c.seq_len, rows_per_shard=c.rows_per_shard, rows_per_row_group=c.rows_per_row_group,
             batch_size=c.encode_batch_size)
