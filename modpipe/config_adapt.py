"""Config sections of adapt (module kinds, freeze policies), tune and transfer."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from modpipe.config_base import (
    Name, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, _Section, unversioned,
)

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def _module_names(v: list[str], *, allow_empty: bool = False) -> list[str]:
    """Backbone submodule names a module targets (``q_proj``, ``mlp.down_proj``)."""
    if not v and not allow_empty:
        raise ValueError("must name at least one module")
    bad = [m for m in v if not isinstance(m, str) or not _MODULE_NAME.fullmatch(m)]
    if bad:
        raise ValueError(f"not module names: {bad}")
    return v


class LoraConfig(_Section):
    r: PositiveInt = 8
    alpha: PositiveInt = 16
    dropout: float = 0.05
    """Dropout on the LoRA branch's input, in [0, 1)."""
    target_modules: list[str] = ["q_proj", "v_proj"]

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1)")
        return v

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        return _module_names(v)


class IA3Config(_Section):
    """IA3 (PEFT): learned scaling vectors on these projections' activations."""

    target_modules: list[str] = ["k_proj", "v_proj", "down_proj"]
    feedforward_modules: list[str] = Field(["down_proj"], validate_default=True)
    """Subset of ``target_modules`` scaled on their input (feed-forward) rather than their output."""

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        return _module_names(v)

    @field_validator("feedforward_modules")
    @classmethod
    def _feedforward(cls, v: list[str], info) -> list[str]:
        _module_names(v, allow_empty=True)
        targets = info.data.get("target_modules")
        if targets is not None and not set(v) <= set(targets):
            raise ValueError(f"{sorted(set(v) - set(targets))} not in ia3.target_modules {targets}")
        return v


class PrefixConfig(_Section):
    """Prefix tuning (learned key/value prefixes in every block) and prompt tuning (learned input embeddings)."""

    num_virtual_tokens: PositiveInt = 8


class BottleneckConfig(_Section):
    """Bottleneck adapter (down-project, nonlinearity, up-project, residual) after block sublayers."""

    reduction_factor: PositiveInt = 16
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
HeadKind = Literal["linear", "mlp", "mean"]
"""Task heads (``modpipe.models.heads``): linear or MLP on the last token's state, or linear on the mean state."""


class AdaptConfig(_Section):
    """One module (``method``, per task ``methods``) + head per task on the backbone under a freeze policy; one Ray
    Train run per task, concurrently within the cluster's free resources."""

    tasks: list[Name] = []
    """Tasks (folders of curate's tasks_dir) to adapt; empty (the default), or none of them there: every task
    curate built (``tasks.specs``).
    Versioned for the step (its output lists these tasks' modules: adding one must re-run adapt), not per task:
    each task's module dir is keyed by its own training fields and data, so only the new task trains."""
    method: ModuleMethod = "lora"
    """Module kind of every task: lora | ia3 (PEFT), prefix | prompt (PEFT), bottleneck (adapter), linear_probe
    (head only, backbone frozen) | full (every weight trains)."""
    methods: dict[Name, ModuleMethod] = {}
    """Per-task override of ``method``, e.g. ``{man_language: bottleneck}``."""
    head: HeadKind = "mean"
    """Task head: ``mean``: linear on the mean of every real token's hidden state (the default: +1.6 to +5.7 points
    macro-F1 over ``linear`` on the built-in tasks; not with method prompt, whose batches are left-padded);
    ``linear`` or ``mlp`` (linear-activation-linear) on the last non-pad token's hidden state."""
    lora: LoraConfig = LoraConfig()
    ia3: IA3Config = IA3Config()
    prefix: PrefixConfig = PrefixConfig()
    """Used by methods prefix and prompt."""
    bottleneck: BottleneckConfig = BottleneckConfig()
    freeze: FreezeConfig = FreezeConfig()
    train_fraction: float = 1.0
    """Seeded, label-stratified share of the train split used (at least one row per label)."""
    lr: PositiveFloat = 2e-3
    """AdamW learning rate of the module's parameters and the head."""
    method_lr: dict[ModuleMethod, PositiveFloat] = {"full": 1e-4}
    """Per-method learning rate in place of ``lr``: full fine-tuning moves every backbone weight and diverges at
    the learning rates that suit adapters (measured: full FT at 2e-3 collapsed to macro-F1 0.016 on py_package)."""
    weight_decay: NonNegativeFloat = 0.0
    epochs: int = 5
    batch_size: int = 16
    """Rows per worker per step (global batch = batch_size * num_workers_per_task); also the eval batch."""
    max_length: int = 256
    """Tokens per example (truncation); keep <= model.max_position_embeddings."""
    select_metric: str = "val_macro_f1"
    """Validation metric (reported each epoch) that picks the epoch whose adapter becomes the module."""
    num_workers_per_task: int = 1
    """Ray Train workers per task (DDP when > 1)."""
    cpus_per_worker: float = unversioned(1.0)
    gpus_per_worker: float = unversioned(0.0)
    """Fractional GPUs per trainer worker (with ``use_gpu``; 0 there means one whole GPU)."""
    use_gpu: bool = False
    max_failures: NonNegativeInt = unversioned(1)
    """Worker-group restarts per task (each resumes from the task's latest epoch checkpoint)."""
    task_retries: int = unversioned(1)
    """Times a failed task is trained again (after the others were started) before it is reported failed."""
    grad_profile_every: NonNegativeInt = unversioned(10)
    """Gradient-flow profile (``modpipe.adapt.gradflow``): every this many optimizer steps, the gradient norm of
    each block (embeddings, every layer, head) and module parameter group (LoRA A/B, IA3, adapters, prompt) goes
    into the module's metrics.json and the run report; 0: off. It only reads gradients: the module is the same."""

    @model_validator(mode="after")
    def _head_fits_methods(self) -> AdaptConfig:
        if self.head == "mean" and "prompt" in (self.method, *self.methods.values()):
            raise ValueError("head 'mean' pools over right-padded batches and method 'prompt' pads on the left: "
                             "set adapt.head=linear (or mlp) for prompt tuning")
        return self

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


TunableMethod = Literal["lora", "ia3", "prefix", "prompt", "bottleneck"]
_METHOD_SECTIONS = {"lora": LoraConfig, "ia3": IA3Config, "prefix": PrefixConfig, "prompt": PrefixConfig,
                    "bottleneck": BottleneckConfig}


class SearchSpace(_Section):
    """One module kind's discrete search space: every list is the choices of one dimension (random search samples
    points of their product, grid search takes all of them)."""

    lr: list[PositiveFloat] = [1e-3, 3e-3, 1e-2]
    head: list[HeadKind] = ["mean"]
    top_k: list[NonNegativeInt] = [0]
    """Backbone blocks that train too (freeze policy ``top_k``); 0: the backbone stays frozen."""
    params: dict[str, list[int | float | str]] = {}
    """The kind's own hyperparameters (fields of its ``adapt`` section, e.g. LoRA ``r``, ``alpha``, ``dropout``;
    bottleneck ``reduction_factor``; prefix ``num_virtual_tokens``); others come from ``adapt``."""

    @field_validator("lr", "head", "top_k")
    @classmethod
    def _choices(cls, v: list) -> list:
        if not v:
            raise ValueError("needs at least one choice")
        return v

    @field_validator("params")
    @classmethod
    def _param_choices(cls, v: dict) -> dict:
        for k, choices in v.items():
            if not choices:
                raise ValueError(f"{k}: needs at least one choice")
        return v


def _default_space() -> dict:
    return {
        "lora": SearchSpace(params={"r": [4, 8, 16], "alpha": [16], "dropout": [0.05]}),
        "ia3": SearchSpace(lr=[3e-3, 1e-2, 3e-2]),
        "bottleneck": SearchSpace(params={"reduction_factor": [8, 16]}),
        "prefix": SearchSpace(lr=[3e-3, 1e-2, 3e-2], params={"num_virtual_tokens": [4, 8]}),
        "prompt": SearchSpace(lr=[1e-2, 3e-2], params={"num_virtual_tokens": [4, 8]}),
    }


class TuneConfig(_Section):
    """Ray Tune per task over module kinds and their hyperparameters (``space``), ASHA over epochs, within a trial
    budget; the best trial's module (selected on the validation split) is the task's candidate for publish."""

    enabled: bool = True
    tasks: list[Name] = []
    """Tasks to tune (those present in tasks_dir); empty: every task adapt trains."""
    task: Name | None = None
    """Deprecated single-task form of ``tasks`` (used when ``tasks`` is empty)."""
    methods: list[TunableMethod] = ["lora", "ia3", "bottleneck", "prefix"]
    """Module kinds searched (the kind is itself a dimension of the space)."""
    space: dict[TunableMethod, SearchSpace] = Field(default_factory=_default_space)
    """Search space per module kind; a kind in ``methods`` without an entry searches ``SearchSpace()``."""
    search: Literal["random", "grid"] = "random"
    """random: ``num_samples`` distinct points per task, seeded by ``seed``; grid: every point of the space."""
    num_samples: PositiveInt = 2
    """Trial budget per task (random search); each trial is one Ray Train run."""
    scheduler: Literal["asha", "fifo"] = "asha"
    """asha: stop weak trials after ``grace_period`` epochs; fifo: every trial trains every epoch."""
    max_concurrent_trials: PositiveInt | None = unversioned(None)
    """Trials at once; None: as many as the cluster's free CPUs/GPUs hold (one trainer's demand each)."""
    epochs: PositiveInt = 2
    """Epochs per trial (ASHA max_t)."""
    grace_period: PositiveInt = 1
    """Epochs every trial runs before ASHA may stop it."""
    reduction_factor: float = 3.0
    """ASHA: a trial continues past a rung (grace_period x reduction_factor^k epochs) only when it is in the top
    1/reduction_factor of the trials that reached that rung."""
    metric: Literal["val_macro_f1", "val_accuracy"] = "val_macro_f1"
    """Validation metric maximised; the best config is the best (trial, epoch) on it."""
    state_dir: str | None = unversioned(None)
    """Where the sweep's seals live (sha256 of every file Ray Tune unpickles on restore, recorded as it writes
    them): outside the run dir, private to the user. None: ``$MODPIPE_STATE_DIR``, else
    ``$XDG_STATE_HOME/modpipe``, else ``~/.local/state/modpipe``."""

    @field_validator("space")
    @classmethod
    def _space_params(cls, v: dict) -> dict:
        for kind, space in v.items():
            fields = set(_METHOD_SECTIONS[kind].model_fields)
            unknown = sorted(set(space.params) - fields)
            if unknown:
                raise ValueError(f"{kind}: unknown hyperparameter(s) {unknown}; {kind} has {sorted(fields)}")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list) -> list:
        if not v:
            raise ValueError("needs at least one module kind")
        return list(dict.fromkeys(v))

    @field_validator("reduction_factor")
    @classmethod
    def _rf(cls, v: float) -> float:
        if not v > 1:
            raise ValueError("must be > 1")
        return v

    @field_validator("grace_period")
    @classmethod
    def _grace(cls, v: int, info) -> int:
        if v > info.data.get("epochs", v):
            raise ValueError("must be <= tune.epochs")
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
    tasks: list[Name] = []
    """Tasks evaluated; empty: those ``adapt`` would train."""
    metric: Literal["test_macro_f1", "test_accuracy"] = "test_macro_f1"
    """Headline metric of the table and the curve (the others are reported beside it)."""
    router: bool = True
    """Per task, a learned router over the other tasks' LoRA modules, next to that task's fresh LoRA module."""
    router_epochs: PositiveInt = 30
    langid_task: Name = "man_language"
    """Task that also gets the offline language-ID baseline (py3langid); skipped when absent."""

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < f <= 1.0 for f in v):
            raise ValueError("each fraction must be in (0, 1]")
        return sorted(set(v))

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list at least one method")
        return v
