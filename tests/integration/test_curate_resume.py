"""Curation is resumable shard by shard: a run killed with SIGKILL part-way and started again skips the shards it
finished and ends with output byte-identical to an uninterrupted run (both through the executor, which keeps the
step's work dir across attempts and removes the killed attempt's temp dir)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modpipe.config import load_config
from modpipe.lineage import sha256_file

pytestmark = [pytest.mark.integration]

WORDS = ("the pipeline reads plain text files and turns them into training data for a small language model every "
         "document is cleaned deduplicated filtered before it tokenized shard quarantine reason rejected manifest "
         "checksum resumes where last run stopped near duplicates signatures language personal email phone held "
         "out examples removed counts report step").split()


def _corpus(root: Path, files: int = 6, per_file: int = 40) -> None:
    """``files`` JSONL files of varied sentences; every 5th line has no id; each file after the first starts with
    an exact copy of a document of the file before it (global dedup across shards)."""
    rng = random.Random(0)
    texts = [[" ".join(" ".join(rng.sample(WORDS, 12)).capitalize() + "." for _ in range(8)) for _ in range(per_file)]
             for _ in range(files)]
    root.mkdir()
    for f in range(files):
        recs = [{"id": f"f{f}-{i}", "text": t} if i % 5 else {"text": t} for i, t in enumerate(texts[f])]
        if f:
            recs[0] = {"id": f"f{f}-dup", "text": texts[f - 1][1]}
        (root / f"part{f}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def _overrides(run_dir: Path, corpus: Path) -> list[str]:
    return [f"run_dir={run_dir}", f"corpus.man_root={run_dir / 'no-man'}", "corpus.source=files",
            f"corpus.paths=[{corpus}]", "curate.docs_per_file=20", "curate.parallelism=1", "curate.min_chars=50",
            "curate.min_words=5", "curate.vocab_size=400", "curate.seq_len=32", "curate.rows_per_shard=40",
            "curate.rows_per_row_group=16"]


def _curate(cfg):
    from modpipe.executor import run_steps

    return run_steps(cfg, ["curate"])["curate"].outputs


def _digests(step_dir: Path) -> dict[str, str]:
    skip = {"status.json", "timings.json"}  # when/where it ran, not what it made
    return {str(p.relative_to(step_dir)): sha256_file(p) for p in sorted(step_dir.rglob("*"))
            if p.is_file() and p.name not in skip}


def test_sigkill_then_resume_is_byte_identical(tmp_path, ray_local):
    corpus = tmp_path / "corpus"
    _corpus(corpus)
    clean = _curate(load_config(None, _overrides(tmp_path / "clean", corpus)))

    # the same config in another run dir, in a subprocess on the same Ray cluster, killed once shards are done
    run_dir = tmp_path / "killed"
    code = ("import sys, logging; logging.basicConfig(level=logging.INFO); from modpipe.config import load_config; "
            "from modpipe.executor import run_steps; run_steps(load_config(None, sys.argv[1:]), ['curate'])")
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-c", code, *_overrides(run_dir, corpus)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            markers = list((run_dir / "curate").glob(".work-curate-*/filtered/part-*.json"))
            if markers:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished (or failed) before it could be killed"
    time.sleep(1.0)  # let Ray reap the killed job's workers
    work = next((run_dir / "curate").glob(".work-curate-*"))
    n_shards = len(list(Path(clean["raw_dir"]).glob("part-*.jsonl")))
    # shards whose filter pass finished (marker written after its docs) -> their docs' mtimes
    done_before_kill = {f"docs-{m.stem[5:]}.parquet": (work / "docs" / f"docs-{m.stem[5:]}.parquet").stat().st_mtime_ns
                        for m in (work / "filtered").glob("part-*.json")}
    assert 0 < len(done_before_kill) and len(list((work / "encoded").glob("*.json"))) < n_shards
    assert not list((run_dir / "curate").glob("curate-*"))  # no finished (or failed) step dir yet
    assert len(list((run_dir / "curate").glob(".tmp-curate-*"))) == 1  # the killed attempt's temp dir

    resumed = _curate(load_config(None, _overrides(run_dir, corpus)))
    timings = json.loads((Path(resumed["curate_dir"]) / "timings.json").read_text())
    assert timings["resumed"] is True and timings["skipped_shards"]["filter"] >= len(done_before_kill)
    step = Path(resumed["curate_dir"])
    assert step.parent == run_dir / "curate"
    assert not work.exists()  # removed by the executor once the outputs were in place
    assert not list((run_dir / "curate").glob(".tmp-*"))  # the killed attempt's temp dir too
    for name, mtime in done_before_kill.items():  # finished shards were skipped, not rewritten
        assert (step / "docs" / name).stat().st_mtime_ns == mtime, name

    a, b = _digests(Path(clean["curate_dir"])), _digests(step)
    assert a == b
    assert {"manifest.json", "stats.json", "tokenizer/tokenizer.json", "quarantine/quarantine.jsonl"} <= set(a)
    assert sum(k.startswith("shards/") for k in a) >= 2 and sum(k.startswith("docs/") for k in a) == n_shards
    q = [json.loads(x) for x in (step / "quarantine" / "quarantine.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in q} >= {"duplicate"}
