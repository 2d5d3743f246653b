"""The DAG, declared once: every step, the library function that runs it, what it reads.

The CLI (``modpipe run``, ``modpipe <step>``), the Ray job entrypoints (which are the CLI) and the Prefect
flows (the DAG flow and the per-step flow behind every deployment) all walk this list through
``modpipe.executor``; nobody writes the chain again. Adding a stage: its own folder with an entry function
``run(cfg, ctx) -> outputs`` (``ctx``: ``executor.StepContext``) and one entry here.

A step's version hashes ``code_version`` (bump it when the step's behaviour changes), the versioned fields of
its ``sections`` (``config_base.unversioned`` marks the others), ``external`` digests (user files, suites) and
its ``inputs``' versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from pydantic import BaseModel

from modpipe.config_base import versioned_fields

if TYPE_CHECKING:
    from modpipe.config import PipelineConfig


@dataclass(frozen=True)
class Step:
    name: str
    fn: str
    """``module:function`` of the entry function ``run(cfg, ctx) -> dict`` (imported only when the step runs)."""
    sections: tuple[str, ...]
    """Config sections (or top-level fields such as ``seed``) whose versioned fields change the output."""
    inputs: tuple[str, ...] = ()
    """Upstream steps whose outputs this step reads (their versions are part of this one's)."""
    code_version: int = 1
    external: str | None = None
    """``module:function`` returning JSON digests of inputs from outside the run dir (user files, suites)."""
    in_dag: bool = True
    """Part of ``modpipe run``; others (transfer) run on demand."""
    gates: tuple[str, ...] = ()
    """Gate steps that must have succeeded in the same run, for the same curate output, before this one runs
    (planned and checked by the executor, ``gates.require_gates``) but whose versions are not part of this one's:
    the drift gate's reference changes re-run the check, not its consumers."""
    help: str = ""

    def function(self) -> Callable[..., dict[str, Any]]:
        from modpipe.executor import import_function

        return import_function(self.fn)

    def config_of(self, cfg: PipelineConfig) -> dict[str, Any]:
        out = {}
        for name in self.sections:
            value = getattr(cfg, name)
            out[name] = versioned_fields(value) if isinstance(value, BaseModel) else value
        return out

    def external_of(self, cfg: PipelineConfig) -> Any:
        if self.external is None:
            return None
        from modpipe.executor import import_function

        return import_function(self.external)(cfg)


STEPS: tuple[Step, ...] = (
    Step("curate", "modpipe.curate:run", ("seed", "corpus", "curate", "tasks"), (), code_version=5,
         external="modpipe.curate:source_digest",
         help="Harvest/read raw text, clean, dedup, filter, decontaminate, tokenize into shards."),
    Step("contracts", "modpipe.contracts:run", ("seed", "contracts"), ("curate",),
         external="modpipe.contracts:suites_digest",
         help="Check every curated dataset against its Great Expectations suite (the gate of every consumer)."),
    Step("profile", "modpipe.drift:run_profile", ("drift",), ("curate",),
         help="Profile the curated data (lengths, token counts, language mix, label shares, top tokens)."),
    Step("drift", "modpipe.drift:run", ("drift",), ("curate", "profile"), external="modpipe.drift:reference_digest",
         help="Compare the profile with the reference profile of the same pipeline name (a gate of every consumer)."),
    Step("pretrain", "modpipe.pretrain:run", ("seed", "model", "pretrain"), ("curate", "contracts"),
         code_version=4, external="modpipe.pretrain:deepspeed_digest", gates=("drift",),
         help="Pretrain the backbone (DeepSpeed ZeRO inside Ray Train)."),
    Step("adapt", "modpipe.adapt:run", ("seed", "adapt"), ("curate", "contracts", "pretrain"), gates=("drift",),
         help="Train one module + head per task on the frozen backbone, tasks in parallel."),
    Step("baseline", "modpipe.baseline:run", ("seed", "baseline"), ("curate", "contracts"), code_version=2,
         gates=("drift",),
         help="Classical baselines per task (majority; TF-IDF + logistic regression) on the modules' own splits."),
    Step("shift", "modpipe.evaluate.shift:run", ("seed",), ("curate", "contracts", "pretrain"), gates=("drift",),
         help="Domain shift per task: backbone perplexity on the task's test text vs pretraining text, unigram JS."),
    Step("tune", "modpipe.tune:run", ("seed", "adapt", "tune"), ("curate", "contracts", "pretrain"), gates=("drift",),
         help="Ray Tune (ASHA) over module hyperparameters; the best trial's module is the task's candidate."),
    Step("publish", "modpipe.registry:run", ("publish",),
         ("curate", "contracts", "pretrain", "adapt", "baseline", "tune"), code_version=2, gates=("drift",),
         help="Gate the candidates (tune's best where tuned, else adapt's) and register those that pass."),
    Step("transfer", "modpipe.evaluate.transfer:run", ("seed", "adapt", "transfer"),
         ("curate", "contracts", "pretrain", "baseline", "shift"), code_version=2, in_dag=False, gates=("drift",),
         help="Transfer report: every task x module method (and train fraction), router, external baselines."),
)
BY_NAME = {s.name: s for s in STEPS}


def get(name: str) -> Step:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(BY_NAME)}") from None


def dag_targets() -> list[str]:
    return [s.name for s in STEPS if s.in_dag]


def plan(targets: Iterable[str]) -> list[Step]:
    """The targets, everything they read and their gates, in list order (the list is topologically ordered)."""
    needed: set[str] = set()

    def visit(name: str) -> None:
        if name not in needed:
            needed.add(name)
            for up in get(name).inputs + get(name).gates:
                visit(up)

    for t in targets:
        visit(t)
    return [s for s in STEPS if s.name in needed]
