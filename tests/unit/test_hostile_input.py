"""Hostile input (issue 9, "Inputs"): each bad file or record is quarantined with its file, row and reason, one
warning line per file and reason names them, the good records around it go on, nothing hangs or grows without
bound, the stage never crashes, and the raw files are never modified.  Every input is generated here."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from fsspec.implementations.memory import MemoryFileSystem

from modpipe.config import load_config
from modpipe.curate import guard, readers
from modpipe.curate import harvest as hv
from modpipe.lineage import sha256_file
from prose_corpus import prose

BIG = 50 * 1024 * 1024  # one 50 MB line


def _line(rid: str, text: str) -> bytes:
    return (json.dumps({"id": rid, "text": text}) + "\n").encode()


def _text(i: int) -> str:
    """Prose that no other document of these corpora near-duplicates (a marker in every sentence)."""
    import random

    from prose_corpus import SENTENCES

    return " ".join(s[:-1] + f", case {i}-{k}." for k, s in enumerate(random.Random(10_000 + i).sample(SENTENCES, 7)))


def _within(seconds: float, fn):
    """``fn()``'s result, failing the test (instead of hanging it) when it takes longer than ``seconds``."""
    box: list = []
    th = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    th.start()
    th.join(seconds)
    assert box, f"did not finish within {seconds} s (a blocking open or read)"
    return box[0]


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (symlinks and special files are not opened)."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if stat.S_ISREG(os.lstat(p).st_mode)}


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
    # seen on main: RecursionError (exit 1 on every rerun); a lone surrogate crashing the raw parts' writer
    (d / "deep.jsonl").write_bytes(_line("d-ok1", _text(1)) + b"[" * 10_000 + b"\n" + b'{"id": "d", "text": '
                                   + b"[" * 10_000 + b"]" * 10_000 + b"}\n" + _line("d-ok2", _text(2)))
    (d / "surrogate.jsonl").write_bytes(b'{"id": "s1", "text": "lone \\ud800 half"}\n'
                                        + b'{"id": "s2", "text": "ok", "meta": {"\\udfff": 1}}\n'
                                        + _line("s-ok1", _text(3) + " \U0001F600")
                                        + b'{"id": "s-ok2", "text": "pair \\ud83d\\ude00 '
                                        + _text(4).encode() + b'"}\n')
    (d / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + _line("bom1", _text(5)) + _line("bom2", _text(6)))
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
    ("deep.jsonl", 2): "record_error",
    ("deep.jsonl", 3): "record_error",
    ("surrogate.jsonl", 1): "lone_surrogate",
    ("surrogate.jsonl", 2): "lone_surrogate",
}
GOOD = {"ok1", "ok2", "ok3", "ok4", "ok5", "p1", "d-ok1", "d-ok2", "s-ok1", "s-ok2", "bom1", "bom2"}


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
    good = {r["id"]: r for r in rows if not readers.is_reject(r)}
    assert GOOD <= set(good)
    assert good["bom1"]["line"] == 1 and good["s-ok2"]["text"].startswith("pair \U0001F600")  # a pair is text
    first: dict = {}  # one message per file and reason: the first row, and how many more
    for (name, row), reason in EXPECTED.items():
        first.setdefault((name, reason), row)
    for (name, reason), row in first.items():
        where = f"{name} line {row}:" if row is not None else f"{name}:"
        assert sum(where in m and reason in m for m in caplog.messages) == 1, (name, row, reason)
    assert any("deep.jsonl line 2: record_error" in m and "(+1 more record_error in this file)" in m
               for m in caplog.messages)
    assert "RecursionError" in next(r["detail"] for r in rows if r.get("reason") == "record_error")
    huge = next(r for r in rows if r.get("reason") == "record_too_large")
    assert f"line of {BIG + 27} bytes" in huge["detail"]  # 27 = the JSON around the text and the newline


# --- files that may not be read ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> Path:
    """Files that must never be opened (a fifo would block), links out of the configured roots, a name that is
    not UTF-8; and a link that stays inside the root (read)."""
    d = tmp_path_factory.mktemp("refused")
    os.mkfifo(d / "x.jsonl")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "s.jsonl"))
    sock.close()  # (the socket file stays)
    os.symlink("/dev/zero", d / "zero.jsonl")
    os.symlink("/etc/passwd", d / "passwd.txt")
    os.symlink("/etc", d / "etc")  # a folder link out of the root: not followed
    try:
        os.mknod(d / "dev.jsonl", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    except (PermissionError, OSError):
        pass
    (d / "sub").mkdir()
    (d / "sub" / "real.txt").write_text(prose(30, 9))
    os.symlink("sub/real.txt", d / "link.txt")  # resolves inside the root: fine
    os.symlink("sub", d / "alias")  # a folder link inside the root: its files are read once, through sub/
    fd = os.open(os.path.join(os.fsencode(d), b"caf\xe9.jsonl"), os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, _line("latin-name", prose(31)))
    os.close(fd)
    return d


REFUSED = {"x.jsonl": "not_regular_file", "s.jsonl": "not_regular_file", "zero.jsonl": "outside_root",
           "passwd.txt": "outside_root", "etc": "outside_root", "dev.jsonl": "not_regular_file",
           "caf\\xe9.jsonl": "bad_file_name"}


def test_files_that_may_not_be_read_are_refused_unopened(refused):
    files, rejects = _within(20, lambda: readers.list_inputs([str(refused)]))
    got = {Path(r["source"]).name: r["reason"] for r in rejects}
    expected = {k: v for k, v in REFUSED.items() if k != "dev.jsonl" or (refused / k).exists()}
    assert got == expected
    assert [f.rel for f in files] == ["link.txt", "sub/real.txt"]
    rows = _within(20, lambda: list(readers.read_records([str(refused)])))
    assert [r["text"] for r in rows if not readers.is_reject(r)] == [prose(30, 9)] * 2
    assert not any("root:" in str(r.get("text")) for r in rows)  # /etc/passwd never read
    # a configured path is its own root (a link to it is followed), but it must be a regular file
    assert [r["reason"] for r in readers.read_records([str(refused / "zero.jsonl")])] == ["not_regular_file"]
    assert [r["reason"] for r in _within(20, lambda: list(readers.read_records([str(refused / "x.jsonl")])))] \
        == ["not_regular_file"]
    # a file swapped for a fifo after listing is refused when opened, without blocking
    tmp = refused.parent / (refused.name + "-swap")
    tmp.mkdir()
    (tmp / "a.jsonl").write_bytes(_line("a", "x"))
    files, _ = readers.list_inputs([str(tmp)])
    (tmp / "a.jsonl").unlink()
    os.mkfifo(tmp / "a.jsonl")
    assert [r["reason"] for r in _within(20, lambda: list(readers.read_input(files[0])))] == ["not_regular_file"]


def test_byte_cap_is_checked_before_and_while_reading(tmp_path):
    (tmp_path / "big.jsonl").write_bytes(_line("a", "x" * 5000))
    (tmp_path / "ok.jsonl").write_bytes(_line("b", "fine"))
    limits = guard.Limits(max_file_bytes=1000)
    rows = list(readers.read_records([str(tmp_path)], limits=limits))
    assert [(Path(r["source"]).name, r.get("reason"), r.get("id")) for r in rows] == [
        ("big.jsonl", "file_too_large", None), ("ok.jsonl", None, "b")]
    growing = readers.InputFile(str(tmp_path / "ok.jsonl"), "ok.jsonl")  # listed small, larger when opened
    (tmp_path / "ok.jsonl").write_bytes(_line("b", "fine") * 100)
    assert [r.get("reason") for r in readers.read_input(growing, limits=limits)] == ["file_too_large"]
    meter = guard.Meter(limits)  # a size that is not known (or a file that grows while read): counted as read
    with pytest.raises(guard.Refused, match="file_too_large"):
        guard.Metered(io.BytesIO(b"x" * 5000), meter).read(2000)


# --- any exception on one record, one file ----------------------------------------------------------------------


def test_any_exception_on_one_record_or_file_is_quarantined(tmp_path, monkeypatch):
    (tmp_path / "a.jsonl").write_bytes(_line("a1", "fine") + _line("boom", "x") + _line("a3", "fine"))
    pq.write_table(pa.table({"text": ["fine", "x", "fine"], "id": ["p1", "boom", "p3"]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("a text file")
    (tmp_path / "d.jsonl").write_bytes(_line("d1", "fine"))
    real_record = readers._record

    def record(inp, line, text, rid, extra, text_field):
        if rid == "boom":
            raise MemoryError("simulated")
        return real_record(inp, line, text, rid, extra, text_field)

    def broken_txt(inp, fh, opts):
        raise RuntimeError("reader bug")
        yield  # pragma: no cover

    monkeypatch.setattr(readers, "_record", record)
    monkeypatch.setitem(readers.READERS, ".txt", broken_txt)
    rows = list(readers.read_records([str(tmp_path)]))
    got = [(Path(r["source"]).name, r["line"], r.get("reason") or r["id"]) for r in rows]
    assert got == [("a.jsonl", 1, "a1"), ("a.jsonl", 2, "record_error"), ("a.jsonl", 3, "a3"),
                   ("b.parquet", 1, "p1"), ("b.parquet", 2, "record_error"), ("b.parquet", 3, "p3"),
                   ("c.txt", None, "unreadable_file"), ("d.jsonl", 1, "d1")]
    assert "MemoryError" in rows[1]["detail"] and "RuntimeError" in rows[6]["detail"]

    def interrupt(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(readers, "_record", interrupt)  # not an Exception: it stops the run, as it should
    with pytest.raises(KeyboardInterrupt):
        list(readers.read_records([str(tmp_path / "a.jsonl")]))


def test_normalize_error_on_one_record_quarantines_it(monkeypatch):
    from modpipe.curate import normalize
    from modpipe.curate.base import Stats

    def nfc(text):
        if "boom" in text:
            raise RecursionError("simulated")
        return text.upper()

    monkeypatch.setitem(normalize.STEPS, "nfc", nfc)
    df = pd.DataFrame({"id": ["a", "b", "c"], "text": ["one", "boom", "three"], "reason": "", "detail": ""})
    stats = Stats()
    out = normalize.NormalizeText(["nfc"]).run(df, stats)
    assert out["text"].tolist() == ["ONE", "", "THREE"]
    assert out["reason"].tolist() == ["", "normalize_error", ""] and "RecursionError" in out["detail"][1]
    assert stats.as_dict()["normalize"]["removed_by_reason"] == {"normalize_error": 1}


# --- read timeout ------------------------------------------------------------------------------------------------


class _SlowFS(MemoryFileSystem):
    """A memory store whose ``hang*`` files never answer a read and whose ``slow*`` files trickle a byte at a time:
    what a dead network mount or a stalled object store looks like to a reader."""

    protocol = "slowtest"
    store: dict = {}
    pseudo_dirs = [""]
    release = threading.Event()

    @classmethod
    def _strip_protocol(cls, path):
        return MemoryFileSystem._strip_protocol(path.replace("slowtest://", "memory://", 1))

    def _open(self, path, mode="rb", **kwargs):
        fh = super()._open(path, mode, **kwargs)
        name = path.rsplit("/", 1)[-1]
        if name.startswith("hang"):
            fh.read = lambda *a: (self.release.wait(60), b"")[1]
        elif name.startswith("slow"):
            real = fh.read
            fh.read = lambda n=-1: (time.sleep(0.02), real(1))[1]
        return fh


@pytest.fixture()
def slow_fs():
    _SlowFS.release = threading.Event()
    fsspec.register_implementation("slowtest", _SlowFS, clobber=True)
    fs = _SlowFS()
    fs.pipe("/t/hang.jsonl", _line("h", "never read"))
    fs.pipe("/t/ok.jsonl", _line("o", "fine"))
    fs.pipe("/t/slow.jsonl", b"".join(_line(f"s{i}", "x") for i in range(1000)))
    yield fs
    _SlowFS.release.set()  # lets the abandoned read threads end
    fs.rm("/t", recursive=True)


def test_read_timeout_bounds_a_hanging_or_trickling_file(slow_fs):
    limits = guard.Limits(read_timeout_s=0.5)
    t = time.monotonic()
    rows = _within(20, lambda: list(readers.read_records(["slowtest://t"], limits=limits)))
    assert time.monotonic() - t < 10
    by = [(r["source"].rsplit("/", 1)[-1], r.get("reason")) for r in rows if readers.is_reject(r)]
    assert by == [("hang.jsonl", "read_timeout"), ("slow.jsonl", "read_timeout")]
    assert [r["id"] for r in rows if not readers.is_reject(r)] == ["o"]  # the file after a hang is read


def test_ingest_quarantines_a_file_whose_digest_times_out(slow_fs, tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path}", "corpus.source=files", "corpus.paths=[slowtest://t]",
                             "corpus.read_timeout_s=0.5"])
    out = _within(30, lambda: hv.ingest_files(cfg))
    q = [json.loads(x) for x in Path(out["quarantine"]).read_text().splitlines()]
    assert {(r["source"].rsplit("/", 1)[-1], r["reason"]) for r in q} == {("hang.jsonl", "read_timeout"),
                                                                           ("slow.jsonl", "read_timeout")}
    assert [r["id"] for r in hv.read_raw(out["raw_dir"])] == ["o"]


# --- compressed streams and Parquet: bounded memory, caps ---------------------------------------------------------


def _bomb_lines(n: int) -> bytes:
    return b"x\n" * n  # n rejected rows (malformed_json) from a few KB once compressed


def test_decompression_caps_stop_a_bomb_keeping_what_came_before(tmp_path, monkeypatch):
    data = _line("first", "fine") + _bomb_lines(2_000_000)
    (tmp_path / "bomb.jsonl.gz").write_bytes(gzip.compress(data, 9))
    (tmp_path / "bomb.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=19).compress(data))
    assert os.path.getsize(tmp_path / "bomb.jsonl.gz") < 8000  # (~3.9 KB, 4 MB inside)
    for name in ("bomb.jsonl.gz", "bomb.jsonl.zst"):
        rows = list(readers.read_records([str(tmp_path / name)], limits=guard.Limits(max_decompressed_bytes=50_000)))
        assert rows[0]["id"] == "first" and rows[-1]["reason"] == "decompressed_too_large", name
        assert 1000 < len(rows) < 30_000 and rows[-1]["line"] == len(rows)  # names the first line not read
    monkeypatch.setattr(guard, "RATIO_MIN_BYTES", 50_000)  # (1 MiB by default)
    rows = list(readers.read_records([str(tmp_path / "bomb.jsonl.gz")], limits=guard.Limits(max_compression_ratio=10)))
    assert rows[0]["id"] == "first" and rows[-1]["reason"] == "compression_ratio" and 1000 < len(rows) < 30_000


def test_rejected_rows_stream_to_disk_and_warnings_are_summarised(tmp_path, caplog):
    import tracemalloc

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    n = 100_000
    (corpus / "bad.jsonl.gz").write_bytes(gzip.compress(_line("g", prose(1)) + _bomb_lines(n), 9))
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "corpus.source=files", f"corpus.paths=[{corpus}]"])
    tracemalloc.start()
    try:
        with caplog.at_level(logging.INFO, logger="modpipe.curate"):
            out = hv.ingest_files(cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # held in memory before: ~360 bytes a row (713 MB for 2 M)
    stats = json.loads(Path(out["stats"]).read_text())
    assert stats["rejected_by_reason"] == {"malformed_json": n} and stats["records"] == 1
    with open(out["quarantine"]) as fh:
        assert sum(1 for _ in fh) == n
    warnings = [m for m in caplog.messages if m.startswith("quarantine") and "malformed_json" in m]
    assert len(warnings) == 1 and f"+{n - 1} more" in warnings[0] and "line 2:" in warnings[0]
    assert len(caplog.messages) < 20


_RSS = """
import sys
from modpipe.curate import guard, readers
limits = guard.Limits() if sys.argv[2] == "default" else guard.Limits(None, None, None, None)
n = 0
for r in readers.read_records([sys.argv[1]], limits=limits):
    n += 1
    last = r.get("reason")
peak = next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]  # (this image's peak)
print(n, last, int(peak) // 1024)
"""


def test_parquet_is_read_in_bounded_memory(tmp_path):
    """1,500 rows of one 1 MB value, dictionary-encoded: a few KB on disk, 1.5 GB once materialised (1.5 GB RSS
    on main).  Sizes come from the dictionary before any value is copied: refused by the ratio cap, and with
    every cap off streamed one row at a time."""
    path = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"text": ["a" * 1_000_000] * 1500}), path, compression="zstd")
    assert path.stat().st_size < 10_000
    for caps, expected in (("default", (1, "compression_ratio")), ("off", (1500, None))):
        out = subprocess.run([sys.executable, "-c", _RSS, str(path), caps], capture_output=True, text=True,
                             check=True, timeout=300).stdout.split()
        assert (int(out[0]), None if out[1] == "None" else out[1]) == expected, out
        assert int(out[2]) < 600, f"peak RSS {out[2]} MB"


def test_parquet_row_group_over_the_file_cap_is_refused(tmp_path):
    table = pa.table({"text": ["small row"] * 4 + ["b" * 50_000] * 12, "id": [f"r{i}" for i in range(16)]})
    pq.write_table(table, tmp_path / "rg.parquet", row_group_size=4, use_dictionary=False, compression="zstd")
    assert (tmp_path / "rg.parquet").stat().st_size < 100_000
    rows = list(readers.read_records([str(tmp_path / "rg.parquet")], limits=guard.Limits(max_file_bytes=100_000)))
    assert [r["id"] for r in rows[:4]] == ["r0", "r1", "r2", "r3"]
    assert [(r["line"], r["reason"]) for r in rows[4:]] == [(5, "row_group_too_large"), (9, "row_group_too_large"),
                                                           (13, "row_group_too_large")]


# --- the man harvest ---------------------------------------------------------------------------------------------


def _page(name: str, i: int) -> bytes:
    return gzip.compress(f'.TH {name.upper()} 1\n.SH NAME\n{name} \\- {prose(i, 3)}\n.SH DESCRIPTION\n{prose(i)}\n'
                         .encode())


def test_man_harvest_skips_aliases_links_out_and_special_files(tmp_path, monkeypatch):
    root = tmp_path / "man"
    (root / "man1").mkdir(parents=True)
    for i in range(6):
        (root / "man1" / f"page{i}.1.gz").write_bytes(_page(f"page{i}", i))
    os.symlink("page0.1.gz", root / "man1" / "alias.1.gz")  # an alias: skipped (its target is harvested)
    os.symlink("/etc/passwd", root / "man1" / "passwd.1")  # a link out of the man root: skipped
    os.mkfifo(root / "man1" / "fifo.1")  # never opened
    os.symlink("/etc", root / "man5")  # a section folder that is a link: not followed
    (root / "man1" / "bomb.1.gz").write_bytes(gzip.compress(b".TH BOMB 1\n" + b"x" * 3_000_000, 9))
    before = _digests(root)
    monkeypatch.setattr(guard, "RATIO_MIN_BYTES", 100_000)
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"corpus.man_root={root}", "corpus.sections=[1,5]",
                             "corpus.min_pages=3"])
    out = _within(60, lambda: hv.harvest_man(cfg))
    assert out["kind"] == "man"
    records = hv.read_raw(out["raw_dir"])
    assert sorted(r["name"] for r in records) == [f"page{i}" for i in range(6)]
    assert all(Path(r["source"]).resolve().parent == (root / "man1").resolve() for r in records)
    counts = json.loads(Path(out["stats"]).read_text())["counts"]
    assert counts["symlink"] == 2 and counts["not_regular_file"] == 1 and counts["compression_ratio"] == 1
    assert _digests(root) == before


# --- the whole stage ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bombs")
    (d / "bomb.jsonl.gz").write_bytes(gzip.compress(_line("before-bomb", _text(40)) + _bomb_lines(2_000_000), 9))
    pq.write_table(pa.table({"text": ["a" * 1_000_000] * 1500}), d / "bomb.parquet", compression="zstd")
    troff = ".SH NAME\nuser \\- text that only looks like troff\n.B bold\n" + _text(41)
    (d / "troff.jsonl").write_text(json.dumps({"id": "troff-user", "text": troff, "markup": "troff"}) + "\n")
    return d


def test_curate_stage_survives_and_keeps_raw_input(hostile, refused, bombs, tmp_path, ray_local, monkeypatch):
    from modpipe.executor import run_steps

    roots = (hostile, refused, bombs)
    before = {str(r): _digests(r) for r in roots}
    monkeypatch.setattr(guard, "RATIO_MIN_BYTES", 65536)
    cfg = load_config(None, [f"run_dir={tmp_path}", f"corpus.man_root={tmp_path / 'no-man'}", "corpus.source=files",
                             f"corpus.paths=[{hostile}, {refused}, {bombs}]", "curate.min_chars=50",
                             "curate.min_words=5", "curate.vocab_size=300", "curate.seq_len=32"])
    out = _within(600, lambda: run_steps(cfg, ["curate"])["curate"].outputs)
    assert {str(r): _digests(r) for r in roots} == before  # raw input untouched

    q = [json.loads(x) for x in Path(out["quarantine"]).read_text().splitlines()]
    got = {(Path(r["source"]).name, r["line"]): r["reason"] for r in q if r["step"] == "ingest"}
    assert EXPECTED.items() <= got.items()
    refused_files = {k: v for k, v in REFUSED.items() if k != "dev.jsonl" or (refused / k).exists()}
    assert refused_files.items() <= {k[0]: v for k, v in got.items() if k[1] is None}.items()
    assert {k[0] for k, v in got.items() if v == "corrupt_stream"} == {"truncated.jsonl.gz", "truncated.jsonl.zst"}
    assert got[("bomb.parquet", 1)] == "compression_ratio"
    assert next(v for k, v in got.items() if k[0] == "bomb.jsonl.gz" and v != "malformed_json") == "compression_ratio"
    assert all({"step", "id", "source", "line", "reason", "detail"} <= set(r) for r in q)
    docs = pd.concat(pd.read_parquet(p) for p in Path(out["docs_dir"]).glob("*.parquet"))
    assert GOOD <= set(docs["id"]) and {"gz0", "gz1", "before-bomb"} <= set(docs["id"])
    assert not docs["text"].str.contains("\x00").any()
    user = docs.loc[docs["id"] == "troff-user", "text"].iloc[0]  # a user's "markup" field changes nothing
    assert ".SH NAME" in user and "\\-" in user
    stats = json.loads(Path(out["stats"]).read_text())
    read = stats["steps"][0]
    assert read["name"] == "read" and read["in"] - read["removed"] == read["out"]
    assert read["removed_by_reason"]["record_too_large"] == 1 and read["removed_by_reason"]["empty_file"] == 2
    assert stats["quarantined"] == len(q)
    assert json.loads(Path(out["manifest"]).read_text())["total_rows"] > 0
