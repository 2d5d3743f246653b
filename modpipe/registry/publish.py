"""Publish: gate each task's candidate with the one check, register what passes, decide its alias.

For each task (``publish(cfg, backbone, modules, manifest, tasks_dir, run_id)``):

1. ``policy.check`` on the candidate with the task's rule, measured on the current test split
   (``<tasks_dir>/<task>/test.parquet``); a refusal lists every failing field and registers nothing.
2. The backbone is registered once per fingerprint as ``<prefix>-backbone`` (its files as artifacts, each file's
   sha256 as a tag, its tokenizer files' digests); each module version links to it (``backbone.name`` /
   ``backbone.version``).
3. The module becomes one MLflow run (params from module.json, measured metrics) whose artifact ``model`` is a
   pyfunc written as models-from-code (``pyfunc_model.py``) holding the module files, and one version of
   ``<prefix>-<task>`` with its lineage, the gate's rules and measurement, and every file's sha256 as tags.
   Identical content (same ``module_digest``) is the existing version, never a new one.
4. The alias: a candidate below its task's classical baseline beyond noise (``policy``'s ``promotion.baseline``,
   against the baseline step's numbers; ``publish.require_beat_baseline``) takes ``publish.challenger_alias``
   with that reason. Otherwise it takes ``publish.alias`` (champion) only if it is at least as good as the current
   champion, both measured on the current test split in this run (``publish.tolerance``); a champion that can no
   longer be fetched, checked or evaluated counts as absent, and the reason is recorded. Otherwise the candidate
   takes ``publish.challenger_alias``. Every move goes to the ledger (``ledger.py``) with its reason and run id.

On a local SQLite store, registration and the alias decision's final compare-and-move run under the store's lock;
the champion is evaluated outside it and re-read under it (a champion that changed meanwhile is evaluated again).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from modpipe.config import PipelineConfig
from modpipe.lineage import fingerprint
from modpipe.registry import ledger
from modpipe.registry.load import (MEASURED_PREFIX, MODULE_SUBDIR, PYFUNC_SHA_PREFIX, SHA_PREFIX, fetch_version,
                                   verify)
from modpipe.config_base import NAME_PATTERN
from modpipe.registry.names import NameError_, backbone_name, is_name, literal, model_name
from modpipe.registry.policy import Rules, Verdict, check, scan, tokenizer_files, verify_files
from modpipe.registry.promotion import baseline_bars
from modpipe.registry.store import RegistryError, Store, local_path

log = logging.getLogger("modpipe.registry")

MODEL_ARTIFACT = "model"
BACKBONE_ARTIFACT = "backbone"
BACKBONE_SKIP = ("status.json",)
"""Files of the pretrain step dir that are the executor's record, not the backbone."""
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MAX_DECISION_ROUNDS = 5


def tracking_uri(cfg: PipelineConfig) -> str:
    if cfg.publish.tracking_uri:
        return cfg.publish.tracking_uri
    return f"sqlite:///{cfg.run_path / 'registry' / 'mlflow.db'}"


def store_of(cfg: PipelineConfig) -> Store:
    cache = cfg.publish.cache_dir or (cfg.run_path / "registry" / "cache")
    return Store(tracking_uri(cfg), cache)


def candidates(adapted: dict[str, str], tuned: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each task's candidate module: tune's best trial's where tune searched the task, else adapt's."""
    out = {t: {"from": "adapt", "module": d} for t, d in adapted.items()}
    out.update({t: {"from": "tune", "module": d} for t, d in tuned.items()})
    return dict(sorted(out.items()))


def run(cfg: PipelineConfig, ctx) -> dict[str, Any]:
    """The publish step; its record is ``publish.json`` in the step dir."""
    from modpipe.gates import require_contracts

    require_contracts(ctx)
    picks = candidates(ctx.inputs["adapt"].get("modules") or {}, ctx.inputs["tune"].get("modules") or {})
    for task, c in picks.items():
        log.info("publish: %s: candidate from %s: %s", task, c["from"], c["module"])
    out = publish(cfg, ctx.inputs["pretrain"]["backbone"], {t: c["module"] for t, c in picks.items()},
                  ctx.inputs["curate"]["manifest"], tasks_dir=ctx.inputs["curate"].get("tasks_dir"),
                  run_id=ctx.run_id, baselines=ctx.inputs["baseline"].get("baselines"))
    out = {**out, "candidates": picks}
    (ctx.out / "publish.json").write_text(json.dumps(out, indent=2, default=str))
    return {**out, "record": str(ctx.out / "publish.json")}


# ---------------------------------------------------------------------------------------------------- publish


def publish(cfg: PipelineConfig, backbone: str, modules: dict[str, str], manifest: str,
            tasks_dir: str | Path | None = None, run_id: str | None = None,
            baselines: str | Path | None = None) -> dict[str, Any]:
    """Gate, register, decide aliases (see the module docstring); a bad module is rejected, never raised.
    Without ``tasks_dir`` nothing is measured: the quality group judges the modules' own metrics.json and the
    champion comparison uses the registry's recorded measurements. ``baselines``: the baseline step's
    baselines.json (without it, and with ``publish.require_beat_baseline`` on, no candidate becomes champion)."""
    from modpipe.models.fingerprint import read_backbone_fingerprint

    store = store_of(cfg)
    result: dict[str, Any] = {"registered": [], "rejected": [], "decisions": [], "tracking_uri": store.uri}

    def reject_all(reason: str) -> dict[str, Any]:
        log.error("publish: %s", reason)
        result["rejected"] = [{"task": t, "reason": reason} for t in sorted(modules)]
        return result

    try:
        backbone_fp = read_backbone_fingerprint(backbone)
    except (OSError, ValueError, KeyError) as err:
        return reject_all(f"backbone unusable: {err}")
    try:
        manifest_digest = str(json.loads(Path(manifest).read_text())["digest"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return reject_all(f"data manifest unreadable ({manifest}): {err!r}")
    lineage = {"backbone_fingerprint": backbone_fp, "data_manifest_digest": manifest_digest,
               "config_fingerprint": fingerprint(cfg.model_dump(mode="json"))}

    passing: list[tuple[str, str, Verdict, Path | None]] = []
    bars = baseline_bars(cfg, baselines, sorted(modules))
    for task, path in sorted(modules.items()):
        try:
            name = model_name(cfg.publish.model_prefix, task)
            if name == backbone_name(cfg.publish.model_prefix):
                raise NameError_(f"task name {task!r} is reserved for the backbone's registered model")
        except NameError_ as err:
            result["rejected"].append({"task": task, "reason": str(err)})
            continue
        task_dir = Path(tasks_dir) / task if tasks_dir is not None else None
        try:
            rules = Rules.of(cfg.publish, task, _problem_of(path))
            verdict = check(path, backbone, rules, task_dir=task_dir, baseline=bars[task])
        except Exception as err:  # noqa: BLE001 - a module the check cannot even read is refused, not raised
            result["rejected"].append({"task": task, "reason": f"check failed: {type(err).__name__}: {err}"})
            log.warning("publish: %s not published: check failed: %s", task, err)
            continue
        if not verdict.passed:
            result["rejected"].append({"task": task, "reason": "; ".join(verdict.reasons),
                                       "fields": [f.__dict__ for f in verdict.fields if not f.ok]})
            log.warning("publish: %s not published: %s", task, "; ".join(verdict.reasons))
            continue
        log.info("publish: %s passes the policy (%s=%.4f, %s)", task, verdict.rules.metric, verdict.value,
                 verdict.measured.get("source"))
        passing.append((task, name, verdict, task_dir))
    if not passing:
        return result

    experiment = store.experiment_id(cfg.publish.experiment, _artifact_location(cfg))
    bb = register_backbone(store, cfg, backbone, backbone_fp, experiment, run_id)
    for i, (task, name, verdict, task_dir) in enumerate(passing, 1):
        log.info("publish: [%d/%d] %s from %s", i, len(passing), name, verdict.module_dir)
        try:
            reg = register_module(store, cfg, name, task, verdict, bb, lineage, experiment, run_id)
            decision = decide(store, cfg, name, reg["version"], verdict, task_dir, run_id)
        except RegistryError as err:
            result["rejected"].append({"task": task, "reason": str(err)})
            log.error("publish: %s not published: %s", task, err)
            continue
        result["registered"].append({**reg, "alias": decision["alias"], "decision": decision,
                                     "metric": {verdict.rules.metric: verdict.value}, "baseline": verdict.baseline})
        result["decisions"].append({"task": task, "name": name, "version": reg["version"], **decision,
                                    "baseline": verdict.baseline})
        log.info("publish: %s v%s -> %s: %s", name, reg["version"], decision["alias"] or "(no move)",
                 decision["reason"])
    return result


def _problem_of(module_dir: str | Path) -> str:
    """The module's problem as its module.json records it (the policy check verifies that file; a module.json
    without one is a classifier's, from before problems existed)."""
    try:
        manifest = json.loads((Path(module_dir) / "module.json").read_text())
    except (OSError, ValueError):
        return "classification"  # the check refuses the unreadable module.json with its reason
    problem = manifest.get("problem") if isinstance(manifest, dict) else None
    return problem if isinstance(problem, str) else "classification"


def _artifact_location(cfg: PipelineConfig) -> str | None:
    """``publish.artifact_location``; for a SQLite store without one, ``artifacts/`` beside the database (MLflow's
    own default is ``./mlruns`` under whatever the current directory is); for a server, its own default."""
    if cfg.publish.artifact_location is not None:
        return cfg.publish.artifact_location
    uri = tracking_uri(cfg)
    if not uri.startswith("sqlite:///"):
        return None
    artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    return artifacts.as_uri()


def _numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of ``d``, nested keys joined by dots; the per-slice and per-label detail
    (``test_slices``, ``test_label_f1``: keys are the users' slice values and label names, not metric names) is
    left out: the slices' gaps and the labels' macro-F1 are numbers of their own."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if k in ("test_slices", "test_label_f1"):
            continue
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out


def _params(module: dict[str, Any]) -> dict[str, str]:
    flat: dict[str, Any] = {}

    def walk(d: dict, prefix: str = "") -> None:
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("files", "versions", "metrics"):
                walk(v, f"{prefix}{k}.")
            elif k not in ("files", "metrics"):
                flat[f"{prefix}{k}"] = v
    walk(module)
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000] for k, v in flat.items()}


def _log_run(store: Store, experiment: str, run_name: str, tags: dict[str, str], params: dict[str, str],
             metrics: dict[str, float], local_dir: Path, artifact_path: str, expected: dict[str, str]):
    """One run holding ``local_dir`` as artifact ``artifact_path``, checked after upload; -> (run_id, source)."""
    from mlflow.entities import Metric, Param
    from mlflow.utils.time import get_current_time_millis

    c = store.client
    run = store.retry(c.create_run, experiment, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    try:
        now = get_current_time_millis()
        ps = [Param(k, v) for k, v in params.items()]
        ms = [Metric(k, v, now, 0) for k, v in metrics.items()]
        for i in range(0, max(len(ps), len(ms)), 100):
            store.retry(c.log_batch, run_id, metrics=ms[i:i + 100], params=ps[i:i + 100])
        store.retry(c.log_artifacts, run_id, str(local_dir), artifact_path)
        source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        problems = _verify_source(store, source, expected)
        if problems:
            raise RegistryError(f"uploaded copy differs from {local_dir}: {'; '.join(problems[:5])}")
    except BaseException:
        store.retry(c.set_terminated, run_id, status="FAILED")
        raise
    store.retry(c.set_terminated, run_id, status="FINISHED")
    return run_id, source


def _verify_source(store: Store, source: str, expected: dict[str, str]) -> list[str]:
    here = local_path(source)
    if here is not None:
        return verify_files(here, expected) if here.is_dir() else [f"artifact dir not found: {here}"]
    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=store.uri)
        return verify_files(path, expected)


def _existing_version(store: Store, name: str, key: str, value: str):
    """The first READY version of ``name`` whose tag ``key`` is ``value`` (both checked for the filter)."""
    found = store.retry(store.client.search_model_versions,
                        f"name = {literal(name)} and tags.{key} = {literal(value)}")
    ready = [v for v in found if v.status in (None, "READY")]
    return min(ready, key=lambda v: int(v.version)) if ready else None


# ---------------------------------------------------------------------------------------------------- backbone


def backbone_files(backbone: str | Path) -> dict[str, str]:
    """sha256 of the backbone's files (top level, regular files only; the executor's status.json left out)."""
    files, odd = scan(backbone)
    if odd:
        raise RegistryError(f"backbone {backbone}: refusing non-regular entries: {', '.join(odd[:5])}")
    return {rel: d for rel, d in files.items() if "/" not in rel and rel not in BACKBONE_SKIP}


def register_backbone(store: Store, cfg: PipelineConfig, backbone: str | Path, backbone_fp: str, experiment: str,
                      run_id: str | None) -> dict[str, str]:
    """``<prefix>-backbone`` version of this fingerprint (created once): ``{"name", "version", "fingerprint"}``.

    The version's run also holds how the backbone was trained, from its ``metrics.json`` when there is one: the
    run's settings as params, the final figures as metrics (throughput over the whole run after the warm-up step as
    ``steady_*``), and the curves as metric histories by step
    (``train_loss``, ``lr``, ``ms_per_step``, ``tokens_per_s``, ``mfu`` on GPU; ``heldout_loss``, ``heldout_ppl``)."""

    def _backbone_training(path: str | Path) -> tuple[dict[str, str], dict[str, float], list[tuple]]:
        import time

        try:
            m = json.loads((Path(path) / "metrics.json").read_text())
        except (OSError, ValueError):
            return {}, {}, []
        if not isinstance(m, dict):
            return {}, {}, []

        def num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        params = {k: str(m[k]) for k in ("steps", "world_size", "zero_stage", "bf16", "device", "micro_batch_size",
                                         "gradient_accumulation_steps", "seq_len", "tokens_per_step", "params",
                                         "vocab_size", "eval_every") if m.get(k) is not None}
        params["heldout_shard"] = str((m.get("heldout") or {}).get("path") or "none")
        scalars = {k: float(m[k]) for k in ("final_loss", "initial_loss", "tokens_seen", "final_heldout_loss",
                                            "final_heldout_ppl") if num(m.get(k))}
        scalars.update({f"steady_{k}": float(m[k]) for k in ("tokens_per_s", "ms_per_step", "mfu") if num(m.get(k))})
        now = int(time.time() * 1000)
        history = []
        for c in m.get("loss_curve") or []:
            for src, key in (("loss", "train_loss"), ("lr", "lr"), ("ms_per_step", "ms_per_step"),
                             ("tokens_per_s", "tokens_per_s"), ("mfu", "mfu")):
                if isinstance(c, dict) and num(c.get(src)) and isinstance(c.get("step"), int):
                    history.append((key, float(c[src]), now, c["step"]))
        for c in m.get("eval_curve") or []:
            for src, key in (("val_loss", "heldout_loss"), ("val_ppl", "heldout_ppl")):
                if isinstance(c, dict) and num(c.get(src)) and isinstance(c.get("step"), int):
                    history.append((key, float(c[src]), now, c["step"]))
        return params, scalars, history

    name = backbone_name(cfg.publish.model_prefix)
    files = backbone_files(backbone)
    with store.writing():
        store.ensure_model(name, {"modpipe": "backbone"}, "modpipe backbone: every module version links to the "
                           "backbone version it needs")
        existing = _existing_version(store, name, "backbone_fingerprint", backbone_fp)
        if existing is not None:
            return {"name": name, "version": str(existing.version), "fingerprint": backbone_fp,
                    "tokenizer_files": json.dumps(tokenizer_files(backbone), sort_keys=True)}
        with tempfile.TemporaryDirectory() as tmp:
            stage = Path(tmp) / BACKBONE_ARTIFACT
            stage.mkdir()
            for rel in files:
                shutil.copy2(Path(backbone) / rel, stage / rel)
            tok = json.dumps(tokenizer_files(stage), sort_keys=True)
            tags = {"modpipe": "backbone", "backbone_fingerprint": backbone_fp, "tokenizer_files": tok,
                    "run_id_modpipe": str(run_id)}
            params, scalars, history = _backbone_training(backbone)
            rid, source = _log_run(store, experiment, f"backbone-{backbone_fp[:8]}", tags, params, scalars, stage,
                                   BACKBONE_ARTIFACT, files)
            if history:  # the training curves, one metric per quantity with its step
                from mlflow.entities import Metric

                for i in range(0, len(history), 1000):
                    store.retry(store.client.log_batch, rid, metrics=[Metric(k, v, t, step)
                                                                      for k, v, t, step in history[i:i + 1000]])
        mv = store.retry(store.client.create_model_version, name, source, run_id=rid,
                         tags={**tags, **{f"{SHA_PREFIX}{k}": v for k, v in files.items()}},
                         description=f"backbone {backbone_fp[:12]}")
    version = _dedupe(store, name, "backbone_fingerprint", backbone_fp, str(mv.version))
    log.info("publish: registered backbone %s v%s (%s)", name, version, backbone_fp[:12])
    return {"name": name, "version": version, "fingerprint": backbone_fp, "tokenizer_files": tok}


# ---------------------------------------------------------------------------------------------------- module


def _pyfunc(verdict: Verdict, name: str, task: str, bb: dict[str, str], rules_tags: dict[str, str],
            measured: dict[str, str], dest: Path) -> Path:
    """The version's pyfunc model dir (models-from-code; module files under ``artifacts/module``)."""
    import os
    import warnings

    import mlflow.pyfunc

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file copied, in logs

    from modpipe.lineage import library_versions

    stage = dest / "stage" / "module"
    shutil.copytree(verdict.module_dir, stage, symlinks=True)
    model_dir = dest / MODEL_ARTIFACT
    config = {"name": name, "task": task, "module_digest": verdict.digest, "module_files": verdict.files,
              "backbone": {k: bb[k] for k in ("name", "version", "fingerprint")},
              "tokenizer_files": json.loads(bb["tokenizer_files"]), "rules": rules_tags, "measured": measured,
              "labels": verdict.manifest.get("labels")}
    reqs = [f"{k}=={v}" for k, v in library_versions(("torch", "transformers", "peft", "tokenizers", "safetensors",
                                                      "mlflow", "pandas")).items()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # type-hint advice for the predict signature
        mlflow.pyfunc.save_model(str(model_dir), python_model=str(PYFUNC_CODE), artifacts={"module": str(stage)},
                                 model_config=config, pip_requirements=reqs)
    pickles = [p for p in model_dir.rglob("*") if p.suffix in (".pkl", ".pickle")]
    if pickles:
        raise RegistryError(f"pyfunc model holds pickles: {pickles}")
    return model_dir


def register_module(store: Store, cfg: PipelineConfig, name: str, task: str, verdict: Verdict, bb: dict[str, str],
                    lineage: dict[str, str], experiment: str, run_id: str | None) -> dict[str, Any]:
    """The version holding this module (an existing one for identical content): ``{"task", "name", "version",
    "run_id", "source", "model_uri", "new", "module_digest", "backbone"}``."""
    rules_tags = verdict.rules.tags()
    measured = {k: f"{v:.6g}" for k, v in verdict.measured.items()
                if k.startswith("test_") and isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v)}
    measured["source"] = str(verdict.measured.get("source"))
    out = {"task": task, "name": name, "module_digest": verdict.digest,
           "backbone": {k: bb[k] for k in ("name", "version")}}
    with store.writing():
        store.ensure_model(name, {"task": task, "modpipe": "module"}, f"modpipe plug-in module for task {task!r}")
        existing = _existing_version(store, name, "module_digest", verdict.digest)
    if existing is not None:
        log.info("publish: %s v%s already holds this module (digest %s)", name, existing.version, verdict.digest[:12])
        return {**out, "version": str(existing.version), "run_id": existing.run_id, "new": False,
                "source": f"{existing.source.rstrip('/')}/{MODULE_SUBDIR}", "model_uri": f"models:/{name}/{existing.version}"}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _pyfunc(verdict, name, task, bb, rules_tags, measured, Path(tmp))
        all_files, _ = scan(model_dir)
        pyfunc_files = {k: v for k, v in all_files.items() if not k.startswith(MODULE_SUBDIR + "/")}
        tags = {"task": task, "module_digest": verdict.digest, **lineage, **rules_tags,
                "backbone.name": bb["name"], "backbone.version": bb["version"],
                "backbone.tokenizer_files": bb["tokenizer_files"], "gate.run_id": str(run_id),
                **{f"{MEASURED_PREFIX}{k}": v for k, v in measured.items()},
                **{f"gate.baseline.{k}": (f"{v:.6g}" if isinstance(v, float) else str(v))
                   for k, v in (verdict.baseline or {}).items()},
                **{f"metric.{k}": f"{v:.6g}" for k, v in _numbers(verdict.recorded).items()}}
        file_tags = {**{f"{SHA_PREFIX}{k}": v for k, v in verdict.files.items()},
                     **{f"{PYFUNC_SHA_PREFIX}{k}": v for k, v in pyfunc_files.items()}}
        with store.writing():
            existing = _existing_version(store, name, "module_digest", verdict.digest)  # a racing publisher's
            if existing is None:
                rid, source = _log_run(store, experiment, f"{task}-{verdict.digest[:8]}", tags,
                                       _params(verdict.manifest), {**_numbers(verdict.recorded),
                                                                   **{f"measured.{k}": float(v) for k, v in
                                                                      measured.items() if k != "source"}},
                                       model_dir, MODEL_ARTIFACT, all_files)
                value = verdict.value
                mv = store.retry(store.client.create_model_version, name, source, run_id=rid,
                                 tags={**tags, **file_tags},
                                 description=f"{task}: {verdict.rules.metric}={value:.4f} (measured)")
                version, new = str(mv.version), True
            else:
                version, rid, source, new = str(existing.version), existing.run_id, existing.source, False
    if new:
        version = _dedupe(store, name, "module_digest", verdict.digest, version)
        new = version == str(mv.version)
    return {**out, "version": version, "run_id": rid, "new": new, "source": f"{source.rstrip('/')}/{MODULE_SUBDIR}",
            "model_uri": f"models:/{name}/{version}"}


def _dedupe(store: Store, name: str, key: str, value: str, version: str) -> str:
    """Servers have no lock: when a racing publisher registered the same content (tag ``key`` = ``value``) first,
    keep the lowest version and delete ours (identical content is one version). Under a SQLite store's lock this
    finds nothing to do."""
    first = _existing_version(store, name, key, value)
    if first is not None and int(first.version) < int(version):
        log.info("publish: %s v%s duplicates v%s (same %s, published at the same time): deleting v%s", name,
                 version, first.version, key, version)
        store.retry(store.client.delete_model_version, name, version)
        return str(first.version)
    return version


# ---------------------------------------------------------------------------------------------------- aliases


def champion_value(store: Store, name: str, version: str, rules: Rules, task_dir: Path | None) -> tuple[float | None,
                                                                                                      str]:
    """The current champion's metric on the current test split (or, without one, its recorded measurement);
    (None, reason) when it cannot be fetched, checked or evaluated (it then counts as absent)."""
    try:
        verdict, got = verify(store, f"{name}/{version}", rules=rules, task_dir=task_dir)
    except RegistryError as err:
        return None, f"champion v{version} cannot be fetched: {err}"
    blocking = [f for f in verdict.fields if not f.ok and (f.group != "quality" or f.name == "evaluated")]
    if blocking:
        return None, (f"champion v{version} counts as absent: "
                      + "; ".join(f"{f.group}.{f.name}: {f.detail}" for f in blocking)[:1500])
    if verdict.value is None:
        return None, f"champion v{version} counts as absent: no {rules.metric} measured"
    where = "on the current test split" if task_dir is not None else "as recorded by the registry"
    return verdict.value, f"champion v{version} {rules.metric}={verdict.value:.4f} {where}"


def decide(store: Store, cfg: PipelineConfig, name: str, version: str, verdict: Verdict, task_dir: Path | None,
           run_id: str | None) -> dict[str, Any]:
    """Move ``champion`` or ``challenger`` to ``version`` (see the module docstring): ``{"alias", "reason",
    "champion": {version, value, note}, "candidate": value, "moved"}``."""
    p = cfg.publish
    rules, value = verdict.rules, verdict.value
    assert value is not None
    evaluated: dict[str, tuple[float | None, str]] = {}
    for attempt in range(MAX_DECISION_ROUNDS + 1):
        last = attempt == MAX_DECISION_ROUNDS  # evaluate under the lock: no more waiting for a quiet moment
        current = store.alias_version(name, p.alias)
        if verdict.promotable and not last and current is not None and current != version and \
                current not in evaluated:
            evaluated[current] = champion_value(store, name, current, rules, task_dir)
        with store.writing():
            now = store.alias_version(name, p.alias)
            if now != current and not last:
                continue  # the champion moved while we evaluated it: evaluate the new one
            current = now
            champ = {"version": current, "value": None, "note": "no champion yet"}
            if current == version:
                return {"alias": p.alias, "moved": False, "candidate": value, "champion": champ | {"value": value},
                        "reason": f"v{version} is already {p.alias}"}
            if current is not None and verdict.promotable:  # a candidate below its baseline is not compared
                if current not in evaluated:
                    evaluated[current] = champion_value(store, name, current, rules, task_dir)
                champ["value"], champ["note"] = evaluated[current]
            cand = f"candidate v{version} {rules.metric}={value:.4f}"
            if not verdict.promotable:
                alias = p.challenger_alias
                reason = (f"{cand} is not promoted: " + "; ".join(verdict.promotion_reasons)
                          + (f"; {p.alias} stays at v{current}" if current is not None else f"; no {p.alias}"))
            elif champ["value"] is None:
                alias = p.alias
                reason = f"{cand}; {champ['note']}"
            elif rules.at_least_as_good(value, champ["value"], p.tolerance):
                alias = p.alias
                reason = (f"{cand} is at least as good as {champ['note']} ({rules.direction} is better, "
                          f"tolerance {p.tolerance})")
            else:
                alias = p.challenger_alias
                reason = (f"{cand} is worse than {champ['note']} ({rules.direction} is better, tolerance "
                          f"{p.tolerance}): {p.alias} stays at v{current}")
            entry = ledger.move(store, name, alias, version, reason, "publish" if alias == p.alias else "challenger",
                                run_id)
            return {"alias": alias, "moved": entry is not None, "candidate": value, "champion": champ,
                    "reason": reason}
    raise RegistryError(f"{name}: {p.alias} kept moving while this publish decided; try again")


# ---------------------------------------------------------------------------------------------------- listing


def list_modules(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Every version of every ``<model_prefix>-*`` registered model (the backbone included): name, version,
    aliases, tags, source. Stored names that are not valid names are listed with an error, never put in a filter."""
    store = store_of(cfg)
    prefix = f"{cfg.publish.model_prefix}-"
    rows: list[dict[str, Any]] = []
    like = literal(prefix)[:-1] + "%'"  # the prefix is a checked name; LIKE's own wildcard appended
    for rm in store.retry(store.client.search_registered_models, filter_string=f"name LIKE {like}"):
        if not rm.name.startswith(prefix):
            continue
        if not is_name(rm.name):
            rows.append({"name": rm.name, "version": "-", "aliases": [], "tags": {}, "source": None, "run_id": None,
                         "status": "invalid name", "error": f"not a valid name (must match {NAME_PATTERN}); "
                                                             "not searched"})
            continue
        flt = f"name = {literal(rm.name)}"
        by_version: dict[str, list[str]] = {}
        for alias, v in (rm.aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        for mv in store.retry(store.client.search_model_versions, flt):
            rows.append({"name": mv.name, "version": str(mv.version),
                         "aliases": sorted(by_version.get(str(mv.version), [])), "tags": dict(mv.tags or {}),
                         "source": mv.source, "run_id": mv.run_id, "status": str(mv.status)})
    rows.sort(key=lambda r: (r["name"], int(r["version"]) if str(r["version"]).isdigit() else -1))
    return rows


def fetch(cfg: PipelineConfig, ref: str):
    """``load.fetch_version`` for a ``NAME@ALIAS`` / ``NAME/VERSION`` reference in this config's store."""
    from modpipe.registry.load import parse_ref

    name, r = parse_ref(ref, cfg.publish.alias)
    return fetch_version(store_of(cfg), name, r)
