"""CSV (RFC 4180, UTF-8, a header row) -> records and rejects, with the same guarantees as the other readers.

Python's ``csv`` module parses (quoted fields, embedded newlines and doubled quotes); this file only feeds it the
file's physical lines through ``readers._lines`` (so a huge line is skipped without being held) and maps each
parsed record back to its first physical line for the reject.  A line that is not UTF-8 or holds a NUL byte
rejects the record it belongs to, never the file.  ``line`` in a record or reject is the physical line where the
record starts (the header is line 1).
"""

from __future__ import annotations

import csv
import sys
from typing import BinaryIO, Iterator

from modpipe.curate import guard
from modpipe.curate import readers as r


class _Lines:
    """The decoded physical lines fed to ``csv.reader``; remembers which lines were bad and why."""

    def __init__(self, stream: BinaryIO, max_bytes: int):
        self._it = r._lines(stream, max_bytes)
        self.bad: dict[int, tuple[str, str]] = {}
        self.last = 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        n, raw, size = next(self._it)
        self.last = n
        if raw is None:
            self.bad[n] = ("record_too_large", f"line of {size} bytes > max_record_bytes")
            return "\n"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.bad[n] = ("invalid_utf8", f"byte offset {e.start} in line: {e.reason}")
            return "\n"
        if "\x00" in text:
            self.bad[n] = ("nul_byte", f"NUL byte at offset {text.index(chr(0))} in line")
            return "\n"
        return text


def _row(inp: r.InputFile, start: int, header: list[str], values: list[str], opts: r.ReadOptions) -> dict:
    if len(values) != len(header):
        return r.reject(inp.url, start, "bad_row", f"{len(values)} fields, the header has {len(header)}")
    rec = dict(zip(header, values))
    text, rid = rec.pop(opts.text_field), rec.pop(opts.id_field, None) if opts.id_field else None
    wanted = {k: v for k, v in rec.items() if k in opts.extra_fields}
    return r._record(inp, start, text, rid, wanted, opts.text_field)


def read_csv(inp: r.InputFile, fh: BinaryIO, opts: r.ReadOptions) -> Iterator[dict]:
    """One record per CSV record after the header; bad records become rejects naming their first line."""
    src = inp.url
    lines = _Lines(guard.decompressed(fh, inp.url, opts.meter or guard.Meter(guard.UNLIMITED)), opts.max_bytes)
    csv.field_size_limit(min(sys.maxsize, opts.max_bytes))
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    n_records, done = 0, 0
    try:
        while True:
            start = done + 1
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                done = lines.last
                lines.bad.clear()
                yield r.reject(src, start, "record_error", f"CSV: {e}")
                n_records += 1
                continue
            done = lines.last
            bad = next(((n, why) for n, why in sorted(lines.bad.items()) if start <= n <= done), None)
            lines.bad.clear()
            if bad is None and values in ([], [""]):
                continue  # a blank line
            if header is None:
                if bad is not None:
                    yield r.reject(src, bad[0], bad[1][0], f"header: {bad[1][1]}; file not read")
                    return
                header = values
                if opts.text_field not in header:
                    yield r.reject(src, 1, "missing_column", f"no {opts.text_field!r} column; columns: {header}")
                    return
                continue
            n_records += 1
            yield r.reject(src, bad[0], *bad[1]) if bad else _row(inp, start, header, values, opts)
    except guard.Refused as e:
        yield r.reject(src, done + 1, e.reason, f"lines after {done} not read: {e.detail}")
        return
    except r._stream_errors() as e:
        yield r.reject(src, done + 1, "corrupt_stream", f"stream breaks after line {done}: {type(e).__name__}: {e}")
        return
    if header is None or n_records == 0:
        yield r.reject(src, None, "empty_file", "no records" if header is None else "a header and no records")
