"""Peak memory per pretraining rank at 1x and 4x the default corpus: does it grow with the corpus?

    python benchmarks/pretrain_memory.py [--rows 30000] [--world 2] [--batches 200] [--stage --steps 20]
                                         [--set curate.x=y ...]

The corpus: synthetic curate output shaped like the default run's (``--rows`` rows of ``curate.seq_len`` random
ids, default ~30k rows of 128 as curate's default run holds, in shards of ``curate.rows_per_shard`` rows and row
groups of ``curate.rows_per_row_group``, written by curate's own ``write_shard``); 4x is the same shards repeated
four times (copies under new names, listed in a second manifest), so only the size changes.

Two measurements, each in a fresh process per rank, one after the other:

- **data** (default): what a rank's data path holds. ``streamed``: ``modpipe.pretrain.data.ShardStream`` (what the
  pretrain stage reads with: the rank's own row-group pieces, one at a time) yields ``--batches`` micro-batches of
  ``pretrain.micro_batch_size``; ``in-memory``: the former path, ``read_rank_rows`` (the rank's whole share) +
  ``BatchStream``, the same number of batches. Reports peak RSS (``VmHWM``) and its growth over the RSS after
  the imports, per rank.
- **stage** (``--stage``): ``modpipe.pretrain.train`` itself for ``--steps`` steps (``--world`` Ray Train CPU
  workers, DeepSpeed as configured); the peak RSS of each Ray Train worker process, sampled every 0.1 s with psutil.

Prints a table and ``ratio 4x / 1x`` of the peak per rank (goal for the streamed path: ~1, i.e. independent of the
corpus); writes ``benchmarks/results/pretrain_memory-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("bench.pretrain_memory")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_corpus(root: Path, rows: int, seq_len: int, vocab: int, rows_per_shard: int, rows_per_row_group: int,
                repeat: int, seed: int = 0) -> dict:
    """A curate-shaped output: tokenizer, shards (``repeat`` copies of the same ones), manifest."""
    import numpy as np
    from tokenizers import Tokenizer, models

    from modpipe.curate.shards import write_shard

    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    (root / "shards").mkdir(exist_ok=True)
    words = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    tok = root / "tokenizer" / "tokenizer.json"
    Tokenizer(models.WordLevel(words, unk_token="<unk>")).save(str(tok))
    rng = np.random.default_rng(seed)
    base = []
    for i, start in enumerate(range(0, rows, rows_per_shard)):
        n = min(rows_per_shard, rows - start)
        path = root / "shards" / f"shard-{i:05d}-000.parquet"
        write_shard(rng.integers(3, vocab, size=(n, seq_len), dtype=np.int32), path, rows_per_row_group)
        base.append({"path": f"shards/{path.name}", "rows": n, "tokens": n * seq_len, "sha256": _sha(path)})
    shards = list(base)
    for r in range(1, repeat):
        for s in base:
            copy = root / s["path"].replace("-000.parquet", f"-{r:03d}.parquet")
            shutil.copyfile(root / s["path"], copy)
            shards.append({**s, "path": f"shards/{copy.name}"})
    manifest = {"seq_len": seq_len, "vocab_size": vocab, "tokenizer": "tokenizer/tokenizer.json",
                "tokenizer_sha256": _sha(tok), "shards": shards, "total_rows": sum(s["rows"] for s in shards),
                "total_tokens": sum(s["tokens"] for s in shards), "synthetic": True, "repeat": repeat}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return {"curate_dir": str(root), "manifest": str(root / "manifest.json"), "tokenizer": str(tok)}


# ---------------------------------------------------------------- data: one process per rank


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    """This process's own peak RSS: ``VmHWM`` of /proc/self/status (Linux). Not ``ru_maxrss``: a child inherits its
    parent's high-water mark through fork and keeps it across exec, so after the stage arm every data arm would
    report the driver's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _data_rank(arm: str, manifest_path: str, rank: int, world: int, batch: int, batches: int, seed: int,
               q) -> None:
    import numpy as np  # noqa: F401  (imports first: the baseline RSS includes them)
    import pyarrow.parquet  # noqa: F401

    from modpipe.pretrain import split_heldout
    from modpipe.pretrain.data import BatchStream, ShardStream, read_rank_rows

    manifest = json.loads(Path(manifest_path).read_text())
    root = Path(manifest_path).parent
    train_entries, _ = split_heldout(manifest)  # what the stage trains on
    shards = [str(root / s["path"]) for s in train_entries]
    base = _rss_mb()
    t0 = time.perf_counter()
    if arm == "streamed":
        it = ShardStream(shards, manifest["seq_len"], manifest["vocab_size"], batch, seed, rank, world).iter_from(None)
    else:
        rows, _ = read_rank_rows(shards, manifest["seq_len"], rank, world, manifest["vocab_size"])
        it = BatchStream(rows, batch, seed, rank).iter_from(0)
    tokens = 0
    for _ in range(batches):
        _, b = next(it)
        tokens += b.size
    q.put({"arm": arm, "rank": rank, "base_rss_mb": round(base, 1), "peak_rss_mb": round(_peak_mb(), 1),
           "growth_mb": round(_peak_mb() - base, 1), "tokens": tokens, "s": round(time.perf_counter() - t0, 2)})


def data_arm(arm: str, curate_out: dict, world: int, batch: int, batches: int, seed: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    out = []
    for rank in range(world):
        q = ctx.Queue()
        proc = ctx.Process(target=_data_rank, args=(arm, curate_out["manifest"], rank, world, batch, batches, seed, q))
        proc.start()
        out.append(q.get(timeout=3600))
        proc.join()
    return out


# ---------------------------------------------------------------- stage: the pretrain step's workers


def stage_arm(cfg, curate_out: dict, work: Path) -> list[dict]:
    import psutil

    from modpipe import pretrain

    peaks: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for p in psutil.Process().children(recursive=True):  # only this run's Ray (started by this process)
                try:
                    if " ".join(p.cmdline()).startswith("ray::RayTrainWorker"):
                        peaks[p.pid] = max(peaks.get(p.pid, 0.0), p.memory_info().rss / 2**20)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        pretrain.train(cfg, curate_out, work / "backbone", work / "work")
    finally:
        stop.set()
        t.join(timeout=5)
    return [{"pid": pid, "peak_rss_mb": round(mb, 1)} for pid, mb in sorted(peaks.items())]


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=30_000, help="rows of the 1x corpus (default ~ curate's default run)")
    p.add_argument("--world", type=int, default=2, help="ranks (data: processes; stage: Ray Train workers)")
    p.add_argument("--batches", type=int, default=200, help="micro-batches each rank reads (data)")
    p.add_argument("--stage", action="store_true", help="also run the pretrain stage and sample its workers' RSS")
    p.add_argument("--steps", type=int, default=20, help="pretrain steps (--stage)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="config override, e.g. curate.seq_len=64")
    p.add_argument("--work", default=None, help="work dir (default: a temp dir, removed afterwards)")
    p.add_argument("--out", default=str(BENCH / "results"), help="folder of the results JSON")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from modpipe.config import load_config

    work = Path(a.work or tempfile.mkdtemp(prefix="bench-pretrain-memory-"))
    cfg = load_config(None, [f"run_dir={work / 'run'}", f"pretrain.steps={a.steps}",
                             f"pretrain.num_workers={a.world}", "pretrain.use_gpu=false", *a.sets])
    c, pc = cfg.curate, cfg.pretrain
    results: dict = {}
    for repeat in (1, 4):
        curate_out = make_corpus(work / f"curate-{repeat}x", a.rows, c.seq_len, c.vocab_size, c.rows_per_shard,
                                 c.rows_per_row_group, repeat, seed=cfg.seed)
        key = f"{repeat}x"
        results[key] = {"rows": a.rows * repeat}
        for arm in ("streamed", "in-memory"):
            results[key][arm] = data_arm(arm, curate_out, a.world, pc.micro_batch_size, a.batches, cfg.seed)
            log.info("%s %s: %s", key, arm, results[key][arm])
        if a.stage:
            results[key]["stage"] = stage_arm(cfg, curate_out, work / f"stage-{repeat}x")
            log.info("%s stage: %s", key, results[key]["stage"])

    def peak(key: str, arm: str) -> float:
        return max(r["peak_rss_mb"] for r in results[key][arm]) if results[key].get(arm) else float("nan")

    arms = ["streamed", "in-memory"] + (["stage"] if a.stage else [])
    summary = {arm: {"peak_1x_mb": peak("1x", arm), "peak_4x_mb": peak("4x", arm),
                     "ratio_4x_1x": round(peak("4x", arm) / peak("1x", arm), 3)} for arm in arms}
    record = {"when": datetime.now(timezone.utc).isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
              "args": vars(a), "seq_len": c.seq_len, "rows_per_shard": c.rows_per_shard,
              "rows_per_row_group": c.rows_per_row_group, "micro_batch_size": pc.micro_batch_size,
              "summary": summary, "results": results}
    out = Path(a.out) / f"pretrain_memory-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)

    print("\n| path | peak RSS per rank, 1x (MB) | 4x (MB) | 4x / 1x |")
    print("|---|---:|---:|---:|")
    for arm, s in summary.items():
        print(f"| {arm} | {s['peak_1x_mb']:.0f} | {s['peak_4x_mb']:.0f} | {s['ratio_4x_1x']} |")
    print(f"\n{out}")


if __name__ == "__main__":
    main()
