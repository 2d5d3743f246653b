"""Gates every consumer of curated data checks itself, so they hold whichever way a step is started.

``require_contracts(ctx)`` is called first thing by the entry function of every step that reads curated data
(pretrain, adapt, tune, transfer, publish): it re-reads the contracts step's record from disk and refuses unless
it says *succeeded*, for that exact curate version, with at least one dataset checked.

``require_gates(step, results)`` is the same rule for a step's ``Step.gates`` (the drift gate), checked by the
executor before every such step: each gate must have run in this walk, its record on disk must say *succeeded*,
for the curate version the step reads. Gates are not inputs: their versions are not part of the step's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modpipe.executor import StepContext, StepResult
    from modpipe.steps import Step


class GateError(RuntimeError):
    """A consumer was handed data that has not passed its contracts."""


def require_contracts(ctx: StepContext) -> None:
    from modpipe.executor import load_result

    curate, contracts = ctx.inputs.get("curate"), ctx.inputs.get("contracts")
    if curate is None:
        raise GateError(f"{ctx.step}: no curate output given")
    if contracts is None:
        raise GateError(f"{ctx.step}: refusing curate output {curate.dir}: no data-contract record for it "
                        f"(run the contracts step first)")
    record = load_result(contracts.dir)  # what is on disk, not what the caller says
    if record is None:
        raise GateError(f"{ctx.step}: refusing curate output {curate.dir}: no contract record at {contracts.dir}")
    if not record.succeeded:
        raise GateError(f"{ctx.step}: refusing curate output {curate.dir}: its data contracts failed: "
                        f"{record.record.get('error')}")
    checked = (record.record.get("upstream") or {}).get("curate", {}).get("version")
    if checked != curate.version:
        raise GateError(f"{ctx.step}: refusing curate output {curate.dir} (version {curate.version}): the contract "
                        f"record {contracts.dir} checked curate version {checked}")
    if int(record.outputs.get("datasets", 0)) < 1:
        raise GateError(f"{ctx.step}: refusing curate output {curate.dir}: its contract record checked no dataset")


def require_gates(step: Step, results: dict[str, StepResult]) -> None:
    """Refuse ``step`` unless each of its gates succeeded in this run for the curate output it reads."""
    from modpipe.executor import load_result

    curate = results.get("curate")
    for gate in step.gates:
        given = results.get(gate)
        if given is None:
            raise GateError(f"{step.name}: the {gate} gate has not run for this run (run the step through the "
                            f"executor: modpipe {step.name}, the Prefect flows or modpipe.pipeline.run)")
        record = load_result(given.dir)  # what is on disk, not what the caller says
        if record is None or not record.succeeded:
            why = (record.record.get("error") if record is not None else None) or f"no record at {given.dir}"
            raise GateError(f"{step.name}: refused: the {gate} gate did not pass: {why}")
        checked = record.outputs.get("curate_version")
        if curate is not None and checked != curate.version:
            raise GateError(f"{step.name}: refused: the {gate} record {given.dir} checked curate version {checked}, "
                            f"this step reads {curate.version}")
