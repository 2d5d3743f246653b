"""Derived columns: what a suite needs but GX cannot compute from a plain column (GX checks one column at a
time, not hashes, language, tokens or shares of a group).

=================  ==========================================================================================
column             meaning
=================  ==========================================================================================
``text_hash``      sha256 of whitespace-normalised, lower-cased text; its unique share = 1 - duplicate rate
``n_chars``        characters of ``text`` (added when absent)
``language``       ISO 639-1 code; kept when the data carries it (``language`` or curate's ``lang``), else
                   py3langid on the first 2,000 chars
``language_share`` share of the rows that have this row's language (its max is the top language's share)
``n_tokens``       tokens of ``text`` under the run's tokenizer (only when a tokenizer is given)
``label_share``    share of the rows that have this row's label (its min/max are the class-balance bounds)
=================  ==========================================================================================
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger("modpipe.contracts")

LANGID_CHARS = 2000
"""py3langid reads this many leading characters: ~0.6 ms a document, and the verdict is stable by then."""


def plain_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """pyarrow-backed numeric columns -> numpy dtypes, so GX type expectations see ``int64``, not ``int``."""
    out = {}
    for col, dtype in df.dtypes.items():
        if isinstance(dtype, pd.ArrowDtype) and dtype.numpy_dtype.kind in "iufb" and not df[col].isna().any():
            out[col] = dtype.numpy_dtype
    return df.astype(out) if out else df


def text_hash(text: object) -> str | None:
    """sha256 of whitespace-normalised, lower-cased text (what counts as 'the same text' across rows/splits)."""
    if not isinstance(text, str):
        return None
    return hashlib.sha256(" ".join(text.split()).lower().encode("utf-8")).hexdigest()


def share_of_group(values: pd.Series) -> pd.Series:
    """Per row: the fraction of non-null rows whose value equals this row's (NaN where the value is null)."""
    counts = values.value_counts(dropna=True)
    total = counts.sum()
    return values.map(counts / total if total else counts).astype("float64")


def detect_language(texts: pd.Series) -> pd.Series:
    import py3langid  # ships its model; nothing is downloaded

    return texts.map(lambda t: py3langid.classify(t[:LANGID_CHARS])[0] if isinstance(t, str) and t.strip() else None)


def load_tokenizer(path: str | Path | None):
    """The run's HF tokenizers JSON (plain JSON, no pickle), or None when absent."""
    if path is None or not Path(path).is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def count_tokens(texts: pd.Series, tokenizer) -> pd.Series:
    """Tokens per text, encoded in batches by the Rust tokenizer (``encode_batch_fast`` skips offsets)."""
    idx = [i for i, t in enumerate(texts.tolist()) if isinstance(t, str)]
    counts = pd.Series([pd.NA] * len(texts), index=texts.index, dtype="Int64")
    batch = 512
    for start in range(0, len(idx), batch):
        chunk = idx[start:start + batch]
        enc = tokenizer.encode_batch_fast([texts.iloc[i] for i in chunk], add_special_tokens=False)
        counts.iloc[chunk] = [len(e.ids) for e in enc]
    return counts.astype("int64") if not counts.isna().any() else counts.astype("float64")


def add_text_columns(df: pd.DataFrame, *, tokenizer=None, language: bool = True) -> pd.DataFrame:
    """text_hash, n_chars, language (+ language_share) and, with a tokenizer, n_tokens; ``df`` is not changed."""
    if "text" not in df.columns:
        return df
    df = df.copy()
    df["text_hash"] = df["text"].map(text_hash)
    if "n_chars" not in df.columns:
        df["n_chars"] = df["text"].map(lambda t: len(t) if isinstance(t, str) else None)
    if language:
        if ("language" not in df.columns or df["language"].isna().all()) and "lang" in df.columns:
            df["language"] = df["lang"]  # curate's language-ID step already labelled the docs
        if "language" not in df.columns or df["language"].isna().all():
            df["language"] = detect_language(df["text"])
        df["language_share"] = share_of_group(df["language"])
    if tokenizer is not None:
        df["n_tokens"] = count_tokens(df["text"], tokenizer)
    return df


def add_label_columns(df: pd.DataFrame, labels: list[str] | None, problem: str = "classification") -> pd.DataFrame:
    """Classification: label_share and label_matches_id (``labels[label_id] == label``; False without
    labels.json). Multilabel: label_ids_valid, n_labels, rarest_label_share. Regression: target_finite."""
    import numpy as np

    if problem == "multilabel":
        return _multilabel_columns(df, labels)
    if problem == "regression":
        df = df.copy()
        target = pd.to_numeric(df["target"], errors="coerce") if "target" in df else pd.Series(np.nan, df.index)
        df["target_finite"] = np.isfinite(target.to_numpy(dtype=float))
        return df
    df = df.copy()
    if "label" in df.columns:
        df["label_share"] = share_of_group(df["label"])
    if labels is not None and {"label", "label_id"} <= set(df.columns):
        df["label_matches_id"] = [
            isinstance(i, (int, np.integer)) and 0 <= i < len(labels) and labels[i] == lab
            for i, lab in zip(df["label_id"].tolist(), df["label"].tolist())
        ]
    else:
        df["label_matches_id"] = False
    return df


def _multilabel_columns(df: pd.DataFrame, labels: list[str] | None) -> pd.DataFrame:
    import numpy as np

    df = df.copy()
    sets = [list(x) if isinstance(x, (list, tuple, np.ndarray)) else None for x in
            (df["label_ids"] if "label_ids" in df else [None] * len(df))]
    names = df["label"].tolist() if "label" in df else [None] * len(df)
    k = len(labels or [])
    df["label_ids_valid"] = [
        ids is not None and all(isinstance(i, (int, np.integer)) and 0 <= i < k for i in ids)
        and "|".join(labels[int(i)] for i in ids) == (name or "")
        for ids, name in zip(sets, names)]
    df["n_labels"] = [len(ids) if ids is not None else 0 for ids in sets]
    counts: dict[int, int] = {}
    for ids in sets:
        for i in ids or []:
            counts[int(i)] = counts.get(int(i), 0) + 1
    n = max(1, len(df))
    df["rarest_label_share"] = [min((counts[int(i)] / n for i in ids), default=1.0) if ids else 1.0 for ids in sets]
    return df
