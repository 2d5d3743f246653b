"""Tune stage: Ray Tune with ASHA over learning rate x LoRA rank for one task.

``run(cfg, backbone, tasks_dir)`` -> ``{"tune_dir", "best_config", "best_metric", "trials"}`` (``{}`` when
``cfg.tune.enabled`` is false).

Ray 2.60 runs Train V2, where ``Tuner(TorchTrainer)`` is gone: each trial is a function trainable that builds and
fits the adapt stage's TorchTrainer (same train function, same data) with ``TuneReportCallback``, which forwards
every epoch's report (``epoch``, ``val_accuracy``, ``val_macro_f1``) to Tune; ASHA (``time_attr="epoch"``) stops
weak trials after ``grace_period`` epochs. The trial itself holds no CPU: its Train workers do, so
``max_concurrent_trials`` bounds how many trainers run at once. ``lr`` is sampled log-uniformly in
[``lr_min``, ``lr_max``] and ``r`` from ``ranks`` (seeded by ``cfg.seed``); the other hparams come from ``adapt``
with ``epochs = tune.epochs``.

The sweep lives under ``<run_dir>/tune/ray/<task>-<fp>`` (its trials' Train runs under
``<run_dir>/tune/train/<task>-<fp>``); rerunning after a crash restores it with ``Tuner.restore``. The result
goes to ``<run_dir>/tune/<task>-<fp>/``: ``best_config.json`` (task, lr, r, metric, best_metric, best_epoch,
trial) and ``trials.json`` (every trial's config, status and best metric).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from modpipe.adapt import hparams, make_job, scaling, select_tasks
from modpipe.adapt.data import TaskDataError, list_tasks, load_task
from modpipe.config import PipelineConfig
from modpipe.lineage import StepDir, fingerprint

log = logging.getLogger("modpipe.tune")

BEST_FILE = "best_config.json"
TRIALS_FILE = "trials.json"
COSMETIC_FIELDS = ("enabled", "max_concurrent_trials")
TRIAL_DRIVER_MEMORY = 64 * 1024 * 1024  # bytes of Ray's "memory" resource per trial


class TuneError(RuntimeError):
    """The sweep could not run or no trial reported the metric."""


def _outputs(path: Path) -> dict[str, Any]:
    best = json.loads((path / BEST_FILE).read_text())
    return {"tune_dir": str(path), "best_config": str(path / BEST_FILE), "best_metric": best["best_metric"],
            "trials": str(path / TRIALS_FILE)}


def pick_task(cfg: PipelineConfig, tasks_dir: str | Path) -> str:
    if cfg.tune.task in list_tasks(tasks_dir):
        return cfg.tune.task
    candidates = select_tasks(cfg, tasks_dir)
    if not candidates:
        raise TuneError(f"no tasks in {tasks_dir}")
    log.warning("tune: task %r not in %s; tuning %r", cfg.tune.task, tasks_dir, candidates[0])
    return candidates[0]


def trial_driver(config: dict, job: dict, scaling: dict, storage: str, max_failures: int) -> None:
    """One Tune trial: the adapt TorchTrainer with this trial's lr and LoRA rank, reporting through Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from modpipe.adapt.trainer import make_trainer

    job = {**job, "lr": float(config["lr"]), "lora": {**job["lora"], "r": int(config["r"])}}
    trial_id = ray.tune.get_context().get_trial_id()
    # No timestamps in the name: a restored trial reruns this and Train resumes its run from the last epoch.
    trainer = make_trainer(job, scaling, name=f"trial-{trial_id}", storage=storage, max_failures=max_failures,
                           callbacks=[TuneReportCallback()])
    trainer.fit()


def run(cfg: PipelineConfig, backbone: str, tasks_dir: str) -> dict[str, Any]:
    """Run (or restore, or reuse) the sweep; see the module docstring."""
    if not cfg.tune.enabled:
        log.info("tune: disabled")
        return {}
    from modpipe.models.fingerprint import read_backbone_fingerprint

    t = cfg.tune
    if not 0 < t.lr_min <= t.lr_max:
        raise TuneError(f"tune.lr_min/lr_max: need 0 < {t.lr_min} <= {t.lr_max}")
    if not t.ranks or min(t.ranks) < 1:
        raise TuneError(f"tune.ranks: need positive ranks, got {t.ranks}")
    backbone_fp = read_backbone_fingerprint(backbone)
    name = pick_task(cfg, tasks_dir)
    try:
        task = load_task(tasks_dir, name)
    except TaskDataError as err:
        raise TuneError(f"tune: task {name}: {err}") from None
    hp = hparams(cfg, epochs=t.epochs)
    space = {k: v for k, v in t.model_dump(mode="json").items() if k not in COSMETIC_FIELDS}
    fp = fingerprint({"tune": space, "adapt": hp, "seed": cfg.seed, "backbone": backbone_fp, "task": name,
                      "labels": task.labels, "data": task.digests})
    step = StepDir(cfg.run_path / "tune", name, fp)
    if step.done():
        log.info("tune: reusing %s", step.path)
        return _outputs(step.path)

    grid, exp_path = _sweep(cfg, make_job(cfg, task, backbone, hp), exp_name=f"{name}-{fp}")
    trials = _summarise(grid, t.metric)
    scored = [tr for tr in trials if tr["best_metric"] is not None]
    if not scored:
        errors = "; ".join(f"{tr['trial_id']}: {tr['error']}" for tr in trials if tr["error"]) or "no results"
        raise TuneError(f"no trial reported {t.metric} (sweep {exp_path}): {errors}")
    best = max(scored, key=lambda tr: (tr["best_metric"], -tr["trial_index"]))
    record = {
        "task": name, "lr": best["lr"], "r": best["r"], "metric": t.metric, "best_metric": best["best_metric"],
        "best_epoch": best["best_epoch"], "trial_id": best["trial_id"], "num_trials": len(trials),
        "stopped_early": sum(1 for tr in trials if tr["epochs_run"] < t.epochs and not tr["error"]),
        "failed_trials": sum(1 for tr in trials if tr["error"]), "epochs": t.epochs,
        "lora_alpha": hp["lora"]["alpha"], "sweep": str(exp_path),
    }
    with step.building(config={"tune": space, "adapt": hp, "seed": cfg.seed},
                       inputs={"backbone": str(backbone), "backbone_fingerprint": backbone_fp,
                               "task_dir": str(task.dir), "data_digests": task.digests}) as tmp:
        (tmp / BEST_FILE).write_text(json.dumps(record, indent=2))
        (tmp / TRIALS_FILE).write_text(json.dumps(trials, indent=2))
    log.info("tune: best %s = %.4f with lr %.2e, r %d (trial %s, epoch %s) -> %s", t.metric, best["best_metric"],
             best["lr"], best["r"], best["trial_id"], best["best_epoch"], step.path)
    return _outputs(step.path)


def _sweep(cfg: PipelineConfig, job: dict, exp_name: str):
    """Fit a new Tuner, or restore the one a crashed run left under the same name."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from modpipe.raycluster import ensure_ray

    t = cfg.tune
    ensure_ray(cfg.ray)
    storage = cfg.run_path / "tune" / "ray"
    exp_path = storage / exp_name
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, job=job, scaling=scaling(cfg),
                             storage=str(cfg.run_path / "tune" / "train" / exp_name),
                             max_failures=cfg.adapt.max_failures),
        # The trial only drives its TorchTrainer; the Train workers hold the CPUs/GPUs. Tune refuses an all-zero
        # request and any CPU fraction would keep the last trainer off a full node, so reserve a little memory.
        {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY},
    )
    if tune.Tuner.can_restore(str(exp_path)):
        log.info("tune: restoring the sweep at %s", exp_path)
        tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=True)
    else:
        log.info("tune: %s: %d trials (<= %d at once), ASHA over %d epochs (grace %d), lr in [%g, %g], r in %s",
                 job["task"], t.num_samples, t.max_concurrent_trials, t.epochs, t.grace_period, t.lr_min, t.lr_max,
                 t.ranks)
        tuner = tune.Tuner(
            trainable,
            param_space={"lr": tune.loguniform(t.lr_min, t.lr_max), "r": tune.choice(list(t.ranks))},
            tune_config=tune.TuneConfig(
                metric=t.metric, mode="max", num_samples=t.num_samples,
                # max_t one past the last epoch: a trial that trains to the end returns from fit() by itself
                # instead of being stopped (killed) by the scheduler at its final report.
                scheduler=ASHAScheduler(time_attr="epoch", max_t=t.epochs + 1, grace_period=t.grace_period),
                # seeded random search; with a search_alg instance the concurrency cap must be set on it
                search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=t.max_concurrent_trials),
            ),
            run_config=tune.RunConfig(name=exp_name, storage_path=str(storage), verbose=1,
                                      callbacks=[free_stopped_trial_workers()]),
        )
    before = _placement_groups()
    grid = tuner.fit()
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
    that no live actor uses, and removes those found orphaned on two checks in a row (a starting trial's
    group gets its actors right after creation, so it is never orphaned twice). Needs the state API (dashboard);
    without it the sweep goes on and the leftovers are removed after the sweep.
    """

    EVERY_S = 3.0

    def __init__(self) -> None:
        import ray

        self.before = _placement_groups()
        self.job = ray.get_runtime_context().get_job_id()
        self.suspects: set[str] = set()
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
        for pg_id in orphans & self.suspects:
            log.info("tune: removing placement group %s left by a stopped trial", pg_id)
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        self.suspects = orphans - self.suspects


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


def _summarise(grid, metric: str) -> list[dict[str, Any]]:
    """Per trial: config, status, epochs run, best metric and its epoch (from every reported result)."""
    trials = []
    for i, result in enumerate(grid):
        df = result.metrics_dataframe
        best_metric = best_epoch = None
        epochs_run = 0
        if df is not None and metric in df.columns and len(df):
            scores = df[metric].astype(float)
            ok = scores[scores.apply(math.isfinite)]
            if len(ok):
                row = df.loc[ok.idxmax()]
                best_metric, best_epoch = float(row[metric]), int(row["epoch"])
            epochs_run = int(df["epoch"].max())
        trials.append({
            "trial_index": i, "trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name,
            "lr": float(result.config["lr"]), "r": int(result.config["r"]), "epochs_run": epochs_run,
            "best_metric": best_metric, "best_epoch": best_epoch,
            "error": f"{type(result.error).__name__}: {result.error}" if result.error else None,
        })
    return trials
