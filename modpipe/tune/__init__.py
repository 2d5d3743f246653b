"""Tune stage: Ray Tune per task over module kinds (``tune.space``: the kind itself, its hyperparameters, lr, head,
freeze ``top_k``), ASHA over epochs, within a trial budget; each task's best trial's module is its candidate.

Step entry ``run(cfg, ctx)``: the contracts gate, then (``cfg.tune.enabled``) ``sweep`` on the backbone of
``ctx.inputs["pretrain"]`` and the tasks of ``ctx.inputs["curate"]`` with the step's ``out`` and ``work`` dirs;
disabled, it returns ``{"modules": {}}``. Library function ``sweep(cfg, backbone, tasks_dir, out, work)`` ->
``{"modules": {task: dir}, "best_config", "trials", "best_metric": {task: value}, "tune_dir", "failed": {task:
reason}}``.

Tasks: ``tune.tasks`` (those in tasks_dir), else the deprecated ``tune.task``, else every task adapt trains. Per
task, the points of the space (``space.py``: ``tune.num_samples`` distinct points, seeded by ``cfg.seed``, spread
over the kinds; or the whole grid) are one grid dimension of a Tuner, so a restored sweep has the same points.
Trials run at once as far as the cluster's free CPUs/GPUs hold (one trainer's demand each) unless
``tune.max_concurrent_trials`` caps them. Tasks are swept one after the other; one task's failure does not stop
the others.

Ray 2.60 runs Train V2, where ``Tuner(TorchTrainer)`` is gone: each trial is a function trainable that builds and
fits the adapt stage's TorchTrainer (same train function, same data) with ``TuneReportCallback``, which forwards
every epoch's report (``epoch``, ``val_accuracy``, ``val_macro_f1``) to Tune; ASHA (``time_attr="epoch"``) stops
weak trials after ``grace_period`` epochs. The trial itself holds no CPU: its Train workers do. A trial that trains
to the end writes its module dir (``modpipe.adapt.trainer.write_module``: module.json, weights, metrics.json, test
predictions) from its driver.

Everything resumable lives under ``work`` (kept across killed attempts): the experiment in ``work/ray/<task>``
(restored with ``Tuner.restore``: finished trials are not run again, a trial that was running resumes its Train
run from its last epoch), the trials' Train runs in ``work/train/trial-<id>``, their module dirs in
``work/modules/<task>-<fp>``. Ray Tune unpickles its own state on restore, so every such file's sha256 is sealed
outside the run dir as it is written (``seal.py``) and a restore over a file this driver did not write is refused.
The best trial is the best (trial, epoch) on ``tune.metric`` over the validation split; its module is copied whole
to ``out/modules/<task>/``; ``out/<task>/best_config.json`` (task, method, params, lr, head, top_k, metric,
best_metric, best_epoch, trial) and ``out/<task>/trials.json``; ``out/best_config.json`` is the first task's record
with ``tasks`` (every task's), ``out/trials.json`` every trial with its task. A best trial that ASHA stopped has no
module dir yet: it is written from its Train run's checkpoints of the epochs Tune saw.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modpipe.adapt import select_tasks
from modpipe.adapt.data import TaskDataError, list_tasks, load_task
from modpipe.adapt.job import AdaptJob, Scaling, TrainRun, make_job, module_config, task_fingerprint, training_fields
from modpipe.config import PipelineConfig
from modpipe.tune.space import label, points, trial_job

if TYPE_CHECKING:
    from modpipe.executor import StepContext

log = logging.getLogger("modpipe.tune")

BEST_FILE = "best_config.json"
TRIALS_FILE = "trials.json"
MODULES_DIR = "modules"
TRIAL_DRIVER_MEMORY = 64 * 1024 * 1024  # bytes of Ray's "memory" resource per trial


class TuneError(RuntimeError):
    """The sweep could not run or no trial reported the metric."""


def run(cfg: PipelineConfig, ctx: StepContext) -> dict[str, Any]:
    """Step entry: the contracts gate, then the sweep (nothing more when ``tune.enabled`` is false)."""
    from modpipe.gates import require_contracts

    require_contracts(ctx)
    if not cfg.tune.enabled:
        log.info("tune: disabled")
        return {"modules": {}}
    return sweep(cfg, ctx.inputs["pretrain"]["backbone"], ctx.inputs["curate"]["tasks_dir"], ctx.out, ctx.work)


def tasks_to_tune(cfg: PipelineConfig, tasks_dir: str | Path) -> list[str]:
    """``tune.tasks`` present in tasks_dir, else the deprecated ``tune.task``, else the tasks adapt trains."""
    available = list_tasks(tasks_dir)
    wanted = list(cfg.tune.tasks) or ([cfg.tune.task] if cfg.tune.task else [])
    chosen = [t for t in wanted if t in available]
    if wanted and not chosen:
        log.warning("tune: none of %s in %s; tuning the tasks adapt trains", wanted, tasks_dir)
    if not chosen:
        chosen = select_tasks(cfg, tasks_dir)
    if not chosen:
        raise TuneError(f"no tasks in {tasks_dir}")
    return chosen


def trial_run(base: TrainRun, job: AdaptJob, scaling: Scaling, trial_id: str) -> TrainRun:
    """Where a trial's Train run (``trial-<id>``) and module dir (keyed by the trial's own job) live."""
    fp = task_fingerprint(job, scaling, base.backbone_fingerprint, base.inputs["data_digests"])
    return base.model_copy(update={"name": f"trial-{trial_id}", "fp": fp,
                                   "config": {"adapt": training_fields(job, scaling), "seed": job.seed,
                                              "trial_id": trial_id}})


def trial_driver(config: dict, job: AdaptJob, kinds: dict, scaling: Scaling, run: TrainRun) -> None:
    """One Tune trial: the adapt TorchTrainer with this trial's point, reporting through Tune; when it trains to
    the end, its module dir (as adapt writes it) under ``run.module_root``."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from modpipe.adapt.trainer import make_trainer, write_module

    job = trial_job(job, config["point"], kinds)
    run = trial_run(run, job, scaling, ray.tune.get_context().get_trial_id())
    # No timestamps in the name: a restored trial reruns this and Train resumes its run from the last epoch.
    trainer = make_trainer(job, scaling, name=run.name, storage=run.storage, max_failures=run.max_failures,
                           callbacks=[TuneReportCallback()])
    t0 = time.time()
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    write_module(job, run, result.best_checkpoints or [], str(result.path), time.time() - t0, fit_started=t0)


def sweep(cfg: PipelineConfig, backbone: str | Path, tasks_dir: str | Path, out: Path, work: Path) -> dict[str, Any]:
    """Sweep every task to tune (restoring what ``work`` holds); best modules and records go to ``out``."""
    from modpipe.tune.seal import state_dir

    out, work = Path(out), Path(work).resolve()  # absolute: Ray workers run in their own directories
    state = state_dir(cfg.tune.state_dir, cfg.run_path)
    names = tasks_to_tune(cfg, tasks_dir)
    records: dict[str, dict[str, Any]] = {}
    trials: list[dict[str, Any]] = []
    modules: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in names:
        try:
            record, task_trials = sweep_task(cfg, name, backbone, tasks_dir, out, work, state)
        except Exception as err:  # noqa: BLE001 - one task's failure does not stop the others
            from modpipe.tune.seal import SealError

            if isinstance(err, SealError):
                raise
            log.error("tune: %s failed: %s", name, err)
            failed[name] = f"{type(err).__name__}: {err}"
            continue
        records[name], modules[name] = record, str(out / MODULES_DIR / name)
        trials += task_trials
    if not records:
        raise TuneError("every task failed: " + "; ".join(f"{t}: {r}" for t, r in failed.items()))
    first = next(iter(records.values()))
    (out / BEST_FILE).write_text(json.dumps({**first, "tasks": records, "failed": failed}, indent=2))
    (out / TRIALS_FILE).write_text(json.dumps(trials, indent=2))
    return {"modules": modules, "best_config": str(out / BEST_FILE), "trials": str(out / TRIALS_FILE),
            "best_metric": {t: r["best_metric"] for t, r in records.items()}, "tune_dir": str(out),
            "failed": failed}


def sweep_task(cfg: PipelineConfig, name: str, backbone: str | Path, tasks_dir: str | Path, out: Path, work: Path,
               state: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One task's sweep: (best record, trials); the best module copied to ``out/modules/<task>``."""
    from modpipe.models.fingerprint import read_backbone_fingerprint

    t = cfg.tune
    backbone_fp = read_backbone_fingerprint(backbone)
    try:
        task = load_task(tasks_dir, name)
    except TaskDataError as err:
        raise TuneError(f"tune: task {name}: {err}") from None
    from modpipe.evaluate.problems import get, higher_is_better, selection

    metric = selection(get(task.problem), t.metric)  # regression: val_rmse, whatever tune.metric says
    sign = 1.0 if higher_is_better(metric) else -1.0
    job = make_job(cfg, task, backbone).model_copy(update={"epochs": t.epochs, "select_metric": metric})
    kinds = {k: module_config(cfg.adapt, k) for k in t.methods}
    scaling = Scaling.of(cfg.adapt)
    base = TrainRun(name="", storage=str(work / "train"), max_failures=cfg.adapt.max_failures,
                    module_root=str(work / MODULES_DIR), fp="", backbone_fingerprint=backbone_fp, config={},
                    inputs={"backbone": job.backbone, "task_dir": job.task_dir, "data_digests": task.digests,
                            "rows": {s: len(task.splits[s]) for s in task.splits},
                            "quarantined_rows": len(task.rejects)})
    pts = points(t, cfg.seed)
    grid, exp_path = _fit_sweep(cfg, job, kinds, scaling, base, pts, work / "ray", name, state)
    trials = _summarise(grid, metric, name, sign)
    scored = [tr for tr in trials if tr["best_metric"] is not None]
    if not scored:
        errors = "; ".join(f"{tr['trial_id']}: {tr['error']}" for tr in trials if tr["error"]) or "no results"
        raise TuneError(f"no trial reported {metric} (sweep {exp_path}): {errors}")
    best = max(scored, key=lambda tr: (sign * tr["best_metric"], -tr["trial_index"]))
    module = _best_module(job, kinds, scaling, base, best)
    dest = out / MODULES_DIR / name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(module, dest)
    record = {
        "task": name, "method": best["method"], "params": best["params"], "lr": best["lr"], "r": best["r"],
        "head": best["head"], "top_k": best["top_k"], "label": best["label"], "metric": metric,
        "best_metric": best["best_metric"], "best_epoch": best["best_epoch"], "trial_id": best["trial_id"],
        "num_trials": len(trials), "search": t.search, "scheduler": t.scheduler,
        "stopped_early": sum(1 for tr in trials if tr["epochs_run"] < t.epochs and not tr["error"]),
        "failed_trials": sum(1 for tr in trials if tr["error"]), "epochs": t.epochs, "sweep": str(exp_path),
        "module_fingerprint": Path(module).name.removeprefix(f"{name}-"),
    }
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / BEST_FILE).write_text(json.dumps(record, indent=2))
    (out / name / TRIALS_FILE).write_text(json.dumps(trials, indent=2))
    log.info("tune: %s: best %s = %.4f with %s (trial %s, epoch %s) -> %s", name, metric, best["best_metric"],
             best["label"], best["trial_id"], best["best_epoch"], dest)
    return record, trials


def _best_module(job: AdaptJob, kinds: dict, scaling: Scaling, base: TrainRun, best: dict[str, Any]) -> Path:
    """The best trial's module dir: the one its driver wrote, else (ASHA stopped it, or its driver died after
    training) one written here from its Train run's checkpoints of the epochs Tune saw."""
    from ray.train import Result

    from modpipe.adapt.trainer import write_module
    from modpipe.lineage import StepDir

    tjob = trial_job(job, best["point"], kinds)
    run = trial_run(base, tjob, scaling, best["trial_id"])
    step = StepDir(run.module_root, tjob.task, run.fp)
    if step.done():
        return step.path
    train_path = Path(run.storage) / run.name
    log.info("tune: best trial %s has no module dir (stopped at epoch %d); writing it from %s", best["trial_id"],
             best["epochs_run"], train_path)
    result = Result.from_path(str(train_path))
    seen = [(c, m) for c, m in result.best_checkpoints or [] if m and m.get("epoch", 0) <= best["epochs_run"]]
    started = min((m.get("started_at", 0.0) for _, m in seen), default=time.time())
    finished = max((m.get("reported_at", started) for _, m in seen), default=started)
    write_module(tjob, run, seen, str(train_path), finished - started, fit_started=started)
    return step.path


def max_concurrent(cfg: PipelineConfig, scaling: Scaling) -> int:
    """``tune.max_concurrent_trials``, else as many trainers as the cluster's free CPUs/GPUs hold (at least 1)."""
    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    from modpipe.adapt.schedule import capacity

    free, _ = capacity()
    fits = [math.floor(free.get(k, 0.0) / v + 1e-9) for k, v in scaling.demand().items() if v > 0]
    return max(1, min(fits) if fits else 1)


def _fit_sweep(cfg: PipelineConfig, job: AdaptJob, kinds: dict, scaling: Scaling, base: TrainRun,
               pts: list[dict[str, Any]], storage: Path, exp_name: str, state: Path):
    """Fit a new Tuner, or restore the one a killed attempt left under the same name (after checking its seal)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from modpipe.progress import task, tune_callback
    from modpipe.raycluster import ensure_ray
    from modpipe.tune.seal import Seal, seal_callback

    t = cfg.tune
    ensure_ray(cfg.ray)
    exp_path = storage / exp_name
    seal = Seal(exp_path, state)
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, job=job, kinds=kinds, scaling=scaling, run=base),
        # The trial only drives its TorchTrainer; the Train workers hold the CPUs/GPUs. Tune refuses an all-zero
        # request and any CPU fraction would keep the last trainer off a full node, so reserve a little memory.
        {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY},
    )
    if tune.Tuner.can_restore(str(exp_path)):
        seal.verify()  # raises SealError before anything is unpickled
        log.info("tune: %s: restoring the sweep at %s (seal %s)", job.task, exp_path, seal.path)
        tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=True)
    else:
        concurrent = max_concurrent(cfg, scaling)
        log.info("tune: %s: %d trial(s) (<= %d at once) over %s, %s over %d epochs (grace %d, reduction %g): %s",
                 job.task, len(pts), concurrent, ", ".join(t.methods), t.scheduler, t.epochs, t.grace_period,
                 t.reduction_factor,
                 "; ".join(label(p) for p in pts))
        # max_t one past the last epoch: a trial that trains to the end returns from fit() by itself instead of
        # being stopped (killed) by the scheduler at its final report.
        scheduler = (ASHAScheduler(time_attr="epoch", max_t=t.epochs + 1, grace_period=t.grace_period,
                                   reduction_factor=t.reduction_factor)
                     if t.scheduler == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search(pts)},
            tune_config=tune.TuneConfig(metric=job.select_metric, mode=_mode(job.select_metric), num_samples=1,
                                        scheduler=scheduler,
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=exp_name, storage_path=str(storage), verbose=1,
                                      callbacks=[free_stopped_trial_workers(), seal_callback(seal),
                                                 tune_callback(task(f"tune/{job.task}", len(pts),
                                                                    f"tune {job.task} (trials)"),
                                                               job.select_metric)]),
        )
    seal.record()  # tuner.pkl, written by the Tuner just now
    before = _placement_groups()
    grid = tuner.fit()
    seal.record()
    _remove_leftover_placement_groups(before)
    return grid, exp_path


def free_stopped_trial_workers():
    """A Tune callback (see ``_FreeStoppedTrialWorkers``); ray.tune is imported only when a sweep runs."""
    from ray.tune import Callback

    return type("FreeStoppedTrialWorkers", (_FreeStoppedTrialWorkers, Callback), {})()


class _FreeStoppedTrialWorkers:
    """Tune callback mixin: during the sweep, remove placement groups that stopped trials left behind.

    When ASHA stops a trial its driver is killed, and the TorchTrainer's worker-group placement group can stay
    reserved (Train V2's cleaner actor does not always get to it); on a small cluster the next trial then waits
    for CPUs forever. Every few seconds this looks for placement groups of this job created during the sweep
    that no live actor uses, and removes those found orphaned on every check for ``ORPHAN_GRACE_S`` (a starting
    trial's group gets its actors right after creation; on a loaded machine the state API can take many seconds
    to list them: two checks 3 s apart once removed a starting trial's group). Needs the state API (dashboard);
    without it the sweep goes on and the leftovers are removed after the sweep.
    """

    EVERY_S = 3.0
    ORPHAN_GRACE_S = 30.0

    def __init__(self) -> None:
        import ray

        self.before = _placement_groups()
        self.job = ray.get_runtime_context().get_job_id()
        self.suspects: dict[str, float] = {}
        """Orphaned placement group -> when it was first seen orphaned (monotonic seconds)."""
        self.last = 0.0
        self.enabled = True

    def _orphans(self) -> set[str]:
        import ray
        from ray.util.state import list_actors

        ours = {pg for pg, info in ray.util.placement_group_table().items()
                if pg not in self.before and pg.endswith(self.job) and info.get("state") == "CREATED"}
        if not ours:
            return set()
        used = {a.placement_group_id for a in list_actors(address=ray.get_runtime_context().gcs_address,
                                                           filters=[("state", "!=", "DEAD")], limit=10_000,
                                                           detail=True, raise_on_missing_output=False)
                if a.placement_group_id}
        return ours - used

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        import time

        import ray
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        if not self.enabled or time.monotonic() - self.last < self.EVERY_S:
            return
        self.last = time.monotonic()
        try:
            orphans = self._orphans()
        except Exception as err:  # noqa: BLE001 - no state API (no dashboard): clean up after the sweep only
            log.warning("tune: cannot list actors (%s); leftover placement groups are removed after the sweep", err)
            self.enabled = False
            return
        now = time.monotonic()
        self.suspects = {pg: self.suspects.get(pg, now) for pg in orphans}  # orphaned on every check since then
        for pg_id, since in list(self.suspects.items()):
            if now - since >= self.ORPHAN_GRACE_S:
                log.info("tune: removing placement group %s left by a stopped trial", pg_id)
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
                del self.suspects[pg_id]


def _placement_groups() -> set[str]:
    import ray

    return set(ray.util.placement_group_table())


def _remove_leftover_placement_groups(before: set[str]) -> None:
    """Free the workers of trials that ASHA stopped mid-fit.

    Stopping a trial kills its driver; the TorchTrainer it was fitting leaves its worker group's placement group
    behind (Train V2 relies on a cleaner actor that does not always get to it), holding CPUs until the job ends.
    Once the sweep is over none of its trials runs, so this job's placement groups created during it are removed.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = ray.get_runtime_context().get_job_id()  # ids of objects a job creates end with its job id
    for pg_id, info in ray.util.placement_group_table().items():
        if pg_id in before or not pg_id.endswith(job) or info.get("state") == "REMOVED":
            continue
        log.info("tune: removing placement group %s left by a stopped trial", pg_id)
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))


def _mode(metric: str) -> str:
    from modpipe.evaluate.problems import higher_is_better

    return "max" if higher_is_better(metric) else "min"


def _summarise(grid, metric: str, task: str, sign: float = 1.0) -> list[dict[str, Any]]:
    """Per trial: its point, status, epochs run, best metric and its epoch (ties: the later epoch, as the module's
    epoch is picked), from every reported result."""
    trials = []
    for i, result in enumerate(grid):
        df = result.metrics_dataframe
        best_metric = best_epoch = None
        epochs_run = 0
        if df is not None and metric in df.columns and len(df):
            scored = [(float(s), int(e)) for s, e in zip(df[metric], df["epoch"]) if math.isfinite(float(s))]
            if scored:
                best_metric, best_epoch = max(scored, key=lambda se: (sign * se[0], se[1]))
            epochs_run = int(df["epoch"].max())
        point = result.config["point"]
        trials.append({
            "task": task, "trial_index": i,
            "trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name,
            "method": point["method"], "params": point["params"], "lr": float(point["lr"]), "head": point["head"],
            "top_k": point["top_k"], "r": point["params"].get("r"), "label": label(point), "point": point,
            "epochs_run": epochs_run, "best_metric": best_metric, "best_epoch": best_epoch,
            "seconds": (result.metrics or {}).get("time_total_s"),
            "error": f"{type(result.error).__name__}: {result.error}" if result.error else None,
        })
    return trials
