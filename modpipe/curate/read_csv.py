"""CSV parsing (RFC 4180, UTF-8) over a file's numbered physical lines, for ``readers.read_csv``.

Python's ``csv`` module parses (quoted fields, embedded newlines, doubled quotes); this file only feeds it the
physical lines that ``readers._lines`` yields (a huge line arrives as None and is never held) and maps each parsed
record back to the physical line where it starts. A line that is not UTF-8, holds a NUL byte or is too large makes
its record bad (with the reason), never the file. Kept apart from ``readers`` (which imports it) so that it needs
nothing from there.
"""

from __future__ import annotations

import csv
import sys
from typing import Iterable, Iterator

Bad = tuple[str, str]
"""(reason code, detail) of a bad record."""


class _Lines:
    """The decoded physical lines fed to ``csv.reader``; remembers which lines were bad and why."""

    def __init__(self, numbered: Iterable[tuple[int, bytes | None, int]]):
        self._it = iter(numbered)
        self.bad: dict[int, Bad] = {}
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


def csv_records(numbered: Iterable[tuple[int, bytes | None, int]], max_bytes: int
                ) -> Iterator[tuple[int, list[str] | None, Bad | None]]:
    """(first physical line, fields, None) per record, or (line, None, (reason, detail)) for a bad one; blank
    lines are skipped. The first record is the header (the caller's to read)."""
    lines = _Lines(numbered)
    csv.field_size_limit(min(sys.maxsize, max_bytes))
    reader = csv.reader(lines, strict=True)
    done = 0
    while True:
        start = done + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            done = lines.last
            lines.bad.clear()
            yield start, None, ("record_error", f"CSV: {e}")
            continue
        done = lines.last
        bad = next(((n, why) for n, why in sorted(lines.bad.items()) if start <= n <= done), None)
        lines.bad.clear()
        if bad is not None:
            yield bad[0], None, bad[1]
        elif values not in ([], [""]):
            yield start, values, None
