"""Raw corpus steps: each writes JSONL parts (id, text, source, section, language) under ``<run_dir>/raw/``.

- ``harvest_man``: the embedded default corpus, offline from ``corpus.man_root``.  English pages from
  ``manN/`` for ``corpus.sections``, translated pages from ``<lang>/manN/``.  Symlinks (aliases of pages, or of
  folders) and ``.so`` stubs are skipped as the aliases they are, so nothing outside the man root is read;
  anything not a regular file (a fifo, a socket, a device) is skipped unopened, and every page is read through
  ``guard`` with the corpus caps (``max_record_bytes`` on its text, ``max_file_bytes``, the decompressed-size and
  ratio caps, ``read_timeout_s``); skipped pages are counted by reason in ``stats.json``.  Selection is
  deterministic: pages in order of sha256(relative path), at most ``max_docs_per_cluster`` per command-name
  prefix (man1 holds ~16.6k ``gcloud*`` pages), at most ``max_docs_per_section`` per English section and
  ``max_docs_per_language`` per language folder.  Pages are kept as troff source (records carry
  ``markup: "troff"``): raw/ is the corpus as found, and markup stripping is the ``troff`` normalisation step
  of curate (``curate.normalize``), which a user can turn off.  Which markup a raw corpus holds is decided by the
  reader that made it (``MARKUP``, by kind), never by a field of the records: user records are never troff.
  A missing man root, or fewer than ``corpus.min_pages`` pages, falls back to ``harvest_pydocs``.
- ``harvest_pydocs``: docstrings of a fixed list of side-effect-free stdlib modules (records carry
  ``package``, the label of the ``py_package`` task).
- ``ingest_files``: ``corpus.source = files``: the user's files (local or fsspec URLs; JSONL plain/.gz/.zst,
  Parquet, .txt) through ``readers``; bad files/lines go to the step's quarantine.jsonl as they come (nothing is
  held in memory but the ids seen), good records on; warnings are one line per file and reason.

Every step dir holds ``part-NNNNN.jsonl``, ``quarantine.jsonl`` and ``stats.json``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import logging
import os
import re
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from modpipe import lineage
from modpipe.config import PipelineConfig
from modpipe.curate import guard, readers

log = logging.getLogger("modpipe.curate")

HARVEST_VERSION = 3
"""Part of every raw step's fingerprint: bump it when the records a harvest writes change for the same input (a
comment or a refactor changes nothing, so it keeps the cache; ``readers.READERS_VERSION`` covers the readers).
3: man pages read through ``guard`` with the corpus caps (non-regular entries skipped unopened); ingest streams
its quarantine and rejects records that cannot be written."""
ENGLISH = "en"
MARKUP = {"man": "troff"}
"""The markup of each raw corpus kind (the ``troff`` normalisation step runs on the man harvest only)."""


@dataclass(frozen=True)
class Page:
    path: Path
    rel: str
    section: str
    language: str
    name: str

    @property
    def cluster(self) -> str:
        """Command-name prefix: ``gcloud-compute-ssh`` -> ``gcloud``, ``pthread_create`` -> ``pthread``."""
        return re.split(r"[-_.:]", self.name, maxsplit=1)[0].lower() or self.name.lower()

    @property
    def order(self) -> str:
        return hashlib.sha256(self.rel.encode()).hexdigest()


def _page_name(fname: str) -> str:
    base = fname[:-3] if fname.endswith(".gz") else fname
    return base.rsplit(".", 1)[0] if "." in base else base


def list_pages(root: Path, sections: list[int]) -> tuple[dict[str, list[Page]], dict[str, list[Page]], Counter]:
    """English pages by section, translated pages by language folder (symlinks skipped, counted)."""
    english: dict[str, list[Page]] = defaultdict(list)
    translated: dict[str, list[Page]] = defaultdict(list)
    counts: Counter = Counter()
    wanted = {f"man{s}" for s in sections}
    for top in sorted(os.scandir(root), key=lambda e: e.name):
        if not top.is_dir(follow_symlinks=False):
            continue
        if top.name.startswith("man"):
            dirs = [(top, ENGLISH)] if top.name in wanted else []
        else:  # a language folder: <lang>/manN
            dirs = [(d, top.name) for d in sorted(os.scandir(top.path), key=lambda e: e.name)
                    if d.is_dir(follow_symlinks=False) and d.name in wanted]
        for d, lang in dirs:
            section = d.name[3:]
            for f in os.scandir(d.path):
                if f.is_symlink():  # an alias of another page (or a link out of the root): skipped
                    counts["symlink"] += 1
                    continue
                if not f.is_file(follow_symlinks=False):
                    if not f.is_dir(follow_symlinks=False):  # a fifo, socket or device: never opened
                        counts["not_regular_file"] += 1
                    continue
                rel = os.path.relpath(f.path, root)
                page = Page(Path(f.path), rel, section, lang, _page_name(f.name))
                (english[section] if lang == ENGLISH else translated[lang]).append(page)
                counts["listed"] += 1
    return english, translated, counts


def _page_bytes(page: Page, limits: guard.Limits, roots: tuple[str, ...], max_bytes: int) -> bytes:
    """The page's (decompressed) bytes through ``guard``; raises ``guard.Refused`` past ``max_bytes``."""
    with guard.open_file(str(page.path), roots, limits) as fh:
        data = guard.decompressed(fh, page.path.name, fh.raw.meter).read(max_bytes + 1)
    if len(data) > max_bytes:
        raise guard.Refused("record_too_large", f"more than max_record_bytes={max_bytes} bytes")
    return data


def read_page(page: Page, limits: guard.Limits = guard.Limits(), roots: tuple[str, ...] = (),
              max_bytes: int = readers.MAX_RECORD_BYTES) -> tuple[str | None, str, str]:
    """(troff source or None, encoding, skip reason): None for .so stubs, unreadable, refused or empty pages."""
    import zlib

    try:
        data = _page_bytes(page, limits, roots, max_bytes)
    except guard.Refused as e:
        return None, "", f"{e.reason}: {e.detail}"
    except (OSError, EOFError, zlib.error) as e:
        return None, "", f"invalid_gzip: {e}"
    if data.lstrip().startswith(b".so "):
        return None, "", "so_stub"
    try:
        src, enc = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        src, enc = data.decode("latin-1"), "latin-1"
        log.warning("harvest: %s is not UTF-8; decoded as latin-1", page.rel)
    if not src.strip():
        return None, enc, "empty_page"
    return src, enc, ""


def select(pages: list[Page], cap: int, per_cluster: int, counts: Counter, read=read_page) -> list[dict]:
    """Deterministic pick: sha256 order, cluster cap, then the first ``cap`` pages that read to text
    (``read(page)``: ``read_page`` with the corpus caps)."""
    out: list[dict] = []
    clusters: Counter = Counter()
    for page in sorted(pages, key=lambda p: p.order):
        if len(out) >= cap:
            break
        if clusters[page.cluster] >= per_cluster:
            counts["cluster_capped"] += 1
            continue
        text, enc, why = read(page)
        if text is None:
            counts[why.split(":")[0]] += 1
            continue
        clusters[page.cluster] += 1
        out.append({"id": f"man/{page.rel[:-3] if page.rel.endswith('.gz') else page.rel}", "text": text,
                    "source": str(page.path), "line": None, "section": page.section,
                    "language": page.language, "name": page.name, "encoding": enc, "markup": "troff"})
    return out


def _listing_digest(root: Path, sections: list[int]) -> str:
    """Cheap digest of what could be harvested (names + sizes), so an updated man root is a new step."""
    h = hashlib.sha256()
    english, translated, _ = list_pages(root, sections)
    for group in (english, translated):
        for key in sorted(group):
            for p in sorted(group[key], key=lambda p: p.rel):
                h.update(f"{p.rel}\x00{p.path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def write_parts(out: Path, records: Iterable[dict | str], per_file: int) -> list[str]:
    """JSONL parts part-00000.jsonl ... of ``per_file`` records each (a record, or its JSON line)."""
    paths, fh, n = [], None, 0
    for rec in records:
        if fh is None or n >= per_file:
            if fh:
                fh.close()
            path = out / f"part-{len(paths):05d}.jsonl"
            paths.append(str(path))
            fh, n = open(path, "w", encoding="utf-8"), 0
        fh.write((rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=False)) + "\n")
        n += 1
    if fh:
        fh.close()
    return paths


def _finish(tmp: Path, records: list[dict], rejects: list[dict], stats: dict, per_file: int) -> None:
    write_parts(tmp, records, per_file)
    with open(tmp / "quarantine.jsonl", "w", encoding="utf-8") as fh:
        for r in rejects:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))


def _result(path: Path) -> dict[str, Any]:
    stats = json.loads((path / "stats.json").read_text())
    return {"raw_dir": str(path), "kind": stats["kind"], "records": stats["records"],
            "quarantine": str(path / "quarantine.jsonl"), "stats": str(path / "stats.json")}


_CAPS = ("max_record_bytes", "max_file_bytes", "read_timeout_s", "max_decompressed_bytes", "max_compression_ratio")
"""``corpus`` fields that bound what one input file may cost (part of every raw step's fingerprint)."""


def _pages(root: Path, c, counts: Counter, english: dict, translated: dict) -> tuple[list[dict], dict[str, int]]:
    """(the selected pages' records, pages per section/language folder); ``c``: ``CorpusConfig``."""
    read = functools.partial(read_page, limits=readers.limits_of(c), roots=(os.path.realpath(root),),
                             max_bytes=c.max_record_bytes)
    records: list[dict] = []
    per_group: dict[str, int] = {}
    for section in sorted(english, key=lambda s: (len(s), s)):
        got = select(english[section], c.max_docs_per_section, c.max_docs_per_cluster, counts, read)
        per_group[f"{ENGLISH}/man{section}"] = len(got)
        records.extend(got)
        log.info("harvest: man%s: %d of %d pages", section, len(got), len(english[section]))
    for lang in sorted(translated):
        got = select(translated[lang], c.max_docs_per_language, c.max_docs_per_cluster, counts, read)
        per_group[lang] = len(got)
        records.extend(got)
    log.info("harvest: %d translated pages in %d language folders", sum(per_group[k] for k in translated),
             len(translated))
    records.sort(key=lambda r: r["id"])
    return records, per_group


def harvest_man(cfg: PipelineConfig) -> dict[str, Any]:
    """Harvest the man corpus (or the pydocs fallback); returns raw_dir, kind ('man' or 'pydocs'), records."""
    c = cfg.corpus
    root = Path(c.man_root)
    if not root.is_dir():
        log.warning("harvest: man root %s does not exist; falling back to Python stdlib docstrings", root)
        return harvest_pydocs(cfg, reason=f"man root {root} missing")
    fields = {k: getattr(c, k) for k in ("man_root", "sections", "max_docs_per_section", "max_docs_per_language",
                                         "max_docs_per_cluster", "min_pages", *_CAPS)}
    fields["docs_per_file"] = cfg.curate.docs_per_file  # the parts are curate's shards
    fp = lineage.fingerprint("harvest", HARVEST_VERSION, fields, _listing_digest(root, c.sections))
    step = lineage.StepDir(cfg.run_path / "raw", "harvest", fp)
    if step.done():
        stats = json.loads((step.path / "stats.json").read_text())
        if stats["kind"] == "man":
            log.info("harvest: reusing %s", step.path)
            return _result(step.path)
        log.warning("harvest: falling back to Python stdlib docstrings: %s under %s",
                    stats.get("fallback_reason", "too few man pages"), root)
        return harvest_pydocs(cfg, reason=stats.get("fallback_reason", "too few pages"))
    t0 = time.perf_counter()
    english, translated, counts = list_pages(root, c.sections)
    records, per_group = _pages(root, c, counts, english, translated)
    stats = {"kind": "man", "records": len(records), "per_group": per_group, "counts": dict(counts),
             "seconds": round(time.perf_counter() - t0, 2),
             "latin1_pages": sum(r["encoding"] == "latin-1" for r in records)}
    if len(records) < c.min_pages:
        log.warning("harvest: only %d man pages under %s (< corpus.min_pages=%d); falling back to Python "
                    "stdlib docstrings", len(records), root, c.min_pages)
        stats["fallback_reason"] = f"{len(records)} man pages < corpus.min_pages={c.min_pages}"
        with step.building(config=fields) as tmp:
            _finish(tmp, [], [], stats, cfg.curate.docs_per_file)
        return harvest_pydocs(cfg, reason=stats["fallback_reason"])
    with step.building(config=fields, inputs={"man_root": str(root)}) as tmp:
        _finish(tmp, records, [], stats, cfg.curate.docs_per_file)
    log.info("harvest: %d pages in %.1f s -> %s", len(records), stats["seconds"], step.path)
    return _result(step.path)


# --- fallback: stdlib docstrings -------------------------------------------------------------------------------

# Pure-Python or C modules whose import has no side effects (no GUI, no network, no printing).
PYDOC_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmath", "codecs", "collections",
    "colorsys", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "dis", "email", "enum", "filecmp", "fnmatch", "fractions", "functools", "glob",
    "gzip", "hashlib", "heapq", "hmac", "html", "http", "http.client", "importlib", "inspect", "io",
    "ipaddress", "itertools", "json", "keyword", "linecache", "locale", "logging", "lzma", "math",
    "mimetypes", "numbers", "operator", "os", "pathlib", "pickle", "pkgutil", "platform", "pprint", "queue",
    "random", "re", "sched", "secrets", "selectors", "shlex", "shutil", "signal", "socket", "sqlite3",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time",
    "timeit", "tokenize", "traceback", "types", "typing", "unicodedata", "unittest", "urllib",
    "urllib.parse", "urllib.request", "uuid", "warnings", "weakref", "xml.dom", "xml.etree.ElementTree",
    "zipfile", "zlib",
)


def pydoc_records(modules: tuple[str, ...] = PYDOC_MODULES) -> list[dict]:
    """One record per module/class/function docstring (inspect.getdoc) of the listed modules."""
    records, seen = [], set()
    for modname in modules:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(modname)
        except Exception as e:  # noqa: BLE001 - a platform without the module simply contributes nothing
            log.warning("harvest(pydocs): cannot import %s: %s", modname, e)
            continue
        package = modname.split(".")[0]
        items = [(modname, mod)] + [
            (f"{modname}.{n}", obj) for n, obj in sorted(vars(mod).items())
            if not n.startswith("_") and (inspect.isclass(obj) or inspect.isroutine(obj))
            and (getattr(obj, "__module__", None) or "").split(".")[0] in (package, f"_{package}")
        ]
        for qual, obj in items:
            with warnings.catch_warnings():  # typing.io & co. warn when their __doc__ is read
                warnings.simplefilter("ignore")
                doc = inspect.getdoc(obj)
            if not doc or id(obj) in seen:
                continue
            seen.add(id(obj))
            records.append({"id": f"py/{qual}", "text": doc, "source": f"python:{qual}", "line": None,
                            "section": None, "language": ENGLISH, "package": package, "encoding": "utf-8"})
    records.sort(key=lambda r: r["id"])
    return records


def _pydoc_records_fresh() -> list[dict]:
    """``pydoc_records()`` in a fresh interpreter: what a module exposes depends on what else was imported (lazy
    ``concurrent.futures`` attributes, libraries that wrap ``inspect`` functions), and the corpus must not."""
    import subprocess
    import sys

    code = "import json, sys; from modpipe.curate.harvest import pydoc_records; json.dump(pydoc_records(), sys.stdout)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout)


def harvest_pydocs(cfg: PipelineConfig, reason: str = "") -> dict[str, Any]:
    import sys

    fp = lineage.fingerprint("pydocs", HARVEST_VERSION, sys.version, PYDOC_MODULES, cfg.curate.docs_per_file)
    step = lineage.StepDir(cfg.run_path / "raw", "pydocs", fp)
    if not step.done():
        t0 = time.perf_counter()
        records = _pydoc_records_fresh()
        stats = {"kind": "pydocs", "records": len(records), "fallback_reason": reason,
                 "per_group": dict(Counter(r["package"] for r in records)),
                 "seconds": round(time.perf_counter() - t0, 2)}
        with step.building(config={"modules": PYDOC_MODULES}) as tmp:
            _finish(tmp, records, [], stats, cfg.curate.docs_per_file)
        # (the callers warn when this is a fallback for the man pages; the py_package task always reads it)
        log.info("harvest: %d stdlib docstrings (%s)", len(records), reason)
    return _result(step.path)


# --- user files ------------------------------------------------------------------------------------------------


class Quarantine:
    """Rejected files/records streamed to a ``quarantine.jsonl`` as they come, counted by reason; names that are
    not text (undecodable bytes) are written backslash-escaped."""

    def __init__(self, path: Path):
        self._fh = open(path, "w", encoding="utf-8", errors="backslashreplace")
        self.by_reason: Counter = Counter()

    def add(self, row: dict) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.by_reason[row["reason"]] += 1

    def close(self) -> None:
        self._fh.close()


def _digests(files: list, limits: guard.Limits) -> tuple[list, list[tuple[str, str, str]], list[dict]]:
    """(files whose bytes could be read, their (url, rel, sha256), rejects of the others: refused or unreadable)."""
    kept, digests, rejects = [], [], []
    for f in files:
        try:
            digests.append((f.url, f.rel, readers.file_digest(f, limits)))
            kept.append(f)
        except guard.Refused as e:
            rejects.append(readers.reject(f.url, None, e.reason, e.detail))
        except Exception as e:  # noqa: BLE001 - one file's failure never stops the others
            rejects.append(readers.reject(f.url, None, "unreadable_file", f"{type(e).__name__}: {e}"))
    summary = readers.RejectLog()
    for r in rejects:
        summary.add(r)
    summary.flush()
    return kept, digests, rejects


def _ingest_row(row: dict, seen: set, q: Quarantine, warn: readers.RejectLog) -> str | None:
    """A reader's row -> its raw JSON line, or None when it is quarantined (a reject, a duplicate id, a record
    that cannot be written as UTF-8 JSON)."""
    if readers.is_reject(row):
        q.add(row)
        return None
    bad = None
    if row["id"] in seen:
        bad = readers.reject(row["source"], row["line"], "duplicate_id", f"id {row['id']!r}")
    else:
        row.setdefault("section", None)
        row.setdefault("language", None)
        try:
            line = json.dumps(row, ensure_ascii=False)
            line.encode("utf-8")
        except Exception as e:  # noqa: BLE001 - one record never stops the stage
            bad = readers.reject(row["source"], row["line"], "record_error", f"{type(e).__name__}: {e}")
    if bad is not None:
        q.add(bad)
        warn.add(bad)
        return None
    seen.add(row["id"])
    return line


def _ingest_lines(files: list, fields: dict, limits: guard.Limits, q: Quarantine, counts: Counter) -> Iterable[str]:
    """Every good record of the files as a raw JSON line (only the ids are held in memory)."""
    seen: set = set()
    for k, f in enumerate(files):
        n, warn = 0, readers.RejectLog()
        for row in readers.read_input(f, fields["text_field"], fields["id_field"], fields["max_record_bytes"],
                                      limits=limits, extra_fields=tuple(fields.get("extra_fields", ()))):
            line = _ingest_row(row, seen, q, warn)
            if line is not None:
                n += 1
                yield line
        warn.flush()
        counts["records"] += n
        log.info("ingest: [%d/%d] %s: %d records", k + 1, len(files), f.url, n)


def ingest_files(cfg: PipelineConfig) -> dict[str, Any]:
    """``corpus.source = files``: read the user's files (read-only, through ``guard``) into raw JSONL +
    quarantine."""
    c = cfg.corpus
    if not c.paths:
        log.warning("ingest: corpus.source=files but corpus.paths is empty")
    return ingest_paths(cfg, "files", c.paths, {"text_field": c.text_field, "id_field": c.id_field})


def ingest_task(cfg: PipelineConfig, spec) -> dict[str, Any]:
    """A ``source: files`` task's file(s) (``TaskSpec``) into a raw step dir of its own, the same way as the
    corpus: its label, split and slice columns kept beside the text."""
    extra = [f for f in (spec.label_field, spec.split_field, *spec.slice_fields) if f]
    return ingest_paths(cfg, f"task-{spec.name}", [spec.path],
                        {"text_field": spec.text_field, "id_field": spec.id_field, "extra_fields": extra})


def ingest_paths(cfg: PipelineConfig, name: str, paths: list[str], read: dict) -> dict[str, Any]:
    """Files under ``paths`` -> ``<run_dir>/raw/<name>-<fingerprint>`` (raw JSONL parts + quarantine.jsonl +
    stats.json), keyed by every file's sha256; ``read``: text_field, id_field, extra_fields."""
    c = cfg.corpus
    limits = readers.limits_of(c)
    files, rejects = readers.list_inputs(paths, limits)
    files, digests, refused = _digests(files, limits)
    rejects += refused
    fields = {"paths": paths, **read, "docs_per_file": cfg.curate.docs_per_file,
              **{k: getattr(c, k) for k in _CAPS}}
    fp = lineage.fingerprint("files", HARVEST_VERSION, readers.READERS_VERSION, fields, digests,
                             [[r["source"], r["reason"]] for r in rejects])
    step = lineage.StepDir(cfg.run_path / "raw", name, fp)
    if step.done():
        log.info("ingest: reusing %s", step.path)
        return _result(step.path)
    counts: Counter = Counter()
    with step.building(config=fields, inputs={"files": digests}) as tmp:
        q = Quarantine(tmp / "quarantine.jsonl")
        try:
            for r in rejects:
                q.add(r)
            write_parts(tmp, _ingest_lines(files, fields, limits, q, counts), cfg.curate.docs_per_file)
        finally:
            q.close()
        stats = {"kind": "files", "records": counts["records"], "files": len(files),
                 "rejected": sum(q.by_reason.values()), "rejected_by_reason": dict(q.by_reason)}
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    if stats["rejected"]:
        log.warning("ingest: %d record(s)/file(s) quarantined: %s", stats["rejected"], stats["rejected_by_reason"])
    return _result(step.path)


def read_raw(raw_dir: str | Path) -> list[dict]:
    """All records of a raw step dir, in file order."""
    out = []
    for f in sorted(Path(raw_dir).glob("part-*.jsonl")):
        with open(f, encoding="utf-8") as fh:
            out.extend(json.loads(line) for line in fh if line.strip())
    return out
