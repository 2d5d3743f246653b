"""Config sections of the curate stage's per-document steps: dedup, quality filters, language, PII, decontamination.

Plain data: no curate code is imported here (``curate.normalize`` checks that its registry matches
``NORMALIZE_STEPS``)."""

from __future__ import annotations

from pydantic import field_validator

from modpipe.config_base import _Section, unversioned

NORMALIZE_STEPS = ("troff", "nfc", "control_chars", "whitespace")
"""The normalisation steps of ``curate.normalize`` by name (``modpipe.curate.normalize.STEPS``)."""


class MinHashConfig(_Section):
    """MinHash-LSH near-dedup (``curate.dedup``): global over all shards, one representative (smallest id) kept
    per cluster.  5-word shingles as datatrove; 20 bands x 8 rows (datatrove: 14 x 8) for more recall at the
    same cost per band, the extra false candidates being removed by verification."""

    enabled: bool = True
    ngram_size: int = 5
    """Words per shingle (lower-cased regex words)."""
    bands: int = 20
    rows: int = 8
    """Signature values per band; ``bands * rows`` permutations in all.  A pair with Jaccard s becomes a
    candidate with probability 1 - (1 - s^rows)^bands (20 x 8: 0.975 at s = 0.8, 0.998 at s = 0.85, 0.70 at
    s = 0.7; datatrove's 14 x 8: 0.92, 0.99, 0.56)."""
    threshold: float = 0.6
    """Candidates are merged only when their estimated Jaccard (share of equal signature values) reaches this.
    The banding decides what is near (the 20 x 8 curve's midpoint is (1/20)^(1/8) = 0.69); verification removes
    the candidates it let through by chance (true Jaccard < 0.5: estimated >= 0.6 with odds < 1%).  Measured on
    400 planted copies of man pages (3-5 words edited) among 3,858 pages: recall 0.978-0.983 at 0.6, 0.973-0.980
    at 0.7, 0.980-0.985 unverified (datatrove's way) and 0.958-0.968 for datatrove's 14 x 8 unverified; the
    unverified runs remove ~25 more documents that are not planted copies."""
    seed: int = 1
    """Seed of the permutation parameters: the same on every worker and every run."""
    max_heads_per_bucket: int = 16
    """Verification rounds per bucket (each compares the first unmatched member with the rest at once)."""

    @field_validator("ngram_size", "bands", "rows", "max_heads_per_bucket")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("threshold")
    @classmethod
    def _unit(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError("must be in (0, 1]")
        return v


class GopherConfig(_Section):
    """Gopher quality rules (Rae et al. 2021, table A1), tuned for manual pages (``None`` turns a rule off).

    The word-count lower bound and the hash/ellipsis-to-word ratio are ``curate.min_words`` and
    ``curate.max_symbol_word_ratio``.  Web-tuned thresholds reject most man pages (datatrove's defaults keep
    9.7%): option lists are short lines of flags and paths, so the mean word length, the alphabetic-word share and
    the English stop-word rule are set where normal pages (English and the ~20 translated languages) pass and
    junk (number tables, hash/ellipsis spam, one-letter noise) does not."""

    max_words: int | None = 100_000
    min_mean_word_len: float | None = 2.5
    max_mean_word_len: float | None = 12.0
    """Mean length of the non-CJK words (CJK characters count as one-character words and are left out); Gopher's
    3..10 drops Korean pages (~2.9: short Hangul words) and API pages of long identifiers (~10.4)."""
    max_bullet_line_frac: float | None = 0.9
    """Lines starting with a bullet (``•``, ``-``, ``*`` ... followed by a blank; an option like ``-a`` is not one)."""
    max_ellipsis_line_frac: float | None = 0.3
    min_alpha_word_frac: float | None = 0.5
    """Words holding at least one letter (Gopher: 0.8; man pages of tables, e.g. ascii(7), hold ~0.55)."""
    min_stop_words: int | None = 2
    """Distinct stop words a document must hold (Gopher: 2; drops ~0.2% of English pages, all stubs of a few
    lines); applied only to documents whose detected language is in ``stop_words_languages`` (to all documents
    when language ID is off)."""
    stop_words: list[str] = ["the", "be", "to", "of", "and", "that", "have", "with"]
    stop_words_languages: list[str] = ["en"]


class RepetitionConfig(_Section):
    """Gopher repetition rules (table A1).  Fractions of a document's lines/paragraphs (by count and by
    characters) that repeat an earlier one, of its word characters covered by the most frequent n-gram
    (``top_ngram_fracs``, n -> max) and by repeated n-grams (``dup_ngram_fracs``)."""

    enabled: bool = True
    max_dup_line_frac: float | None = 0.5
    max_dup_para_frac: float | None = 0.5
    max_dup_line_char_frac: float | None = 0.4
    max_dup_para_char_frac: float | None = 0.5
    top_ngram_fracs: dict[int, float] = {2: 0.3, 3: 0.3, 4: 0.3}
    dup_ngram_fracs: dict[int, float] = {5: 0.55, 6: 0.53, 7: 0.51, 8: 0.49, 9: 0.47, 10: 0.45}
    """Gopher's web thresholds (lines 0.3, paragraphs 0.3, line/paragraph characters 0.2, top n-grams
    0.2/0.18/0.16, repeated n-grams 0.15..0.10) reject ~12% of normal man pages: option descriptions repeat
    phrases ("If this option is given ..."), the troff stripper leaves one-word lines (``oldpath``), translated
    pages repeat their headings.  These sit just above the largest values measured on ~2.3k non-templated pages
    (repeated 5-grams at most 0.50, top 3-gram 0.36, repeated lines 0.63) and far below spam (a repeated line or
    phrase scores ~1.0)."""


class LanguageConfig(_Section):
    """Language ID with py3langid (offline; its model ships in the wheel).  Adds ``lang`` and ``lang_score`` to
    every document.  Default: every language allowed, nothing removed: the man-page corpus holds ~1.3k
    translated pages in ~25 languages that a downstream task classifies."""

    enabled: bool = True
    allowed: list[str] | None = None
    """ISO 639-1 codes to keep (e.g. ``[en, de, fr]``); ``None``: all."""
    min_confidence: float = 0.0
    """Documents whose top language scores below this (normalised probability) are removed."""
    max_chars: int = 1000
    """Characters classified per document (its start; py3langid walks it byte by byte in Python, ~0.4 ms a
    page at 1000): on the man pages 2000 or 3000 characters change the answer for under 0.5% of them."""


class PiiConfig(_Section):
    """PII scrubbing: matches become ``<EMAIL>``, ``<IP>``, ``<PHONE>``; counts per type are reported."""

    enabled: bool = True
    emails: bool = True
    ips: bool = True
    only_public_ips: bool = True
    """As datatrove: private, loopback, link-local and documentation addresses (10/8, 127/8, 192.168/16,
    192.0.2/24, 2001:db8::/32, ...) are not personal data and stay (man pages are full of them)."""
    phones: bool = True


class DecontamConfig(_Section):
    """N-gram decontamination against every task's ``curate.decontaminate_splits`` (plus the exact id / text
    hash / truncated-prefix matches, always on)."""

    ngram: bool = True
    n: int = 13
    """Words per n-gram (lower-cased regex words): a document sharing one with a val/test example is removed."""
    max_example_freq: int = 1
    """N-grams found in more than this many distinct task examples (every split, train included) are text that
    pages share (ATTRIBUTES boilerplate, licence footers, templated flags, untranslated paragraphs of translated
    pages), not text specific to one held-out example, and are ignored.  On the default man harvest (2,986 docs,
    870 of them held-out examples, removed exactly) 1 removes 219 further documents that share a 13-gram with a
    held-out example; counting every shared 13-gram would remove 1,286 (43% of the corpus)."""

    @field_validator("n", "max_example_freq")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class CurateConfig(_Section):
    min_chars: int = 200
    max_chars: int = 100_000
    min_words: int = 30
    min_alpha_frac: float = 0.55
    """Fraction of non-space characters that are letters."""
    max_symbol_word_ratio: float = 0.2
    """Gopher: hash symbols (and, separately, ellipses) per word (see ``symbols``)."""
    minhash: MinHashConfig = MinHashConfig()
    gopher: GopherConfig = GopherConfig()
    repetition: RepetitionConfig = RepetitionConfig()
    language: LanguageConfig = LanguageConfig()
    pii: PiiConfig = PiiConfig()
    decontam: DecontamConfig = DecontamConfig()
    vocab_size: int = 4096
    seq_len: int = 128
    rows_per_shard: int = 4096
    parallelism: int = unversioned(2)
    """Ray Data workers (concurrent tasks) of every per-shard pass: read+normalize, filter, encode+pack."""
    normalize: list[str] = ["troff", "nfc", "control_chars", "whitespace"]
    """Normalisation steps by name, in order (``curate.normalize`` module): troff (markup stripping, records marked
    ``markup: troff`` only), nfc, control_chars, whitespace.  Leave one out to turn it off."""
    rows_per_row_group: int = 1024
    """Rows per Parquet row group of the token shards (the unit a reader fetches)."""
    encode_batch_size: int = unversioned(512)
    """Documents per ``tokenizers`` ``encode_batch`` call (the token ids do not depend on it)."""
    symbols: list[str] = ["#", "...", "\u2026"]
    """Symbols counted by the symbol/word-ratio filter (Gopher: hash and ellipsis)."""
    decontaminate_splits: list[str] = ["val", "test"]
    """Task splits whose examples (by id and by normalised-text hash, whole or truncated) are removed
    from the pretraining text."""
    tokenizer_min_frequency: int = 2
    """BPE merges need at least this many occurrences."""
    docs_per_file: int = 500
    """Records per raw JSONL part: one part is one shard of curation (docs/, quarantine and token shards are
    written, and resumed, part by part; several shards per Ray Data worker balance the passes)."""

    @field_validator("normalize")
    @classmethod
    def _normalize_steps(cls, v: list[str]) -> list[str]:
        unknown = [n for n in v if n not in NORMALIZE_STEPS]
        if unknown:
            raise ValueError(f"unknown normalize step(s) {unknown}; valid: {sorted(NORMALIZE_STEPS)}")
        return list(v)

    @field_validator("parallelism", "rows_per_row_group", "encode_batch_size", "docs_per_file", "rows_per_shard")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v
