"""Read each dataset kind of the curate output into a (sampled) pandas DataFrame with its derived columns.

Derived columns exist because GX checks columns, not nested lists or relations between files:

- raw_corpus, curated_docs, task_dataset: ``text_hash``, ``n_chars``, ``language``, ``language_share`` and
  (with the run's tokenizer) ``n_tokens`` -- see ``derive.py``;
- curated_shards: ``n_tokens``, ``min_token_id``, ``max_token_id`` per row of ``input_ids``;
- task_dataset:   ``in_other_split`` (the row's id or normalised-text hash occurs in another split of the same
  task), ``label_matches_id`` (``labels.json[label_id] == label``) and ``label_share``.

Uniqueness, duplicate rate and language mix are judged on what is read: at most ``max_rows`` rows per dataset,
a seeded sample beyond that.  Overlap and label shares are always computed on the full splits.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from modpipe.contracts.derive import add_label_columns, add_text_columns, plain_dtypes, text_hash

log = logging.getLogger("modpipe.contracts")

SPLITS = ("train", "val", "test")
TASK_SUITES = {"classification": "task_dataset", "multilabel": "task_multilabel", "regression": "task_regression"}
"""The suite of a task split, by the task's problem (``problem.json``)."""


@dataclass
class Dataset:
    suite: str
    """Suite name (file stem in the suites dir)."""
    name: str
    """Short data name, e.g. ``tasks/man_section/test``; names the GX asset and the Data Docs page."""
    path: str
    """File or folder the rows came from (named in ContractViolation messages)."""
    df: pd.DataFrame
    rows_total: int
    notes: list[str] = field(default_factory=list)


def _sample(df: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    if len(df) > max_rows:
        df = df.sample(n=max_rows, random_state=seed).sort_index()
    return plain_dtypes(df.reset_index(drop=True))


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


RAW_COLUMNS = ("id", "text", "source", "language")
"""Read from each raw record; ``language`` is the harvest's folder language (None for user files: detected)."""


def read_raw(raw_dir: str | Path, max_rows: int, seed: int, tokenizer=None) -> Dataset:
    """The records of a raw step dir (its ``part-*.jsonl`` files; never its ``quarantine.jsonl``, whose rows are
    the rejects) as one dataset (id uniqueness spans files)."""
    root = Path(raw_dir)
    files = sorted(p for p in root.glob("part-*.jsonl") if p.is_file())
    rows, bad = [], 0
    for f in files:
        with _open_text(f) as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    continue
                if isinstance(rec, dict):
                    rows.append({k: rec.get(k) for k in RAW_COLUMNS})
                else:
                    bad += 1
    df = pd.DataFrame(rows, columns=list(RAW_COLUMNS))
    df = add_text_columns(_sample(df, max_rows, seed), tokenizer=tokenizer)
    ds = Dataset("raw_corpus", "raw_corpus", str(root), df, len(rows))
    if bad:
        ds.notes.append(f"{bad} line(s) are not JSON objects (not validated)")
    log.info("contracts: raw corpus %s: %d records in %d file(s)", root, len(df), len(files))
    return ds


def read_docs(docs_dir: str | Path, max_rows: int, seed: int, tokenizer=None) -> Dataset:
    import pyarrow.parquet as pq

    root = Path(docs_dir)
    files = sorted(root.glob("*.parquet"))
    wanted = ["id", "text", "source", "n_chars", "n_words", "lang"]
    tables = []
    for f in files:
        schema = pq.read_schema(f)
        tables.append(pq.read_table(f, columns=[c for c in wanted if c in schema.names]).to_pandas())
    df = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=wanted)
    log.info("contracts: curated docs %s: %d rows in %d file(s)", root, len(df), len(files))
    sample = add_text_columns(_sample(df, max_rows, seed), tokenizer=tokenizer)
    return Dataset("curated_docs", "curated_docs", str(root), sample, len(df))


def _token_columns(table) -> pd.DataFrame:
    """input_ids (list<int>) -> input_ids, n_tokens, min_token_id, max_token_id; vectorised over the flat values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column("input_ids").combine_chunks()
    if isinstance(col.type, pa.LargeListType):
        col = col.cast(pa.list_(col.type.value_type))
    n = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype("float64")  # NaN where the row is null
    flat = col.flatten().to_numpy(zero_copy_only=False).astype("int64")
    # row i owns flat[offsets[i]:offsets[i+1]] among the non-null rows (null rows have zero length)
    lengths = np.nan_to_num(n, nan=0).astype("int64")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    has = lengths > 0
    mins = np.full(len(col), np.nan)
    maxs = np.full(len(col), np.nan)
    if has.any():
        mins[has] = np.minimum.reduceat(flat, starts[has])
        maxs[has] = np.maximum.reduceat(flat, starts[has])
    df = pd.DataFrame({"input_ids": col.to_pylist(), "n_tokens": n, "min_token_id": mins, "max_token_id": maxs})
    if has.all():  # the usual case: plain ints in reports and Data Docs
        df = df.astype({"n_tokens": "int64", "min_token_id": "int64", "max_token_id": "int64"})
    return df


def read_shards(manifest_path: str | Path, max_rows: int, seed: int) -> Dataset:
    """The shards listed in manifest.json, a seeded sample of rows spread over the shards."""
    import pyarrow.parquet as pq

    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    root = manifest_path.parent
    shards = manifest.get("shards") or []
    total = sum(int(s.get("rows") or 0) for s in shards) or None
    rng = np.random.default_rng(seed)
    frames, rows_total, notes = [], 0, []
    for s in shards:
        path = root / s["path"]
        if not path.is_file():
            notes.append(f"shard listed in the manifest is missing: {path}")
            continue
        table = pq.read_table(path, columns=["input_ids"])
        rows_total += table.num_rows
        share = table.num_rows if total is None else int(np.ceil(max_rows * table.num_rows / total))
        if table.num_rows > share:
            table = table.take(np.sort(rng.choice(table.num_rows, size=share, replace=False)))
        frames.append(_token_columns(table))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["input_ids", "n_tokens", "min_token_id", "max_token_id"])
    if len(shards) == 0:
        notes.append("manifest lists no shards")
    log.info("contracts: shards %s: %d rows in %d shard(s)", root, rows_total, len(shards))
    ds = Dataset("curated_shards", "curated_shards", str(root / "shards"), _sample(df, max_rows, seed), rows_total,
                 notes)
    return ds


def read_task(task_dir: str | Path, max_rows: int, seed: int, tokenizer=None) -> list[Dataset]:
    """One dataset per split of a task, with in_other_split, label_matches_id, label_share and text columns."""
    from modpipe.evaluate.problems import read_problem

    root = Path(task_dir)
    labels_path = root / "labels.json"
    labels = json.loads(labels_path.read_text()) if labels_path.is_file() else None
    try:
        problem = read_problem(root)["problem"]
    except ValueError as err:  # an unreadable problem.json: judged as the classification suite, and said so
        problem, note = "classification", str(err)
    else:
        note = None
    suite = TASK_SUITES[problem]
    frames = {s: pd.read_parquet(root / f"{s}.parquet") for s in SPLITS if (root / f"{s}.parquet").is_file()}
    keys = {s: (set(df["id"].dropna().astype(str)) if "id" in df else set(),
                {h for h in (df["text"].map(text_hash) if "text" in df else []) if h})
            for s, df in frames.items()}
    out = []
    for split, df in frames.items():
        other_ids = set().union(*(keys[o][0] for o in frames if o != split))
        other_hashes = set().union(*(keys[o][1] for o in frames if o != split))
        df = df.copy()
        ids = df["id"].astype(str) if "id" in df else pd.Series([""] * len(df))
        hashes = df["text"].map(text_hash) if "text" in df else pd.Series([None] * len(df))
        df["in_other_split"] = (ids.isin(other_ids) | hashes.isin(other_hashes)).astype(bool).to_numpy()
        df = add_label_columns(df, labels, problem)
        # language: a task's texts may be any language (man_language is about them), so only hash and tokens
        sample = add_text_columns(_sample(df, max_rows, seed), tokenizer=tokenizer, language=False)
        ds = Dataset(suite, f"tasks/{root.name}/{split}", str(root / f"{split}.parquet"), sample, len(df))
        if labels is None:
            ds.notes.append(f"{labels_path} is missing: label_matches_id is False")
        if note:
            ds.notes.append(note)
        out.append(ds)
    missing = [s for s in SPLITS if s not in frames]
    if missing:
        log.warning("contracts: task %s lacks split(s) %s", root.name, missing)
    return out


TABLE_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".csv")


def read_table(path: str | Path, max_rows: int, seed: int) -> tuple[pd.DataFrame, int]:
    """A user's dataset: one file or a folder of ``*.parquet`` / ``*.jsonl[.gz]`` / ``*.csv`` -> (sample, rows)."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(TABLE_SUFFIXES)) \
        if root.is_dir() else [root]
    if not files:
        raise FileNotFoundError(f"{root}: no {', '.join(TABLE_SUFFIXES)} files")
    frames = []
    for f in files:
        if f.name.endswith(".parquet"):
            frames.append(pd.read_parquet(f))
        elif f.name.endswith((".jsonl", ".jsonl.gz")):
            frames.append(pd.read_json(f, lines=True, dtype=False))
        elif f.name.endswith(".csv"):
            frames.append(pd.read_csv(f))
        else:
            raise ValueError(f"{f}: unsupported file type; use one of {', '.join(TABLE_SUFFIXES)}")
    df = pd.concat(frames, ignore_index=True)
    log.info("contracts: %s: %d rows in %d file(s)", root, len(df), len(files))
    return _sample(df, max_rows, seed), len(df)
