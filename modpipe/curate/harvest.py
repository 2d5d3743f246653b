"""Raw corpus steps: each writes JSONL parts (id, text, source, section, language) under ``<run_dir>/raw/``.

- ``harvest_man``: the embedded default corpus, offline from ``corpus.man_root``.  English pages from
  ``manN/`` for ``corpus.sections``, translated pages from ``<lang>/manN/``.  Symlinks (aliases) and ``.so``
  stubs are skipped.  Selection is
  deterministic: pages in order of sha256(relative path), at most ``max_docs_per_cluster`` per command-name
  prefix (man1 holds ~16.6k ``gcloud*`` pages), at most ``max_docs_per_section`` per English section and
  ``max_docs_per_language`` per language folder.  Pages are kept as troff source (records carry
  ``markup: "troff"``): raw/ is the corpus as found, and markup stripping is the ``troff`` normalisation step
  of curate (``curate.normalize``), which a user can turn off.  A missing man root, or fewer than ``corpus.min_pages``
  pages, falls back to ``harvest_pydocs``.
- ``harvest_pydocs``: docstrings of a fixed list of side-effect-free stdlib modules (records carry
  ``package``, the label of the ``py_package`` task).
- ``ingest_files``: ``corpus.source = files``: the user's files (local or fsspec URLs; JSONL plain/.gz/.zst,
  Parquet, .txt) through ``readers``; bad files/lines go to the step's quarantine.jsonl, good records on.

Every step dir holds ``part-NNNNN.jsonl``, ``quarantine.jsonl`` and ``stats.json``.
"""

from __future__ import annotations

import gzip
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
from modpipe.curate import readers

log = logging.getLogger("modpipe.curate")

HARVEST_VERSION = 2
"""Part of every raw step's fingerprint: bump it when the records a harvest writes change for the same input (a
comment or a refactor changes nothing, so it keeps the cache; ``readers.READERS_VERSION`` covers the readers)."""
ENGLISH = "en"


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
                if f.is_symlink():
                    counts["symlink"] += 1
                    continue
                if not f.is_file():
                    continue
                rel = os.path.relpath(f.path, root)
                page = Page(Path(f.path), rel, section, lang, _page_name(f.name))
                (english[section] if lang == ENGLISH else translated[lang]).append(page)
                counts["listed"] += 1
    return english, translated, counts


def read_page(page: Page) -> tuple[str | None, str, str]:
    """(troff source or None, encoding, skip reason): None for .so stubs, unreadable or empty pages."""
    try:
        with open(page.path, "rb") as fh:
            data = fh.read()
        if page.path.name.endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError) as e:
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


def select(pages: list[Page], cap: int, per_cluster: int, counts: Counter) -> list[dict]:
    """Deterministic pick: sha256 order, cluster cap, then the first ``cap`` pages that read to text."""
    out: list[dict] = []
    clusters: Counter = Counter()
    for page in sorted(pages, key=lambda p: p.order):
        if len(out) >= cap:
            break
        if clusters[page.cluster] >= per_cluster:
            counts["cluster_capped"] += 1
            continue
        text, enc, why = read_page(page)
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


def write_parts(out: Path, records: Iterable[dict], per_file: int) -> list[str]:
    """JSONL parts part-00000.jsonl ... of ``per_file`` records each."""
    paths, fh, n = [], None, 0
    for rec in records:
        if fh is None or n >= per_file:
            if fh:
                fh.close()
            path = out / f"part-{len(paths):05d}.jsonl"
            paths.append(str(path))
            fh, n = open(path, "w", encoding="utf-8"), 0
        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
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


def harvest_man(cfg: PipelineConfig) -> dict[str, Any]:
    """Harvest the man corpus (or the pydocs fallback); returns raw_dir, kind ('man' or 'pydocs'), records."""
    c = cfg.corpus
    root = Path(c.man_root)
    if not root.is_dir():
        log.warning("harvest: man root %s does not exist; falling back to Python stdlib docstrings", root)
        return harvest_pydocs(cfg, reason=f"man root {root} missing")
    fields = {k: getattr(c, k) for k in ("man_root", "sections", "max_docs_per_section", "max_docs_per_language",
                                         "max_docs_per_cluster", "min_pages")}
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
    records: list[dict] = []
    per_group: dict[str, int] = {}
    for section in sorted(english, key=lambda s: (len(s), s)):
        got = select(english[section], c.max_docs_per_section, c.max_docs_per_cluster, counts)
        per_group[f"{ENGLISH}/man{section}"] = len(got)
        records.extend(got)
        log.info("harvest: man%s: %d of %d pages", section, len(got), len(english[section]))
    for lang in sorted(translated):
        got = select(translated[lang], c.max_docs_per_language, c.max_docs_per_cluster, counts)
        per_group[lang] = len(got)
        records.extend(got)
    log.info("harvest: %d translated pages in %d language folders", sum(per_group[k] for k in translated),
             len(translated))
    records.sort(key=lambda r: r["id"])
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


def ingest_files(cfg: PipelineConfig) -> dict[str, Any]:
    """``corpus.source = files``: read the user's files (read-only) into raw JSONL + quarantine."""
    c = cfg.corpus
    files, path_rejects = readers.list_inputs(c.paths)
    if not c.paths:
        log.warning("ingest: corpus.source=files but corpus.paths is empty")
    digests = [(f.url, f.rel, readers.file_digest(f)) for f in files]
    fields = {"paths": c.paths, "text_field": c.text_field, "id_field": c.id_field,
              "max_record_bytes": c.max_record_bytes, "docs_per_file": cfg.curate.docs_per_file}
    fp = lineage.fingerprint("files", HARVEST_VERSION, readers.READERS_VERSION, fields, digests,
                             [r["source"] for r in path_rejects])
    step = lineage.StepDir(cfg.run_path / "raw", "files", fp)
    if step.done():
        log.info("ingest: reusing %s", step.path)
        return _result(step.path)
    rejects, seen, n_records = list(path_rejects), set(), 0

    def records():  # streamed into the parts: only the ids are held in memory
        nonlocal n_records
        for k, f in enumerate(files):
            n = 0
            for row in readers.read_input(f, c.text_field, c.id_field, c.max_record_bytes):
                if readers.is_reject(row):
                    rejects.append(row)
                    continue
                if row["id"] in seen:
                    rejects.append(readers.reject(row["source"], row["line"], "duplicate_id", f"id {row['id']!r}"))
                    continue
                seen.add(row["id"])
                row.setdefault("section", None)
                row.setdefault("language", None)
                n += 1
                yield row
            n_records += n
            log.info("ingest: [%d/%d] %s: %d records", k + 1, len(files), f.url, n)

    with step.building(config=fields, inputs={"files": digests}) as tmp:
        write_parts(tmp, records(), cfg.curate.docs_per_file)
        stats = {"kind": "files", "records": n_records, "files": len(files), "rejected": len(rejects),
                 "rejected_by_reason": dict(Counter(r["reason"] for r in rejects))}
        _finish(tmp, [], rejects, stats, cfg.curate.docs_per_file)
    if rejects:
        log.warning("ingest: %d record(s)/file(s) quarantined: %s", len(rejects), stats["rejected_by_reason"])
    return _result(step.path)


def read_raw(raw_dir: str | Path) -> list[dict]:
    """All records of a raw step dir, in file order."""
    out = []
    for f in sorted(Path(raw_dir).glob("part-*.jsonl")):
        with open(f, encoding="utf-8") as fh:
            out.extend(json.loads(line) for line in fh if line.strip())
    return out
