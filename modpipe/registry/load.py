"""Consume a module from the registry alone: ``load("NAME@ALIAS")`` -> a ready model, verified by the one check.

A reference is ``NAME@ALIAS``, ``NAME/VERSION``, ``NAME`` (alias ``champion``) or any of them after ``models:/``.
``load`` needs only the tracking URI (argument, else ``MLFLOW_TRACKING_URI``): it fetches the version's files and
the backbone version it links to (``backbone.name`` / ``backbone.version`` tags) into a private cache (verified
against the registry's sha256 tags on every use), runs ``policy.check`` with the rules and measurement recorded at
publish time, and only then builds the model. A module the check refuses is never returned (``PolicyError``).

``verify(store, ref)`` is the same path without building the model (``modpipe registry verify``); with a task dir
it re-measures on that test split (what publish does to the current champion).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modpipe.registry.names import check_name
from modpipe.registry.policy import PolicyError, Rules, Verdict, check, verify_files
from modpipe.registry.store import RegistryError, Store

log = logging.getLogger("modpipe.registry")

SHA_PREFIX = "sha256."
PYFUNC_SHA_PREFIX = "pyfunc.sha256."
MEASURED_PREFIX = "measured."
MODULE_SUBDIR = "artifacts/module"
"""Where the module files sit inside a version's pyfunc model dir."""
DEFAULT_ALIAS = "champion"


def parse_ref(ref: str, default_alias: str = DEFAULT_ALIAS) -> tuple[str, str]:
    """(name, alias or version number) of ``[models:/]NAME[@ALIAS|/VERSION]``; names are checked."""
    s = str(ref).strip().removeprefix("models:/")
    if "@" in s:
        name, ref_ = s.split("@", 1)
    elif "/" in s:
        name, ref_ = s.split("/", 1)
        if not ref_.isdigit():
            raise RegistryError(f"{ref!r}: expected NAME/VERSION with a version number")
    else:
        name, ref_ = s, default_alias
    check_name(name, "registered model name")
    if not ref_.isdigit():
        check_name(ref_, "alias")
    return name, ref_


def tracking_uri_of(uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RegistryError("no tracking URI: pass one or set MLFLOW_TRACKING_URI")
    return uri


def prefixed(tags: dict[str, str], prefix: str) -> dict[str, str]:
    return {k.removeprefix(prefix): v for k, v in tags.items() if k.startswith(prefix)}


def measurement(tags: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in prefixed(tags, MEASURED_PREFIX).items():
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out


@dataclass
class Fetched:
    name: str
    version: str
    tags: dict[str, str]
    model_dir: Path | None = None
    module_dir: Path | None = None
    backbone_dir: Path | None = None
    backbone: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def fetch_version(store: Store, name: str, ref: str) -> Fetched:
    """The version's model dir and its backbone's dir in the cache, verified against the registry's digests;
    problems (missing link, mismatched files) are returned, not raised, so ``verify`` can print them."""
    mv = store.version(name, ref)
    tags = dict(mv.tags or {})
    out = Fetched(name, str(mv.version), tags)
    files = prefixed(tags, SHA_PREFIX)
    if not files or "module_digest" not in tags:
        out.problems.append(f"{name} v{mv.version}: no sha256 tags; refusing an unverifiable module")
        return out
    expected = {f"{MODULE_SUBDIR}/{rel}": d for rel, d in files.items()} | prefixed(tags, PYFUNC_SHA_PREFIX)
    try:
        out.model_dir = store.fetch(mv.source, store.cache / name / f"{mv.version}-{tags['module_digest'][:12]}",
                                    expected)
        out.module_dir = out.model_dir / MODULE_SUBDIR
    except RegistryError as err:
        out.problems.append(str(err))
    bname, bversion = tags.get("backbone.name"), tags.get("backbone.version")
    if not bname or not bversion:
        out.problems.append(f"{name} v{mv.version} links to no registered backbone")
        return out
    try:
        bmv = store.version(bname, bversion)
        btags = dict(bmv.tags or {})
        out.backbone = {"name": bname, "version": str(bversion), "fingerprint": btags.get("backbone_fingerprint", "")}
        bfiles = prefixed(btags, SHA_PREFIX)
        if not bfiles:
            raise RegistryError(f"{bname} v{bversion}: no sha256 tags")
        out.backbone_dir = store.fetch(bmv.source, store.cache / bname / f"{bversion}-{out.backbone['fingerprint'][:12]}",
                                       bfiles)
    except RegistryError as err:
        out.problems.append(f"backbone: {err}")
    return out


def verify(store: Store, ref: str, *, rules: Rules | None = None, task_dir: str | Path | None = None,
           default_alias: str = DEFAULT_ALIAS) -> tuple[Verdict, Fetched]:
    """The one check on a registered version (fetched + verified files, its linked backbone, the gate's rules and
    measurement, or a fresh measurement on ``task_dir``)."""
    name, r = parse_ref(ref, default_alias)
    got = fetch_version(store, name, r)
    rules = rules or Rules.from_tags(got.tags)
    if got.module_dir is None:
        v = Verdict(f"models:/{name}/{got.version}", str(got.backbone_dir) if got.backbone_dir else None, rules)
        v.add("integrity", "files.registered", False, "; ".join(got.problems) or "not fetched")
        return v, got
    v = check(got.module_dir, got.backbone_dir, rules, expected_files=prefixed(got.tags, SHA_PREFIX),
              expected_digest=got.tags.get("module_digest"),
              gated_tokenizer_files=_json(got.tags.get("backbone.tokenizer_files")), task_dir=task_dir,
              recorded_measurement=measurement(got.tags) or None)
    for p in got.problems:
        v.add("compatibility" if p.startswith("backbone") or "backbone" in p else "integrity", "registry", False, p)
    return v, got


# ---------------------------------------------------------------------------------------------------- models


@dataclass
class LoadedModule:
    """A module on its backbone, ready: ``predict_proba(texts)`` (N x K in ``labels`` order), ``predict(texts)``."""

    name: str
    version: str | None
    labels: list[str]
    max_length: int
    model: Any
    tokenizer: Any
    verdict: Verdict
    module_digest: str
    module_dir: Path
    backbone_dir: Path

    def predict_proba(self, texts: list[str], batch_size: int = 32):
        from modpipe.models.modules import predict_proba

        return predict_proba(self.model, self.tokenizer, list(texts), self.max_length, batch_size)

    def decide(self, scores) -> list:
        """Predictions from ``predict_proba``'s scores, by the module's problem: a label name (classification),
        the list of label names at or above the decision threshold (multilabel), the value (regression)."""
        from modpipe.evaluate import problems

        manifest = getattr(self.model, "modpipe_manifest", None) or {}
        problem = problems.get(manifest.get("problem"))
        values = problems.to_values(problem, scores, manifest.get("target_scale"))
        decided = problems.decide(problem, values, manifest.get("decision_threshold"))
        if problem is problems.REGRESSION:
            return decided
        if problem is problems.MULTILABEL:
            return [[self.labels[i] for i in ids] for ids in decided]
        return [self.labels[i] for i in decided]

    def predict(self, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """Per text: ``label`` (``decide``), the raw ``probabilities`` (scores), the labels, the module's name,
        version and digest."""
        probs = self.predict_proba(texts, batch_size)
        return [{"label": label, "probabilities": [float(x) for x in p],
                 "labels": list(self.labels), "model": self.name, "version": self.version,
                 "module_digest": self.module_digest} for label, p in zip(self.decide(probs), probs)]


def build(name: str, version: str | None, verdict: Verdict, module_dir: Path, backbone_dir: Path) -> LoadedModule:
    """The model of a module the check passed (never called otherwise)."""
    from transformers import AutoTokenizer

    from modpipe.models.modules import load_module

    if not verdict.passed:
        raise PolicyError(verdict, f"{name} v{version}")
    model = load_module(backbone_dir, module_dir, verify=False)  # verified by policy.check, field by field
    m = verdict.manifest
    return LoadedModule(name, version, list(m.get("labels") or []), int(m.get("max_length") or 256), model,
                        AutoTokenizer.from_pretrained(str(backbone_dir)), verdict, verdict.digest, module_dir,
                        backbone_dir)


def load(ref: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> LoadedModule:
    """``modpipe.load("NAME@ALIAS")``: the registered module, verified by the one check, on its registered
    backbone; raises ``PolicyError`` (every failing field) or ``RegistryError`` and never returns a refused module."""
    store = Store(tracking_uri_of(tracking_uri), cache_dir)
    verdict, got = verify(store, ref)
    if not verdict.passed:
        raise PolicyError(verdict, f"{got.name} v{got.version}")
    assert got.module_dir is not None and got.backbone_dir is not None
    return build(got.name, got.version, verdict, got.module_dir, got.backbone_dir)


def resolve(store: Store, ref: str) -> str:
    """Local path of a registered module's files after the check (integrity + compatibility + recorded quality)."""
    verdict, got = verify(store, ref)
    if not verdict.passed:
        raise RegistryError(f"{got.name} v{got.version} refused: {'; '.join(verdict.reasons)}")
    return str(got.module_dir)


def load_pyfunc_module(module_dir: str | Path, config: dict[str, Any]) -> LoadedModule:
    """The pyfunc's ``load_context``: module files against the digests in the model config, the backbone version
    from the registry of the current tracking URI, then the one check."""
    import mlflow

    module_dir = Path(module_dir)
    files = config.get("module_files") or {}
    problems = verify_files(module_dir, files) if files else ["no module file digests in the model config"]
    if problems:
        raise RegistryError(f"pyfunc module files fail verification: {'; '.join(problems[:5])}")
    store = Store(config.get("tracking_uri") or mlflow.get_tracking_uri(), config.get("cache_dir"))
    b = config.get("backbone") or {}
    bmv = store.version(b["name"], str(b["version"]))
    btags = dict(bmv.tags or {})
    backbone_dir = store.fetch(bmv.source, store.cache / b["name"] / f"{b['version']}-{str(b.get('fingerprint'))[:12]}",
                               prefixed(btags, SHA_PREFIX))
    rules = Rules.from_tags(config.get("rules") or {})
    verdict = check(module_dir, backbone_dir, rules, expected_files=files, expected_digest=config.get("module_digest"),
                    gated_tokenizer_files=config.get("tokenizer_files"),
                    recorded_measurement=measurement({f"{MEASURED_PREFIX}{k}": str(v)
                                                      for k, v in (config.get("measured") or {}).items()}) or None)
    return build(config.get("name", "?"), None, verdict, module_dir, backbone_dir)


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
