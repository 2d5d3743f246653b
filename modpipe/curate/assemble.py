"""The last pass of curation: the work dir's shards -> the step's outputs (``StepContext.out``).

tasks/, docs/, tokenizer/, shards/   hard links to the work dir's files (no copy; the work dir stays whole until
                                     the executor has renamed the outputs into place, so a kill loses nothing)
quarantine/quarantine.jsonl          the user's rejected files/lines (ingest, in file order), the task files' and
                                     task rows' (``task_quarantine.jsonl``), then every shard's rejected rows
                                     (streamed: never held in memory)
manifest.json                        rows, tokens and sha256 per token shard, tokenizer, tasks (``shards``)
stats.json                           per-step in/out/removed by reason (the steps' merged ``base.Stats``), corpus
timings.json                         seconds per pass and what a resumed attempt skipped (not compared: timing)

Nothing written here names the output dir (it is a temp dir renamed by the executor): paths are relative.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from modpipe import lineage
from modpipe.curate.base import Stats
from modpipe.curate.normalize import NormalizeText
from modpipe.curate.passes import Work
from modpipe.curate.readers import RAW_REASONS

log = logging.getLogger("modpipe.curate")

LINKED = ("tasks", "docs", "tokenizer", "shards")
NORMALIZE_REASONS = NormalizeText.reasons


def ingest_counts(raw: dict) -> Counter:
    """Rejected files/lines of the user's input by reason (the raw step's stats)."""
    return Counter(json.loads(Path(raw["stats"]).read_text()).get("rejected_by_reason", {}))


def _write_quarantine(out: Path, w: Work, raw: dict) -> None:
    (out / "quarantine").mkdir()
    ingest = Path(raw["raw_dir"]) / "quarantine.jsonl"
    with open(out / "quarantine" / "quarantine.jsonl", "w", encoding="utf-8") as fh:
        if ingest.is_file():
            with open(ingest, encoding="utf-8") as src:
                for line in src:  # bad files/lines of the user's input, in file order, one at a time
                    if line.strip():
                        fh.write(json.dumps({"step": "ingest", "id": None, **json.loads(line)},
                                            ensure_ascii=False) + "\n")
        for q in [w.root / "task_quarantine.jsonl", *w.quarantine]:
            if not q.is_file():
                continue
            with open(q, encoding="utf-8") as src:
                shutil.copyfileobj(src, fh)


def _step_row(name: str, reasons: tuple[str, ...], s: dict[str, Any] | None) -> dict[str, Any]:
    """One step's report row: every reason it declares (zeros included), then any other it left."""
    s = s or {"in": 0, "out": 0, "removed_by_reason": {}}
    by = s["removed_by_reason"]
    names = list(reasons) + sorted(set(by) - set(reasons))
    return {"name": name, "in": s["in"], "out": s["out"], "removed": s["in"] - s["out"],
            "removed_by_reason": {r: by.get(r, 0) for r in names}}


def step_rows(chain: list, stats: Stats, ingest: Counter, pii: Counter) -> list[dict]:
    """read, normalize, then the chain's steps in order (pii with its replacement counts); ``ingest``: the user's
    records/files rejected before the raw parts were written, by reason."""
    merged = stats.as_dict()
    read = merged.get("read", {"removed_by_reason": {}})
    rows = [_step_row("read", tuple(sorted(set(RAW_REASONS) | set(read["removed_by_reason"]))), merged.get("read")),
            _step_row("normalize", NORMALIZE_REASONS, merged.get("normalize"))]
    if ingest:
        row, n = rows[0], sum(ingest.values())
        row["in"] += n
        row["removed"] += n
        row["removed_by_reason"] = dict(Counter(row["removed_by_reason"]) + ingest)  # (zero counts drop out)
    for step in chain:
        rows.append(_step_row(step.name, tuple(step.reasons), merged.get(step.name)))
        if step.name == "pii":
            rows[-1]["replaced"] = {k: pii.get(k, 0) for k in sorted(pii)}
    return rows


def shard_stats(w: Work) -> tuple[Stats, Counter, int]:
    """(every step's stats over all shards, PII replacements, kept docs)."""
    stats, pii, n_kept = Stats(), Counter(), 0
    for p in w.normalize_stats:
        stats.merge(json.loads(p.read_text()))
    for m in w.filtered:
        s = json.loads(m.read_text())
        stats.merge(s["steps"])
        pii.update(s["pii"])
        n_kept += s["kept"]
    return stats, pii, n_kept


def _rel(path: str, run_path: Path) -> str:
    p = Path(path)
    return str(p.relative_to(run_path)) if p.is_relative_to(run_path) else str(p)


def _sources(raw: dict, harvest: dict, run_path: Path) -> dict[str, Any]:
    """The raw step dirs, relative to the run dir (the same bytes wherever the run dir lives), without timings."""
    raw_stats = {k: v for k, v in json.loads(Path(raw["stats"]).read_text()).items() if k != "seconds"}
    return {"corpus": {"kind": raw["kind"], "raw_dir": _rel(raw["raw_dir"], run_path), "records": raw["records"],
                       "stats": raw_stats},
            "harvest": {"kind": harvest["kind"], "raw_dir": _rel(harvest["raw_dir"], run_path),
                        "records": harvest["records"]}}


def _manifest(out: Path, w: Work, c, tasks_summary: dict, failed_tasks: dict, n_kept: int,
              corpus_kind: str) -> tuple[dict, int]:
    """(manifest.json as written, tokens of the docs before packing)."""
    from tokenizers import Tokenizer

    from modpipe.curate.shards import write_manifest

    summaries = [json.loads(m.read_text()) for m in w.encoded]
    tok = out / "tokenizer" / "tokenizer.json"
    manifest = write_manifest(
        out / "manifest.json", seq_len=c.seq_len, vocab_size=Tokenizer.from_file(str(tok)).get_vocab_size(),
        tokenizer_rel="tokenizer/tokenizer.json", tokenizer_sha=lineage.sha256_file(tok),
        shards=[s for summary in summaries for s in summary["shards"]],
        tasks={k: {kk: v[kk] for kk in ("labels", "train", "val", "test", "kind")} for k, v in tasks_summary.items()},
        extra={"docs": n_kept, "corpus": corpus_kind, "failed_tasks": failed_tasks})
    return manifest, sum(s["doc_tokens"] for s in summaries)


def assemble(out: Path, w: Work, cfg, raw: dict, harvest: dict, chain: list, tasks_summary: dict,
             failed_tasks: dict | None = None) -> None:
    """Write the outputs (see the module docstring) and log the per-step summary."""
    c = cfg.curate
    for sub in LINKED:
        (w.root / sub).mkdir(exist_ok=True)
        shutil.copytree(w.root / sub, out / sub, copy_function=os.link)
    _write_quarantine(out, w, raw)
    stats, pii, n_kept = shard_stats(w)
    manifest, n_doc_tokens = _manifest(out, w, c, tasks_summary, failed_tasks or {}, n_kept, raw["kind"])
    total = manifest["total_tokens"]
    rows = step_rows(chain, stats, ingest_counts(raw), pii)
    n_quarantined = sum(r["removed"] for r in rows)  # the ingest rejects are in read's
    report = {
        **_sources(raw, harvest, cfg.run_path), "shards": len(w.parts),
        "steps": rows + [
            {"name": "tokenize", "in": n_kept, "out": n_kept, "removed": 0, "removed_by_reason": {},
             "tokens": n_doc_tokens},
            {"name": "pack", "in": n_doc_tokens + n_kept, "out": total, "removed": n_doc_tokens + n_kept - total,
             "removed_by_reason": {}, "rows": manifest["total_rows"], "unit": "tokens"}],
        "quarantined": n_quarantined, "docs": n_kept, "tasks": tasks_summary, "failed_tasks": failed_tasks or {},
    }
    (out / "stats.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    for s in (r for r in rows if "replaced" not in r):
        log.info("curate: %-18s in %6d out %6d removed %5d %s", s["name"], s["in"], s["out"], s["removed"],
                 {k: v for k, v in s["removed_by_reason"].items() if v})
    log.info("curate: %d docs -> %d tokens -> %d rows of %d in %d shard(s); %d quarantined", n_kept, n_doc_tokens,
             manifest["total_rows"], c.seq_len, len(manifest["shards"]), n_quarantined)
    if n_kept == 0:
        log.error("curate: no document survived curation (see quarantine/quarantine.jsonl)")
