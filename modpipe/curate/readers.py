"""Readers: one input file -> records and rejects.  Inputs are only ever opened read-only.

Formats, by name (``READERS``: one function per format): ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` (one record
a line), ``.parquet`` (one record a row) and ``.txt`` (one record a file).  Paths are local paths or fsspec URLs
(``file://``, ``memory://``, ``s3://`` with its fsspec package installed, ...); a folder is searched recursively.  Every file is streamed:
a line or text longer than ``max_record_bytes`` is skipped (and quarantined) without holding it in memory.

A reader yields dicts.  A record: ``{"id", "text", "source", "line", ...extra fields}``; a reject (quarantine
row): ``{"source", "line", "reason", "detail"}`` with a stable reason code:

empty_file         the file holds no records (no bytes, or only blank lines)
corrupt_stream     a .gz/.zst that is corrupt or truncated (records before the damage are kept; line = the
                   first line that could not be read)
unreadable_file    the file cannot be opened or read (permissions, a broken object store, ...)
unreadable_parquet a .parquet file whose footer/schema/pages do not read
missing_column     a .parquet file without the text column (detail: the columns it has)
bad_schema         a .parquet file whose text column is not a string column
invalid_utf8       bytes that are not UTF-8 (line = the line that holds the first bad byte)
nul_byte           a raw NUL byte in a text line: binary content, not text
record_too_large   a line / text / row over ``max_record_bytes``
malformed_json     a JSONL line that does not parse
not_object         a JSONL line that parses to something other than an object
missing_field      the text field is absent or null
bad_type           the text field is not a string
empty_text         the text field is blank
duplicate_id       an id already seen in an earlier file/line (first one wins; ``ingest``)
missing_path       a configured path does not exist
unsupported_type   a configured file with none of the suffixes above

Document ids: the id field when present (a non-blank string or an int), else ``stable_id(rel, line)`` where
``rel`` is the file's path relative to the configured folder (its name for a configured file), so the id is the
same on every run and every machine wherever the corpus is mounted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

log = logging.getLogger("modpipe.curate")

READERS_VERSION = 1
"""Part of the ingest step's fingerprint: bump when a reader's records or rejects change for the same bytes."""
RAW_REASONS = ("record_too_large", "invalid_utf8", "nul_byte", "malformed_json", "not_object", "missing_field",
               "bad_type", "corrupt_stream", "empty_file", "unreadable_file")
"""The reasons reading a raw JSONL part can leave (curate's report lists each under ``read``, zeros included)."""
MAX_RECORD_BYTES = 8_000_000
"""Default ``corpus.max_record_bytes``."""
_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputFile:
    url: str
    """What fsspec opens: a local absolute path or ``scheme://...``; names the file in quarantine rows."""
    rel: str
    """Path relative to the configured root (its name for a configured file): the stable part of derived ids."""


def reject(source: str, line: int | None, reason: str, detail: str = "") -> dict[str, Any]:
    where = f"{source} line {line}" if line is not None else source
    log.warning("quarantine %s: %s %s", where, reason, detail)
    return {"source": source, "line": line, "reason": reason, "detail": detail[:500]}


def is_reject(row: dict) -> bool:
    return "reason" in row and "text" not in row


def stable_id(rel: str, line: int) -> str:
    return hashlib.sha256(f"{rel}\x00{line}".encode()).hexdigest()[:20]


# --- listing ---------------------------------------------------------------------------------------------------


def _fs(path: str):
    from fsspec.core import url_to_fs

    if "://" not in path:
        from pathlib import Path

        path = str(Path(path).expanduser().resolve())
    return url_to_fs(path)


def _url(fs, path: str) -> str:
    return path if "file" in _protocols(fs) else fs.unstrip_protocol(path)


def _protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def list_inputs(paths: list[str]) -> tuple[list[InputFile], list[dict]]:
    """Expand configured files/folders (local or fsspec URLs) into a sorted list of inputs (+ rejects)."""
    files: list[InputFile] = []
    rejects: list[dict] = []
    for p in paths:
        try:
            fs, root = _fs(p)
            is_dir, is_file = fs.isdir(root), fs.isfile(root)
        except Exception as e:  # noqa: BLE001 - an unknown protocol or an unreachable store is a bad path
            rejects.append(reject(p, None, "missing_path", f"{type(e).__name__}: {e}"))
            continue
        if is_dir:
            found = sorted(fs.find(root))
            skipped = 0
            for f in found:
                if f.endswith(SUFFIXES):
                    rel = f[len(root):].lstrip("/") if f.startswith(root) else f.rsplit("/", 1)[-1]
                    files.append(InputFile(_url(fs, f), rel))
                else:
                    skipped += 1
            if skipped:
                log.info("readers: %s: %d file(s) without a known suffix %s ignored", p, skipped, SUFFIXES)
        elif is_file:
            if root.endswith(SUFFIXES):
                files.append(InputFile(_url(fs, root), root.rsplit("/", 1)[-1]))
            else:
                rejects.append(reject(_url(fs, root), None, "unsupported_type", f"expected one of {SUFFIXES}"))
        else:
            rejects.append(reject(p, None, "missing_path", "no such file or folder"))
    seen, out = set(), []
    for f in files:
        if f.url not in seen:
            seen.add(f.url)
            out.append(f)
    return out, rejects


def file_digest(inp: InputFile) -> str:
    """sha256 of the stored bytes (compressed as stored)."""
    import fsspec

    h = hashlib.sha256()
    with fsspec.open(inp.url, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


# --- byte streams ----------------------------------------------------------------------------------------------


class _ZstdStream(io.RawIOBase):
    """Zstandard frames (one or several, concatenated) as a RawIOBase, so io.BufferedReader gives it
    readline(limit).  Hand-written over ``decompressobj`` because zstandard's stream reader ends a truncated
    frame silently: here a stream that stops inside a frame raises EOFError, like gzip."""

    def __init__(self, fh: BinaryIO):
        import zstandard

        self._fh = fh
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._buf = b""
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            chunk = self._fh.read(_CHUNK)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd stream ended inside a frame (truncated file)")
                return 0
            out = []
            while chunk:
                if self._obj.eof:  # the previous frame ended: the next one starts here
                    self._obj = self._dctx.decompressobj()
                out.append(self._obj.decompress(chunk))
                self._in_frame = not self._obj.eof
                chunk = self._obj.unused_data if self._obj.eof else b""
            self._buf = b"".join(out)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _decompressed(fh: BinaryIO, name: str) -> BinaryIO:
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=fh, mode="rb")
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdStream(fh), _CHUNK)
    return fh


def _stream_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (EOFError, OSError, zlib.error, zstandard.ZstdError, gzip.BadGzipFile)


def _lines(fh: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, bytes or None when over ``max_bytes``, length); long lines are skipped in chunks."""
    n = 0
    while True:
        raw = fh.readline(max_bytes + 1)
        if not raw:
            return
        n += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            size = len(raw)
            while True:  # drain the rest of the line without keeping it
                more = fh.readline(_CHUNK)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield n, None, size
            continue
        yield n, raw, len(raw)


# --- formats ---------------------------------------------------------------------------------------------------


def _record(inp: InputFile, line: int, text: Any, rid: Any, extra: dict, text_field: str) -> dict:
    src = inp.url
    if text is None:
        return reject(src, line, "missing_field", f"no {text_field!r} field")
    if not isinstance(text, str):
        return reject(src, line, "bad_type", f"{text_field!r} is {type(text).__name__}")
    if not text.strip():
        return reject(src, line, "empty_text", f"{text_field!r} is blank")
    rid = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip() \
        else stable_id(inp.rel, line)
    return {**extra, "id": rid, "text": text, "source": src, "line": line}


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"
    id_field: str | None = "id"
    max_bytes: int = MAX_RECORD_BYTES
    keep_origin: bool = False
    """The file is modpipe's own raw JSONL whose records already name their ``source`` (a man page, a user file)
    and ``line``; otherwise source/line are this file and line."""


def _jsonl_line(inp: InputFile, i: int, raw: bytes, opts: ReadOptions) -> dict:
    """One non-blank JSONL line -> a record or a reject naming the line."""
    src = inp.url
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return reject(src, i, "invalid_utf8", f"byte offset {e.start} in line: {e.reason}")
    if "\x00" in line:
        return reject(src, i, "nul_byte", f"NUL byte at offset {line.index(chr(0))} in line")
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return reject(src, i, "malformed_json", f"{e.msg} at column {e.colno}")
    if not isinstance(rec, dict):
        return reject(src, i, "not_object", type(rec).__name__)
    text_field, id_field = opts.text_field, opts.id_field
    text, rid = rec.get(text_field), rec.get(id_field) if id_field else None
    extra = {k: v for k, v in rec.items() if k not in (text_field, id_field, "source", "line")}
    out = _record(inp, i, text, rid, extra, text_field)
    if opts.keep_origin and not is_reject(out):
        out["source"] = rec.get("source") or src
        out["line"] = rec["line"] if "line" in rec else i
    return out


def read_jsonl(inp: InputFile, fh: BinaryIO, opts: ReadOptions) -> Iterator[dict]:
    """One record per line (plain, .gz or .zst by name); bad lines become rejects naming the line, good lines go
    on; a corrupt stream keeps the lines before the damage."""
    src, records, last, max_bytes = inp.url, 0, 0, opts.max_bytes
    try:
        for i, raw, size in _lines(_decompressed(fh, inp.url), max_bytes):
            last = i
            if raw is None:
                yield reject(src, i, "record_too_large", f"line of {size} bytes > max_record_bytes={max_bytes}")
                records += 1
            elif raw.strip():
                records += 1
                yield _jsonl_line(inp, i, raw, opts)
    except _stream_errors() as e:
        yield reject(src, last + 1, "corrupt_stream", f"stream breaks after line {last}: {type(e).__name__}: {e}")
        return
    if records == 0:
        yield reject(src, None, "empty_file", "no records")


def read_txt(inp: InputFile, fh: BinaryIO, opts: ReadOptions) -> Iterator[dict]:
    """One document per file; id = stable id of (rel, 1)."""
    src, max_bytes = inp.url, opts.max_bytes
    data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        size = len(data)
        while block := fh.read(_CHUNK):
            size += len(block)
        yield reject(src, 1, "record_too_large", f"{size} bytes > max_record_bytes={max_bytes}")
        return
    if not data.strip():
        yield reject(src, None, "empty_file", f"{len(data)} bytes")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        yield reject(src, line, "invalid_utf8", f"byte offset {e.start}: {e.reason}")
        return
    if "\x00" in text:
        pos = text.index("\x00")
        yield reject(src, text.count("\n", 0, pos) + 1, "nul_byte", f"NUL byte at character {pos}")
        return
    yield {"id": stable_id(inp.rel, 1), "text": text, "source": src, "line": 1}


def _parquet_file(inp: InputFile, fh: BinaryIO, text_field: str):
    """(``pq.ParquetFile``, None) when it holds a string text column and rows, else (None, the reject)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = inp.url
    try:
        pf = pq.ParquetFile(fh)
        schema = pf.schema_arrow
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError/... for a broken footer
        return None, reject(src, None, "unreadable_parquet", f"{type(e).__name__}: {e}")
    if text_field not in schema.names:
        return None, reject(src, None, "missing_column", f"no {text_field!r} column; columns: {schema.names}")
    ttype = schema.field(text_field).type
    if not (pa.types.is_string(ttype) or pa.types.is_large_string(ttype)):
        return None, reject(src, None, "bad_schema", f"{text_field!r} is {ttype}, expected string")
    if pf.metadata.num_rows == 0:
        return None, reject(src, None, "empty_file", "0 rows")
    return pf, None


def read_parquet(inp: InputFile, fh: BinaryIO, opts: ReadOptions, batch_rows: int = 4096) -> Iterator[dict]:
    """One record per row (line = 1-based row number); a file without a string text column is one reject."""
    src, text_field, id_field, max_bytes = inp.url, opts.text_field, opts.id_field, opts.max_bytes
    pf, bad = _parquet_file(inp, fh, text_field)
    if pf is None:
        yield bad
        return
    columns = [text_field] + ([id_field] if id_field and id_field in pf.schema_arrow.names else [])
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            texts = batch.column(text_field).to_pylist()
            ids = batch.column(id_field).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, rid in zip(texts, ids):
                row += 1
                if isinstance(text, str) and len(text) > max_bytes // 4 and len(text.encode()) > max_bytes:
                    yield reject(src, row, "record_too_large", f"text > max_record_bytes={max_bytes}")
                    continue
                yield _record(inp, row, text, rid, {}, text_field)
    except Exception as e:  # noqa: BLE001 - a corrupt page: keep what was read, quarantine the rest
        yield reject(src, row + 1, "unreadable_parquet", f"rows after {row}: {type(e).__name__}: {e}")


READERS: dict[str, Callable[[InputFile, BinaryIO, ReadOptions], Iterator[dict]]] = {
    ".jsonl": read_jsonl, ".jsonl.gz": read_jsonl, ".jsonl.zst": read_jsonl, ".parquet": read_parquet,
    ".txt": read_txt,
}
"""The reader of each file suffix (the only files a folder contributes)."""
SUFFIXES = tuple(READERS)


def read_input(inp: InputFile, text_field: str = "text", id_field: str | None = "id",
               max_bytes: int = MAX_RECORD_BYTES, keep_origin: bool = False) -> Iterator[dict]:
    """Every record and reject of one input, read by its suffix's reader; never raises for bad content."""
    import fsspec

    reader = next((fn for suffix, fn in READERS.items() if inp.url.endswith(suffix)), read_jsonl)
    try:
        with fsspec.open(inp.url, "rb") as fh:  # read-only: raw input is never modified
            yield from reader(inp, fh, ReadOptions(text_field, id_field, max_bytes, keep_origin))
    except _stream_errors() as e:
        yield reject(inp.url, None, "unreadable_file", f"{type(e).__name__}: {e}")


def read_file(path, text_field: str = "text", id_field: str | None = "id", keep_origin: bool = False,
              max_bytes: int = MAX_RECORD_BYTES) -> Iterator[dict]:
    """``read_input`` for one local path (or URL) given on its own (rel = its name)."""
    s = str(path)
    yield from read_input(InputFile(s, s.replace("\\", "/").rsplit("/", 1)[-1]), text_field, id_field, max_bytes,
                          keep_origin)
