"""Curate stage: raw text -> curated docs, task splits, a BPE tokenizer and packed token shards.

``run(cfg) -> {"curate_dir", "manifest", "tokenizer", "tasks_dir", "raw_dir", "docs_dir", "quarantine",
"stats", "harvest_dir"}`` (paths).  Steps, top to bottom:

1. raw text    ``harvest.harvest_man`` (man pages, Python-docs fallback) or, for ``corpus.source=files``,
               ``harvest.ingest_files`` (user files; bad files/lines quarantined); own step dirs under raw/.
2. tasks       ``tasks.build_tasks`` from the man harvest (whatever the corpus source) -> tasks/.
3. Ray Data    read raw JSONL parts -> Normalize -> (driver: exact-dedup verdicts) -> Drop duplicates ->
               quality filters -> Decontaminate against the tasks' val/test splits.
4. driver      kept docs in id order -> docs/*.parquet; rejected rows -> quarantine/quarantine.jsonl.
5. tokenizer   byte-level BPE on the kept docs -> tokenizer/tokenizer.json.
6. Ray Data    encode in batches; driver packs ``doc EOS doc EOS ...`` into seq_len rows -> shards/ + manifest.

Everything the driver writes is sorted by id, so the same input gives byte-identical shards.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modpipe import lineage
from modpipe.config import PipelineConfig

log = logging.getLogger("modpipe.curate")

CURATE_VERSION = 1
"""Part of the step fingerprint, with a digest of this package's source."""


def _read_rows(row: dict) -> list[dict]:
    """Ray Data flat_map: one raw JSONL part -> uniform rows (rejects have id '' and a reason)."""
    from modpipe.curate import readers

    out = []
    for r in readers.read_file(Path(row["path"]), "text", "id", keep_origin=True):
        line = r.get("line")
        line = int(line) if isinstance(line, int) else -1
        if readers.is_reject(r):
            out.append({"id": "", "text": "", "source": r["source"], "line": line, "reason": r["reason"],
                        "detail": r["detail"]})
        else:
            out.append({"id": str(r["id"]), "text": r["text"], "source": str(r["source"]), "line": line,
                        "reason": "", "detail": ""})
    return out


class Chain:
    """Several Steps as one Ray Data map_batches UDF."""

    def __init__(self, steps):
        self.steps = steps

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        for s in self.steps:
            df = s(df)
        return df


def _fingerprint(cfg: PipelineConfig, raw: dict, harvest: dict) -> str:
    from modpipe.curate.harvest import code_digest

    return lineage.fingerprint("curate", CURATE_VERSION, code_digest(),
                               json.loads(cfg.section_json("corpus", "curate", "tasks")),
                               Path(raw["raw_dir"]).name, Path(harvest["raw_dir"]).name)


def _outputs(path: Path, raw: dict, harvest: dict) -> dict[str, str]:
    return {
        "curate_dir": str(path),
        "manifest": str(path / "manifest.json"),
        "tokenizer": str(path / "tokenizer" / "tokenizer.json"),
        "tasks_dir": str(path / "tasks"),
        "raw_dir": raw["raw_dir"],
        "docs_dir": str(path / "docs"),
        "quarantine": str(path / "quarantine" / "quarantine.jsonl"),
        "stats": str(path / "stats.json"),
        "harvest_dir": harvest["raw_dir"],
    }


def _write_docs(kept: pd.DataFrame, out: Path, per_file: int) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                        ("n_chars", pa.int64()), ("n_words", pa.int64())])
    paths = []
    for i, start in enumerate(range(0, max(len(kept), 1), per_file)):
        part = kept.iloc[start:start + per_file]
        table = pa.Table.from_pandas(part[schema.names], schema=schema, preserve_index=False)
        path = out / f"docs-{i:05d}.parquet"
        pq.write_table(table, path)
        paths.append(str(path))
    return paths


def _quarantine(raw_rejects_path: Path, rejected: pd.DataFrame, out: Path, step_of: dict[str, str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out / "quarantine.jsonl", "w", encoding="utf-8") as fh:
        if raw_rejects_path.is_file():  # ingest rejects: bad files/lines of the user's input, in file order
            for line in raw_rejects_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    fh.write(json.dumps({"step": "ingest", "id": None, **rec}, ensure_ascii=False) + "\n")
                    n += 1
        for r in rejected.sort_values(["source", "line", "id"], kind="mergesort").itertuples(index=False):
            rec = {"step": step_of.get(r.reason, "read"), "id": r.id or None, "source": r.source,
                   "line": None if r.line < 0 else int(r.line), "reason": r.reason, "detail": r.detail}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def _step_stats(steps, df: pd.DataFrame, n_read: int) -> list[dict]:
    """in/out/removed per step from the reason codes left on the rows (rows flow through steps in order)."""
    counts = Counter(df["reason"])
    alive = n_read
    out = []
    for name, reasons in steps:
        by_reason = {r: counts.get(r, 0) for r in reasons}
        removed = sum(by_reason.values())
        out.append({"name": name, "in": alive, "out": alive - removed, "removed": removed,
                    "removed_by_reason": by_reason})
        alive -= removed
    return out


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Curate (or return the finished step dir for the same config and inputs); see the module docstring."""
    import ray

    from modpipe.curate import harvest as hv
    from modpipe.curate import tasks as tk
    from modpipe.curate.decontaminate import from_tasks
    from modpipe.curate.dedup import duplicate_ids
    from modpipe.curate.filters import Drop, Normalize, quality_filters
    from modpipe.curate.shards import pack, write_manifest, write_shards
    from modpipe.curate.tokenize import Encode, train_tokenizer
    from modpipe.raycluster import ensure_ray

    c = cfg.curate
    harvest = hv.harvest_man(cfg)
    raw = hv.ingest_files(cfg) if cfg.corpus.source == "files" else harvest
    step = lineage.StepDir(cfg.run_path / "curate", "curate", _fingerprint(cfg, raw, harvest))
    if step.done():
        log.info("curate: reusing %s", step.path)
        return _outputs(step.path, raw, harvest)

    t0 = time.perf_counter()
    ensure_ray(cfg.ray)
    with step.building(config=json.loads(cfg.section_json("corpus", "curate", "tasks")),
                       inputs={"raw_dir": raw["raw_dir"], "harvest_dir": harvest["raw_dir"]}) as tmp:
        # 2. tasks, from the man harvest
        task_list = tk.build_tasks(hv.read_raw(harvest["raw_dir"]), cfg, harvest["kind"])
        tasks_summary = tk.write_tasks(task_list, tmp / "tasks")
        (tmp / "tasks").mkdir(exist_ok=True)

        # 3. Ray Data: read -> normalize -> dedup -> filters -> decontaminate
        parts = sorted(str(p) for p in Path(raw["raw_dir"]).glob("part-*.jsonl"))
        n_blocks = max(1, min(len(parts), c.parallelism * 2)) if parts else 1
        if parts:
            ds = ray.data.from_items([{"path": p} for p in parts], override_num_blocks=n_blocks)
            normalized = ds.flat_map(_read_rows).map_batches(Normalize(), batch_format="pandas",
                                                             batch_size=256).materialize()
            keys = normalized.select_columns(["id", "key", "reason"]).to_pandas()
        else:
            log.warning("curate: %s holds no records", raw["raw_dir"])
            keys = pd.DataFrame(columns=["id", "key", "reason"])
        n_read = len(keys)
        dups = duplicate_ids(keys[keys["reason"] == ""][["id", "key"]])
        log.info("curate: %d raw rows, %d exact duplicates", n_read, len(dups))
        filters = quality_filters(c)
        decon = from_tasks(task_list, list(c.decontaminate_splits))
        chain = Chain([Drop(dups), *filters, decon])
        if parts:
            flagged = normalized.map_batches(chain, batch_format="pandas", batch_size=256).to_pandas()
        else:
            flagged = pd.DataFrame(columns=["id", "text", "source", "line", "reason", "detail", "n_chars",
                                            "n_words", "key"])
        read_reasons = tuple(sorted(set(flagged["reason"]) - {"", "empty_text", "duplicate", "contaminated"}
                                    - {r for f in filters for r in f.reasons}))
        steps = [("read", read_reasons), ("normalize", ("empty_text",)), ("dedup_exact", ("duplicate",)),
                 *[(f.name, tuple(f.reasons)) for f in filters], ("decontaminate", ("contaminated",))]
        step_of = {r: name for name, reasons in steps for r in reasons}
        step_stats = _step_stats(steps, flagged, n_read)
        for s in step_stats:
            log.info("curate: %-18s in %6d out %6d removed %5d %s", s["name"], s["in"], s["out"], s["removed"],
                     {k: v for k, v in s["removed_by_reason"].items() if v})

        # 4. kept docs and quarantine
        kept = flagged[flagged["reason"] == ""].sort_values("id", kind="mergesort").reset_index(drop=True)
        rejected = flagged[flagged["reason"] != ""]
        _write_docs(kept, tmp / "docs", c.docs_per_file)
        n_quarantined = _quarantine(Path(raw["raw_dir"]) / "quarantine.jsonl", rejected, tmp / "quarantine", step_of)
        if kept.empty:
            log.error("curate: no document survived curation (see %s)", step.path / "quarantine")

        # 5. tokenizer
        t_tok = time.perf_counter()
        tok = train_tokenizer(iter(kept["text"].tolist()), c.vocab_size, c.tokenizer_min_frequency,
                              length=len(kept))
        (tmp / "tokenizer").mkdir()
        tok_path = tmp / "tokenizer" / "tokenizer.json"
        tok.save(str(tok_path))
        log.info("curate: BPE tokenizer (%d tokens) trained on %d docs in %.1f s", tok.get_vocab_size(),
                 len(kept), time.perf_counter() - t_tok)

        # 6. encode on Ray Data, pack on the driver in id order
        if len(kept):
            n_chunks = max(1, min(len(kept), c.parallelism * 4))
            bounds = np.linspace(0, len(kept), n_chunks + 1).astype(int)
            chunks = [kept.iloc[a:b][["id", "text"]] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            encoded = ray.data.from_pandas(chunks).map_batches(
                Encode(tok.to_str()), batch_format="pandas", batch_size=128).to_pandas()
            encoded = encoded.sort_values("id", kind="mergesort")
            docs_ids = [np.asarray(x, dtype=np.int32) for x in encoded["ids"]]
        else:
            docs_ids = []
        rows = pack(docs_ids, c.seq_len)
        shards = write_shards(rows, tmp / "shards", c.rows_per_shard)
        n_doc_tokens = int(sum(len(d) for d in docs_ids))
        log.info("curate: %d docs -> %d tokens -> %d rows of %d in %d shard(s)", len(kept), n_doc_tokens,
                 len(rows), c.seq_len, len(shards))
        manifest = write_manifest(
            tmp / "manifest.json", seq_len=c.seq_len, vocab_size=tok.get_vocab_size(),
            tokenizer_rel="tokenizer/tokenizer.json", tokenizer_sha=lineage.sha256_file(tok_path),
            shards=shards, tasks={k: {kk: v[kk] for kk in ("labels", "train", "val", "test", "kind")}
                                  for k, v in tasks_summary.items()},
            extra={"docs": len(kept), "corpus": raw["kind"]},
        )
        stats = {
            "corpus": {"kind": raw["kind"], "raw_dir": raw["raw_dir"], "records": raw["records"],
                       "stats": json.loads(Path(raw["stats"]).read_text())},
            "harvest": {"kind": harvest["kind"], "raw_dir": harvest["raw_dir"], "records": harvest["records"]},
            "steps": step_stats + [
                {"name": "tokenize", "in": len(kept), "out": len(kept), "removed": 0, "tokens": n_doc_tokens},
                {"name": "pack", "in": n_doc_tokens + len(kept), "out": manifest["total_tokens"],
                 "removed": n_doc_tokens + len(kept) - manifest["total_tokens"], "rows": manifest["total_rows"],
                 "unit": "tokens"},
            ],
            "quarantined": n_quarantined,
            "docs": len(kept),
            "tasks": tasks_summary,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    log.info("curate: done in %.1f s -> %s", time.perf_counter() - t0, step.path)
    return _outputs(step.path, raw, harvest)
