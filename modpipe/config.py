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
from pydantic import Field, ValidationError, field_validator, model_validator

from modpipe.config_adapt import (  # noqa: F401 - re-exported: every section is importable from modpipe.config
    AdaptConfig, BottleneckConfig, FreezeConfig, IA3Config, LoraConfig, ModuleMethod, PrefixConfig, TransferConfig,
    TuneConfig,
)
from modpipe.config_base import (  # noqa: F401 - ConfigError, Name, check_name are re-exported
    ConfigError, Name, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, _Section, check_name, unversioned,
)
from modpipe.config_tasks import TasksConfig, TaskSpec  # noqa: F401 - re-exported
from modpipe.config_drift import DriftConfig  # noqa: F401 - re-exported
from modpipe.config_curate import (  # noqa: F401 - re-exported
    CurateConfig, DecontamConfig, GopherConfig, LanguageConfig, MinHashConfig, PiiConfig, RepetitionConfig,
)
from modpipe.paths import REPO_ROOT

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")


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
    max_file_bytes: int = 16 << 30
    """Per input file (user files and man pages; ``curate.guard``): more stored bytes are refused
    (``file_too_large``: from its size before it is opened, or while it is read), and so is a Parquet row group
    whose columns hold more uncompressed (``row_group_too_large``)."""
    read_timeout_s: float = 600.0
    """Per input file: seconds it may spend waiting on its storage, the open and every read summed (the time a
    consumer spends between reads does not count).  Each read runs in a helper thread, so a read that never
    returns (a dead network mount, a stalled object store) is abandoned after this long and the file quarantined
    (``read_timeout``) with the records read before it; a file that trickles is stopped the same way."""
    max_decompressed_bytes: int = 64 << 30
    """Per input file: bytes a .gz/.zst stream may decompress to, and text bytes a Parquet file may hold
    (``decompressed_too_large``); counted as it streams, nothing is held."""
    max_compression_ratio: float = 100.0
    """Per input file: decompressed (Parquet: text) bytes per stored byte, checked once 1 MiB was produced
    (``compression_ratio``): a 4 KB .jsonl.gz of 2 M lines stops after its first MiB."""

    @field_validator("max_record_bytes", "max_file_bytes", "max_decompressed_bytes")
    @classmethod
    def _positive_bytes(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("read_timeout_s")
    @classmethod
    def _positive_seconds(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("max_compression_ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        if not v >= 1:
            raise ValueError("must be >= 1")
        return v


class ContractsConfig(_Section):
    """Great Expectations suites checked on the raw corpus, curated docs, token shards and task splits."""

    suites_dir: str = unversioned(str(REPO_ROOT / "data_contracts"))
    """One GX ExpectationSuite JSON per dataset kind (see data_contracts/README.md); their content, not this
    path, is part of the contracts step's version. There is no switch to turn the contracts off: every consumer
    of curated data requires them to have passed."""
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
    max_doc_tokens: int = Field(200_000, validate_default=True)
    """Tokens per curated document under the curate tokenizer."""
    min_example_tokens: NonNegativeInt = 4
    max_example_tokens: int = Field(4096, validate_default=True)
    """Tokens per task example under the curate tokenizer."""
    min_label_share: float = 0.005
    max_label_share: float = Field(0.8, validate_default=True)
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

    @field_validator("max_doc_tokens", "max_example_tokens", "max_label_share")
    @classmethod
    def _max_not_below_min(cls, v, info):
        low = "min_" + info.field_name.removeprefix("max_")
        if low in info.data and v < info.data[low]:
            raise ValueError(f"must be >= {low} ({info.data[low]})")
        return v


class ModelConfig(_Section):
    """A transformers Llama-style decoder; the tiny default trains on CPU in a few minutes."""

    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = Field(4, validate_default=True)  # checked against hidden_size even by default
    """Attention heads; must divide ``hidden_size`` into an even head size (rotary embeddings rotate pairs)."""
    intermediate_size: PositiveInt = 384
    max_position_embeddings: PositiveInt = 512

    @field_validator("num_heads")
    @classmethod
    def _heads(cls, v: int, info) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and hidden % v:
            raise ValueError(f"must divide model.hidden_size ({hidden})")
        if hidden is not None and (hidden // v) % 2:
            raise ValueError(f"head size model.hidden_size / num_heads = {hidden // v} must be even (rotary "
                             f"embeddings)")
        return v


class PretrainConfig(_Section):
    """DeepSpeed ZeRO data-parallel pretraining run by Ray Train (one worker per GPU, or per CPU slot)."""

    steps: int = 600
    """Optimizer steps."""
    micro_batch_size: int = 16
    """Sequences per worker per micro-step (DeepSpeed train_micro_batch_size_per_gpu)."""
    gradient_accumulation_steps: int = 1
    """Micro-steps per optimizer step; global batch = micro_batch_size * this * num_workers."""
    lr: PositiveFloat = 1e-3
    warmup_steps: NonNegativeInt = 10
    weight_decay: NonNegativeFloat = 0.1
    """Applied to >= 2-D weights only (matmuls, embeddings); norms and biases get none."""
    num_workers: int = 2
    use_gpu: bool = False
    """GPU workers: nccl process group, bf16 on; CPU workers: gloo, fp32, torch AdamW."""
    zero_stage: int = 2
    """Overrides zero_optimization.stage of the DeepSpeed JSON (0-3)."""
    deepspeed_config: str = unversioned(str(REPO_ROOT / "infra" / "deepspeed" / "zero2.json"))
    """DeepSpeed JSON (its content, not its path, is part of the step's version); batch sizes, lr, schedule length, stage and bf16 are filled in from this section.
    A relative path is read from the current directory, else from the repository root (``infra/deepspeed/zero3.json``)."""
    init_from: str | None = unversioned(None)
    """Continued pretraining: a local Hugging Face checkpoint dir (config.json, ``*.safetensors``, tokenizer.json) to
    start from instead of fresh weights (``pretrain.init_from``). Its config.json is the architecture (the ``model``
    section follows it; an explicit field that differs is refused) and curate encodes the corpus with its tokenizer
    (none is trained). Its content digests, not its path, are part of curate's and pretrain's versions."""
    activation_checkpointing: bool = unversioned(False)
    """Recompute each decoder block's activations in the backward pass instead of keeping them (transformers'
    ``gradient_checkpointing_enable``, non-reentrant): about a third more compute for far less activation memory.
    The same gradients, so it is left out of the version, like the next two: they change how the step runs, not the
    model it trains (up to float rounding)."""
    attn_implementation: Literal["sdpa", "eager"] = unversioned("sdpa")
    """Attention kernel while training: ``sdpa`` (torch's scaled_dot_product_attention, flash / memory-efficient
    kernels on GPU; transformers' own default) or ``eager`` (matmul + softmax). Not recorded in the export."""
    fused_adam: bool = unversioned(False)
    """``torch.optim.AdamW(fused=True)``: one kernel updates every tensor (GPU and CPU) instead of torch's per-list
    ``foreach`` default. Sets ``torch_adam`` and ``fused`` in the DeepSpeed JSON's optimizer params (its type must
    be Adam or AdamW); DeepSpeed's own FusedAdam is not used: it JIT-builds a CUDA extension (nvcc on every node)."""
    checkpoint_every: int = unversioned(40)
    """Steps between checkpoints reported to Ray Train (a rerun resumes from the latest)."""
    keep_checkpoints: int = unversioned(2)
    """Checkpoints Ray Train keeps under <run_dir>/pretrain/ray."""
    max_failures: int = unversioned(0, ge=0)
    """Worker-group restarts Ray Train attempts (each resumes from the latest checkpoint)."""
    log_every: int = unversioned(10)
    peak_tflops: float = unversioned(989.0, gt=0)
    """Per-GPU dense bf16 peak used for MFU (H100 SXM)."""
    eval_every: int = unversioned(20, ge=0)
    """Steps between held-out evaluations (loss and perplexity on the held-out shard: curate's last shard when
    there are two or more, never trained on), and always at the last step; 0: none. With one shard nothing is
    held out and nothing is evaluated. Reading the model only, it leaves training (and resume) unchanged."""
    eval_rows: int = unversioned(256, ge=1)
    """Held-out rows scored per evaluation (the shard's first ones, split over the ranks); at most the shard."""

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


def _rule_direction(data: Any, metric_key: str) -> Any:
    """A rule's ``direction`` where it is not given: its metric's own (``test_rmse``, ``test_mae``, ``test_ece``:
    lower is better). A direction against a known metric's own is refused: it would pass the worse modules."""
    from modpipe.config_problems import BY_NAME, higher_is_better

    metric = data.get(metric_key, "test_macro_f1") if isinstance(data, dict) else None
    if not isinstance(metric, str):
        return data
    own = "higher" if higher_is_better(metric) else "lower"
    given = data.get("direction")
    if given is None:
        return {**data, "direction": own}
    if given != own and metric.removeprefix("test_") in {m for p in BY_NAME.values() for m in p.metrics}:
        raise ValueError(f"{metric} is better {own}; direction {given!r} would pass the worse modules")
    return data


class TaskMetric(_Section):
    """How one task's modules are judged: a key of the measured test metrics, which way is better, the bar."""

    metric: str = "test_macro_f1"
    direction: Literal["higher", "lower"] = "higher"
    """Not given: the metric's own (lower for ``test_rmse``, ``test_mae``, ``test_ece``)."""
    threshold: float = 0.2
    """higher: the metric must be >= threshold; lower: <= threshold."""

    @model_validator(mode="before")
    @classmethod
    def _direction(cls, data: Any) -> Any:
        return _rule_direction(data, "metric")


_RESERVED_ALIASES = ("latest",)
"""MLflow refuses these aliases (and ``v<number>``)."""


class BaselineConfig(_Section):
    """Classical baselines per task (``modpipe/baseline``): majority class and TF-IDF + logistic regression."""

    max_chars: int = 2000
    """Characters of each example the TF-IDF baseline sees (its start)."""
    max_features: int = 200_000
    """TF-IDF vocabulary cap (character 2-4-grams)."""
    c: float = 10.0
    """Inverse regularisation strength of the logistic regression."""

    @field_validator("max_chars", "max_features")
    @classmethod
    def _positive_int(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("c")
    @classmethod
    def _positive_c(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0")
        return v


class PublishConfig(_Section):
    """The promotion policy (``modpipe.registry.policy``) and the MLflow model registry modules are published to."""

    tracking_uri: str | None = None
    """None: sqlite under <run_dir>/registry; any MLflow tracking URI otherwise."""
    artifact_location: str | None = None
    """Where run artifacts go; None: <run_dir>/registry/artifacts (only used when the experiment is created)."""
    experiment: str = "modpipe-publish"
    """MLflow experiment that holds one run per published module."""
    metric: str = "test_macro_f1"
    """Measured test metric (classification: ``test_accuracy``, ``test_macro_f1``, ``test_auroc_ovr``,
    ``test_ece``; multilabel: ``test_accuracy``, ``test_micro_f1``, ``test_macro_f1``, ``test_map``; regression:
    ``test_rmse``, ``test_mae``, ``test_spearman``) the policy judges every task by, unless ``task_metrics`` names
    the task; a task whose problem does not measure it is judged by its problem's gate metric (macro-F1;
    regression: Spearman)."""
    direction: Literal["higher", "lower"] = "higher"
    """Which way ``metric`` is better (not given: the metric's own, lower for ``test_rmse``, ``test_mae``,
    ``test_ece``)."""
    min_metric: float = 0.2
    """The bar for ``metric``: >= it when higher is better, <= it when lower is better."""
    task_metrics: dict[str, TaskMetric] = {}
    """Per task: its own metric, direction and threshold, e.g. ``{man_language: {metric: test_accuracy,
    threshold: 0.5}}``."""
    max_ece: float | None = 0.25
    """Classifiers: the measured 15-bin expected calibration error on the test split must be <= this (None: off)."""
    max_slice_gap: float | None = None
    """The largest macro-F1 gap between slices of the test split (``evaluate.slices``: the ``length`` slice and a
    task's ``slice_fields``; slices of >= 10 rows) must be <= this (None: not judged, still measured and shown)."""
    tolerance: float = 0.0
    """A candidate takes ``alias`` when its metric is at least the current champion's minus this (both measured on
    the current test split in the same run); otherwise it takes ``challenger_alias``."""
    reproduce_tolerance: float = 0.02
    """A candidate whose test split is the one its module.json records must reproduce its recorded test metric
    within this when measured here (a module whose weights came from elsewhere does not)."""
    require_beat_baseline: bool = True
    """A candidate below its task's classical baseline beyond noise (the upper end of the paired-bootstrap interval
    of module minus baseline, on the task's own metric over the same test rows, below 0) is registered as
    ``challenger_alias`` at most, never ``alias``; so is one with no baseline to compare with. False: not judged."""
    baseline: Literal["tfidf_lr", "majority"] = "tfidf_lr"
    """Which of the baseline step's baselines a candidate must not be below."""
    baseline_confidence: float = 0.95
    """Two-sided confidence of the paired-bootstrap interval of module minus baseline."""
    baseline_resamples: int = 1000
    """Paired resamples of the test rows for that interval."""
    model_prefix: str = "modpipe"
    """Registered model name = ``<model_prefix>-<task>``; the backbone is ``<model_prefix>-backbone``."""
    alias: str = "champion"
    """Alias of the best version so far (moved only when a candidate is at least as good)."""
    challenger_alias: str = "challenger"
    """Alias of a passing candidate that is not better than the champion."""
    cache_dir: str | None = unversioned(None)
    """Where registry artifacts are downloaded and verified before loading (None: <run_dir>/registry/cache)."""

    @model_validator(mode="before")
    @classmethod
    def _direction(cls, data: Any) -> Any:
        return _rule_direction(data, "metric")

    @field_validator("model_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        check_name(v, "model_prefix")
        if len(v) > 40:
            raise ValueError("must be at most 40 characters (names are <model_prefix>-<task>)")
        return v

    @field_validator("alias", "challenger_alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        check_name(v, "alias")
        import re

        if v in _RESERVED_ALIASES or re.fullmatch(r"v\d+", v):
            raise ValueError(f"{v!r} is reserved by MLflow (latest, v<number>)")
        return v

    @field_validator("baseline_confidence")
    @classmethod
    def _confidence(cls, v: float) -> float:
        if not 0.5 <= v < 1:
            raise ValueError("must be in [0.5, 1)")
        return v

    @field_validator("baseline_resamples")
    @classmethod
    def _resamples(cls, v: int) -> int:
        if not 100 <= v <= 100_000:
            raise ValueError("must be between 100 and 100000")
        return v

    @field_validator("task_metrics")
    @classmethod
    def _task_names(cls, v: dict) -> dict:
        for name in v:
            check_name(name, "task name")
        return v

    @field_validator("max_ece", "max_slice_gap")
    @classmethod
    def _ece(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError("must be in [0, 1] or null")
        return v

    @field_validator("tolerance", "reproduce_tolerance")
    @classmethod
    def _tolerance(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError("must be in [0, 1]")
        return v

    @field_validator("challenger_alias")
    @classmethod
    def _distinct_aliases(cls, v: str, info) -> str:
        if v == info.data.get("alias"):
            raise ValueError(f"must differ from publish.alias (both {v!r})")
        return v

    def rule(self, task: str, problem: str = "classification") -> TaskMetric:
        """The metric rule of ``task``: its ``task_metrics`` entry; else ``metric`` / ``direction`` /
        ``min_metric`` where the task's problem measures ``metric``; else the problem's own gate metric
        (``evaluate.problems``: regression is judged by Spearman's rank correlation, higher is better, against
        ``min_metric``: a bar that means the same whatever the target's units)."""
        from modpipe.config_problems import get

        if task in self.task_metrics:
            return self.task_metrics[task]
        p = get(problem)
        if self.metric.removeprefix("test_") in p.metrics:
            return TaskMetric(metric=self.metric, direction=self.direction, threshold=self.min_metric)
        return TaskMetric(metric=f"test_{p.gate_metric}", direction="higher", threshold=self.min_metric)


class RayConfig(_Section):
    address: str | None = None
    """None: use RAY_ADDRESS if set, else start a local Ray with num_cpus (every service on 127.0.0.1, token
    auth on unless RAY_AUTH_MODE=disabled; see ``modpipe.raycluster``)."""
    num_cpus: PositiveInt | None = None


class PipelineConfig(_Section):
    name: Name = unversioned("default")
    """The pipeline's name: runs of the same name against the same registry share a drift reference
    (``modpipe/drift``)."""
    run_dir: str = "runs/default"
    run_dir_access: Literal["private", "group-read", "group-write"] = unversioned("private")
    """Permissions of the run dir (``modpipe.rundir``): ``private`` 0700 (only you), ``group-read`` 0750,
    ``group-write`` 2770 (setgid: new files keep the dir's group; run with ``umask 002`` so the group can write
    them too) for run dirs on shared cluster storage. Others never get access."""
    seed: NonNegativeInt = 0
    corpus: CorpusConfig = CorpusConfig()
    curate: CurateConfig = CurateConfig()
    tasks: TasksConfig = TasksConfig()
    contracts: ContractsConfig = ContractsConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    adapt: AdaptConfig = AdaptConfig()
    tune: TuneConfig = TuneConfig()
    transfer: TransferConfig = TransferConfig()
    baseline: BaselineConfig = BaselineConfig()
    publish: PublishConfig = PublishConfig()
    drift: DriftConfig = DriftConfig()
    ray: RayConfig = RayConfig()

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir).resolve()

    def section_json(self, *names: str) -> str:
        """Canonical JSON of some sections, for fingerprints."""
        dump = self.model_dump(mode="json")
        return json.dumps({n: dump[n] for n in names}, sort_keys=True, separators=(",", ":"))

    @model_validator(mode="before")
    @classmethod
    def _model_from_init_from(cls, data: Any) -> Any:
        """With ``pretrain.init_from`` the ``model`` section is the checkpoint's architecture
        (``modpipe.pretrain.init_from.model_section`` checks the dir and refuses explicit fields that differ)."""
        pretrain = data.get("pretrain") if isinstance(data, dict) else None
        init_from = pretrain.get("init_from") if isinstance(pretrain, dict) else getattr(pretrain, "init_from", None)
        if not init_from:
            return data
        from modpipe.pretrain.init_from import model_section

        model = data.get("model") or {}
        explicit = model.model_dump(exclude_unset=True) if isinstance(model, ModelConfig) else dict(model)
        return {**data, "model": model_section(init_from, explicit)}

    @model_validator(mode="after")
    def _task_metrics_of_the_problem(self) -> PipelineConfig:
        """A ``publish.task_metrics`` rule names a metric its task's problem measures (a regression task has no
        ``test_macro_f1``: every module of it would be refused, after training)."""
        from modpipe.config_problems import BY_NAME, get

        known = {m for p in BY_NAME.values() for m in p.metrics}
        for spec in self.tasks.specs:
            rule = self.publish.task_metrics.get(spec.name)
            name = rule.metric.removeprefix("test_") if rule is not None else None
            if name in known and name not in get(spec.problem).metrics:
                raise ValueError(f"publish.task_metrics.{spec.name}: {rule.metric} is not measured for a "
                                 f"{spec.problem} task (it measures "
                                 f"{', '.join(f'test_{m}' for m in get(spec.problem).metrics)})")
        return self


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
