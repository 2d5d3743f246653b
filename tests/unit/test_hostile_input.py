"""Hostile input: each bad file or record is quarantined with its file, row and reason, a warning names them,
the good records around it go on, the stage never crashes, and the raw files are never modified."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from modpipe.config import load_config
from modpipe.curate import readers
from modpipe.lineage import sha256_file
from prose_corpus import prose

BIG = 50 * 1024 * 1024  # one 50 MB line


def _line(rid: str, text: str) -> bytes:
    return (json.dumps({"id": rid, "text": text}) + "\n").encode()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """One file per kind of damage, each with good records beside the bad ones where the format allows."""
    d = tmp_path_factory.mktemp("hostile")
    (d / "malformed.jsonl").write_bytes(_line("ok1", prose(1)) + b'{"id": "bad", "text": "no end\n'
                                       + b"[1, 2, 3]\n" + _line("ok2", prose(2)))
    (d / "invalid_utf8.jsonl").write_bytes(_line("ok3", prose(3)) + b'{"id": "latin", "text": "caf\xe9"}\n')
    (d / "nul.jsonl").write_bytes(b'{"id": "nul", "text": "a\x00b"}\n' + _line("ok4", prose(4)))
    (d / "nul.txt").write_bytes(b"text with a\nNUL \x00 on line two\n")
    with open(d / "huge.jsonl", "wb") as fh:
        fh.write(b'{"id": "huge", "text": "' + b"a" * BIG + b'"}\n')
        fh.write(_line("ok5", prose(5)))
    (d / "empty.jsonl").write_bytes(b"")
    (d / "blank.txt").write_bytes(b"\n  \n\t\n")
    pq.write_table(pa.table({"body": [prose(6)], "id": ["w1"]}), d / "wrong_schema.parquet")
    pq.write_table(pa.table({"text": [1, 2], "id": ["t1", "t2"]}), d / "wrong_type.parquet")
    (d / "not_parquet.parquet").write_bytes(b"PAR1 this is not a parquet file")
    pq.write_table(pa.table({"text": [prose(7), None, ""], "id": ["p1", "p2", "p3"]}), d / "rows.parquet")
    good = b"".join(_line(f"gz{i}", prose(10 + i)) for i in range(40))
    (d / "truncated.jsonl.gz").write_bytes(gzip.compress(good)[:-40])  # cut inside the last deflate block
    # zstd blocks hold up to 128 KiB: 1000 lines (~600 KB) so that whole blocks precede the cut
    zst = zstandard.ZstdCompressor().compress(b"".join(_line(f"zs{i}", prose(i)) for i in range(1000)))
    (d / "truncated.jsonl.zst").write_bytes(zst[: len(zst) // 2])
    return d


EXPECTED = {  # (file, row) -> reason
    ("malformed.jsonl", 2): "malformed_json",
    ("malformed.jsonl", 3): "not_object",
    ("invalid_utf8.jsonl", 2): "invalid_utf8",
    ("nul.jsonl", 1): "nul_byte",
    ("nul.txt", 2): "nul_byte",
    ("huge.jsonl", 1): "record_too_large",
    ("empty.jsonl", None): "empty_file",
    ("blank.txt", None): "empty_file",
    ("wrong_schema.parquet", None): "missing_column",
    ("wrong_type.parquet", None): "bad_schema",
    ("not_parquet.parquet", None): "unreadable_parquet",
    ("rows.parquet", 2): "missing_field",
    ("rows.parquet", 3): "empty_text",
}
GOOD = {"ok1", "ok2", "ok3", "ok4", "ok5", "p1"}


def test_readers_quarantine_each_kind_naming_file_and_row(hostile, caplog):
    files, rejects = readers.list_inputs([str(hostile)])
    assert not rejects
    with caplog.at_level(logging.WARNING, logger="modpipe.curate"):
        rows = [r for f in files for r in readers.read_input(f)]
    bad = {(Path(r["source"]).name, r["line"]): r["reason"] for r in rows if readers.is_reject(r)}
    assert {k: v for k, v in bad.items() if not k[0].startswith("truncated")} == EXPECTED
    # a truncated .gz / .zst: the lines before the damage are records, the rest one reject at the first lost line
    for name, prefix, total in (("truncated.jsonl.gz", "gz", 40), ("truncated.jsonl.zst", "zs", 1000)):
        ids = [r["id"] for r in rows if not readers.is_reject(r) and r["source"].endswith(name)]
        assert ids == [f"{prefix}{i}" for i in range(len(ids))] and 0 < len(ids) < total, name
        assert [(k, v) for k, v in bad.items() if k[0] == name] == [((name, len(ids) + 1), "corrupt_stream")]
    assert GOOD <= {r["id"] for r in rows if not readers.is_reject(r)}
    for (name, row), reason in EXPECTED.items():  # a clear message: file, row, reason
        where = f"{name} line {row}:" if row is not None else f"{name}:"
        assert any(where in m and reason in m for m in caplog.messages), (name, row, reason)
    huge = next(r for r in rows if r.get("reason") == "record_too_large")
    assert f"line of {BIG + 27} bytes" in huge["detail"]  # 27 = the JSON around the text and the newline


def test_curate_stage_survives_and_keeps_raw_input(hostile, tmp_path, ray_local):
    from modpipe.executor import run_steps

    before = {p.name: sha256_file(p) for p in hostile.iterdir()}
    cfg = load_config(None, [f"run_dir={tmp_path}", f"corpus.man_root={tmp_path / 'no-man'}", "corpus.source=files",
                             f"corpus.paths=[{hostile}]", "curate.min_chars=50", "curate.min_words=5",
                             "curate.vocab_size=300", "curate.seq_len=32"])
    out = run_steps(cfg, ["curate"])["curate"].outputs
    assert {p.name: sha256_file(p) for p in hostile.iterdir()} == before  # raw input untouched

    q = [json.loads(x) for x in Path(out["quarantine"]).read_text().splitlines()]
    got = {(Path(r["source"]).name, r["line"]): r["reason"] for r in q if r["step"] == "ingest"}
    assert EXPECTED.items() <= got.items()
    assert {k[0] for k, v in got.items() if v == "corrupt_stream"} == {"truncated.jsonl.gz", "truncated.jsonl.zst"}
    assert all({"step", "id", "source", "line", "reason", "detail"} <= set(r) for r in q)
    docs = pd.concat(pd.read_parquet(p) for p in Path(out["docs_dir"]).glob("*.parquet"))
    assert GOOD <= set(docs["id"]) and {"gz0", "gz1"} <= set(docs["id"])
    assert not docs["text"].str.contains("\x00").any()
    stats = json.loads(Path(out["stats"]).read_text())
    read = stats["steps"][0]
    assert read["name"] == "read" and read["in"] - read["removed"] == read["out"]
    assert read["removed_by_reason"]["record_too_large"] == 1 and read["removed_by_reason"]["empty_file"] == 2
    assert stats["quarantined"] == len(q)
    assert json.loads(Path(out["manifest"]).read_text())["total_rows"] > 0
