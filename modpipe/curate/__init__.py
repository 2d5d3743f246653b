"""Curate stage: raw text -> curated docs, task splits, a BPE tokenizer and packed token shards.

``run(cfg) -> {"curate_dir", "manifest", "tokenizer", "tasks_dir", "raw_dir", "docs_dir", "quarantine",
"stats", "harvest_dir"}`` (paths).  Top to bottom:

1. raw text    ``harvest.harvest_man`` (man pages as troff source, Python-docs fallback) or, for
               ``corpus.source=files``, ``harvest.ingest_files`` (user files, local or fsspec; bad files/lines
               quarantined): step dirs under raw/ of JSONL parts.  One part = one shard of curation.
2. normalize   per shard on Ray Data: read + ``curate.normalize`` steps (``passes.normalize_shard``).
3. tasks       ``tasks.build_tasks`` from the man harvest, on its normalised text -> tasks/.
4. dedup       global verdicts over every shard's (id, content key, MinHash signature) on the driver: exact
               and near duplicates (``dedup``).
5. filter      per shard on Ray Data: dedup verdicts, decontamination against the tasks' val/test splits,
               quality filters (``filters``: length, Gopher quality + repetition, language), PII scrubbing of the
               kept docs -> docs/ + quarantine part + reason counts (``passes.filter_shard``).
6. tokenizer   byte-level BPE trained once on the kept docs, shard by shard -> tokenizer/tokenizer.json.
7. encode      per shard on Ray Data: ``encode_batch`` + EOS packing -> shards/ (``passes.encode_shard``).
8. assemble    manifest.json (rows, tokens, sha256 per shard), quarantine/quarantine.jsonl, stats.json.

Resumable: everything is built in ``<run_dir>/curate/.work-curate-<fingerprint>/``, each shard's outputs
written atomically with a done marker last; a run killed at any point (SIGKILL included) and started again with
the same config skips what is done and gives byte-identical output.  The finished work dir becomes the step dir
(``lineage.StepDir``), which later runs reuse as is.  Outputs depend only on the input and the config (no
timings: those go to ``timings.json``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from modpipe import lineage
from modpipe.config import PipelineConfig

log = logging.getLogger("modpipe.curate")

CURATE_VERSION = 2
"""Part of the step fingerprint, with a digest of this package's source."""
LINKED = ("tasks", "docs", "tokenizer", "shards")
"""Work-dir folders that become the step dir's folders as they are (hard-linked: no copy, and the work dir stays
whole until the step dir is in place, so a kill during assembly loses nothing)."""


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


def _read_parquets(paths: list[Path], columns: list[str]):
    import pandas as pd

    frames = [pd.read_parquet(p, columns=columns) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _task_records(harvest: dict, normalized: list[Path] | None, cfg: PipelineConfig) -> list[dict]:
    """The man harvest's records with their text through ``curate.normalize`` (the troff step strips markup):
    the normalised shards' text when the harvest is the corpus, else normalised here."""
    from modpipe.curate import harvest as hv
    from modpipe.curate.normalize import apply_steps

    records = hv.read_raw(harvest["raw_dir"])
    if normalized is not None:
        df = _read_parquets(normalized, ["id", "text"])
        texts = dict(zip(df["id"], df["text"]))
    else:
        texts = {r["id"]: apply_steps(r["text"], list(cfg.curate.normalize), r.get("markup")) for r in records}
    return [{**r, "text": texts.get(r["id"], "")} for r in records]


def _dedup_verdicts(normalized: list[Path], minhash) -> tuple[dict[str, str], dict[str, str]]:
    """({id: detail} exact duplicates, {id: detail} near duplicates) over every shard (global); ``minhash``:
    ``CurateConfig.minhash`` or None (off)."""
    from modpipe.curate.dedup import duplicate_ids, near_duplicate_ids

    rows = _read_parquets(normalized, ["id", "key", "reason", "sig"])
    alive = rows[rows["reason"] == ""]
    dups = duplicate_ids(alive[["id", "key"]])
    if minhash is None:
        return dups, {}
    return dups, near_duplicate_ids(alive.loc[~alive["id"].isin(dups.keys()), ["id", "sig"]], minhash)


def _step_stats(steps: list[tuple[str, tuple[str, ...]]], counts: Counter, n_in: int) -> list[dict]:
    """in/out/removed per step from the reason codes left on the rows (rows flow through steps in order)."""
    alive, out = n_in, []
    for name, reasons in steps:
        by_reason = {r: counts.get(r, 0) for r in reasons}
        removed = sum(by_reason.values())
        out.append({"name": name, "in": alive, "out": alive - removed, "removed": removed,
                    "removed_by_reason": by_reason})
        alive -= removed
    return out


def _ingest_rejects(raw: dict) -> list[dict]:
    path = Path(raw["raw_dir"]) / "quarantine.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Curate (or return the finished step dir for the same config and inputs); see the module docstring."""
    from modpipe.curate import harvest as hv
    from modpipe.curate import passes
    from modpipe.curate import tasks as tk
    from modpipe.curate.decontaminate import from_tasks
    from modpipe.curate.filters import Drop, quality_filters
    from modpipe.curate.pii import PiiScrub
    from modpipe.curate.shards import write_manifest
    from modpipe.curate.tokenize import train_tokenizer
    from modpipe.raycluster import ensure_ray

    c = cfg.curate
    minhash = c.minhash if c.minhash.enabled else None
    harvest = hv.harvest_man(cfg)
    raw = hv.ingest_files(cfg) if cfg.corpus.source == "files" else harvest
    step = lineage.StepDir(cfg.run_path / "curate", "curate", _fingerprint(cfg, raw, harvest))
    if step.done():
        log.info("curate: reusing %s", step.path)
        return _outputs(step.path, raw, harvest)

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    ensure_ray(cfg.ray)
    work = step.root / f".work-{step.name}-{step.fp}"
    resumed = work.is_dir()
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / ".tmp", ignore_errors=True)  # a killed run's half-written files
    parts = sorted(Path(raw["raw_dir"]).glob("part-*.jsonl"))
    if not parts:
        log.warning("curate: %s holds no records", raw["raw_dir"])
    idx = [int(p.stem.split("-")[1]) for p in parts]

    def paths(sub: str, fmt: str) -> list[Path]:
        return [work / sub / fmt.format(i) for i in idx]

    normalized = paths("normalized", "part-{:05d}.parquet")
    docs = paths("docs", "docs-{:05d}.parquet")
    quarantined = paths("quarantine", "part-{:05d}.jsonl")
    filtered = paths("filtered", "part-{:05d}.json")
    encoded = paths("encoded", "part-{:05d}.json")

    skipped: dict[str, int] = {}

    def pending(markers: list[Path], what: str) -> list[int]:
        todo = [k for k, m in enumerate(markers) if not m.is_file()]
        skipped[what] = len(markers) - len(todo)
        if resumed and len(todo) < len(markers):
            log.info("curate: %s: resuming, %d of %d shard(s) already done", what, len(markers) - len(todo),
                     len(markers))
        return todo

    # 2. read + normalize, per shard
    t = time.perf_counter()
    passes.run_pass("normalize", [{"index": idx[k], "part": str(parts[k]), "out": str(normalized[k])}
                                  for k in pending(normalized, "normalize")],
                    passes.normalize_shard, c.parallelism, steps=list(c.normalize),
                    max_bytes=cfg.corpus.max_record_bytes, minhash=minhash)
    timings["normalize"] = time.perf_counter() - t

    # 3. tasks, from the man harvest's normalised text
    t = time.perf_counter()
    task_list = tk.build_tasks(_task_records(harvest, normalized if raw is harvest else None, cfg), cfg,
                               harvest["kind"])
    (work / ".tmp" / "tasks").mkdir(parents=True)  # cheap and deterministic: rebuilt on every (re)run
    tasks_summary = tk.write_tasks(task_list, work / ".tmp" / "tasks")
    shutil.rmtree(work / "tasks", ignore_errors=True)
    os.replace(work / ".tmp" / "tasks", work / "tasks")
    timings["tasks"] = time.perf_counter() - t

    # 4. global exact + MinHash dedup -> 5. filter chain, per shard
    t = time.perf_counter()
    filters = quality_filters(c)
    decon = from_tasks(task_list, list(c.decontaminate_splits), c.decontam)
    todo = pending(filtered, "filter")
    dups, near = _dedup_verdicts(normalized, minhash) if todo else ({}, {})
    if todo:
        log.info("curate: dedup: %d exact and %d near duplicates (global)", len(dups), len(near))
    # decontamination before the quality filters, so every contaminated document is listed as such; PII last:
    # only kept documents are rewritten
    chain = [Drop(dups), Drop(near, reason_code="near_duplicate", name="dedup_minhash"), decon, *filters,
             PiiScrub.from_config(c.pii)]
    read_reasons = ("record_too_large", "invalid_utf8", "nul_byte", "malformed_json", "not_object",
                    "missing_field", "bad_type", "corrupt_stream", "empty_file", "unreadable_file")
    steps = [("read", read_reasons), ("normalize", ("empty_text",)), ("dedup_exact", ("duplicate",)),
             ("dedup_minhash", ("near_duplicate",)), ("decontaminate", tuple(decon.reasons)),
             *[(f.name, tuple(f.reasons)) for f in filters]]
    step_of = {r: name for name, reasons in steps for r in reasons}
    passes.run_pass("filter", [{"index": idx[k], "normalized": str(normalized[k]), "docs": str(docs[k]),
                                "quarantine": str(quarantined[k]), "done": str(filtered[k])} for k in todo],
                    passes.filter_shard, c.parallelism, chain=chain, step_of=step_of)
    counts: Counter = Counter()
    pii: Counter = Counter()
    n_rows = n_kept = 0
    for m in filtered:
        s = json.loads(m.read_text())
        counts.update(s["reasons"])
        pii.update(s.get("pii", {}))
        n_rows += s["rows"]
        n_kept += s["kept"]
    counts.pop("", None)
    claimed = {r for _, reasons in steps[1:] for r in reasons}  # anything else went wrong reading a record
    steps[0] = ("read", tuple(sorted(set(read_reasons) | (set(counts) - claimed))))
    timings["dedup_filter"] = time.perf_counter() - t

    # 6. tokenizer, trained once on the kept docs
    t = time.perf_counter()
    tok_path = work / "tokenizer" / "tokenizer.json"
    if not tok_path.is_file():
        texts = (x for p in docs for x in _read_parquets([p], ["text"])["text"])
        tok = train_tokenizer(texts, c.vocab_size, c.tokenizer_min_frequency, length=n_kept)
        passes.atomic_write(tok_path, lambda tmp: tok.save(str(tmp)))
        log.info("curate: BPE tokenizer (%d tokens) trained on %d docs in %.1f s", tok.get_vocab_size(), n_kept,
                 time.perf_counter() - t)
    tokenizer_json = tok_path.read_text(encoding="utf-8")
    from tokenizers import Tokenizer

    vocab_size = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    timings["tokenizer"] = time.perf_counter() - t

    # 7. encode + pack, per shard
    t = time.perf_counter()
    passes.run_pass("encode", [{"index": idx[k], "docs": str(docs[k]), "shards_dir": str(work / "shards"),
                                "done": str(encoded[k])} for k in pending(encoded, "encode")],
                    passes.encode_shard, c.parallelism, tokenizer_json=tokenizer_json, seq_len=c.seq_len,
                    rows_per_shard=c.rows_per_shard, rows_per_row_group=c.rows_per_row_group,
                    batch_size=c.encode_batch_size)
    summaries = [json.loads(m.read_text()) for m in encoded]
    shards = [s for summary in summaries for s in summary["shards"]]
    n_doc_tokens = sum(s["doc_tokens"] for s in summaries)
    timings["encode"] = time.perf_counter() - t

    # 8. assemble the step dir
    ingest_rejects = _ingest_rejects(raw)
    with step.building(config=json.loads(cfg.section_json("corpus", "curate", "tasks")),
                       inputs={"raw_dir": raw["raw_dir"], "harvest_dir": harvest["raw_dir"]}) as tmp:
        for sub in LINKED:
            (work / sub).mkdir(exist_ok=True)
            shutil.copytree(work / sub, tmp / sub, copy_function=os.link)
        (tmp / "quarantine").mkdir()
        with open(tmp / "quarantine" / "quarantine.jsonl", "w", encoding="utf-8") as fh:
            for r in ingest_rejects:  # bad files/lines of the user's input, in file order
                fh.write(json.dumps({"step": "ingest", "id": None, **r}, ensure_ascii=False) + "\n")
            for q in quarantined:
                fh.write(q.read_text(encoding="utf-8"))
        n_quarantined = len(ingest_rejects) + sum(counts.values())
        manifest = write_manifest(
            tmp / "manifest.json", seq_len=c.seq_len, vocab_size=vocab_size,
            tokenizer_rel="tokenizer/tokenizer.json", tokenizer_sha=lineage.sha256_file(tmp / "tokenizer" /
                                                                                        "tokenizer.json"),
            shards=shards, tasks={k: {kk: v[kk] for kk in ("labels", "train", "val", "test", "kind")}
                                  for k, v in tasks_summary.items()},
            extra={"docs": n_kept, "corpus": raw["kind"]},
        )
        ingest_counts = Counter(r["reason"] for r in ingest_rejects)
        step_stats = _step_stats(steps, counts, n_rows)
        if ingest_rejects:  # the user's records/files rejected before the raw parts were written
            read = step_stats[0]
            read["in"] += len(ingest_rejects)
            read["removed"] += len(ingest_rejects)
            read["removed_by_reason"] = dict(Counter(read["removed_by_reason"]) + ingest_counts)
        stats = {
            # raw step dirs relative to the run dir: the same bytes wherever the run dir lives
            "corpus": {"kind": raw["kind"], "raw_dir": _rel(raw["raw_dir"], cfg), "records": raw["records"],
                       "stats": _deterministic(json.loads(Path(raw["stats"]).read_text()))},
            "harvest": {"kind": harvest["kind"], "raw_dir": _rel(harvest["raw_dir"], cfg),
                        "records": harvest["records"]},
            "shards": len(parts),
            "steps": step_stats + [
                {"name": "pii", "in": n_kept, "out": n_kept, "removed": 0, "removed_by_reason": {},
                 "replaced": {k: pii.get(k, 0) for k in sorted(pii)}},
                {"name": "tokenize", "in": n_kept, "out": n_kept, "removed": 0, "removed_by_reason": {},
                 "tokens": n_doc_tokens},
                {"name": "pack", "in": n_doc_tokens + n_kept, "out": manifest["total_tokens"],
                 "removed": n_doc_tokens + n_kept - manifest["total_tokens"], "removed_by_reason": {},
                 "rows": manifest["total_rows"], "unit": "tokens"},
            ],
            "quarantined": n_quarantined,
            "docs": n_kept,
            "tasks": tasks_summary,
        }
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
        timings["total"] = time.perf_counter() - t0
        (tmp / "timings.json").write_text(json.dumps({"resumed": resumed, "skipped_shards": skipped, **{k: round(v, 2)
                                                                              for k, v in timings.items()}}))
        for s in step_stats:
            log.info("curate: %-18s in %6d out %6d removed %5d %s", s["name"], s["in"], s["out"], s["removed"],
                     {k: v for k, v in s["removed_by_reason"].items() if v})
        log.info("curate: %d docs -> %d tokens -> %d rows of %d in %d shard(s); %d quarantined", n_kept,
                 n_doc_tokens, manifest["total_rows"], c.seq_len, len(shards), n_quarantined)
    shutil.rmtree(work, ignore_errors=True)
    if n_kept == 0:
        log.error("curate: no document survived curation (see %s)", step.path / "quarantine")
    log.info("curate: done in %.1f s -> %s", time.perf_counter() - t0, step.path)
    return _outputs(step.path, raw, harvest)


def _deterministic(stats: dict) -> dict:
    """A raw step's stats without its timing (stats.json must not change between identical runs)."""
    return {k: v for k, v in stats.items() if k != "seconds"}


def _rel(path: str, cfg: PipelineConfig) -> str:
    p = Path(path)
    return str(p.relative_to(cfg.run_path)) if p.is_relative_to(cfg.run_path) else str(p)
