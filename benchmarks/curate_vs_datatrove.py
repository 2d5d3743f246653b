"""modpipe curate vs datatrove 0.10.1 on the same man-page corpus, in one run: docs/s, ratio, near-dup recall.

    python benchmarks/curate_vs_datatrove.py [--plant 400] [--files 4] [--workers 2] [--repeat 1]

The corpus: modpipe's man-page harvest (``curate.harvest.harvest_man`` with the default caps), markup stripped
with modpipe's normalisation steps (untimed: both tools read the same plain text), plus ``--plant`` planted
near-duplicates (a copy of a real page with a few words changed, inserted and deleted; which copy belongs to which
page is recorded), shuffled and written as ``--files`` JSONL files (datatrove's readers split work by file).

What is timed, per tool, from reading the JSONL files to writing the kept documents:

- datatrove: JsonlReader -> exact dedup (ExactDedupSignature, ExactFindDedups, ExactDedupFilter) -> MinHash
  dedup stages 1-4 (MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter) ->
  GopherRepetitionFilter, GopherQualityFilter -> JsonlWriter; LocalPipelineExecutor, ``--workers`` workers and
  tasks (buckets stage: one task per bucket), a fresh logging/output folder per run (its executors skip completed
  tasks otherwise).
- modpipe: the curate stage's steps, composed as the stage composes them, on Ray Data with ``--workers`` CPUs:
  pass 1 per file (``readers.read_file`` -> ``normalize.text_key`` + ``dedup.MinHasher`` signature), driver
  verdicts (``dedup.duplicate_ids``, ``dedup.near_duplicate_ids``), pass 2 per block (``filters.Drop`` x2 ->
  ``GopherQuality`` -> ``GopherRepetition``) -> kept docs written as Parquet.  Not the whole ``curate.run``:
  that also trains a tokenizer, encodes, packs, builds task splits, scrubs PII and decontaminates, which datatrove's
  pipeline does not do.  Ray's start-up is not timed (a pipeline runs on a started cluster); worker start-up is.

Both use the same thresholds: datatrove's MinHash defaults (5-word shingles, 14 bands x 8 rows) on both sides and
modpipe's Gopher thresholds (``curate.gopher``, ``curate.repetition``) given to datatrove's filters.  Recall: a
planted pair counts as found when dedup removed either page of it; false-positive merges: near-dup removals whose
best exact 5-word-shingle Jaccard with any other document of the corpus is below 0.5.
Results: ``benchmarks/results/curate_vs_datatrove-<UTC time>.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("bench")
FP_JACCARD = 0.5
"""A near-dup removal whose best true Jaccard with any other document is below this is a false merge."""


# --- corpus ----------------------------------------------------------------------------------------------------


def _shingle_set(text: str, n: int = 5) -> np.ndarray:
    """Unique hashes of the lower-cased ``\\w+`` word 5-grams: the ground truth both tools are judged against."""
    ws = re.findall(r"\w+", text.lower())
    if len(ws) < n:
        return np.array([hash(" ".join(ws))], dtype=np.int64) if ws else np.empty(0, dtype=np.int64)
    return np.unique(np.fromiter((hash(" ".join(ws[i:i + n])) for i in range(len(ws) - n + 1)), dtype=np.int64))


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


def _edit(text: str, rng: random.Random, vocab: list[str]) -> tuple[str, int]:
    """A near-duplicate: 3 + 1 per 200 words edits, each a changed, inserted or deleted word."""
    parts = re.split(r"(\s+)", text)  # words at even positions, the whitespace between them at odd ones
    words = [i for i in range(0, len(parts), 2) if parts[i]]
    n_edits = 3 + len(words) // 200
    for _ in range(n_edits):
        i = rng.choice(words)
        op = rng.choice(("change", "insert", "delete"))
        if op == "change":
            parts[i] = rng.choice(vocab)
        elif op == "insert":
            parts[i] = f"{rng.choice(vocab)} {parts[i]}"
        else:
            parts[i] = ""
    return "".join(parts), n_edits


def build_corpus(work: Path, n_plant: int, n_files: int, seed: int, overrides: list[str]) -> dict:
    """Harvest + normalise (modpipe), plant near-duplicates, write ``n_files`` shuffled JSONL files."""
    out = work / "corpus"
    meta_path = out / "meta.json"
    key = {"plant": n_plant, "files": n_files, "seed": seed, "overrides": overrides}
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        log.info("corpus: reusing %s", out)
        return json.loads(meta_path.read_text())
    from modpipe.config import load_config
    from modpipe.curate.harvest import harvest_man, read_raw
    from modpipe.curate.normalize import apply_steps, text_key

    cfg = load_config(overrides=[f"run_dir={work / 'run'}", *overrides])
    t0 = time.perf_counter()
    harvest = harvest_man(cfg)
    records = []
    seen = set()
    for r in read_raw(harvest["raw_dir"]):
        text = apply_steps(str(r.get("text") or ""), list(cfg.curate.normalize), r.get("markup"))
        if text.strip():
            records.append({"id": str(r["id"]), "text": text})
            seen.add(text_key(text))
    log.info("corpus: %d pages harvested and normalised in %.1f s", len(records), time.perf_counter() - t0)

    rng = random.Random(seed)
    keys = [text_key(r["text"]) for r in records]
    unique = [r for r, k in zip(records, keys) if keys.count(k) == 1] if len(records) < 50_000 else records
    candidates = [r for r in unique if len(r["text"].split()) >= 100]
    originals = rng.sample(candidates, min(n_plant, len(candidates)))
    vocab = [w for r in rng.sample(records, min(200, len(records))) for w in r["text"].split()[:50] if w.isalpha()]
    planted = []
    for i, orig in enumerate(originals):
        text, n_edits = _edit(orig["text"], rng, vocab)
        copy_id = f"planted/{i:05d}"
        records.append({"id": copy_id, "text": text})
        planted.append({"original": orig["id"], "copy": copy_id, "edits": n_edits,
                        "jaccard": round(_jaccard(_shingle_set(orig["text"]), _shingle_set(text)), 4)})
    rng.shuffle(records)

    if out.exists():
        shutil.rmtree(out)
    (out / "jsonl").mkdir(parents=True)
    for f in range(n_files):
        with open(out / "jsonl" / f"part-{f:05d}.jsonl", "w", encoding="utf-8") as fh:
            for r in records[f::n_files]:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    meta = {"key": key, "docs": len(records), "planted": planted, "files": n_files,
            "harvested": len(records) - len(planted), "mb": round(sum(len(r["text"].encode()) for r in records) / 1e6, 1)}
    meta_path.write_text(json.dumps(meta, indent=1))
    log.info("corpus: %d docs (%d planted near-duplicates) in %d files, %.1f MB", meta["docs"], len(planted),
             n_files, meta["mb"])
    return meta


def load_corpus(work: Path) -> dict[str, str]:
    docs = {}
    for p in sorted((work / "corpus" / "jsonl").glob("*.jsonl")):
        for line in p.open(encoding="utf-8"):
            r = json.loads(line)
            docs[r["id"]] = r["text"]
    return docs


# --- datatrove -------------------------------------------------------------------------------------------------


def _content(doc) -> str:  # datatrove reads the return annotation to pick its hash function
    return doc.text


def _datatrove_gopher(cfg) -> list:
    """datatrove's Gopher repetition + quality filters with modpipe's thresholds."""
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    c, g, r = cfg.curate, cfg.curate.gopher, cfg.curate.repetition
    return [
        GopherRepetitionFilter(
            dup_line_frac=r.max_dup_line_frac, dup_para_frac=r.max_dup_para_frac,
            dup_line_char_frac=r.max_dup_line_char_frac, dup_para_char_frac=r.max_dup_para_char_frac,
            top_n_grams=tuple(sorted(r.top_ngram_fracs.items())), dup_n_grams=tuple(sorted(r.dup_ngram_fracs.items()))),
        GopherQualityFilter(
            min_doc_words=c.min_words, max_doc_words=g.max_words, min_avg_word_length=g.min_mean_word_len,
            max_avg_word_length=g.max_mean_word_len, max_symbol_word_ratio=c.max_symbol_word_ratio,
            max_bullet_lines_ratio=g.max_bullet_line_frac, max_ellipsis_lines_ratio=g.max_ellipsis_line_frac,
            max_non_alpha_words_ratio=g.min_alpha_word_frac, min_stop_words=g.min_stop_words,
            stop_words=list(g.stop_words)),
    ]


def run_datatrove(work: Path, workers: int, cfg) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    c = cfg.curate
    root = work / "datatrove"
    if root.exists():
        shutil.rmtree(root)  # its executors skip tasks whose completion marker exists
    corpus = str(work / "corpus" / "jsonl")
    s = lambda p: str(root / p)  # noqa: E731
    ecfg = ExactDedupConfig(content_getter=_content)
    mcfg = MinhashConfig(n_grams=c.minhash.ngram_size, num_buckets=c.minhash.bands, hashes_per_bucket=c.minhash.rows,
                         seed=c.minhash.seed)
    writer = lambda p: JsonlWriter(s(p), compression=None)  # noqa: E731
    gopher = _datatrove_gopher(cfg)
    stages = [
        ("exact 1 signatures", [JsonlReader(corpus), ExactDedupSignature(s("exact/sigs"), ecfg)], workers),
        ("exact 2 find", [ExactFindDedups(s("exact/sigs"), s("exact/dups"), ecfg)], 1),
        ("exact 3 filter", [JsonlReader(corpus), ExactDedupFilter(s("exact/dups"), ecfg,
                                                                  exclusion_writer=writer("removed/exact")),
                            writer("exact_out")], workers),
        ("minhash 1 signatures", [JsonlReader(s("exact_out")), MinhashDedupSignature(s("mh/sigs"), config=mcfg)], workers),
        ("minhash 2 buckets", [MinhashDedupBuckets(s("mh/sigs"), s("mh/buckets"), config=mcfg)], mcfg.num_buckets),
        ("minhash 3 cluster", [MinhashDedupCluster(s("mh/buckets"), s("mh/remove"), config=mcfg)], 1),
        ("minhash 4 filter + gopher", [JsonlReader(s("exact_out")),
                                       MinhashDedupFilter(s("mh/remove"), exclusion_writer=writer("removed/minhash")),
                                       *gopher, writer("final")], workers),
    ]
    phases = {}
    t_all = time.perf_counter()
    for name, pipeline, tasks in stages:
        t0 = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
                              logging_dir=s(f"logs/{name.replace(' ', '_')}")).run()
        phases[name] = round(time.perf_counter() - t0, 2)
        log.info("datatrove %-28s %6.1f s", name, phases[name])
    seconds = time.perf_counter() - t_all

    def ids(folder: str) -> set[str]:
        return {json.loads(line)["id"] for p in (root / folder).glob("*.jsonl") for line in p.open()}

    return {"seconds": round(seconds, 2), "phases_s": phases, "exact_removed": ids("removed/exact"),
            "near_removed": ids("removed/minhash"), "kept": ids("final")}


# --- modpipe ---------------------------------------------------------------------------------------------------


def _read_and_sign(row: dict, minhash_cfg) -> list[dict]:
    """Pass 1 per file: every record -> id, text, key (exact-dedup content hash), sig (MinHash signature)."""
    import pandas as pd

    from modpipe.curate import readers
    from modpipe.curate.dedup import MinHasher
    from modpipe.curate.normalize import text_key

    recs = [r for r in readers.read_file(row["path"], "text", "id") if not readers.is_reject(r)]
    df = pd.DataFrame({"id": [str(r["id"]) for r in recs], "text": [r["text"] for r in recs], "reason": ""})
    sigs = MinHasher(minhash_cfg)(df)["sig"].tolist()
    return [{"id": i, "text": t, "key": text_key(t), "sig": s} for i, t, s in zip(df["id"], df["text"], sigs)]


def _filter_batch(df, exact: dict, near: dict, curate_cfg):
    """Pass 2 per block: dedup verdicts -> Gopher quality -> Gopher repetition; kept rows out."""
    from modpipe.curate.filters import Drop, GopherQuality, GopherRepetition

    steps = [Drop(exact), Drop(near, reason_code="near_duplicate", name="dedup_minhash"),
             GopherQuality.from_config(curate_cfg), GopherRepetition.from_config(curate_cfg.repetition)]
    df = df[["id", "text"]].assign(reason="", detail="")
    for step in steps:
        df = step(df)
    return df[df["reason"] == ""][["id", "text"]]


def run_modpipe(work: Path, workers: int, cfg) -> dict:
    import ray

    from modpipe.curate.dedup import duplicate_ids, near_duplicate_ids

    c = cfg.curate
    out = work / f"modpipe-{workers}w"
    if out.exists():
        shutil.rmtree(out)
    files = sorted(str(p) for p in (work / "corpus" / "jsonl").glob("*.jsonl"))
    ray.init(address="local", num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    phases = {}
    try:
        t_all = t0 = time.perf_counter()
        rows = ray.data.from_items([{"path": p} for p in files], override_num_blocks=len(files)) \
            .flat_map(_read_and_sign, fn_kwargs={"minhash_cfg": c.minhash}).materialize()
        keys = rows.select_columns(["id", "key", "sig"]).to_pandas()
        phases["pass 1 read + hash + minhash signatures"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        exact = duplicate_ids(keys[["id", "key"]])
        near = near_duplicate_ids(keys.loc[~keys["id"].isin(exact.keys()), ["id", "sig"]], c.minhash)
        phases["driver exact + LSH verdicts"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        rows.select_columns(["id", "text"]).map_batches(
            _filter_batch, fn_kwargs={"exact": exact, "near": near, "curate_cfg": c}, batch_format="pandas",
            batch_size=64).write_parquet(str(out))
        phases["pass 2 dedup drop + gopher + write"] = round(time.perf_counter() - t0, 2)
        seconds = time.perf_counter() - t_all
    finally:
        ray.shutdown()
    import pyarrow.parquet as pq

    kept = set(pq.read_table(str(out), columns=["id"]).column("id").to_pylist())
    for name, s in phases.items():
        log.info("modpipe(%dw) %-40s %6.1f s", workers, name, s)
    return {"seconds": round(seconds, 2), "phases_s": phases, "exact_removed": set(exact), "near_removed": set(near),
            "kept": kept}


# --- per-document CPU time, one process ----------------------------------------------------------------------


def micro_cpu(docs: dict[str, str], cfg, work: Path, n: int = 300, rounds: int = 3, seed: int = 0) -> dict:
    """CPU seconds (``time.process_time``, so other jobs on the machine barely matter) per document of each
    tool's MinHash signature and Gopher repetition + quality rules, single-threaded, interleaved rounds on the
    same sample; both filters run on every document (no short-circuit between them)."""
    import pandas as pd
    from datatrove.data import Document
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    from modpipe.curate import words
    from modpipe.curate.dedup import MinHasher
    from modpipe.curate.filters import GopherQuality, GopherRepetition

    c = cfg.curate
    texts = random.Random(seed).sample(list(docs.values()), min(n, len(docs)))
    dt_sig = MinhashDedupSignature(str(work / "micro"), config=MinhashConfig(
        n_grams=c.minhash.ngram_size, num_buckets=c.minhash.bands, hashes_per_bucket=c.minhash.rows,
        seed=c.minhash.seed))
    dt_filters = _datatrove_gopher(cfg)
    mp_hasher = MinHasher(c.minhash)
    mp_filters = [GopherRepetition.from_config(c.repetition), GopherQuality.from_config(c)]
    frame = pd.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "reason": ""})

    def clear():  # modpipe caches a text's words within a filter pass; each timing starts cold
        getattr(words, "text_words", None) and words.text_words.cache_clear()

    def dt_minhash():
        for t in texts:
            dt_sig.get_signature(dt_sig.get_shingles(t))

    def dt_gopher():
        for i, t in enumerate(texts):
            for f in dt_filters:
                f.filter(Document(text=t, id=str(i)))

    def mp_minhash():
        clear()
        mp_hasher(frame)

    def mp_gopher():
        clear()
        for t in texts:
            for f in mp_filters:
                f.check(t, "")

    jobs = {"datatrove minhash": dt_minhash, "modpipe minhash": mp_minhash, "datatrove gopher": dt_gopher,
            "modpipe gopher": mp_gopher}
    for fn in jobs.values():  # warm-up: spaCy and regex compilation, numpy first calls
        fn()
    cpu = {k: [] for k in jobs}
    for _ in range(rounds):
        for k, fn in jobs.items():
            t0 = time.process_time()
            fn()
            cpu[k].append(time.process_time() - t0)
    per_doc_ms = {k: round(1000 * min(v) / len(texts), 3) for k, v in cpu.items()}
    out = {"docs": len(texts), "rounds": rounds, "cpu_ms_per_doc": per_doc_ms,
           "ratio_minhash": round(per_doc_ms["datatrove minhash"] / per_doc_ms["modpipe minhash"], 2),
           "ratio_gopher": round(per_doc_ms["datatrove gopher"] / per_doc_ms["modpipe gopher"], 2)}
    log.info("per-document CPU: %s", out)
    return out


# --- metrics ---------------------------------------------------------------------------------------------------


class TrueJaccard:
    """Exact best Jaccard of a document with any other one, by a sorted (shingle, doc) index (numpy)."""

    def __init__(self, docs: dict[str, str]):
        self.ids = list(docs)
        self.pos = {d: i for i, d in enumerate(self.ids)}
        sets = [_shingle_set(docs[d]) for d in self.ids]
        self.sizes = np.array([len(s) for s in sets])
        self.sets = sets
        sh = np.concatenate(sets)
        owner = np.repeat(np.arange(len(sets)), self.sizes)
        order = np.argsort(sh, kind="stable")
        self.sh, self.owner = sh[order], owner[order]

    def best(self, doc_id: str) -> tuple[float, str | None]:
        i = self.pos[doc_id]
        q = self.sets[i]
        lo, hi = np.searchsorted(self.sh, q, "left"), np.searchsorted(self.sh, q, "right")
        hits = np.concatenate([self.owner[a:b] for a, b in zip(lo, hi)]) if len(q) else np.empty(0, dtype=int)
        counts = np.bincount(hits, minlength=len(self.ids))
        counts[i] = 0
        if not counts.any():
            return 0.0, None
        jac = counts / (self.sizes + self.sizes[i] - counts)
        j = int(np.argmax(jac))
        return float(jac[j]), self.ids[j]


def timed_run(fn, *args) -> dict:
    """``fn(*args)`` plus the 1-minute load average before and after (other work on the machine skews ratios)."""
    before = os.getloadavg()[0]
    res = fn(*args)
    res["load_avg_1m"] = [round(before, 1), round(os.getloadavg()[0], 1)]
    return res


def score(res: dict, planted: list[dict], n_docs: int, truth: TrueJaccard) -> dict:
    removed = res["exact_removed"] | res["near_removed"]
    found = [p for p in planted if p["original"] in removed or p["copy"] in removed]
    bins = {"jaccard>=0.8": [p for p in planted if p["jaccard"] >= 0.8],
            "jaccard<0.8": [p for p in planted if p["jaccard"] < 0.8]}
    found_set = {p["copy"] for p in found}
    planted_ids = {p["copy"] for p in planted} | {p["original"] for p in planted}
    other_near = sorted(res["near_removed"] - planted_ids)
    false_pos = [d for d in other_near if truth.best(d)[0] < FP_JACCARD]
    return {
        "seconds": res["seconds"], "docs_per_s": round(n_docs / res["seconds"], 1), "phases_s": res["phases_s"],
        "load_avg_1m_before_after": res.get("load_avg_1m"),
        "exact_removed": len(res["exact_removed"]), "near_removed": len(res["near_removed"]),
        "kept_after_dedup": n_docs - len(removed), "kept_final": len(res["kept"]),
        "recall": round(len(found) / len(planted), 4) if planted else None,
        "recall_by_jaccard": {k: round(sum(p["copy"] in found_set for p in v) / len(v), 4) if v else None
                              for k, v in bins.items()},
        "missed_pairs": sorted(({"copy": p["copy"], "original": p["original"], "jaccard": p["jaccard"]}
                                for p in planted if p["copy"] not in found_set), key=lambda p: p["jaccard"]),
        "near_removed_not_planted": len(other_near), "false_positive_merges": len(false_pos),
        "false_positive_examples": false_pos[:5],
    }


# --- main ------------------------------------------------------------------------------------------------------


def _table(rows: list[tuple[str, dict]], base: dict) -> str:
    head = (f"{'pipeline':<26}{'seconds':>9}{'docs/s':>9}{'vs dt':>8}{'recall':>8}{'FP':>5}"
            f"{'exact rm':>10}{'near rm':>9}{'kept':>7}{'load':>7}")
    lines = [head, "-" * len(head)]
    for name, r in rows:
        lines.append(f"{name:<26}{r['seconds']:>9.1f}{r['docs_per_s']:>9.1f}"
                     f"{r['docs_per_s'] / base['docs_per_s']:>7.2f}x{r['recall']:>8.3f}"
                     f"{r['false_positive_merges']:>5d}{r['exact_removed']:>10d}{r['near_removed']:>9d}"
                     f"{r['kept_final']:>7d}{(r['load_avg_1m_before_after'] or [0])[0]:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(REPO / "runs" / "bench"), help="corpus, outputs and logs (rebuilt per run)")
    ap.add_argument("--plant", type=int, default=400, help="planted near-duplicates")
    ap.add_argument("--files", type=int, default=4, help="JSONL files the corpus is split into (>= 2)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="timed rounds (each: datatrove, modpipe N, modpipe 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="config override (harvest caps, thresholds)")
    ap.add_argument("--no-single-worker", action="store_true", help="skip modpipe on 1 Ray worker")
    ap.add_argument("--no-micro", action="store_true", help="skip the per-document CPU-time comparison")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("datatrove", "ray", "ray.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.files < 2:
        ap.error("--files must be >= 2 (datatrove splits work by file)")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

    from loguru import logger as dt_logger  # datatrove logs through loguru: keep its per-document chatter out

    dt_logger.remove()
    dt_logger.add(sys.stderr, level="WARNING")
    from modpipe.config import load_config

    work = Path(args.work)
    cfg = load_config(overrides=[f"run_dir={work / 'run'}", *args.set])
    meta = build_corpus(work, args.plant, args.files, args.seed, args.set)
    docs = load_corpus(work)
    n = len(docs)
    t0 = time.perf_counter()
    truth = TrueJaccard(docs)
    log.info("ground truth: shingle index of %d docs in %.1f s", n, time.perf_counter() - t0)

    micro = None if args.no_micro else micro_cpu(docs, cfg, work)
    rounds = []
    for k in range(args.repeat):
        log.info("round %d/%d: datatrove (%d workers)", k + 1, args.repeat, args.workers)
        rows = [(f"datatrove {args.workers}w", score(timed_run(run_datatrove, work, args.workers, cfg), meta["planted"], n, truth))]
        log.info("round %d/%d: modpipe (%d Ray workers)", k + 1, args.repeat, args.workers)
        rows.append((f"modpipe {args.workers} Ray workers",
                     score(timed_run(run_modpipe, work, args.workers, cfg), meta["planted"], n, truth)))
        if not args.no_single_worker and args.workers != 1:
            log.info("round %d/%d: modpipe (1 Ray worker)", k + 1, args.repeat)
            rows.append(("modpipe 1 Ray worker", score(timed_run(run_modpipe, work, 1, cfg), meta["planted"], n, truth)))
        base = rows[0][1]
        print(f"\nround {k + 1}: {n} docs ({len(meta['planted'])} planted near-duplicates), {meta['mb']} MB, "
              f"{args.files} JSONL files")
        print(_table(rows, base))
        ratio = rows[1][1]["docs_per_s"] / base["docs_per_s"]
        print(f"modpipe / datatrove docs/s: {ratio:.2f}x; recall {rows[1][1]['recall']:.3f} vs {base['recall']:.3f}")
        rounds.append({"round": k + 1, "ratio_modpipe_vs_datatrove": round(ratio, 2),
                       "results": {name: r for name, r in rows}})

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"curate_vs_datatrove-{stamp}.json"
    import datatrove
    import ray

    path.write_text(json.dumps({
        "when_utc": stamp, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "datatrove": datatrove.__version__ if hasattr(datatrove, "__version__") else "0.10.1",
                                       "ray": ray.__version__},
        "args": {k: v for k, v in vars(args).items() if k not in ("work", "out")},
        "corpus": {k: v for k, v in meta.items() if k not in ("planted", "key")},
        "planted_jaccard": {"min": min(p["jaccard"] for p in meta["planted"]),
                            "median": float(np.median([p["jaccard"] for p in meta["planted"]])),
                            "max": max(p["jaccard"] for p in meta["planted"])} if meta["planted"] else None,
        "rounds": rounds, "per_document_cpu": micro,
    }, indent=2))
    if micro:
        print(f"per-document CPU time, 1 thread, {micro['docs']} docs: MinHash {micro['ratio_minhash']}x, "
              f"Gopher {micro['ratio_gopher']}x less for modpipe ({micro['cpu_ms_per_doc']} ms/doc)")
    print(f"results: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
