"""The reference profiles, kept in the run's MLflow store (the registry's: ``publish.tracking_uri``, by default
SQLite under ``<run_dir>/registry``), so "the same registry" means the same store.

One experiment per pipeline name (``modpipe-drift-<PipelineConfig.name>``); every reference is a finished run
holding ``profile/profile.json`` as artifact and the tags ``kind`` (``succeeded-run``: recorded after a run
succeeded; ``accepted``: ``modpipe drift accept``), ``run_id`` (the modpipe run whose profile it is),
``profile_sha256``, ``accepted_by`` and ``why`` (accepted ones). The reference is the newest such run; its
artifact is checked against ``profile_sha256`` on every load. Older references stay as history.
"""

from __future__ import annotations

import getpass
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modpipe.lineage import sha256_file

if TYPE_CHECKING:
    from modpipe.config import PipelineConfig

log = logging.getLogger("modpipe.drift")

ARTIFACT_DIR, ARTIFACT = "profile", "profile.json"
SUCCEEDED_RUN, ACCEPTED = "succeeded-run", "accepted"


class ReferenceError_(RuntimeError):
    """A reference profile that cannot be read or does not match its recorded digest."""


@dataclass(frozen=True)
class Reference:
    profile: dict[str, Any]
    sha256: str
    mlflow_run: str
    tags: dict[str, str]

    def describe(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "mlflow_run": self.mlflow_run,
                **{k: self.tags.get(k) for k in ("kind", "run_id", "accepted_by", "why", "pipeline")}}


def experiment_name(cfg: PipelineConfig) -> str:
    return f"modpipe-drift-{cfg.name}"


def _store(cfg: PipelineConfig, create: bool):
    """The registry's store, or None when it is a local SQLite file that does not exist yet (and not ``create``)."""
    from modpipe.registry import store_of

    store = store_of(cfg)
    if store.sqlite is not None and not store.sqlite.is_file() and not create:
        return None
    return store


def _newest_run(cfg: PipelineConfig):
    store = _store(cfg, create=False)
    if store is None:
        return None, None
    exp = store.retry(store.client.get_experiment_by_name, experiment_name(cfg))
    if exp is None:
        return store, None
    runs = store.retry(store.client.search_runs, [exp.experiment_id], "attributes.status = 'FINISHED'",
                       max_results=1, order_by=["attributes.start_time DESC"])
    return store, (runs[0] if runs else None)


def digest(cfg: PipelineConfig) -> dict[str, str | None]:
    """The drift step's external input: the reference's sha256 (None: no reference), so a new reference re-runs
    the check and nothing else."""
    _, run = _newest_run(cfg)
    return {"reference": None if run is None else run.data.tags.get("profile_sha256")}


def load(cfg: PipelineConfig) -> Reference | None:
    """The current reference profile (verified against its recorded sha256), or None if there is none yet."""
    store, run = _newest_run(cfg)
    if run is None:
        return None
    tags = dict(run.data.tags)
    source = f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}/{ARTIFACT}"
    with tempfile.TemporaryDirectory() as tmp:
        import mlflow.artifacts

        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=store.uri))
        found = sha256_file(path)
        if found != tags.get("profile_sha256"):
            raise ReferenceError_(f"drift reference {source} (MLflow run {run.info.run_id}): sha256 {found} differs "
                                  f"from the recorded {tags.get('profile_sha256')}; refusing to compare with it")
        profile = json.loads(path.read_text())
    return Reference(profile, found, run.info.run_id, tags)


def record(cfg: PipelineConfig, profile_path: str | Path, *, kind: str, run_id: str | None, why: str | None = None,
           accepted_by: str | None = None) -> Reference:
    """Make ``profile_path`` the reference (a new finished MLflow run); returns it as loaded back."""
    from modpipe.registry.publish import _artifact_location

    profile_path = Path(profile_path)
    sha = sha256_file(profile_path)
    store = _store(cfg, create=True)
    tags = {"kind": kind, "run_id": run_id or "", "profile_sha256": sha, "pipeline": cfg.name,
            "accepted_by": accepted_by or (getpass.getuser() if kind == ACCEPTED else ""), "why": why or ""}
    c = store.client  # a fresh SQLite store is created (its folder and schema) here
    with store.writing():
        exp = store.experiment_id(experiment_name(cfg), _artifact_location(cfg))
        run = store.retry(c.create_run, exp, run_name=f"{kind}-{run_id or sha[:12]}", tags=tags)
        try:
            with tempfile.TemporaryDirectory(prefix="modpipe-drift-") as tmp:  # stored as ARTIFACT, whatever its name
                named = Path(tmp) / ARTIFACT
                named.write_bytes(profile_path.read_bytes())
                store.retry(c.log_artifact, run.info.run_id, str(named), ARTIFACT_DIR)
        except BaseException:
            store.retry(c.set_terminated, run.info.run_id, status="FAILED")
            raise
        store.retry(c.set_terminated, run.info.run_id, status="FINISHED")
    ref = load(cfg)
    if ref is None or ref.sha256 != sha:
        raise ReferenceError_(f"drift reference for {cfg.name!r}: recorded {profile_path} but the store's newest "
                              f"reference is {ref.sha256 if ref else 'none'}")
    log.info("drift: %s is now the reference of pipeline %r (%s, run %s)", profile_path, cfg.name, kind, run_id)
    return ref


def history(cfg: PipelineConfig, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` references, newest first (tags and time)."""
    store = _store(cfg, create=False)
    exp = None if store is None else store.retry(store.client.get_experiment_by_name, experiment_name(cfg))
    if exp is None:
        return []
    runs = store.retry(store.client.search_runs, [exp.experiment_id], "attributes.status = 'FINISHED'",
                       max_results=limit, order_by=["attributes.start_time DESC"])
    return [{"mlflow_run": r.info.run_id, "start_time": r.info.start_time, **dict(r.data.tags)} for r in runs]
