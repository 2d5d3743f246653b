"""Readers: JSONL (plain, .gz, .zst), Parquet and folders of .txt files, from local paths, ``file://`` and
fsspec's in-memory store; configurable text/id fields; ids that stay the same wherever the corpus lives."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from modpipe.config import load_config
from modpipe.curate import readers
from prose_corpus import prose


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _records(paths: list[str], text_field: str = "text", id_field: str | None = "id") -> list[dict]:
    files, rejects = readers.list_inputs(paths)
    assert not rejects
    return [r for f in files for r in readers.read_input(f, text_field, id_field)]


ROWS = [{"id": f"d{i}", "text": f"doc {i}"} for i in range(5)]


def test_jsonl_plain_gz_zst_give_the_same_records(tmp_path):
    data = _jsonl(ROWS)
    (tmp_path / "a.jsonl").write_bytes(data)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    by_file: dict[str, list] = {}
    for r in _records([str(tmp_path)]):
        by_file.setdefault(Path(r["source"]).name, []).append((r["id"], r["text"], r["line"]))
    expected = [(r["id"], r["text"], i) for i, r in enumerate(ROWS, start=1)]
    assert by_file == {"a.jsonl": expected, "b.jsonl.gz": expected, "c.jsonl.zst": expected}


def test_parquet_with_configured_fields_and_txt_folder(tmp_path):
    pq.write_table(pa.table({"doc_id": ["p1", None, "p3"], "body": ["first", "second", "third"],
                             "other": [1, 2, 3]}), tmp_path / "rows.parquet", row_group_size=2)
    got = _records([str(tmp_path / "rows.parquet")], text_field="body", id_field="doc_id")
    assert [(r["id"], r["text"], r["line"]) for r in got] == [
        ("p1", "first", 1), (readers.stable_id("rows.parquet", 2), "second", 2), ("p3", "third", 3)]

    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "one.txt").write_text("note one\nsecond line\n")
    (folder / "sub" / "two.txt").write_text("note two")
    (folder / "README.md").write_text("not a corpus file")  # unknown suffix: ignored
    got = _records([str(folder)])
    assert [(r["id"], r["text"]) for r in got] == [
        (readers.stable_id("one.txt", 1), "note one\nsecond line\n"), (readers.stable_id("sub/two.txt", 1), "note two")]


def test_ids_are_stable_across_locations_and_urls(tmp_path):
    rows = [{"text": f"no id {i}"} for i in range(3)]  # ids derived from (path under the root, line)
    first = tmp_path / "mount-a" / "corpus"
    (first / "part").mkdir(parents=True)
    (first / "part" / "x.jsonl").write_bytes(_jsonl(rows))
    second = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(first, second)
    ids_a = [r["id"] for r in _records([str(first)])]
    ids_b = [r["id"] for r in _records([str(second)])]
    ids_url = [r["id"] for r in _records([f"file://{first}"])]
    assert ids_a == ids_b == ids_url == [readers.stable_id("part/x.jsonl", i) for i in (1, 2, 3)]
    assert len(set(ids_a)) == 3


def test_memory_store_urls():
    fs = fsspec.filesystem("memory")
    fs.pipe("/readers-test/a.jsonl.gz", gzip.compress(_jsonl(ROWS[:2])))
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": ["from parquet"]}), buf)
    fs.pipe("/readers-test/b.parquet", buf.getvalue().to_pybytes())
    try:
        got = _records(["memory://readers-test"])
        assert [(r["source"], r["text"]) for r in got] == [
            ("memory:///readers-test/a.jsonl.gz", "doc 0"), ("memory:///readers-test/a.jsonl.gz", "doc 1"),
            ("memory:///readers-test/b.parquet", "from parquet")]
        files, rejects = readers.list_inputs(["memory://readers-test/missing", "memory://readers-test/a.jsonl.gz"])
        assert [f.rel for f in files] == ["a.jsonl.gz"] and [r["reason"] for r in rejects] == ["missing_path"]
    finally:
        fs.rm("/readers-test", recursive=True)


def test_curate_takes_files_from_urls(tmp_path, ray_local):
    """``corpus.source=files`` over a memory:// Parquet file and a file:// folder of .jsonl.zst + .txt: every good
    record reaches docs/ with its id, sources name the URLs."""
    from modpipe.executor import run_steps

    fs = fsspec.filesystem("memory")
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"key": [f"m{i}" for i in range(4)], "content": [prose(i) for i in range(4)]}), buf)
    fs.pipe("/curate-urls/m.parquet", buf.getvalue().to_pybytes())
    local = tmp_path / "local"
    local.mkdir()
    (local / "z.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        _jsonl([{"key": f"z{i}", "content": prose(10 + i)} for i in range(3)])))
    (local / "t.txt").write_text(prose(20, 9))
    try:
        cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"corpus.man_root={tmp_path / 'no-man'}",
                                 "corpus.source=files", f"corpus.paths=[memory://curate-urls, file://{local}]",
                                 "corpus.text_field=content", "corpus.id_field=key", "curate.min_chars=50",
                                 "curate.min_words=5", "curate.vocab_size=300", "curate.seq_len=32",
                                 "curate.docs_per_file=4"])
        out = run_steps(cfg, ["curate"])["curate"].outputs
    finally:
        fs.rm("/curate-urls", recursive=True)
    docs = pd.concat(pd.read_parquet(p) for p in sorted(Path(out["docs_dir"]).glob("*.parquet")))
    assert set(docs["id"]) == {"m0", "m1", "m2", "m3", "z0", "z1", "z2", readers.stable_id("t.txt", 1)}
    assert set(docs["source"]) == {"memory:///curate-urls/m.parquet", str(local / "z.jsonl.zst"), str(local / "t.txt")}
    assert len(list(Path(out["docs_dir"]).glob("*.parquet"))) == 2  # 8 records, 4 per shard
    stats = json.loads(Path(out["stats"]).read_text())
    assert stats["steps"][0]["name"] == "read" and stats["steps"][0]["in"] == 8


@pytest.mark.parametrize("bad", ["nothere.jsonl", "x.tsv"])
def test_bad_paths_are_rejects(tmp_path, bad):
    (tmp_path / "x.tsv").write_text("a\tb\n")
    files, rejects = readers.list_inputs([str(tmp_path / bad)])
    assert files == [] and rejects[0]["reason"] in {"missing_path", "unsupported_type"}
    assert rejects[0]["source"].endswith(bad)


def test_read_records_is_the_one_entry_point(tmp_path):
    """``read_records(paths, text_field, id_field, *, max_record_bytes, limits)``: every record and reject of
    every file under the paths, in order; the caps come from the corpus config (``limits_of``)."""
    from modpipe.config import CorpusConfig
    from modpipe.curate import guard

    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + _jsonl(ROWS[:2]))  # a BOM: the first row reads as is
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + _jsonl(ROWS[2:3])))
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbfa note")
    rows = list(readers.read_records([str(tmp_path), str(tmp_path / "gone.jsonl")], "text", "id",
                                     max_record_bytes=1000, limits=readers.limits_of(CorpusConfig())))
    assert [(r["source"].rsplit("/", 1)[-1], r.get("id"), r.get("text") or r["reason"]) for r in rows] == [
        ("gone.jsonl", None, "missing_path"), ("a.jsonl", "d0", "doc 0"), ("a.jsonl", "d1", "doc 1"),
        ("b.jsonl.gz", "d2", "doc 2"), ("c.txt", readers.stable_id("c.txt", 1), "a note")]
    assert readers.limits_of(CorpusConfig()) == guard.Limits()  # one set of defaults


@pytest.mark.parametrize("field,value", [("max_record_bytes", -2), ("max_file_bytes", 0), ("read_timeout_s", 0),
                                         ("max_decompressed_bytes", -1), ("max_compression_ratio", 0.5)])
def test_caps_are_checked_in_the_config(field, value):
    from modpipe.config import ConfigError

    with pytest.raises(ConfigError, match=f"corpus.{field}"):
        load_config(None, [f"corpus.{field}={value}"])
