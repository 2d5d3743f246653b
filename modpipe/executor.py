"""One executor for every step of the DAG, whichever way a run is started (CLI, Prefect, Ray job, library).

A step's output lives in ``<run_dir>/<step>/<step>-<version>/``, where ``version`` hashes the step's name and
code version, the config fields that change its output (every field of its sections not marked
``unversioned``), digests of its external inputs (user files, suites) and its upstream steps' versions: an edit
that changes nothing a step reads re-runs nothing, a real one re-runs exactly what depends on it.

Each step dir holds ``status.json`` (state, run id, resolved config, versions, inputs, library versions, git
commit, host, timings, outputs relative to the dir). Rules, as in Marin's executor:

- succeeded -> skipped (its recorded outputs are returned);
- failed -> refused with the recorded reason unless ``force`` (the failed attempt stays on disk as
  ``<step>-<version>.failed-<run_id>/``, with whatever it had written, e.g. a failed contract's Data Docs);
- a lock per step dir (``flock`` on ``.<step>-<version>.lock``, which names the holder): a second run building the
  same step refuses at once naming the other run (run id, pid, host, start); a dead holder's lock is free again
  (the kernel drops it with the process), so its build is taken over;
- the output is built in ``.tmp-<step>-<version>-<run_id>/`` and renamed into place; temp dirs a killed build
  left are removed by the next holder of the lock; ``work`` (``.work-<step>-<version>/``) is kept across
  attempts for resumable state (curate's shards, Ray Train/Tune runs) and removed after success.

Nothing here deletes or overwrites a finished step dir, another run's temp dir, or a failed record.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import logging
import os
import platform
import secrets
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from modpipe.config_base import check_name
from modpipe.lineage import fingerprint, git_commit, library_versions
from modpipe.rundir import ensure_run_dir
from modpipe.steps import Step

if TYPE_CHECKING:
    from modpipe.config import PipelineConfig

log = logging.getLogger("modpipe.executor")

STATUS = "status.json"
SUCCEEDED, FAILED, RUNNING = "succeeded", "failed", "running"


class StepError(RuntimeError):
    """A step cannot run: its record says failed, another run holds it, or an upstream step did not succeed."""


class StepBusy(StepError):
    """Another run is building this step right now."""


class StepFailed(StepError):
    """The step failed (now or in an earlier run, and ``force`` was not given)."""


def new_run_id() -> str:
    """``<UTC time>-<6 hex>``: sortable, unique, safe in paths, tags and filters."""
    return time.strftime("%Y%m%dt%H%M%Sz", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass
class StepResult:
    """A step's record as read from its ``status.json`` (outputs resolved against its dir)."""

    name: str
    version: str
    dir: Path
    state: str
    record: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0

    def __getitem__(self, key: str) -> Any:
        return self.outputs[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.outputs.get(key, default)

    @property
    def succeeded(self) -> bool:
        return self.state == SUCCEEDED

    def summary(self) -> dict[str, Any]:
        return {"step": self.name, "version": self.version, "state": self.state, "dir": str(self.dir),
                "skipped": self.skipped, "seconds": self.seconds, "run_id": self.record.get("run_id"),
                "outputs": self.outputs, "error": self.record.get("error")}


@dataclass
class StepContext:
    """What a step's entry function gets besides the config."""

    step: str
    version: str
    run_id: str
    out: Path
    """Temp dir to write the outputs into; renamed to ``final`` when the function returns."""
    work: Path
    """Scratch kept across attempts of this version (resumable state); removed after success."""
    final: Path
    inputs: dict[str, StepResult]
    """Upstream steps' results by step name."""
    failed_dir: Path | None = None
    """Where ``out`` goes if the function raises (so an error message can name files that will exist)."""


def read_status(step_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(step_dir) / STATUS).read_text())
    except (OSError, ValueError):
        return None


def load_result(step_dir: str | Path) -> StepResult | None:
    """The result recorded in a step dir (a finished or a failed one), or None."""
    step_dir = Path(step_dir)
    rec = read_status(step_dir)
    if rec is None:
        return None
    return StepResult(rec["step"], rec["version"], step_dir, rec["state"], rec, _resolve(rec.get("outputs", {}),
                                                                                           step_dir))


def _resolve(outputs: dict[str, Any], root: Path) -> dict[str, Any]:
    """Outputs are stored with paths inside the step dir as ``{"path": rel}`` and other paths inside the run dir
    as ``{"run_path": rel}`` (so a run dir can be moved whole); give them back as absolute paths."""
    run_root = root.parent.parent

    def one(v):
        if isinstance(v, dict) and set(v) == {"path"}:
            return str(root / v["path"])
        if isinstance(v, dict) and set(v) == {"run_path"}:
            return str(run_root / v["run_path"])
        if isinstance(v, dict):
            return {k: one(x) for k, x in v.items()}
        if isinstance(v, list):
            return [one(x) for x in v]
        return v
    return {k: one(v) for k, v in outputs.items()}


def _relativize(outputs: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Paths under the temp dir become ``{"path": rel}`` (valid after the rename), other paths under the run dir
    ``{"run_path": rel}``; anything else stays as it is."""
    run_root = tmp.parent.parent

    def one(v):
        if isinstance(v, (str, Path)) and str(v).startswith(str(tmp) + os.sep):
            return {"path": str(Path(v).relative_to(tmp))}
        if isinstance(v, (str, Path)) and str(v) == str(tmp):
            return {"path": "."}
        if isinstance(v, (str, Path)) and str(v).startswith(str(run_root) + os.sep):
            return {"run_path": str(Path(v).relative_to(run_root))}
        if isinstance(v, dict):
            return {k: one(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [one(x) for x in v]
        return v
    return {k: one(v) for k, v in outputs.items()}


def step_version(step: Step, cfg: PipelineConfig, upstream: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """(version, what it hashes): code version, versioned config fields, external inputs, upstream versions."""
    basis = {"step": step.name, "code_version": step.code_version, "config": step.config_of(cfg),
             "external": step.external_of(cfg), "upstream": dict(sorted(upstream.items()))}
    return fingerprint(basis), basis


class _Lock:
    """An exclusive, non-blocking ``flock`` on a small file that names its holder."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self, holder: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                other = json.loads(os.pread(fd, 65536, 0) or b"{}")
            except ValueError:
                other = {}
            os.close(fd)
            raise StepBusy(
                f"{holder['step']}-{holder['version']} is being built by run {other.get('run_id', '?')} (pid "
                f"{other.get('pid', '?')} on {other.get('host', '?')}, since {other.get('started_at', '?')}); "
                f"wait for it to finish, then run again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _latest_failure(root: Path, base: str) -> dict[str, Any] | None:
    failures = [r for d in root.glob(f"{base}.failed-*") if (r := read_status(d)) is not None]
    return max(failures, key=lambda r: r.get("finished", 0)) if failures else None


def _free(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... whichever does not exist yet (a run may fail a step twice)."""
    n, out = 1, path
    while out.exists():
        n += 1
        out = path.with_name(f"{path.name}-{n}")
    return out


def _write_status(path: Path, record: dict[str, Any]) -> None:
    tmp = path / f".{STATUS}.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path / STATUS)


def execute(step: Step, cfg: PipelineConfig, inputs: dict[str, StepResult], *, run_id: str,
            force: bool = False) -> StepResult:
    """Run one step (or return its finished result); see the module docstring for the rules."""
    for name in step.inputs:
        up = inputs.get(name)
        if up is None or not up.succeeded:
            raise StepError(f"{step.name}: upstream step {name} has not succeeded")
    if step.gates:
        from modpipe.gates import require_gates

        require_gates(step, inputs)
    check_name(run_id, "run id")  # it names temp dirs, failed records, summaries and registry tags
    ensure_run_dir(cfg)  # private (0700) unless run_dir_access says otherwise, before anything is written
    version, basis = step_version(step, cfg, {n: inputs[n].version for n in step.inputs})
    root = cfg.run_path / step.name
    base = f"{step.name}-{version}"
    final = root / base
    done = load_result(final)
    if done is not None and done.succeeded:
        done.skipped = True
        log.info("step %s: already built (%s, run %s)", step.name, final, done.record.get("run_id"))
        return done

    holder = {"step": step.name, "version": version, "run_id": run_id, "pid": os.getpid(),
              "host": platform.node(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    lock = _Lock(root / f".{base}.lock")
    lock.acquire(holder)
    try:
        done = load_result(final)  # another run may have finished it between our first look and the lock
        if done is not None and done.succeeded:
            done.skipped = True
            return done
        failure = _latest_failure(root, base)
        if failure is not None and not force:
            raise StepFailed(f"{step.name} failed in run {failure.get('run_id')}: {failure.get('error')}\n"
                             f"(record: {failure.get('record_dir')}; rerun with --force to try again)")
        for stale in root.glob(f".tmp-{base}-*"):  # temp dirs of killed builds: we hold the lock
            log.info("step %s: removing %s left by a killed build", step.name, stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".tmp-{base}-{run_id}"
        tmp.mkdir(parents=True)
        work = root / f".work-{base}"
        work.mkdir(exist_ok=True)
        started = time.time()
        record = {
            **holder, "state": RUNNING, "started": started, "config": basis["config"],
            "external": basis["external"], "upstream": {n: {"version": inputs[n].version, "dir": str(inputs[n].dir)}
                                                        for n in step.inputs},
            "gates": {g: {"version": inputs[g].version, "dir": str(inputs[g].dir)} for g in step.gates},
            "code_version": step.code_version, "libraries": library_versions(), "git_commit": git_commit(),
        }
        _write_status(tmp, record)
        failed = _free(root / f"{base}.failed-{run_id}")
        ctx = StepContext(step.name, version, run_id, tmp, work, final, {n: inputs[n] for n in step.inputs},
                          failed)
        log.info("step %s: building %s (run %s)", step.name, final, run_id)
        try:
            outputs = step.function()(cfg, ctx) or {}
        except Exception as err:  # Ctrl-C / SIGTERM are not failures: the next run resumes from `work`
            reason = str(err).strip() or type(err).__name__
            _write_status(tmp, {**record, "state": FAILED, "finished": time.time(),
                                "seconds": round(time.time() - started, 3), "error": f"{type(err).__name__}: {reason}",
                                "error_type": type(err).__name__, "traceback": traceback.format_exc(),
                                "record_dir": str(failed)})
            os.replace(tmp, failed)
            log.error("step %s failed (record: %s): %s", step.name, failed, reason.splitlines()[0])
            raise
        record.update(state=SUCCEEDED, finished=time.time(), seconds=round(time.time() - started, 3),
                      outputs=_relativize(outputs, tmp))
        _write_status(tmp, record)
        os.replace(tmp, final)
        shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.release()
    result = load_result(final)
    assert result is not None
    result.seconds = record["seconds"]
    log.info("step %s: succeeded in %.1f s -> %s", step.name, record["seconds"], final)
    return result


Runner = Callable[[Callable[[], StepResult], "Step"], StepResult]


def run_steps(cfg: PipelineConfig, targets: Iterable[str], *, run_id: str | None = None, force: bool = False,
              runner: Runner | None = None) -> dict[str, StepResult]:
    """Run ``targets`` and every step they read, in list order; returns each step's result by name.

    ``runner(call, step)`` wraps each step's execution (the Prefect flows make it a task; ``call(force)`` runs
    it, a retry passing ``force=True``); by default ``call()`` is called directly. The first step that fails stops the walk (its exception propagates)."""
    from modpipe.steps import plan

    run_id = run_id or new_run_id()
    results: dict[str, StepResult] = {}
    for step in plan(targets):
        def call(force_: bool = force, step: Step = step) -> StepResult:
            return execute(step, cfg, results, run_id=run_id, force=force_)
        results[step.name] = runner(call, step) if runner else call()
    return results


def import_function(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
