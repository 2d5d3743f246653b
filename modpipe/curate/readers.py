"""Readers: one input file -> records and rejects.  Inputs are only ever opened read-only, through ``guard``.

Formats, by name (``READERS``: one function per format): ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` (one record
a line; a UTF-8 byte-order mark before the first line is skipped), ``.parquet`` (one record a row, read row group
by row group in small batches), ``.csv`` (RFC 4180 with a header row, UTF-8: ``read_csv``) and ``.txt`` (one
record a file).  Paths are local paths or fsspec URLs
(``file://``, ``memory://``, ``s3://`` with its fsspec package installed, ...); a folder is searched recursively
(symlinked folders are not followed).  Every file is streamed: a line or text longer than ``max_record_bytes``
is skipped (and quarantined) without holding it in memory, and a Parquet value's size is known before it is
materialised.  Each file is opened through ``guard`` (regular files inside the configured roots only, caps on
stored and decompressed bytes, the compression ratio and the time spent reading: ``guard.Limits``).

``read_records(paths, ...)`` is the one entry point for input a user hands in (corpus, task files, prediction
inputs): it lists the paths and yields every record and reject of every file, in order.  No bad byte, record or
file raises: any ``Exception`` while reading one record (``RecursionError``, ``MemoryError`` included) rejects
that record, and one while reading a file rejects the rest of that file; the next file is read.

A reader yields dicts.  A record: ``{"id", "text", "source", "line", ...extra fields}``; a reject (quarantine
row): ``{"source", "line", "reason", "detail"}`` with a stable reason code:

empty_file             the file holds no records (no bytes, or only blank lines)
corrupt_stream         a .gz/.zst that is corrupt or truncated (records before the damage are kept; line = the
                       first line that could not be read)
unreadable_file        the file cannot be opened or read (permissions, a broken object store, ...)
unreadable_parquet     a .parquet file whose footer/schema/pages do not read
missing_column         a .parquet file without the text column (detail: the columns it has)
bad_schema             a .parquet file whose text column is not a string column
row_group_too_large    a Parquet row group whose columns, uncompressed, exceed ``max_file_bytes`` (its rows)
invalid_utf8           bytes that are not UTF-8 (line = the line that holds the first bad byte)
lone_surrogate         a JSON string escape of half a UTF-16 surrogate pair (``"\\ud800"``): not text
nul_byte               a raw NUL byte in a text line: binary content, not text
record_too_large       a line / text / row over ``max_record_bytes``
bad_row                a CSV record whose number of fields differs from the header's
record_error           any other failure on one record (e.g. ``RecursionError`` on 10,000 nested ``[``)
malformed_json         a JSONL line that does not parse
not_object             a JSONL line that parses to something other than an object
missing_field          the text field is absent or null
bad_type               the text field is not a string
empty_text             the text field is blank
duplicate_id           an id already seen in an earlier file/line (first one wins; ``ingest``)
missing_path           a configured path does not exist
unsupported_type       a configured file with none of the suffixes above
bad_file_name          a file whose name is not valid UTF-8 (the quarantine shows it backslash-escaped)
outside_root           a file under a configured folder that resolves (symlinks) outside every configured path
not_regular_file       a fifo, socket, device (or a symlink to one): never opened
file_too_large         more stored bytes than ``max_file_bytes``
read_timeout           more than ``read_timeout_s`` seconds spent waiting on the file's reads
decompressed_too_large more than ``max_decompressed_bytes`` decompressed (or, for Parquet, text) bytes
compression_ratio      decompressed / stored bytes above ``max_compression_ratio``

The refusals of a file already partly read keep the records before (line = the first one not read).  Warnings
are summarised: one line per file and reason, naming the first line and how many more.

Document ids: the id field when present (a non-blank string or an int), else ``stable_id(rel, line)`` where
``rel`` is the file's path relative to the configured folder (its name for a configured file), so the id is the
same on every run and every machine wherever the corpus is mounted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

from modpipe.curate import guard
from modpipe.curate.guard import Limits

log = logging.getLogger("modpipe.curate")

READERS_VERSION = 3
"""Part of the ingest step's fingerprint: bump when a reader's records or rejects change for the same bytes.
2: guarded opening (roots, regular files, caps), BOM, lone surrogates, record_error, batched Parquet.
3: CSV; Parquet extra fields."""
RAW_REASONS = ("record_too_large", "invalid_utf8", "nul_byte", "malformed_json", "not_object", "missing_field",
               "bad_type", "corrupt_stream", "empty_file", "unreadable_file", "record_error")
"""The reasons reading a raw JSONL part can leave (curate's report lists each under ``read``, zeros included)."""
MAX_RECORD_BYTES = 8_000_000
"""Default ``corpus.max_record_bytes``."""
_CHUNK = guard.CHUNK
_BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_BATCH_BYTES = 16 << 20
"""Parquet: rows per batch are chosen so that a batch holds at most about this many bytes even if a dictionary
repeated its largest value in every row (``_batch_rows``); a batch whose values add up to more is materialised one
value at a time."""


@dataclass(frozen=True)
class InputFile:
    url: str
    """What is opened: a local absolute path or ``scheme://...``; names the file in quarantine rows."""
    rel: str
    """Path relative to the configured root (its name for a configured file): the stable part of derived ids."""
    roots: tuple[str, ...] = ()
    """Resolved configured local paths the file must resolve inside (empty: a path given on its own)."""


def reject(source: str, line: int | None, reason: str, detail: str = "") -> dict[str, Any]:
    return {"source": source, "line": line, "reason": reason, "detail": detail[:500]}


def is_reject(row: dict) -> bool:
    return "reason" in row and "text" not in row


def stable_id(rel: str, line: int) -> str:
    return hashlib.sha256(f"{rel}\x00{line}".encode()).hexdigest()[:20]


def limits_of(corpus) -> Limits:
    """The ``guard.Limits`` of a ``CorpusConfig``."""
    return Limits(corpus.max_file_bytes, corpus.read_timeout_s, corpus.max_decompressed_bytes,
                  corpus.max_compression_ratio)


class RejectLog:
    """Quarantine warnings, summarised: one line per (file, reason) with the first line and a count."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.first: dict[tuple[str, str], tuple[Any, str]] = {}

    def add(self, row: dict) -> None:
        key = (row["source"], row["reason"])
        self.counts[key] += 1
        self.first.setdefault(key, (row["line"], row["detail"]))

    def flush(self) -> None:
        for (src, reason), n in self.counts.items():
            line, detail = self.first[(src, reason)]
            where = f"{src} line {line}" if line is not None else src
            more = f" (+{n - 1} more {reason} in this file)" if n > 1 else ""
            log.warning("quarantine %s: %s %s%s", where, reason, detail, more)
        self.counts.clear()
        self.first.clear()


# --- listing ---------------------------------------------------------------------------------------------------


def _fs(path: str):
    from fsspec.core import url_to_fs

    if "://" not in path:
        from pathlib import Path

        path = str(Path(path).expanduser().resolve())
    return url_to_fs(path)


def _url(fs, path: str) -> str:
    return path if _local(fs) else fs.unstrip_protocol(path)


def _local(fs) -> bool:
    return "file" in ((fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol))


def _printable(name: str) -> str:
    """A path as text that can be written anywhere (undecodable bytes of a local name backslash-escaped)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _local_file(path: str, rel: str, roots: tuple[str, ...], limits: Limits) -> InputFile | dict:
    """A file found under a local folder -> an input, or the reject of a file that may not be read."""
    if _printable(path) != path:
        return reject(_printable(path), None, "bad_file_name", "the file name is not valid UTF-8")
    try:
        why = guard.check_local(path, roots, limits)
    except OSError as e:
        return reject(path, None, "unreadable_file", f"{type(e).__name__}: {e}")
    return InputFile(path, rel, roots) if why is None else reject(path, None, *why[:2])


def _find_local(root: str, roots: tuple[str, ...], limits: Limits) -> tuple[list, list[dict], int]:
    """(inputs, rejects, files ignored for their suffix) under a local folder: ``os.walk`` without following
    symlinked folders; one that resolves outside the roots is a reject, one inside is read through its target."""
    found, rejects, skipped = [], [], 0

    def unreadable(e: OSError) -> None:  # a folder that cannot be listed
        rejects.append(reject(_printable(str(e.filename)), None, "unreadable_file", f"{type(e).__name__}: {e}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        for d in [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, d)
            if not guard.inside(os.path.realpath(full), roots):
                rejects.append(reject(_printable(full), None, "outside_root",
                                      f"a folder link to {os.path.realpath(full)}, outside the configured roots"))
        for name in filenames:
            full = os.path.join(dirpath, name)
            if name.endswith(SUFFIXES):
                found.append(full)
            else:
                skipped += 1
    files = []
    for full in sorted(found):
        got = _local_file(full, full[len(root):].lstrip("/"), roots, limits)
        (rejects if isinstance(got, dict) else files).append(got)
    return files, rejects, skipped


def _find_remote(fs, root: str) -> tuple[list, list[dict], int]:
    files, rejects, skipped = [], [], 0
    for f, info in sorted(fs.find(root, detail=True).items()):
        if not f.endswith(SUFFIXES):
            skipped += 1
            continue
        rel = f[len(root):].lstrip("/") if f.startswith(root) else f.rsplit("/", 1)[-1]
        if info.get("type", "file") == "file":
            files.append(InputFile(_url(fs, f), rel))
        else:
            rejects.append(reject(_url(fs, f), None, "not_regular_file", f"{info.get('type')}: not a file"))
    return files, rejects, skipped


def _list_one(p: str, roots: tuple[str, ...], limits: Limits) -> tuple[list, list[dict]]:
    """One configured path -> (inputs, rejects)."""
    try:
        fs, root = _fs(p)
        is_dir, is_file = fs.isdir(root), fs.isfile(root)
        exists = is_dir or is_file or (_local(fs) and os.path.lexists(root))
    except Exception as e:  # noqa: BLE001 - an unknown protocol or an unreachable store is a bad path
        return [], [reject(p, None, "missing_path", f"{type(e).__name__}: {e}")]
    if is_dir:
        files, rejects, skipped = _find_local(root, roots, limits) if _local(fs) else _find_remote(fs, root)
        if skipped:
            log.info("readers: %s: %d file(s) without a known suffix %s ignored", p, skipped, SUFFIXES)
        return files, rejects
    if not exists:
        return [], [reject(p, None, "missing_path", "no such file or folder")]
    name = root.rsplit("/", 1)[-1]
    got = _local_file(root, name, (), limits) if _local(fs) else InputFile(_url(fs, root), name)
    if isinstance(got, dict):  # (a configured path is its own root, but it must be a regular file)
        return [], [got]
    if not root.endswith(SUFFIXES):
        return [], [reject(_url(fs, root), None, "unsupported_type", f"expected one of {SUFFIXES}")]
    return [got], []


def _local_roots(paths: list[str]) -> tuple[str, ...]:
    roots = []
    for p in paths:
        if "://" not in p or p.startswith("file://"):
            roots.append(os.path.realpath(os.path.expanduser(p[7:] if p.startswith("file://") else p)))
    return tuple(roots)


def list_inputs(paths: list[str], limits: Limits = Limits()) -> tuple[list[InputFile], list[dict]]:
    """Expand configured files/folders (local or fsspec URLs) into a sorted list of inputs (+ rejects: paths
    that do not exist, and files that may not be read: outside the roots, not regular, over ``max_file_bytes``)."""
    roots = _local_roots(paths)
    files: list[InputFile] = []
    rejects: list[dict] = []
    for p in paths:
        got, bad = _list_one(p, roots, limits)
        files.extend(got)
        rejects.extend(bad)
    summary = RejectLog()
    for r in rejects:
        summary.add(r)
    summary.flush()
    seen, out = set(), []
    for f in files:
        if f.url not in seen:
            seen.add(f.url)
            out.append(f)
    return out, rejects


def file_digest(inp: InputFile, limits: Limits = Limits()) -> str:
    """sha256 of the stored bytes (compressed as stored); raises ``guard.Refused`` / ``OSError``."""
    h = hashlib.sha256()
    with guard.open_file(inp.url, inp.roots, limits) as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


# --- byte streams ----------------------------------------------------------------------------------------------


def _stream_errors() -> tuple[type[BaseException], ...]:
    import gzip

    import zstandard

    return (EOFError, OSError, zlib.error, zstandard.ZstdError, gzip.BadGzipFile)


def _lines(fh: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, bytes or None when over ``max_bytes``, length); long lines are skipped in chunks; a UTF-8
    byte-order mark before the first line is dropped."""
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
        yield n, raw[len(_BOM):] if n == 1 and raw.startswith(_BOM) else raw, len(raw)


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
    meter: guard.Meter | None = None
    """The file's counters (``guard``): readers of compressed data report what they produce."""
    extra_fields: tuple[str, ...] = ()
    """Parquet and CSV: columns read beside the text and id (a task's label, split, ...); JSONL keeps every
    field."""


def _encodable(rec: Any) -> bool:
    try:
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    if _SURROGATE_ESCAPE.search(line) and not _encodable(rec):  # only an escape can make one
        return reject(src, i, "lone_surrogate", "a \\ud800-\\udfff escape that is not half of a pair")
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


def _guarded_line(inp: InputFile, i: int, raw: bytes, opts: ReadOptions) -> dict:
    """``_jsonl_line``, with any exception on the line (``RecursionError`` on deep nesting, ``MemoryError``) its
    reject."""
    try:
        return _jsonl_line(inp, i, raw, opts)
    except Exception as e:  # noqa: BLE001 - one record never stops the file
        return reject(inp.url, i, "record_error", f"{type(e).__name__}: {e}")


def read_jsonl(inp: InputFile, fh: BinaryIO, opts: ReadOptions) -> Iterator[dict]:
    """One record per line (plain, .gz or .zst by name); bad lines become rejects naming the line, good lines go
    on; a corrupt stream, or one past a cap, keeps the lines before."""
    src, records, last, max_bytes = inp.url, 0, 0, opts.max_bytes
    stream = guard.decompressed(fh, inp.url, opts.meter or guard.Meter(guard.UNLIMITED))
    try:
        for i, raw, size in _lines(stream, max_bytes):
            last = i
            if raw is None:
                yield reject(src, i, "record_too_large", f"line of {size} bytes > max_record_bytes={max_bytes}")
                records += 1
            elif raw.strip():
                records += 1
                yield _guarded_line(inp, i, raw, opts)
    except guard.Refused as e:
        yield reject(src, last + 1, e.reason, f"lines after {last} not read: {e.detail}")
        return
    except _stream_errors() as e:
        yield reject(src, last + 1, "corrupt_stream", f"stream breaks after line {last}: {type(e).__name__}: {e}")
        return
    if records == 0:
        yield reject(src, None, "empty_file", "no records")


def read_txt(inp: InputFile, fh: BinaryIO, opts: ReadOptions) -> Iterator[dict]:
    """One document per file; id = stable id of (rel, 1); a leading UTF-8 byte-order mark is dropped."""
    src, max_bytes = inp.url, opts.max_bytes
    data = fh.read(max_bytes + len(_BOM) + 1)
    data = data[len(_BOM):] if data.startswith(_BOM) else data
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


def _parquet_file(inp: InputFile, fh: BinaryIO, opts: ReadOptions):
    """(``pq.ParquetFile``, columns to read, None) when it holds a string text column and rows, else (None, None,
    the reject)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, text_field, id_field = inp.url, opts.text_field, opts.id_field
    try:
        pf = pq.ParquetFile(fh)
        schema = pf.schema_arrow
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError/... for a broken footer
        return None, None, reject(src, None, "unreadable_parquet", f"{type(e).__name__}: {e}")
    if text_field not in schema.names:
        return None, None, reject(src, None, "missing_column", f"no {text_field!r} column; columns: {schema.names}")
    ttype = schema.field(text_field).type
    if not (pa.types.is_string(ttype) or pa.types.is_large_string(ttype)):
        return None, None, reject(src, None, "bad_schema", f"{text_field!r} is {ttype}, expected string")
    if pf.metadata.num_rows == 0:
        return None, None, reject(src, None, "empty_file", "0 rows")
    columns = [text_field]
    if id_field and id_field in schema.names and id_field != text_field:
        itype = schema.field(id_field).type
        if pa.types.is_string(itype) or pa.types.is_large_string(itype) or pa.types.is_integer(itype):
            columns.append(id_field)  # (other id types give stable ids: not read at all)
    columns += [f for f in opts.extra_fields if f in schema.names and f not in columns]
    return pf, columns, None


def _chunk(pf, rg: int, name: str):
    md = pf.metadata.row_group(rg)
    return next((md.column(j) for j in range(md.num_columns) if md.column(j).path_in_schema == name), None)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        n |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return (n >> 1) ^ -(n & 1), i  # zigzag


def _dictionary_bytes(fh: BinaryIO, chunk) -> int:
    """Upper bound on one value's bytes in a column chunk: its dictionary page's uncompressed size when the chunk
    starts with one (read from the page header, which the decompressor holds the page to), else the chunk's
    uncompressed size.  A dictionary repeats a value for any number of rows: this bounds a batch's dense size."""
    start = chunk.data_page_offset
    if chunk.has_dictionary_page and chunk.dictionary_page_offset and chunk.dictionary_page_offset < start:
        start = chunk.dictionary_page_offset
    try:  # PageHeader, thrift compact: 1: type, 2: uncompressed_page_size (i32 fields, in order)
        fh.seek(start)
        head = fh.read(16)
        if head[0] != 0x15:
            raise ValueError(head[:1])
        kind, i = _varint(head, 1)
        if head[i] != 0x15:
            raise ValueError(head[i:i + 1])
        size = _varint(head, i + 1)[0]
    except (ValueError, IndexError, OSError):
        return chunk.total_uncompressed_size  # not understood: the safe bound
    return size if kind == 2 else 0  # 2: DICTIONARY_PAGE; no dictionary: values are as large as stored


def _batch_rows(pf, fh: BinaryIO, rg: int, columns: list[str], limits: Limits) -> tuple[int, str]:
    """(rows per batch, or 0 with the reason when the row group is refused: its columns, uncompressed, exceed
    ``max_file_bytes``).  A batch holds about ``_BATCH_BYTES``: rows x the largest value a dictionary may repeat,
    or the columns' average bytes per row."""
    rows = pf.metadata.row_group(rg).num_rows
    chunks = [c for c in (_chunk(pf, rg, n) for n in columns) if c is not None]
    size = sum(c.total_uncompressed_size for c in chunks)
    if limits.max_file_bytes is not None and size > limits.max_file_bytes:
        return 0, f"{size} bytes uncompressed > max_file_bytes={limits.max_file_bytes}"
    per_row = max(size / max(rows, 1), sum(_dictionary_bytes(fh, c) for c in chunks), 1)
    return int(max(1, min(1024, _BATCH_BYTES // per_row))), ""


def _byte_lengths(col) -> list[int | None]:
    """UTF-8 bytes of each value (None for a null; 8 for an integer), computed on the dictionary when the column
    is one: no value is copied."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(col.type):
        return pc.binary_length(col.dictionary).take(col.indices).to_pylist()
    if pa.types.is_integer(col.type):
        return [None if v is None else 8 for v in col.is_valid().to_pylist()]
    return pc.binary_length(col).to_pylist()


def _parquet_batch(inp: InputFile, batch, first: int, opts: ReadOptions) -> Iterator[dict]:
    """The records of one batch (rows ``first + 1 ...``); sizes are counted (``meter``) and rows over
    ``max_bytes`` rejected before any value is materialised."""
    src, max_bytes = inp.url, opts.max_bytes
    names = batch.schema.names
    cols = [batch.column(i) for i in range(batch.num_columns)]
    sizes = [[n or 0 for n in _byte_lengths(c)] for c in cols]
    per_row = [sum(s) for s in zip(*sizes)]
    if opts.meter is not None:
        opts.meter.add_produced(sum(per_row))
    values = None
    if sum(per_row) <= _BATCH_BYTES:  # small enough to convert at once
        try:
            values = [c.to_pylist() for c in cols]
        except Exception:  # noqa: BLE001 - a bad value: converted row by row below, where it is that row's reject
            values = None
    for k, n in enumerate(per_row):
        row = first + k + 1
        if n > max_bytes:
            yield reject(src, row, "record_too_large", f"text > max_record_bytes={max_bytes}")
            continue
        try:
            vals = dict(zip(names, [v[k] for v in values] if values is not None else [c[k].as_py() for c in cols]))
            rid = vals.pop(opts.id_field, None) if opts.id_field else None
            out = _record(inp, row, vals.pop(opts.text_field), rid, vals, opts.text_field)
        except Exception as e:  # noqa: BLE001 - one row never stops the file
            out = reject(src, row, "record_error", f"{type(e).__name__}: {e}")
        yield out


def read_parquet(inp: InputFile, fh: BinaryIO, opts: ReadOptions) -> Iterator[dict]:
    """One record per row (line = 1-based row number), row group by row group in batches of bounded dense size
    (``_batch_rows``); a file without a string text column is one reject, a row group over ``max_file_bytes``
    uncompressed one reject."""
    src = inp.url
    pf, columns, bad = _parquet_file(inp, fh, opts)
    if pf is None:
        yield bad
        return
    limits = opts.meter.limits if opts.meter is not None else guard.UNLIMITED
    row = 0
    try:
        for rg in range(pf.num_row_groups):
            n_rows = pf.metadata.row_group(rg).num_rows
            batch_rows, why = _batch_rows(pf, fh, rg, columns, limits)
            if not batch_rows:
                yield reject(src, row + 1, "row_group_too_large", f"rows {row + 1}-{row + n_rows}: {why}")
                row += n_rows
                continue
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=columns):
                yield from _parquet_batch(inp, batch, row, opts)
                row += batch.num_rows
    except guard.Refused as e:
        yield reject(src, row + 1, e.reason, f"rows after {row} not read: {e.detail}")
    except Exception as e:  # noqa: BLE001 - a corrupt page: keep what was read, quarantine the rest
        yield reject(src, row + 1, "unreadable_parquet", f"rows after {row}: {type(e).__name__}: {e}")


def _csv_row(inp: InputFile, start: int, header: list[str], values: list[str], opts: ReadOptions) -> dict:
    if len(values) != len(header):
        return reject(inp.url, start, "bad_row", f"{len(values)} fields, the header has {len(header)}")
    rec = dict(zip(header, values))
    text, rid = rec.pop(opts.text_field), rec.pop(opts.id_field, None) if opts.id_field else None
    return _record(inp, start, text, rid, {k: v for k, v in rec.items() if k in opts.extra_fields}, opts.text_field)


def read_csv(inp: InputFile, fh: BinaryIO, opts: ReadOptions) -> Iterator[dict]:
    """One record per CSV record after the header row (``read_csv.csv_records``: RFC 4180 by the ``csv``
    module); a bad record is a reject naming its first line; a header without the text column rejects the file."""
    from modpipe.curate.read_csv import csv_records

    src, header, n, last = inp.url, None, 0, 0
    stream = guard.decompressed(fh, inp.url, opts.meter or guard.Meter(guard.UNLIMITED))
    try:
        for start, values, bad in csv_records(_lines(stream, opts.max_bytes), opts.max_bytes):
            last = start
            if header is None and bad is None:
                header = values
                if opts.text_field not in header:
                    yield reject(src, start, "missing_column", f"no {opts.text_field!r} column; columns: {header}")
                    return
                continue
            if header is None:
                yield reject(src, start, bad[0], f"header: {bad[1]}; file not read")
                return
            n += 1
            yield reject(src, start, *bad) if bad else _csv_row(inp, start, header, values, opts)
    except guard.Refused as e:
        yield reject(src, last + 1, e.reason, f"records after line {last} not read: {e.detail}")
        return
    except _stream_errors() as e:
        yield reject(src, last + 1, "corrupt_stream", f"stream breaks after line {last}: {type(e).__name__}: {e}")
        return
    if n == 0:
        yield reject(src, None, "empty_file", "no records" if header is None else "a header and no records")


READERS: dict[str, Callable[[InputFile, BinaryIO, ReadOptions], Iterator[dict]]] = {
    ".jsonl": read_jsonl, ".jsonl.gz": read_jsonl, ".jsonl.zst": read_jsonl, ".parquet": read_parquet,
    ".csv": read_csv, ".txt": read_txt,
}
"""The reader of each file suffix (the only files a folder contributes)."""
SUFFIXES = tuple(READERS)


def _read_opened(inp: InputFile, opts: ReadOptions, limits: Limits) -> Iterator[dict]:
    """The reader's rows of one input, opened through ``guard``; a refusal or failure of the file is its last
    row."""
    reader = next((fn for suffix, fn in READERS.items() if inp.url.endswith(suffix)), read_jsonl)
    fh = None
    try:
        fh = guard.open_file(inp.url, inp.roots, limits)  # read-only: raw input is never modified
        yield from reader(inp, fh, ReadOptions(opts.text_field, opts.id_field, opts.max_bytes, opts.keep_origin,
                                               fh.raw.meter, opts.extra_fields))
    except guard.Refused as e:
        yield reject(inp.url, None, e.reason, e.detail)
    except Exception as e:  # noqa: BLE001 - one file's failure never stops the others
        yield reject(inp.url, None, "unreadable_file", f"{type(e).__name__}: {e}")
    finally:
        if fh is not None:
            try:
                fh.close()
            except Exception:  # noqa: BLE001, S110 - a file that cannot even be closed has been read
                pass


def read_input(inp: InputFile, text_field: str = "text", id_field: str | None = "id",
               max_bytes: int = MAX_RECORD_BYTES, keep_origin: bool = False,
               limits: Limits = Limits(), extra_fields: tuple[str, ...] = ()) -> Iterator[dict]:
    """Every record and reject of one input, read by its suffix's reader; never raises for bad content.  One
    warning per reason when the file is done (``RejectLog``)."""
    summary = RejectLog()
    try:
        for row in _read_opened(inp, ReadOptions(text_field, id_field, max_bytes, keep_origin,
                                                 extra_fields=extra_fields), limits):
            if is_reject(row):
                summary.add(row)
            yield row
    finally:
        summary.flush()


def read_file(path, text_field: str = "text", id_field: str | None = "id", keep_origin: bool = False,
              max_bytes: int = MAX_RECORD_BYTES, limits: Limits = Limits(),
              extra_fields: tuple[str, ...] = ()) -> Iterator[dict]:
    """``read_input`` for one local path (or URL) given on its own (rel = its name, no root rule)."""
    s = str(path)
    yield from read_input(InputFile(s, s.replace("\\", "/").rsplit("/", 1)[-1]), text_field, id_field, max_bytes,
                          keep_origin, limits, extra_fields)


def read_records(paths: list[str], text_field: str = "text", id_field: str | None = "id", *,
                 max_record_bytes: int = MAX_RECORD_BYTES, limits: Limits = Limits()) -> Iterator[dict]:
    """Every record and reject of the files under ``paths`` (files or folders, local or fsspec URLs), file by
    file in sorted order: the one way to read input a user hands in (corpus, task files, prediction inputs).
    Records are ``{"id", "text", "source", "line", ...}``, rejects ``{"source", "line", "reason", "detail"}``
    (``is_reject``); ``limits``: ``limits_of(cfg.corpus)`` or ``guard.Limits(...)``."""
    files, rejects = list_inputs(paths, limits)
    yield from rejects
    for f in files:
        yield from read_input(f, text_field, id_field, max_record_bytes, limits=limits)
