"""What one task trains with, as frozen typed objects (they pickle, so Ray ships them to the trainer's workers).

- ``ModuleConfig``: the module kind and its hyperparameters, a union keyed by ``kind`` (``LoraModule``,
  ``IA3Module``, ``PrefixModule`` (prefix and prompt tuning), ``BottleneckModule``, ``ProbeModule``, ``FullModule``);
- ``AdaptJob``: one task's training fields (module, head, freeze policy, lr, epochs, ...) and its data;
- ``Scaling``: the resources of its trainer; ``TrainRun``: where its Ray run and its module dir live.

``make_job`` builds a task's job from the config (its method: ``adapt.methods`` override, else ``adapt.method``;
its lr: ``adapt.method_lr`` for that method, else ``adapt.lr``). Overrides (tune's lr / LoRA rank) are
``job.model_copy(update=...)``. ``task_fingerprint`` keys the task's module dir on what the job trains with.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modpipe.config_adapt import AdaptConfig, FreezeConfig, HeadKind
from modpipe.lineage import fingerprint

if TYPE_CHECKING:
    from modpipe.adapt.data import Task
    from modpipe.config import PipelineConfig


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- module kinds


class _Module(_Frozen):
    section: ClassVar[str | None] = None
    """The ``adapt`` config section holding this kind's hyperparameters (and their key in module.json)."""

    def hyperparameters(self) -> dict[str, Any]:
        """The kind's hyperparameters as JSON (what ``modpipe.models.modules`` builds the module from)."""
        return self.model_dump(mode="json", exclude={"kind"})


class LoraModule(_Module):
    section: ClassVar[str | None] = "lora"
    kind: Literal["lora"] = "lora"
    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]


class IA3Module(_Module):
    section: ClassVar[str | None] = "ia3"
    kind: Literal["ia3"] = "ia3"
    target_modules: tuple[str, ...]
    feedforward_modules: tuple[str, ...]


class PrefixModule(_Module):
    section: ClassVar[str | None] = "prefix"
    kind: Literal["prefix", "prompt"]
    num_virtual_tokens: int


class BottleneckModule(_Module):
    section: ClassVar[str | None] = "bottleneck"
    kind: Literal["bottleneck"] = "bottleneck"
    reduction_factor: int
    placement: Literal["pfeiffer", "houlsby"]
    activation: Literal["relu", "gelu", "silu", "tanh"]


class ProbeModule(_Module):
    kind: Literal["linear_probe"] = "linear_probe"


class FullModule(_Module):
    kind: Literal["full"] = "full"


ModuleConfig = Annotated[Union[LoraModule, IA3Module, PrefixModule, BottleneckModule, ProbeModule, FullModule],
                         Field(discriminator="kind")]
KINDS: dict[str, type[_Module]] = {
    kind: cls for cls in (LoraModule, IA3Module, PrefixModule, BottleneckModule, ProbeModule, FullModule)
    for kind in cls.model_fields["kind"].annotation.__args__
}


def module_config(adapt: AdaptConfig, kind: str) -> ModuleConfig:
    """Module ``kind`` with the hyperparameters of its ``adapt`` section."""
    if kind not in KINDS:
        raise ValueError(f"unknown module method {kind!r}; choose one of {', '.join(KINDS)}")
    cls = KINDS[kind]
    fields = getattr(adapt, cls.section).model_dump() if cls.section else {}
    return cls(kind=kind, **fields)


# ---------------------------------------------------------------- a task's job


class AdaptJob(_Frozen):
    """Everything one task's workers train with (paths absolute: Ray workers run in their own directories)."""

    task: str
    task_dir: str
    backbone: str
    labels: tuple[str, ...]
    module: ModuleConfig
    head: HeadKind
    freeze: FreezeConfig
    train_fraction: float
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    """Rows per worker per step."""
    max_length: int
    select_metric: str
    """Validation metric that picks the epoch whose weights become the module."""
    seed: int
    grad_profile_every: int = 0
    """Gradient-flow profile interval in optimizer steps (0: off); not a training field (the module is the same)."""
    problem: str = "classification"
    """``evaluate.problems``: classification, multilabel or regression (from the task's problem.json)."""
    target_scale: dict[str, float] | None = None
    """Regression: the train target's ``target_mean`` and ``target_std`` (the model predicts the standardised
    target)."""

    @model_validator(mode="after")
    def _head_fits_method(self) -> AdaptJob:
        if self.head == "mean" and self.module.kind == "prompt":
            raise ValueError("head 'mean' needs right-padded batches; method 'prompt' pads on the left")
        return self

    @property
    def method(self) -> str:
        return self.module.kind

    @property
    def num_labels(self) -> int:
        """The head's outputs: one per label; regression: one."""
        return len(self.labels)

    @property
    def kind(self):
        """The task's ``evaluate.problems.Problem``."""
        from modpipe.evaluate.problems import get

        return get(self.problem)

    def spec(self) -> dict[str, Any]:
        """``{"method", "head", "config"}``: what ``modpipe.models.modules`` builds (and module.json records)."""
        return {"method": self.method, "head": self.head, "config": self.module.hyperparameters()}


def make_job(cfg: PipelineConfig, task: Task, backbone: str | Path) -> AdaptJob:
    from modpipe.evaluate.problems import get, selection

    a = cfg.adapt
    kind = a.methods.get(task.name, a.method)
    scale = {k: float(task.info[k]) for k in ("target_mean", "target_std")} if task.problem == "regression" else None
    return AdaptJob(
        task=task.name, task_dir=str(Path(task.dir).resolve()), backbone=str(Path(backbone).resolve()),
        labels=tuple(task.labels), module=module_config(a, kind), head=a.head, freeze=a.freeze,
        train_fraction=a.train_fraction, lr=a.method_lr.get(kind, a.lr), weight_decay=a.weight_decay,
        epochs=a.epochs, batch_size=a.batch_size, max_length=a.max_length,
        select_metric=selection(get(task.problem), a.select_metric), seed=cfg.seed,
        grad_profile_every=a.grad_profile_every, problem=task.problem, target_scale=scale,
    )


class Scaling(_Frozen):
    """One trainer's workers: ``num_workers`` of ``cpus_per_worker`` CPUs (and with ``use_gpu``
    ``gpus_per_worker`` GPUs, a fraction sharing a GPU, 0 meaning one whole GPU)."""

    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float

    @classmethod
    def of(cls, adapt: AdaptConfig) -> Scaling:
        return cls(num_workers=adapt.num_workers_per_task, use_gpu=adapt.use_gpu,
                   cpus_per_worker=adapt.cpus_per_worker, gpus_per_worker=adapt.gpus_per_worker)

    def worker_resources(self) -> dict[str, float]:
        res = {"CPU": float(self.cpus_per_worker)}
        if self.use_gpu:
            res["GPU"] = float(self.gpus_per_worker or 1.0)
        return res

    def demand(self) -> dict[str, float]:
        """What the trainer holds while it runs: its workers' resources (its driver task holds none)."""
        return {k: v * self.num_workers for k, v in self.worker_resources().items()}


class TrainRun(_Frozen):
    """Where one task's Ray Train run lives and the module dir it becomes: ``<module_root>/<task>-<fp>``."""

    name: str
    """Ray Train run name under ``storage`` (no timestamp: a rerun resumes it from its latest epoch)."""
    storage: str
    max_failures: int
    module_root: str
    fp: str
    backbone_fingerprint: str
    config: dict[str, Any]
    """Recorded in the module dir's provenance.json."""
    inputs: dict[str, Any]
    """Backbone and task paths, ``data_digests``, row counts (provenance.json; module.json takes the digests)."""


# ---------------------------------------------------------------- fingerprint


def training_fields(job: AdaptJob, scaling: Scaling) -> dict[str, Any]:
    """What a task's module depends on besides its data, labels, seed and backbone: the job's training fields
    and the trainer's world size (it sets the global batch) and device kind. Laid out as before jobs were typed,
    so module dirs trained then keep their fingerprints."""
    out = {"method": job.method, "head": job.head, "freeze": job.freeze.model_dump(mode="json"),
           "train_fraction": job.train_fraction, "lr": job.lr, "weight_decay": job.weight_decay,
           "epochs": job.epochs, "batch_size": job.batch_size, "max_length": job.max_length,
           "select_metric": job.select_metric, "num_workers_per_task": scaling.num_workers,
           "use_gpu": scaling.use_gpu}
    if job.module.section:
        out[job.module.section] = job.module.hyperparameters()
    return out


def task_fingerprint(job: AdaptJob, scaling: Scaling, backbone_fp: str, data_digests: dict[str, str]) -> str:
    return fingerprint({"adapt": training_fields(job, scaling), "seed": job.seed, "backbone": backbone_fp,
                        "task": job.task, "labels": list(job.labels), "data": data_digests})
