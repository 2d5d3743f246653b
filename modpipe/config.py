"""One typed config for the whole pipeline.

The default ships inside the package (``modpipe/defaults.yaml``); a user YAML is merged over it and
``--set a.b=c`` overrides are applied last.  Every section belongs to one stage; a stage's fingerprint
hashes only the fields of its own section plus its upstream fingerprints (see ``lineage.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modpipe.paths import REPO_ROOT

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")


class ConfigError(ValueError):
    """A config that does not validate; the message names the offending field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorpusConfig(_Section):
    """Where raw text comes from."""

    source: Literal["man", "files"] = "man"
    """`man`: harvest /usr/share/man (falls back to Python docs when absent); `files`: user-given paths."""
    man_root: str = "/usr/share/man"
    sections: list[int] = [1, 2, 3, 4, 5, 6, 7, 8]
    max_docs_per_section: int = 400
    """Cap per English section; man1 is dominated by near-identical generated pages."""
    max_docs_per_language: int = 120
    """Cap per translated-language folder."""
    min_docs_per_language: int = 20
    """Language folders with fewer pages are not used as task classes (still pretraining text)."""
    max_docs_per_cluster: int = 20
    """Cap per templated cluster (pages sharing a command-name prefix, e.g. the ~16.6k ``gcloud*`` pages of man1)
    inside one section or language folder."""
    min_pages: int = 50
    """A man harvest with fewer pages (or a missing man_root) falls back to Python stdlib docstrings."""
    paths: list[str] = []
    """For source=files: files or folders (local paths or fsspec URLs such as ``file://``, ``memory://``,
    ``s3://``) of .jsonl / .jsonl.gz / .jsonl.zst / .parquet (one record a line/row) and .txt (one record a
    file) files."""
    text_field: str = "text"
    id_field: str | None = "id"
    """Field/column holding the document id; records without one get a stable hash of (path relative to the
    configured root, line/row)."""
    max_record_bytes: int = 8_000_000
    """A longer line / text / row is quarantined (``record_too_large``) without being held in memory."""


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
    parallelism: int = 2
    """Ray Data workers (concurrent tasks) of every per-shard pass: read+normalize, filter, encode+pack."""
    normalize: list[str] = ["troff", "nfc", "control_chars", "whitespace"]
    """Normalisation steps by name, in order (``curate.normalize`` module): troff (markup stripping, records marked
    ``markup: troff`` only), nfc, control_chars, whitespace.  Leave one out to turn it off."""
    rows_per_row_group: int = 1024
    """Rows per Parquet row group of the token shards (the unit a reader fetches)."""
    encode_batch_size: int = 512
    """Documents per ``tokenizers`` ``encode_batch`` call."""
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
        from modpipe.curate.normalize import check_steps

        return check_steps(v)

    @field_validator("parallelism", "rows_per_row_group", "encode_batch_size", "docs_per_file", "rows_per_shard")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class TaskSpec(_Section):
    name: str
    kind: Literal["man_section", "man_language", "py_package"]
    """man_section: English page -> its section; man_language: translated page -> its language folder;
    py_package: stdlib docstring -> its top-level package (always from the stdlib docstrings, a second source of
    text beside the manual pages)."""
    max_chars: int = 2000
    """Each example is truncated to this many characters before tokenization."""


class TasksConfig(_Section):
    specs: list[TaskSpec] = [
        TaskSpec(name="man_section", kind="man_section"),
        TaskSpec(name="man_language", kind="man_language"),
        TaskSpec(name="py_package", kind="py_package"),
    ]
    val_frac: float = 0.1
    test_frac: float = 0.2
    min_examples_per_label: int = 20
    """Labels with fewer (deduplicated) examples are dropped (man_language uses corpus.min_docs_per_language)."""
    min_chars: int = 100
    """Examples shorter than this after normalisation are dropped."""

    @field_validator("test_frac", "val_frac")
    @classmethod
    def _frac(cls, v: float) -> float:
        if not 0.0 < v < 0.5:
            raise ValueError("must be in (0, 0.5)")
        return v


class ContractsConfig(_Section):
    """Great Expectations suites checked on the raw corpus, curated docs, token shards and task splits."""

    suites_dir: str = str(REPO_ROOT / "data_contracts")
    """One GX ExpectationSuite JSON per dataset kind (see data_contracts/README.md)."""
    enabled: bool = True
    max_rows: int = 20_000
    """Rows validated per dataset; larger datasets are sampled (seeded by ``seed``)."""
    # Bounds the bundled suites read as $PARAMETER contracts_<field>; each suite sets the severity.
    max_duplicate_rate: float = 0.01
    """Curated docs and task splits: share of rows whose normalised text repeats another row's."""
    raw_max_duplicate_rate: float = 0.3
    """Raw corpus (before dedup): the same, reported as a warning."""
    min_top_language_share: float = 0.1
    """Share of the most frequent language (raw: harvest ``language`` column; docs: py3langid)."""
    max_languages: int = 40
    """Distinct languages a corpus may hold before it is reported."""
    min_doc_tokens: int = 16
    max_doc_tokens: int = 200_000
    """Tokens per curated document under the curate tokenizer."""
    min_example_tokens: int = 4
    max_example_tokens: int = 4096
    """Tokens per task example under the curate tokenizer."""
    min_label_share: float = 0.005
    max_label_share: float = 0.8
    """Share of a split's rows that carry one label (class balance bounds)."""

    @field_validator("max_rows", "max_languages", "min_doc_tokens", "max_doc_tokens", "max_example_tokens")
    @classmethod
    def _rows(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("max_duplicate_rate", "raw_max_duplicate_rate", "min_top_language_share", "min_label_share",
                     "max_label_share")
    @classmethod
    def _share(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be in [0, 1]")
        return v


class ModelConfig(_Section):
    """A transformers Llama-style decoder; the tiny default trains on CPU in a few minutes."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 512


class PretrainConfig(_Section):
    """DeepSpeed ZeRO data-parallel pretraining run by Ray Train (one worker per GPU, or per CPU slot)."""

    steps: int = 600
    """Optimizer steps."""
    micro_batch_size: int = 16
    """Sequences per worker per micro-step (DeepSpeed train_micro_batch_size_per_gpu)."""
    gradient_accumulation_steps: int = 1
    """Micro-steps per optimizer step; global batch = micro_batch_size * this * num_workers."""
    lr: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.1
    """Applied to >= 2-D weights only (matmuls, embeddings); norms and biases get none."""
    num_workers: int = 2
    use_gpu: bool = False
    """GPU workers: nccl process group, bf16 on; CPU workers: gloo, fp32, torch AdamW."""
    zero_stage: int = 2
    """Overrides zero_optimization.stage of the DeepSpeed JSON (0-3)."""
    deepspeed_config: str = str(REPO_ROOT / "infra" / "deepspeed" / "zero2.json")
    """DeepSpeed JSON; batch sizes, lr, schedule length, stage and bf16 are filled in from this section."""
    checkpoint_every: int = 40
    """Steps between checkpoints reported to Ray Train (a rerun resumes from the latest)."""
    keep_checkpoints: int = 2
    """Checkpoints Ray Train keeps under <run_dir>/pretrain/ray."""
    max_failures: int = 0
    """Worker-group restarts Ray Train attempts (each resumes from the latest checkpoint)."""
    log_every: int = 10
    peak_tflops: float = 989.0
    """Per-GPU dense bf16 peak used for MFU (H100 SXM)."""

    @field_validator("zero_stage")
    @classmethod
    def _stage(cls, v: int) -> int:
        if v not in (0, 1, 2, 3):
            raise ValueError("must be 0, 1, 2 or 3")
        return v

    @field_validator("steps", "micro_batch_size", "gradient_accumulation_steps", "num_workers",
                     "checkpoint_every", "log_every", "keep_checkpoints")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class LoraConfig(_Section):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = ["q_proj", "v_proj"]


class IA3Config(_Section):
    """IA3 (PEFT): learned scaling vectors on these projections' activations."""

    target_modules: list[str] = ["k_proj", "v_proj", "down_proj"]
    feedforward_modules: list[str] = ["down_proj"]
    """Subset of ``target_modules`` scaled on their input (feed-forward) rather than their output."""


class PrefixConfig(_Section):
    """Prefix tuning (learned key/value prefixes in every block) and prompt tuning (learned input embeddings)."""

    num_virtual_tokens: int = 8


class BottleneckConfig(_Section):
    """Bottleneck adapter (down-project, nonlinearity, up-project, residual) after block sublayers."""

    reduction_factor: int = 16
    """Bottleneck width = hidden_size // reduction_factor (at least 1)."""
    placement: Literal["pfeiffer", "houlsby"] = "pfeiffer"
    """pfeiffer: one adapter after each block's feed-forward; houlsby: after attention and after feed-forward."""
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"


class FreezeConfig(_Section):
    """Which backbone weights train besides the module (method ``full`` trains everything)."""

    policy: Literal["frozen", "top_k", "progressive"] = "frozen"
    """frozen: backbone fixed; top_k: the top ``top_k`` blocks train too; progressive: one more block (from the
    top) unfreezes every ``unfreeze_every`` optimizer steps."""
    top_k: int = 1
    unfreeze_every: int = 50
    layer_lr_decay: float = 1.0
    """Layer-wise learning-rate decay: block i of L trains at ``lr * decay ** (L - i)`` (embeddings one step
    lower, head and final norm at ``lr``); 1.0 turns it off."""
    gradient_checkpointing: bool = False
    """Recompute block activations in the backward pass (less memory, more compute)."""

    @field_validator("top_k", "unfreeze_every")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("layer_lr_decay")
    @classmethod
    def _decay(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError("must be in (0, 1]")
        return v


ModuleMethod = Literal["lora", "ia3", "prefix", "prompt", "bottleneck", "linear_probe", "full"]


class AdaptConfig(_Section):
    """One module (``method``, per task ``methods``) + head per task on the backbone under a freeze policy; one Ray
    Train run per task, concurrently within the cluster's free resources."""

    tasks: list[str] = ["man_section", "man_language", "py_package"]
    """Tasks (folders of curate's tasks_dir) to adapt; when none exists there, every task found is adapted."""
    method: ModuleMethod = "lora"
    """Module kind of every task: lora | ia3 (PEFT), prefix | prompt (PEFT), bottleneck (adapter), linear_probe
    (head only, backbone frozen) | full (every weight trains)."""
    methods: dict[str, ModuleMethod] = {}
    """Per-task override of ``method``, e.g. ``{man_language: bottleneck}``."""
    head: Literal["linear", "mlp"] = "linear"
    """Task head on the last non-pad token's hidden state: one linear layer, or linear-activation-linear."""
    lora: LoraConfig = LoraConfig()
    ia3: IA3Config = IA3Config()
    prefix: PrefixConfig = PrefixConfig()
    """Used by methods prefix and prompt."""
    bottleneck: BottleneckConfig = BottleneckConfig()
    freeze: FreezeConfig = FreezeConfig()
    train_fraction: float = 1.0
    """Seeded, label-stratified share of the train split used (at least one row per label)."""
    lr: float = 2e-3
    """AdamW learning rate of the module's parameters and the head."""
    method_lr: dict[ModuleMethod, float] = {"full": 1e-4}
    """Per-method learning rate in place of ``lr``: full fine-tuning moves every backbone weight and diverges at
    the learning rates that suit adapters (measured: full FT at 2e-3 collapsed to macro-F1 0.016 on py_package)."""
    weight_decay: float = 0.0
    epochs: int = 5
    batch_size: int = 16
    """Rows per worker per step (global batch = batch_size * num_workers_per_task); also the eval batch."""
    max_length: int = 256
    """Tokens per example (truncation); keep <= model.max_position_embeddings."""
    select_metric: str = "val_macro_f1"
    """Validation metric (reported each epoch) that picks the epoch whose adapter becomes the module."""
    num_workers_per_task: int = 1
    """Ray Train workers per task (DDP when > 1)."""
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    """Fractional GPUs per trainer worker (with ``use_gpu``; 0 there means one whole GPU)."""
    use_gpu: bool = False
    max_failures: int = 1
    """Worker-group restarts per task (each resumes from the task's latest epoch checkpoint)."""
    task_retries: int = 1
    """Times a failed task is trained again (after the others were started) before it is reported failed."""

    @field_validator("train_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError("must be in (0, 1]")
        return v

    @field_validator("cpus_per_worker", "gpus_per_worker", "task_retries")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("epochs", "batch_size", "max_length", "num_workers_per_task")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("select_metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in ("val_macro_f1", "val_accuracy"):
            raise ValueError("must be val_macro_f1 or val_accuracy")
        return v


class TuneConfig(_Section):
    """Ray Tune (ASHA over epochs) on one task: learning rate x LoRA rank; other hparams from ``adapt``."""

    enabled: bool = True
    task: str = "man_section"
    """Task to tune; when absent from tasks_dir, the first task adapt would train."""
    num_samples: int = 4
    """Trials (each one Ray Train run of ``adapt.num_workers_per_task`` workers)."""
    max_concurrent_trials: int = 2
    lr_min: float = 3e-4
    lr_max: float = 1e-2
    """Learning rate is sampled log-uniformly in [lr_min, lr_max]."""
    ranks: list[int] = [4, 8, 16]
    """LoRA ranks to choose from."""
    epochs: int = 2
    """Epochs per trial (ASHA max_t)."""
    grace_period: int = 1
    """Epochs every trial runs before ASHA may stop it."""
    metric: str = "val_macro_f1"
    """Validation metric maximised; the best config is the best (trial, epoch) on it."""

    @field_validator("num_samples", "max_concurrent_trials", "epochs", "grace_period")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class TransferConfig(_Section):
    """Transfer evaluation (``modpipe transfer``): every task x module method through the adapt stage, a
    sample-efficiency curve over train fractions, the router over the other tasks' modules, external baselines."""

    methods: list[ModuleMethod] = ["lora", "ia3", "prefix", "bottleneck", "linear_probe", "full"]
    """Methods trained on the whole train split (``adapt.train_fraction`` = 1); ``full`` is the reference."""
    fractions: list[float] = [0.01, 0.1, 1.0]
    """Train fractions of the sample-efficiency curve."""
    curve_methods: list[ModuleMethod] = ["lora", "linear_probe", "full"]
    """Methods also trained at every fraction below 1 (each costs one adapt run per fraction)."""
    tasks: list[str] = []
    """Tasks evaluated; empty: those ``adapt`` would train."""
    metric: Literal["test_macro_f1", "test_accuracy"] = "test_macro_f1"
    """Headline metric of the table and the curve (the others are reported beside it)."""
    router: bool = True
    """Per task, a learned router over the other tasks' LoRA modules, next to that task's fresh LoRA module."""
    router_epochs: int = 30
    langid_task: str = "man_language"
    """Task that also gets the offline language-ID baseline (py3langid); skipped when absent."""

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < f <= 1.0 for f in v):
            raise ValueError("each fraction must be in (0, 1]")
        return sorted(set(v))


class PublishConfig(_Section):
    """The gate and the MLflow model registry that modules which pass it are published to."""

    tracking_uri: str | None = None
    """None: sqlite under <run_dir>/registry; any MLflow tracking URI otherwise."""
    artifact_location: str | None = None
    """Where run artifacts go; None: <run_dir>/registry/artifacts (only used when the experiment is created)."""
    experiment: str = "modpipe-publish"
    """MLflow experiment that holds one run per published module."""
    metric: str = "test_macro_f1"
    """Key of the module's metrics.json the gate compares with ``min_metric``."""
    min_metric: float = 0.2
    model_prefix: str = "modpipe"
    """Registered model name = ``<model_prefix>-<task>``."""
    alias: str = "champion"
    """Alias moved to each newly registered version."""


class RayConfig(_Section):
    address: str | None = None
    """None: use RAY_ADDRESS if set, else start a local Ray with num_cpus."""
    num_cpus: int | None = None


class PipelineConfig(_Section):
    run_dir: str = "runs/default"
    seed: int = 0
    corpus: CorpusConfig = CorpusConfig()
    curate: CurateConfig = CurateConfig()
    tasks: TasksConfig = TasksConfig()
    contracts: ContractsConfig = ContractsConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    adapt: AdaptConfig = AdaptConfig()
    tune: TuneConfig = TuneConfig()
    transfer: TransferConfig = TransferConfig()
    publish: PublishConfig = PublishConfig()
    ray: RayConfig = RayConfig()

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir).resolve()

    def section_json(self, *names: str) -> str:
        """Canonical JSON of some sections, for fingerprints."""
        dump = self.model_dump(mode="json")
        return json.dumps({n: dump[n] for n in names}, sort_keys=True, separators=(",", ":"))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p!r} is not a section")
    node[parts[-1]] = value


def _format_error(err: ValidationError, origin: str) -> str:
    problems = [f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()]
    return f"invalid config ({origin}): " + "; ".join(problems)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Defaults <- YAML file <- ``key.path=value`` overrides; raises ConfigError naming the field."""
    data: dict[str, Any] = yaml.safe_load(DEFAULTS_PATH.read_text()) or {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        user = yaml.safe_load(p.read_text()) or {}
        if not isinstance(user, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        data = _deep_merge(data, user)
        origin = str(p)
    for item in overrides or []:
        _apply_override(data, item)
    if overrides:
        origin += " + --set " + " ".join(overrides)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin)) from None


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
