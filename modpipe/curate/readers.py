"""Readers: one file -> records and rejects.  Files are only ever opened read-only.

A reader yields dicts.  A record: ``{"id", "text", "source", "line", ...extra fields}``; a reject (quarantine
row): ``{"source", "line", "reason", "detail"}`` with a stable reason code:

empty_file        the file holds no bytes (or only blanks)
invalid_gzip      a .gz that does not decompress
invalid_utf8      bytes that are not UTF-8 (line = the line that holds the first bad byte)
malformed_json    a JSONL line that does not parse
not_object        a JSONL line that parses to something other than an object
missing_field     the text field is absent or null
bad_type          the text field is not a string
empty_text        the text field is blank
duplicate_id      an id already seen in an earlier file/line (first one wins)
missing_path      a configured path does not exist
unsupported_type  a configured file that is not .jsonl, .jsonl.gz or .txt
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("modpipe.curate")

SUFFIXES = (".jsonl", ".jsonl.gz", ".txt")


def reject(source: str, line: int | None, reason: str, detail: str = "") -> dict[str, Any]:
    log.warning("quarantine %s line %s: %s %s", source, line, reason, detail)
    return {"source": source, "line": line, "reason": reason, "detail": detail[:500]}


def is_reject(row: dict) -> bool:
    return "reason" in row and "text" not in row


def stable_id(source: str, line: int) -> str:
    return hashlib.sha256(f"{source}\x00{line}".encode()).hexdigest()[:20]


def list_inputs(paths: list[str]) -> tuple[list[Path], list[dict]]:
    """Expand configured files/folders into a sorted list of readable files (+ rejects for bad paths)."""
    files: list[Path] = []
    rejects: list[dict] = []
    for p in paths:
        path = Path(p).expanduser().resolve()
        if path.is_dir():
            files.extend(f for f in sorted(path.rglob("*")) if f.is_file() and f.name.endswith(SUFFIXES))
        elif path.is_file():
            if path.name.endswith(SUFFIXES):
                files.append(path)
            else:
                rejects.append(reject(str(path), None, "unsupported_type", f"expected one of {SUFFIXES}"))
        else:
            rejects.append(reject(str(path), None, "missing_path", "no such file or folder"))
    seen, out = set(), []
    for f in files:
        if f not in seen:
            seen.add(f)
            out.append(f)
    return out, rejects


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def _read_bytes(path: Path) -> tuple[bytes | None, dict | None]:
    with open(path, "rb") as fh:  # read-only: raw input is never modified
        data = fh.read()
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            return None, reject(str(path), None, "invalid_gzip", str(e))
    if not data.strip():
        return None, reject(str(path), None, "empty_file", f"{len(data)} bytes")
    return data, None


def read_txt(path: Path) -> Iterator[dict]:
    """One document per .txt file; id = stable id of (path, 1)."""
    data, bad = _read_bytes(path)
    if bad:
        yield bad
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield reject(str(path), _line_of(data, e.start), "invalid_utf8", f"byte offset {e.start}: {e.reason}")
        return
    yield {"id": stable_id(str(path), 1), "text": text, "source": str(path), "line": 1}


def read_jsonl(path: Path, text_field: str = "text", id_field: str | None = "id",
               keep_origin: bool = False) -> Iterator[dict]:
    """One record per JSONL line; bad lines become rejects naming the line, good lines go on.

    ``keep_origin``: the file is modpipe's own raw JSONL whose records already name their ``source`` (a man
    page, a user file) and ``line``; otherwise source/line are this file and line.
    """
    data, bad = _read_bytes(path)
    if bad:
        yield bad
        return
    src = str(path)
    for i, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield reject(src, i, "invalid_utf8", f"byte offset {e.start} in line: {e.reason}")
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield reject(src, i, "malformed_json", f"{e.msg} at column {e.colno}")
            continue
        if not isinstance(rec, dict):
            yield reject(src, i, "not_object", type(rec).__name__)
            continue
        text = rec.get(text_field)
        if text is None:
            yield reject(src, i, "missing_field", f"no {text_field!r} field")
            continue
        if not isinstance(text, str):
            yield reject(src, i, "bad_type", f"{text_field!r} is {type(text).__name__}")
            continue
        if not text.strip():
            yield reject(src, i, "empty_text", f"{text_field!r} is blank")
            continue
        rid = rec.get(id_field) if id_field else None
        rid = str(rid) if isinstance(rid, (str, int)) and str(rid).strip() else stable_id(src, i)
        out = {k: v for k, v in rec.items() if k not in (text_field, id_field, "source", "line")}
        if keep_origin:
            out.update({"id": rid, "text": text, "source": rec.get("source") or src,
                        "line": rec["line"] if "line" in rec else i})
        else:
            out.update({"id": rid, "text": text, "source": src, "line": i})
        yield out


def read_file(path: Path, text_field: str = "text", id_field: str | None = "id",
              keep_origin: bool = False) -> Iterator[dict]:
    if path.name.endswith(".txt"):
        yield from read_txt(path)
    else:
        yield from read_jsonl(path, text_field, id_field, keep_origin)
