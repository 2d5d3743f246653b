"""Curate stage: raw text -> curated docs, task splits, a BPE tokenizer and packed token shards.

``run(cfg, ctx) -> {"curate_dir", "manifest", "tokenizer", "tasks_dir", "raw_dir", "docs_dir", "quarantine",
"stats", "harvest_dir"}`` (paths; ``ctx``: ``executor.StepContext``, outputs written into ``ctx.out``).  The
passes, top to bottom:

1. raw text    ``harvest.harvest_man`` (man pages as troff source, Python-docs fallback) or, for
               ``corpus.source=files``, ``harvest.ingest_files`` (user files, local or fsspec; bad files/lines
               quarantined): content-addressed step dirs under ``<run_dir>/raw/`` of JSONL parts, whose names are
               the step's external input (``source_digest``).  One part = one shard of curation.
2. normalize   per shard on Ray Data: read + ``normalize.NormalizeText`` (``passes.normalize_shard``).
3. tasks       ``tasks.build_all``: the man tasks from the man harvest, on its normalised text, the others from
               the stdlib docstrings or the user's task files (``harvest.ingest_task``) -> tasks/; a task whose
               data is unusable is listed in ``failed_tasks`` (manifest, stats) and the others go on.
4. dedup       global verdicts over every shard's (id, content key, MinHash signature) on the driver: exact
               and near duplicates (``dedup``).
5. filter      per shard on Ray Data: the step chain (``base.Step``: dedup verdicts, decontamination against the
               tasks' val/test splits, quality filters, PII scrubbing of the kept docs) -> docs/ + quarantine part
               + per-step stats (``passes.filter_shard``).
6. tokenizer   byte-level BPE trained once on the kept docs, shard by shard -> tokenizer/tokenizer.json; with
               ``pretrain.init_from`` the checkpoint's tokenizer.json instead (its digest is in ``source_digest``).
7. encode      per shard on Ray Data: ``encode_batch`` + EOS packing -> shards/ (``passes.encode_shard``).
8. assemble    manifest.json, quarantine/quarantine.jsonl, stats.json (``assemble``).

Resumable: passes 2-7 write into ``ctx.work`` (kept by the executor across killed attempts of the same version),
each shard's outputs atomically with a done marker last; an attempt killed at any point (SIGKILL included) and
started again skips what is done and gives byte-identical output.  Outputs depend only on the input and the
config (no timings: those go to ``timings.json``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modpipe.config import PipelineConfig

if TYPE_CHECKING:
    from modpipe.curate.passes import Work
    from modpipe.executor import StepContext

log = logging.getLogger("modpipe.curate")

_DIGESTED: dict[str, tuple[dict, dict]] = {}
"""What ``source_digest`` last found, per config, for the ``run`` that follows it in the executor."""


def _needs_man(cfg: PipelineConfig) -> bool:
    """Whether the man harvest is read: the corpus, or a man task's labels."""
    return cfg.corpus.source == "man" or any(s.source in ("man_section", "man_language") for s in cfg.tasks.specs)


def _sources(cfg: PipelineConfig) -> tuple[dict, dict]:
    """(man harvest, raw corpus) step results; the raw corpus is the harvest unless ``corpus.source=files``.  With
    user files and no man task, the harvest is not read at all (the corpus stands in for it)."""
    from modpipe.curate import harvest as hv

    raw = hv.ingest_files(cfg) if cfg.corpus.source == "files" else None
    harvest = hv.harvest_man(cfg) if _needs_man(cfg) else raw
    return harvest, raw or harvest


def source_digest(cfg: PipelineConfig) -> dict[str, str]:
    """Curate's external input, for its step version: the raw step dirs' names (content fingerprints: of the man
    listing, or of every user file's bytes).  Always looked at afresh; the ``run`` that follows reads the very
    raw dirs named here (and does not read the user's files a second time)."""
    harvest, raw = _DIGESTED[cfg.model_dump_json()] = _sources(cfg)
    out = {"harvest": Path(harvest["raw_dir"]).name, "raw": Path(raw["raw_dir"]).name}
    from modpipe.curate.harvest import harvest_pydocs, ingest_task

    if any(t.kind == "py_package" for t in cfg.tasks.specs):  # its docstrings depend on the Python version
        out["pydocs"] = Path(harvest_pydocs(cfg)["raw_dir"]).name
    for spec in (s for s in cfg.tasks.specs if s.source == "files"):  # each task file's bytes
        out[f"task:{spec.name}"] = Path(ingest_task(cfg, spec)["raw_dir"]).name
    if cfg.pretrain.init_from:  # the corpus is encoded with the checkpoint's tokenizer: its files' digest
        from modpipe.pretrain.init_from import tokenizer_digest

        out["tokenizer_from"] = tokenizer_digest(cfg.pretrain.init_from)
    return out


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


def _tasks(w: Work, harvest: dict, cfg: PipelineConfig, normalized: bool) -> tuple[list, dict, dict]:
    """(tasks, their summary, failed tasks) built by ``tasks.build_all``: the man tasks from the man harvest's
    records with their text through ``curate.normalize`` (the troff step strips markup): the normalised shards'
    text when the harvest is the corpus (``normalized``), else normalised here; the others from their own source.
    Cheap and deterministic: rebuilt on every attempt, written to ``<work>/tasks``; the task rows quarantined (and
    the task files' rejected lines) to ``<work>/task_quarantine.jsonl``."""
    from modpipe.curate import harvest as hv
    from modpipe.curate import tasks as tk
    from modpipe.curate.normalize import apply_steps

    records = hv.read_raw(harvest["raw_dir"]) if _needs_man(cfg) else []
    if normalized:
        df = _read_parquets(w.normalized, ["id", "text"])
        texts = dict(zip(df["id"], df["text"]))
    else:
        markup = hv.MARKUP.get(harvest["kind"])
        texts = {r["id"]: apply_steps(r["text"], list(cfg.curate.normalize), markup) for r in records}
    built = tk.build_all([{**r, "text": texts.get(r["id"], "")} for r in records], cfg, harvest["kind"])
    (w.root / ".tmp" / "tasks").mkdir(parents=True)
    summary = tk.write_tasks(built.tasks, w.root / ".tmp" / "tasks")
    shutil.rmtree(w.root / "tasks", ignore_errors=True)
    os.replace(w.root / ".tmp" / "tasks", w.root / "tasks")
    tk.write_quarantine(cfg, built, w.root / "task_quarantine.jsonl")
    return built.tasks, summary, built.failed


def _dedup_verdicts(normalized: list[Path], minhash) -> tuple[dict[str, str], dict[str, str]]:
    """({id: detail} exact duplicates, {id: detail} near duplicates) over every shard (global); ``minhash``:
    ``CurateConfig.minhash`` or None (off)."""
    from modpipe.curate.dedup import duplicate_ids, near_duplicate_ids

    rows = _read_parquets(normalized, ["id", "key", "reason", "sig"])
    alive = rows[rows["reason"] == ""]
    dups = duplicate_ids(alive[["id", "key"]])
    near = {} if minhash is None else near_duplicate_ids(alive.loc[~alive["id"].isin(dups.keys()), ["id", "sig"]],
                                                           minhash)
    log.info("curate: dedup: %d exact and %d near duplicates (global)", len(dups), len(near))
    return dups, near


def _chain(c, task_list: list, dups: dict[str, str], near: dict[str, str]) -> list:
    """The filter pass's steps (``c``: ``CurateConfig``): decontamination before the quality filters, so every
    contaminated document is listed as such; PII last: only kept documents are rewritten."""
    from modpipe.curate.decontaminate import from_tasks
    from modpipe.curate.filters import Drop, quality_filters
    from modpipe.curate.pii import PiiScrub

    return [Drop(dups), Drop(near, reason_code="near_duplicate", name="dedup_minhash"),
            from_tasks(task_list, list(c.decontaminate_splits), c.decontam), *quality_filters(c),
            PiiScrub.from_config(c.pii)]


def _tokenizer(w: Work, c, init_from: str | None = None) -> str:
    """The BPE tokenizer's JSON, trained on the kept docs, shard by shard, unless an earlier attempt saved it; with
    ``pretrain.init_from`` (``init_from``) the checkpoint's tokenizer.json, as it is (continued pretraining reads
    the corpus in the checkpoint's ids)."""
    from modpipe.curate.passes import atomic_write
    from modpipe.curate.tokenize import train_tokenizer

    if init_from and not w.tokenizer.is_file():
        from modpipe.pretrain.init_from import check_dir, read_tokenizer

        tok = read_tokenizer(init_from)  # checks modpipe's special tokens
        text = (check_dir(init_from) / "tokenizer.json").read_text(encoding="utf-8")
        atomic_write(w.tokenizer, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        log.info("curate: tokenizer (%d tokens) from %s", tok.get_vocab_size(), init_from)
    if not w.tokenizer.is_file():
        t = time.perf_counter()
        n_kept = sum(json.loads(m.read_text())["kept"] for m in w.filtered)
        texts = (x for p in w.docs for x in _read_parquets([p], ["text"])["text"])
        tok = train_tokenizer(texts, c.vocab_size, c.tokenizer_min_frequency, length=n_kept)
        atomic_write(w.tokenizer, lambda tmp: tok.save(str(tmp)))
        log.info("curate: BPE tokenizer (%d tokens) trained on %d docs in %.1f s", tok.get_vocab_size(), n_kept,
                 time.perf_counter() - t)
    return w.tokenizer.read_text(encoding="utf-8")


def _markup(raw: dict) -> str | None:
    """The raw corpus's markup, decided by the reader that made it (its kind), never by its records' fields."""
    from modpipe.curate.harvest import MARKUP

    return MARKUP.get(raw["kind"])


def run(cfg: PipelineConfig, ctx: StepContext) -> dict[str, Any]:
    """Curate into ``ctx.out``, resuming from what ``ctx.work`` holds; see the module docstring."""
    from modpipe.curate import passes
    from modpipe.curate.assemble import assemble
    from modpipe.raycluster import ensure_ray

    t0 = time.perf_counter()
    c = cfg.curate
    minhash = c.minhash if c.minhash.enabled else None
    found = _DIGESTED.pop(cfg.model_dump_json(), None)
    harvest, raw = found if found and all(Path(r["raw_dir"]).is_dir() for r in found) else _sources(cfg)
    ensure_ray(cfg.ray)
    w = passes.Work(ctx.work, raw["raw_dir"])
    if w.resumed:
        log.info("curate: resuming from %s", ctx.work)

    with w.timed("normalize"):  # 2. read + normalize, per shard
        passes.normalize_pass(w, c, cfg.corpus.max_record_bytes, _markup(raw))
    with w.timed("tasks"):  # 3. tasks, from the man harvest's normalised text
        task_list, tasks_summary, failed_tasks = _tasks(w, harvest, cfg, normalized=cfg.corpus.source != "files")
    with w.timed("dedup_filter"):  # 4. global exact + MinHash dedup -> 5. the filter chain, per shard
        todo = w.pending("filter", w.filtered)
        chain = _chain(c, task_list, *(_dedup_verdicts(w.normalized, minhash) if todo else ({}, {})))
        passes.filter_pass(w, c, todo, chain)
    with w.timed("tokenizer"):  # 6. tokenizer, trained once on the kept docs
        tokenizer_json = _tokenizer(w, c, cfg.pretrain.init_from)
    with w.timed("encode"):  # 7. encode + pack, per shard
        passes.encode_pass(w, c, tokenizer_json)

    assemble(ctx.out, w, cfg, raw, harvest, chain, tasks_summary, failed_tasks)  # 8. the outputs
    w.timings["total"] = time.perf_counter() - t0
    (ctx.out / "timings.json").write_text(json.dumps({"resumed": w.resumed, "skipped_shards": w.skipped,
                                                      **{k: round(v, 2) for k, v in w.timings.items()}}))
    stats = json.loads((ctx.out / "stats.json").read_text())
    if not stats.get("docs"):  # fail here, with the quarantine kept in the failed record, not later downstream
        where = (ctx.failed_dir or ctx.out) / "quarantine" / "quarantine.jsonl"
        raise CurateError(f"no document survived curation of {raw['kind']} input {raw['raw_dir']} "
                          f"({stats.get('quarantined', 0)} record(s)/file(s) quarantined: {where})")
    log.info("curate: done in %.1f s", w.timings["total"])
    return _outputs(ctx.out, raw, harvest)


class CurateError(RuntimeError):
    """Curation produced nothing usable; the message says where the rejected input is listed."""
