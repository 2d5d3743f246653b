"""Publish stage: gate the task modules and register those that pass in the MLflow model registry.

``run(cfg, ctx)`` is the ``publish`` step: the contract gate, then each task's candidate (tune's best trial's
module for a task tune searched, else adapt's module) goes through ``publish(cfg, backbone, modules, manifest)``
-> ``{"registered": [{task, name, version, run_id, ...}], "rejected": [{task, reason}], "tracking_uri",
"candidates": {task: {"from": "tune"|"adapt", "module": dir}}}``, written to ``publish.json`` in the step dir.

Store: ``cfg.publish.tracking_uri``, or ``sqlite:///<run_dir>/registry/mlflow.db`` with artifacts under
``<run_dir>/registry/artifacts``.  Each module that passes the gate (``gate.py``) becomes one MLflow run (params
from module.json, metrics from metrics.json, the module dir as artifacts under ``module/``) and one version of
the registered model ``<model_prefix>-<task>``.  The version's tags carry its lineage and integrity:

- ``backbone_fingerprint``, ``data_manifest_digest`` (manifest.json ``digest``), ``config_fingerprint``;
- ``metric.<name>`` for every number in metrics.json, ``gate.metric`` / ``gate.min_metric``;
- ``sha256.<relative path>`` for every file and ``module_digest`` over all of them.

The alias ``cfg.publish.alias`` moves to the version just published.  Publishing content that is already a
version (same ``module_digest``) creates nothing new: the existing version is returned (and gets the alias).
``resolve`` hands a version's files back only after re-checking every sha256.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from modpipe.config import PipelineConfig
from modpipe.lineage import fingerprint
from modpipe.registry.gate import ModuleCheck, check_module, verify_files

log = logging.getLogger("modpipe.registry")

ARTIFACT_DIR = "module"
SHA_PREFIX = "sha256."
METRIC_PREFIX = "metric."

__all__ = ["RegistryError", "run", "candidates", "publish", "list_modules", "resolve", "tracking_uri", "model_name"]


class RegistryError(RuntimeError):
    """A registry lookup or integrity check that cannot be satisfied; the message says which and why."""


def tracking_uri(cfg: PipelineConfig) -> str:
    if cfg.publish.tracking_uri:
        return cfg.publish.tracking_uri
    return f"sqlite:///{cfg.run_path / 'registry' / 'mlflow.db'}"


def model_name(cfg: PipelineConfig, task: str) -> str:
    return f"{cfg.publish.model_prefix}-{task}"


def _client(cfg: PipelineConfig):
    from mlflow import MlflowClient

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(cfg: PipelineConfig, client) -> str:
    exp = client.get_experiment_by_name(cfg.publish.experiment)
    if exp is not None:
        return exp.experiment_id
    location = cfg.publish.artifact_location
    if location is None and not cfg.publish.tracking_uri:
        artifacts = cfg.run_path / "registry" / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        location = artifacts.as_uri()
    return client.create_experiment(cfg.publish.experiment, artifact_location=location)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in _flatten(d).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _params(module: dict[str, Any]) -> dict[str, str]:
    """module.json as MLflow params (hparams, seed, labels, train-data digest), lists as JSON."""
    flat = _flatten({k: v for k, v in module.items() if k != "files"})
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000] for k, v in flat.items()}


def _version_tags(check: ModuleCheck, lineage: dict[str, str], cfg: PipelineConfig) -> dict[str, str]:
    tags = {"task": check.task, "module_digest": check.digest, **lineage,
            "gate.metric": cfg.publish.metric, "gate.min_metric": str(cfg.publish.min_metric)}
    tags.update({f"{METRIC_PREFIX}{k}": f"{v:.6g}" for k, v in _numbers(check.metrics).items()})
    tags.update({f"{SHA_PREFIX}{rel}": digest for rel, digest in check.files.items()})
    return tags


def _existing_version(client, name: str, digest: str):
    """A READY version of ``name`` whose module_digest is ``digest``, else None."""
    found = client.search_model_versions(f"name = '{name}' and tags.module_digest = '{digest}'")
    ready = [v for v in found if v.status in (None, "READY")]
    return min(ready, key=lambda v: int(v.version)) if ready else None


def _ensure_registered_model(client, name: str, task: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, tags={"task": task, "modpipe": "module"},
            description=f"modpipe plug-in module (PEFT LoRA + classification head) for task {task!r}",
        )


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def _log_module(cfg: PipelineConfig, client, experiment_id: str, check: ModuleCheck, tags: dict[str, str]):
    """One run: params, metrics, the module dir as artifacts (checked after upload); returns (run_id, source)."""
    from mlflow.entities import Metric, Param
    from mlflow.utils.time import get_current_time_millis

    run = client.create_run(experiment_id, run_name=f"{check.task}-{check.digest[:8]}",
                            tags={k: v for k, v in tags.items() if not k.startswith(SHA_PREFIX)})
    run_id = run.info.run_id
    try:
        now = get_current_time_millis()
        params = [Param(k, v) for k, v in _params(check.module).items()]
        metrics = [Metric(k, v, now, 0) for k, v in _numbers(check.metrics).items()]
        for i in range(0, max(len(params), len(metrics)), 100):
            client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])
        client.log_artifacts(run_id, str(check.path), ARTIFACT_DIR)
        source = f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}"
        problems = _verify_source(tracking_uri(cfg), source, check.files)
        if problems:
            raise RegistryError(f"uploaded copy differs from {check.path}: {'; '.join(problems[:5])}")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id, source


def _verify_source(uri: str, source: str, expected: dict[str, str]) -> list[str]:
    local = _local_path(source)
    if local is not None:
        return verify_files(local, expected) if local.is_dir() else [f"artifact dir not found: {local}"]
    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=uri)
        return verify_files(path, expected)


def candidates(adapted: dict[str, str], tuned: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each task's candidate module: tune's best trial's where tune searched the task, else adapt's."""
    out = {t: {"from": "adapt", "module": d} for t, d in adapted.items()}
    out.update({t: {"from": "tune", "module": d} for t, d in tuned.items()})
    return dict(sorted(out.items()))


def run(cfg: PipelineConfig, ctx) -> dict[str, Any]:
    """The publish step (see the module docstring); its record is ``publish.json`` in the step dir."""
    from modpipe.gates import require_contracts

    require_contracts(ctx)
    picks = candidates(ctx.inputs["adapt"].get("modules") or {}, ctx.inputs["tune"].get("modules") or {})
    for task, c in picks.items():
        log.info("publish: %s: candidate from %s: %s", task, c["from"], c["module"])
    out = publish(cfg, ctx.inputs["pretrain"]["backbone"], {t: c["module"] for t, c in picks.items()},
                  ctx.inputs["curate"]["manifest"])
    out = {**out, "candidates": picks}
    (ctx.out / "publish.json").write_text(json.dumps(out, indent=2, default=str))
    return {**out, "record": str(ctx.out / "publish.json")}


def publish(cfg: PipelineConfig, backbone: str, modules: dict[str, str], manifest: str) -> dict[str, Any]:
    """Gate every module, register the passing ones (idempotently), move the alias; never raises on a bad module."""
    from modpipe.models.fingerprint import read_backbone_fingerprint

    uri = tracking_uri(cfg)
    registered: list[dict[str, Any]] = []
    rejected: list[dict[str, str]] = []
    try:
        backbone_fp = read_backbone_fingerprint(backbone)
    except (OSError, ValueError, KeyError) as err:
        reason = f"backbone unusable: {err}"
        log.error("publish: %s", reason)
        return {"registered": [], "rejected": [{"task": t, "reason": reason} for t in sorted(modules)],
                "tracking_uri": uri}
    try:
        manifest_digest = json.loads(Path(manifest).read_text())["digest"]
    except (OSError, ValueError, KeyError) as err:
        reason = f"data manifest unreadable ({manifest}): {err!r}"
        log.error("publish: %s", reason)
        return {"registered": [], "rejected": [{"task": t, "reason": reason} for t in sorted(modules)],
                "tracking_uri": uri}
    lineage = {"backbone_fingerprint": backbone_fp, "data_manifest_digest": str(manifest_digest),
               "config_fingerprint": fingerprint(cfg.model_dump(mode="json"))}

    checks = [check_module(t, p, backbone_fp, cfg.publish.metric, cfg.publish.min_metric)
              for t, p in sorted(modules.items())]
    for c in checks:
        if not c.passed:
            rejected.append({"task": c.task, "reason": "; ".join(c.reasons)})
            log.warning("publish: %s not published: %s", c.task, "; ".join(c.reasons))
    passing = [c for c in checks if c.passed]
    if not passing:
        return {"registered": [], "rejected": rejected, "tracking_uri": uri}

    client = _client(cfg)
    experiment_id = _experiment_id(cfg, client)
    for i, c in enumerate(passing, 1):
        name = model_name(cfg, c.task)
        log.info("publish: [%d/%d] %s from %s", i, len(passing), name, c.path)
        _ensure_registered_model(client, name, c.task)
        existing = _existing_version(client, name, c.digest)
        if existing is not None:
            version, run_id, source, new = str(existing.version), existing.run_id, existing.source, False
            log.info("publish: %s v%s already holds this module (digest %s)", name, version, c.digest[:12])
        else:
            tags = _version_tags(c, lineage, cfg)
            try:
                run_id, source = _log_module(cfg, client, experiment_id, c, tags)
            except RegistryError as err:
                rejected.append({"task": c.task, "reason": str(err)})
                log.error("publish: %s not published: %s", c.task, err)
                continue
            mv = client.create_model_version(
                name, source, run_id=run_id, tags=tags,
                description=f"{c.task}: {cfg.publish.metric}={c.metrics[cfg.publish.metric]:.4f}",
            )
            version, new = str(mv.version), True
        client.set_registered_model_alias(name, cfg.publish.alias, version)
        registered.append({"task": c.task, "name": name, "version": version, "run_id": run_id, "source": source,
                           "alias": cfg.publish.alias, "new": new, "module_digest": c.digest,
                           "metric": {cfg.publish.metric: c.metrics[cfg.publish.metric]}})
        log.info("publish: %s v%s <- alias %r (%s)", name, version, cfg.publish.alias,
                 "new version" if new else "unchanged")
    return {"registered": registered, "rejected": rejected, "tracking_uri": uri}


def list_modules(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Every version of every ``<model_prefix>-*`` registered model: name, version, aliases, tags, source."""
    client = _client(cfg)
    prefix = f"{cfg.publish.model_prefix}-"
    rows = []
    for rm in client.search_registered_models(filter_string=f"name LIKE '{prefix}%'"):
        by_version: dict[str, list[str]] = {}
        for alias, v in (rm.aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            rows.append({"name": mv.name, "version": str(mv.version),
                         "aliases": sorted(by_version.get(str(mv.version), [])), "tags": dict(mv.tags or {}),
                         "source": mv.source, "run_id": mv.run_id, "status": str(mv.status)})
    rows.sort(key=lambda r: (r["name"], int(r["version"])))
    return rows


def resolve(cfg: PipelineConfig, task: str, alias_or_version: str | int | None = None) -> str:
    """Local path of a registered module's files, after checking each against its ``sha256.*`` tags.

    ``alias_or_version``: a version number, or an alias (default ``cfg.publish.alias``).  Remote artifact stores
    are downloaded to ``<run_dir>/registry/cache/<name>/<version>``.  Raises RegistryError on any mismatch.
    """
    from mlflow.exceptions import MlflowException

    client = _client(cfg)
    name = model_name(cfg, task)
    ref = cfg.publish.alias if alias_or_version is None else str(alias_or_version)
    try:
        mv = client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)
    except MlflowException as err:
        raise RegistryError(f"{name}: no version {ref!r} in {tracking_uri(cfg)}: {err.message}") from None
    expected = {k.removeprefix(SHA_PREFIX): v for k, v in (mv.tags or {}).items() if k.startswith(SHA_PREFIX)}
    if not expected:
        raise RegistryError(f"{name} v{mv.version}: no sha256 tags; refusing an unverifiable module")
    path = _local_path(mv.source)
    if path is None:
        import mlflow.artifacts

        cache = cfg.run_path / "registry" / "cache" / name / str(mv.version)
        path = cache / Path(urlparse(mv.source).path.rstrip("/")).name
        if not path.is_dir():
            cache.mkdir(parents=True, exist_ok=True)
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(cache),
                                                            tracking_uri=tracking_uri(cfg)))
    if not path.is_dir():
        raise RegistryError(f"{name} v{mv.version}: artifacts not found at {mv.source}")
    problems = verify_files(path, expected)
    if problems:
        raise RegistryError(f"{name} v{mv.version} at {path} fails verification: {'; '.join(problems[:5])}")
    return str(path)
