"""The promotion policy: ONE check of a module dir on a backbone dir, shared by the publish gate and every loader.

``check(module_dir, backbone_dir, rules, ...)`` returns a ``Verdict``: a list of named fields in three groups,
each ``ok`` or not with a detail, so ``modpipe registry verify`` can print it field by field and a refusal names
every reason (not only the first). New rules are new fields here, never a second check elsewhere.

integrity
  ``files.regular``     every entry of the module dir is a regular file or folder (no symlink, fifo, device)
  ``module.json``       parses, has the module section, lists its files
  ``files.declared``    every file module.json lists has its sha256; no other file besides module.json and
                        provenance.json (the registry's digest covers those two as well)
  ``files.registered``  (loaders) every file, module.json included, has the sha256 the registry recorded, and
                        the module digest over them is the version's ``module_digest``
  ``weights``           adapter_config.json + adapter_model.safetensors present; no pickle-format file
compatibility (with the backbone dir, whose fingerprint is recomputed from its files)
  ``backbone``          the backbone's own files still give its recorded fingerprint
  ``hidden_size`` ``num_layers`` ``vocab_size`` ``tokenizer_sha256`` ``backbone_fingerprint``
                        module.json against the backbone (``modpipe.models.manifest.CHECKED_FIELDS``)
  ``tokenizer_files``   every tokenizer file of the backbone (tokenizer.json, tokenizer_config.json, special
                        tokens, ...) against what the module was gated with (module.json ``tokenizer_files`` or
                        the registry's record of the backbone)
  ``module.kind``       a module method and head this version can build
  ``libraries``         major.minor of torch, transformers, peft, tokenizers as recorded in module.json
quality (the task's rule: metric, direction, threshold; ``max_ece``)
  ``evaluated``         measured on the current test split (when one is given), else the registry's
                        measurement, else the module's own metrics.json (said so in the detail)
  ``reproduces``        when the test split is the one module.json records, the recorded test metric and the
                        recorded predictions are reproduced by these weights on this backbone (a module.json
                        edited to name this backbone over foreign weights is caught here)
  ``metric``            measured metric against the threshold in the rule's direction
  ``ece``               classifiers: measured expected calibration error <= max_ece
  ``slice_gap``         when ``max_slice_gap`` is set: the largest macro-F1 gap between test slices <= it
promotion (publish only, when given a ``BaselineBar``; a failure here registers the module as challenger at most)
  ``baseline``          measured on the current test split, the module is not below the task's classical baseline
                        beyond noise: module minus baseline on the task's metric over the same test rows, paired
                        bootstrap interval, its upper end >= 0 (lower-is-better metrics: its lower end <= 0).
                        Metrics that need probabilities (AUROC, ECE) are compared as point values.

A module that fails integrity or compatibility is never loaded (not even to be evaluated). ``Verdict.passed``
covers integrity, compatibility and quality (what registering and loading need); ``Verdict.promotable`` adds
promotion.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modpipe.lineage import canonical_json, sha256_file, sha256_text

if TYPE_CHECKING:
    from modpipe.registry.promotion import BaselineBar

MODULE_FILE = "module.json"
METRICS_FILE = "metrics.json"
PROVENANCE_FILE = "provenance.json"
PREDICTIONS_FILE = "test_predictions.parquet"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
UNDECLARED_OK = (MODULE_FILE, PROVENANCE_FILE)
"""Files module.json cannot list (itself; provenance.json is written after it); the registry digest covers them."""
LIBRARIES = ("torch", "transformers", "peft", "tokenizers")
"""Libraries whose major.minor must match the module's record: they define how weights are read and applied."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")
AGREEMENT_MIN = 0.95
"""Share of test rows whose recorded prediction the weights must reproduce (``reproduces``)."""
PROBS_TOLERANCE = 0.01
"""Largest difference between a recorded and a reproduced test probability (same weights, same backbone, same
split: float noise only)."""


class PolicyError(RuntimeError):
    """A module refused by the check; ``verdict`` holds every field."""

    def __init__(self, verdict: Verdict, what: str = ""):
        self.verdict = verdict
        super().__init__(f"{what or verdict.module_dir} refused: " + "; ".join(verdict.reasons))


@dataclass(frozen=True)
class Rules:
    """What the quality group judges: the task's metric, its direction and bar, the ECE bar, the tolerance of
    ``reproduces``. Stored with each registered version (``tags()``) so a loader applies the same rule."""

    metric: str = "test_macro_f1"
    direction: str = "higher"
    threshold: float = 0.2
    max_ece: float | None = 0.25
    reproduce_tolerance: float = 0.02
    max_slice_gap: float | None = None

    @classmethod
    def of(cls, publish, task: str, problem: str = "classification") -> Rules:
        rule = publish.rule(task, problem)
        return cls(rule.metric, rule.direction, float(rule.threshold), publish.max_ece,
                   float(publish.reproduce_tolerance), publish.max_slice_gap)

    def tags(self) -> dict[str, str]:
        return {"gate.metric": self.metric, "gate.direction": self.direction, "gate.threshold": repr(self.threshold),
                "gate.max_ece": "none" if self.max_ece is None else repr(self.max_ece),
                "gate.reproduce_tolerance": repr(self.reproduce_tolerance),
                "gate.max_slice_gap": "none" if self.max_slice_gap is None else repr(self.max_slice_gap)}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Rules:
        d = cls()
        ece, gap = tags.get("gate.max_ece"), tags.get("gate.max_slice_gap")
        return cls(tags.get("gate.metric", d.metric), tags.get("gate.direction", d.direction),
                   float(tags.get("gate.threshold", tags.get("gate.min_metric", d.threshold))),
                   d.max_ece if ece is None else (None if ece == "none" else float(ece)),
                   float(tags.get("gate.reproduce_tolerance", d.reproduce_tolerance)),
                   None if gap in (None, "none") else float(gap))

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.direction == "higher" else value <= self.threshold

    def at_least_as_good(self, a: float, b: float, tolerance: float = 0.0) -> bool:
        """``a`` is at least as good as ``b`` (within ``tolerance``) in this rule's direction."""
        return a >= b - tolerance if self.direction == "higher" else a <= b + tolerance


@dataclass
class Field:
    group: str
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Verdict:
    module_dir: str
    backbone_dir: str | None
    rules: Rules
    fields: list[Field] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    """relative path -> sha256 of every file in the module dir, module.json included."""
    manifest: dict[str, Any] = field(default_factory=dict)
    recorded: dict[str, Any] = field(default_factory=dict)
    """The module's own metrics.json."""
    baseline: dict[str, Any] | None = None
    """The promotion.baseline comparison (name, metric, module, baseline, delta, low, high, rows, ...)."""
    measured: dict[str, Any] = field(default_factory=dict)
    """Test metrics the quality group judged (``source``: ``measured`` here, ``registry`` or ``metrics.json``)."""

    def add(self, group: str, name: str, ok: bool, detail: str = "") -> bool:
        self.fields.append(Field(group, name, bool(ok), detail))
        return bool(ok)

    @property
    def passed(self) -> bool:
        """Integrity, compatibility and quality pass: the module may be registered and loaded."""
        return bool(self.fields) and all(f.ok for f in self.fields if f.group != "promotion")

    @property
    def promotable(self) -> bool:
        """``passed`` and every promotion field (the baseline bar) passes: the module may take the champion alias."""
        return self.passed and all(f.ok for f in self.fields)

    def group_ok(self, *groups: str) -> bool:
        return all(f.ok for f in self.fields if f.group in groups)

    @property
    def reasons(self) -> list[str]:
        return [f"{f.group}.{f.name}: {f.detail}" for f in self.fields if not f.ok and f.group != "promotion"]

    @property
    def promotion_reasons(self) -> list[str]:
        return [f"{f.group}.{f.name}: {f.detail}" for f in self.fields if not f.ok and f.group == "promotion"]

    @property
    def digest(self) -> str:
        return module_digest(self.files)

    @property
    def value(self) -> float | None:
        """The judged metric's value (None when nothing was measured)."""
        v = self.measured.get(self.rules.metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    def to_dict(self) -> dict[str, Any]:
        return {"module_dir": self.module_dir, "backbone_dir": self.backbone_dir, "passed": self.passed,
                "rules": asdict(self.rules), "digest": self.digest if self.files else None,
                "promotable": self.promotable, "baseline": self.baseline,
                "measured": {k: v for k, v in self.measured.items() if k not in ("ids", "pred_ids", "probs")},
                "fields": [asdict(f) for f in self.fields]}


# ---------------------------------------------------------------------------------------------------- files


def module_digest(files: dict[str, str]) -> str:
    """One sha256 over (path, sha256) of every file (module.json included): the identity of published content."""
    return sha256_text(canonical_json(sorted(files.items())))


def scan(root: str | Path) -> tuple[dict[str, str], list[str]]:
    """(sha256 of every regular file under ``root`` by relative path, entries that are not regular files or
    folders). Nothing is followed: a symlink is reported, never read."""
    root = Path(root)
    files: dict[str, str] = {}
    odd: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                odd.append(f"{rel} (symlink)")
            elif stat.S_ISDIR(mode):
                continue
            elif not stat.S_ISREG(mode):
                odd.append(f"{rel} (not a regular file)")
            else:
                files[rel] = sha256_file(path)
        dirnames[:] = [d for d in dirnames if not os.path.islink(Path(dirpath) / d)]
    return dict(sorted(files.items())), odd


def verify_files(root: str | Path, expected: dict[str, str]) -> list[str]:
    """Differences between the files under ``root`` and ``expected`` digests (empty when identical); symlinks
    and other non-regular entries are differences too."""
    actual, odd = scan(root)
    problems = [f"not a regular file: {o}" for o in odd]
    problems += [f"missing {rel}" for rel in sorted(set(expected) - set(actual))]
    problems += [f"unexpected file {rel}" for rel in sorted(set(actual) - set(expected))]
    problems += [f"sha256 mismatch for {rel}: {actual[rel][:12]} != registered {expected[rel][:12]}"
                 for rel in sorted(set(actual) & set(expected)) if actual[rel] != expected[rel]]
    return problems


def tokenizer_files(backbone_dir: str | Path) -> dict[str, str]:
    root = Path(backbone_dir)
    return {n: sha256_file(root / n) for n in TOKENIZER_FILES if (root / n).is_file() and not (root / n).is_symlink()}


def _major_minor(v: str) -> str:
    return ".".join(str(v).split("+")[0].split(".")[:2])


def installed_versions() -> dict[str, str]:
    from modpipe.lineage import library_versions

    return library_versions(LIBRARIES)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


# ---------------------------------------------------------------------------------------------------- the check


def check(module_dir: str | Path, backbone_dir: str | Path | None, rules: Rules, *,
          expected_files: dict[str, str] | None = None, expected_digest: str | None = None,
          gated_tokenizer_files: dict[str, str] | None = None, task_dir: str | Path | None = None,
          recorded_measurement: dict[str, Any] | None = None, evaluate_batch_size: int = 32,
          baseline: BaselineBar | str | None = None) -> Verdict:
    """Run every field (see the module docstring). ``task_dir``: measure on its test split (only when integrity and
    compatibility passed); else ``recorded_measurement`` (the registry's); else the module's metrics.json.
    ``expected_files`` / ``expected_digest``: the registry's record of this version's files.
    ``gated_tokenizer_files``: the backbone tokenizer files the module was gated with (registry).
    ``baseline``: the bar of the promotion group; a string is the reason there is none (the field fails);
    None: promotion is not judged (loaders)."""
    root = Path(module_dir)
    v = Verdict(str(root), str(backbone_dir) if backbone_dir is not None else None, rules)
    if not root.is_dir() or root.is_symlink():
        v.add("integrity", "files.regular", False, f"module dir not found (or a symlink): {root}")
        return v
    _integrity(v, root, expected_files, expected_digest)
    if backbone_dir is None:
        v.add("compatibility", "backbone", False, "no backbone given")
    elif v.manifest:
        _compatibility(v, Path(backbone_dir), gated_tokenizer_files)
    _quality(v, root, backbone_dir, task_dir, recorded_measurement, evaluate_batch_size)
    if baseline is not None and v.passed:
        from modpipe.registry.promotion import judge_baseline

        judge_baseline(v, baseline)
    return v


def _integrity(v: Verdict, root: Path, expected: dict[str, str] | None, expected_digest: str | None) -> None:
    v.files, odd = scan(root)
    v.add("integrity", "files.regular", not odd, "only regular files" if not odd else
          "refusing non-regular entries: " + ", ".join(odd[:10]))
    manifest = _read_json(root / MODULE_FILE)
    if isinstance(manifest, str):
        v.add("integrity", "module.json", False, manifest)
    elif not isinstance(manifest.get("module"), dict) or not isinstance(manifest.get("files"), dict):
        v.add("integrity", "module.json", False, "no module section or no files list")
    else:
        v.manifest = manifest
        v.add("integrity", "module.json", True, f"format {manifest.get('format', '?')}, task {manifest.get('task')}")
        declared = manifest["files"]
        bad = []
        for rel, digest in sorted(declared.items()):
            have = v.files.get(rel)
            if have is None:
                bad.append(f"{rel} missing")
            elif have != digest:
                bad.append(f"{rel} sha256 {have[:12]} != recorded {str(digest)[:12]}")
        extra = sorted(set(v.files) - set(declared) - set(UNDECLARED_OK))
        bad += [f"{rel} not listed in module.json" for rel in extra]
        v.add("integrity", "files.declared", not bad, "; ".join(bad[:8]) if bad else f"{len(declared)} file(s) match")
    recorded = _read_json(root / METRICS_FILE)
    v.recorded = recorded if isinstance(recorded, dict) else {}
    if expected is not None:
        problems = verify_files(root, expected)
        if expected_digest and not problems and module_digest(v.files) != expected_digest:
            problems.append(f"module digest {module_digest(v.files)[:12]} != registered {expected_digest[:12]}")
        v.add("integrity", "files.registered", not problems, "; ".join(problems[:8]) if problems else
              f"{len(expected)} file(s) incl. module.json match the registry")
    pickles = sorted(rel for rel in v.files if rel.lower().endswith(PICKLE_SUFFIXES))
    missing = [f for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if f not in v.files]
    bad = [f"missing {m}" for m in missing] + ([f"pickle-format files: {', '.join(pickles)}"] if pickles else [])
    v.add("integrity", "weights", not bad, "; ".join(bad) if bad else "safetensors only")


def _compatibility(v: Verdict, backbone: Path, gated_tokenizer: dict[str, str] | None) -> None:
    from modpipe.models.fingerprint import read_backbone_fingerprint
    from modpipe.models.heads import HEADS
    from modpipe.models.manifest import CHECKED_FIELDS, backbone_facts
    from modpipe.models.modules import METHODS

    _, odd = scan(backbone) if backbone.is_dir() else ({}, [])
    if not backbone.is_dir() or backbone.is_symlink() or odd:
        v.add("compatibility", "backbone", False, f"backbone dir unusable: {backbone}"
              + (f" (non-regular entries: {', '.join(odd[:5])})" if odd else ""))
        return
    try:
        read_backbone_fingerprint(backbone, verify=True)
        facts = backbone_facts(backbone)
    except (OSError, ValueError, KeyError) as err:
        v.add("compatibility", "backbone", False, f"backbone unusable: {err}")
        return
    v.add("compatibility", "backbone", True, f"fingerprint {facts['backbone_fingerprint'][:12]} recomputed")
    m = v.manifest
    for name in CHECKED_FIELDS:
        want, have = m.get(name), facts.get(name)
        if want is None:
            v.add("compatibility", name, False, "not recorded in module.json")
        else:
            v.add("compatibility", name, want == have, f"{_short(have)}" if want == have else
                  f"module was trained with {_short(want)}, backbone has {_short(have)}")
    have_tok = tokenizer_files(backbone)
    want_tok = m.get("tokenizer_files") if isinstance(m.get("tokenizer_files"), dict) else gated_tokenizer
    if want_tok is None:
        v.add("compatibility", "tokenizer_files", True,
              "tokenizer.json via tokenizer_sha256 (no record of the other tokenizer files)")
    else:
        diff = sorted(k for k in set(want_tok) | set(have_tok) if want_tok.get(k) != have_tok.get(k))
        v.add("compatibility", "tokenizer_files", not diff, ", ".join(diff) + " differ" if diff else
              f"{len(have_tok)} file(s) match")
    spec = m.get("module") or {}
    kind_ok = spec.get("method") in METHODS and spec.get("head") in HEADS
    v.add("compatibility", "module.kind", kind_ok, f"{spec.get('method')} + {spec.get('head')} head"
          + ("" if kind_ok else " (not a kind this version builds)"))
    recorded = m.get("versions") if isinstance(m.get("versions"), dict) else {}
    installed = installed_versions()
    bad = [f"{lib} {recorded.get(lib)} (installed {installed.get(lib)})" for lib in LIBRARIES
           if lib not in recorded or _major_minor(recorded[lib]) != _major_minor(installed.get(lib, "?"))]
    v.add("compatibility", "libraries", not bad, "major.minor differ: " + ", ".join(bad) if bad else
          ", ".join(f"{lib} {_major_minor(installed[lib])}" for lib in LIBRARIES if lib in installed))


def _quality(v: Verdict, root: Path, backbone: str | Path | None, task_dir: str | Path | None,
             registry: dict[str, Any] | None, batch_size: int) -> None:
    rules = v.rules
    loadable = v.group_ok("integrity", "compatibility") and bool(v.manifest) and backbone is not None
    if task_dir is not None:
        if not loadable:
            v.add("quality", "evaluated", False, "not evaluated: integrity or compatibility failed")
            return
        try:
            v.measured = {**measure(root, backbone, task_dir, v.manifest, batch_size), "source": "measured"}
        except Exception as err:  # noqa: BLE001 - any failure to evaluate is a refusal with its reason
            v.add("quality", "evaluated", False, f"cannot evaluate on {task_dir}: {type(err).__name__}: {err}")
            return
        v.add("quality", "evaluated", True, f"measured on the current test split ({v.measured['n_test']} rows)")
        _reproduces(v, root)
    elif registry:
        v.measured = {**registry, "source": "registry"}
        v.add("quality", "evaluated", True, "measurement recorded by the registry's gate")
    else:
        v.measured = {**{k: x for k, x in v.recorded.items() if k.startswith("test_")}, "source": "metrics.json"}
        v.add("quality", "evaluated", bool(v.recorded), "the module's own metrics.json (not re-measured)"
              if v.recorded else "no measurement and no metrics.json")
    value = v.value
    if value is None:
        why = "" if rules.metric not in v.measured else \
            " (undefined on this test split: its target is constant)" if rules.metric == "test_spearman" else \
            f" (measured as {v.measured[rules.metric]!r})"
        v.add("quality", "metric", False, f"no numeric {rules.metric}{why}")
    else:
        op = ">=" if rules.direction == "higher" else "<="
        v.add("quality", "metric", rules.passes(value), f"{rules.metric}={value:.4f} {op} {rules.threshold} "
              f"({rules.direction} is better)" if rules.passes(value) else
              f"{rules.metric}={value:.4f} fails the bar {op} {rules.threshold} ({rules.direction} is better)")
    if rules.max_ece is not None and v.manifest.get("num_labels") and \
            (v.manifest.get("problem") or "classification") == "classification":
        ece = _number(v.measured.get("test_ece"))
        if ece is None:
            v.add("quality", "ece", False, "no test_ece measured")
        else:
            v.add("quality", "ece", ece <= rules.max_ece, f"test_ece={ece:.4f} "
                  + ("<=" if ece <= rules.max_ece else "above max_ece") + f" {rules.max_ece}")
    if rules.max_slice_gap is not None:
        gap = _number(v.measured.get("test_max_slice_gap"))
        worst = max(((k, x) for k, x in v.measured.items() if k.startswith("test_slice_gap.") and _number(x)
                     is not None), key=lambda kv: kv[1], default=(None, None))[0]
        v.add("quality", "slice_gap", gap is not None and gap <= rules.max_slice_gap,
              "no slice gap measured (fewer than two slices of >= 10 test rows)" if gap is None else
              f"test_max_slice_gap={gap:.4f} ({worst}) " + ("<=" if gap <= rules.max_slice_gap else
                                                           "above max_slice_gap") + f" {rules.max_slice_gap}")


def _reproduces(v: Verdict, root: Path) -> None:
    """Same test split as recorded -> the recorded metric and predictions must come out again."""
    digests = v.manifest.get("data_digests") or {}
    if not digests.get("test") or digests.get("test") != v.measured.get("test_digest") or \
            digests.get("labels") != v.measured.get("labels_digest"):
        v.add("quality", "reproduces", True, "test split differs from the module's: nothing to reproduce")
        return
    problems = []
    metric = v.rules.metric
    rec, got = _number(v.recorded.get(metric)), _number(v.measured.get(metric))
    if rec is None:
        problems.append(f"metrics.json has no {metric}")
    elif got is not None and abs(rec - got) > v.rules.reproduce_tolerance:
        problems.append(f"recorded {metric}={rec:.4f}, these weights on this backbone give {got:.4f}")
    preds = root / PREDICTIONS_FILE
    agreement = None
    if preds.is_file():
        import numpy as np

        try:
            from modpipe.evaluate.scoring import read_predictions

            _, table = read_predictions(preds)
            recorded = {i: (p, q) for i, p, q in zip(table["id"], table["pred"], table["probs"])}
            ours = {i: (p, q) for i, p, q in zip(v.measured["ids"], v.measured["pred_ids"], v.measured["probs"])}
            common = [i for i in ours if i in recorded]
            agreement = sum(_same(recorded[i][0], ours[i][0]) for i in common) / max(1, len(common))
            drift = max((float(np.max(np.abs(np.asarray(recorded[i][1]) - np.asarray(ours[i][1]))))
                         for i in common), default=1.0)
            if not common or agreement < AGREEMENT_MIN or drift > PROBS_TOLERANCE:
                problems.append(f"these weights on this backbone do not give the recorded test predictions "
                                f"({agreement:.0%} agree, probabilities differ by up to {drift:.3g})")
        except Exception as err:  # noqa: BLE001
            problems.append(f"{PREDICTIONS_FILE} unreadable: {type(err).__name__}: {err}")
    v.add("quality", "reproduces", not problems, "; ".join(problems) if problems else
          f"recorded {metric} and test predictions reproduced"
          + (f" ({agreement:.0%} agree)" if agreement is not None else ""))


def _same(recorded: Any, ours: Any) -> bool:
    """One prediction reproduced: the same class or label set; a regression value up to float noise."""
    if isinstance(recorded, float) or isinstance(ours, float):
        return abs(float(recorded) - float(ours)) <= PROBS_TOLERANCE * max(1.0, abs(float(recorded)))
    return recorded == ours


def measure(module_dir: str | Path, backbone_dir: str | Path, task_dir: str | Path, manifest: dict[str, Any],
            batch_size: int = 32) -> dict[str, Any]:
    """Test metrics of the module on ``task_dir``'s test split (``<tasks_dir>/<task>``), the problem's
    (``evaluate.scoring.score_split``, as the adapt stage computed them), slices and predictions. Only called on a
    module whose integrity and compatibility passed."""
    from transformers import AutoTokenizer

    from modpipe.adapt.data import read_labels, read_split
    from modpipe.evaluate.problems import PROBLEM_FILE, get, read_problem
    from modpipe.evaluate.scoring import score_split
    from modpipe.evaluate.slices import slice_metrics
    from modpipe.models.modules import load_module, predict_proba

    task_dir = Path(task_dir)
    problem = read_problem(task_dir)["problem"]
    if problem != (manifest.get("problem") or "classification"):
        raise ValueError(f"the task is a {problem} task; the module was trained for {manifest.get('problem')}")
    labels = read_labels(task_dir, problem)
    if list(labels) != list(manifest.get("labels") or []):
        raise ValueError(f"the test split's labels {labels} are not the module's {manifest.get('labels')}")
    test = read_split(task_dir, "test", len(labels), problem)
    if not len(test):
        raise ValueError("the test split has no usable rows")
    model = load_module(backbone_dir, module_dir, verify=False)  # verified above, field by field
    tokenizer = AutoTokenizer.from_pretrained(str(backbone_dir))
    # the batch size the module was tested with: the same padding, so the same numbers up to float noise
    batch_size = int(manifest.get("batch_size") or batch_size)
    scores = predict_proba(model, tokenizer, test.texts, int(manifest.get("max_length") or 256), batch_size)
    scored = score_split(manifest, test, scores)
    out = {**scored["metrics"], **slice_metrics(task_dir, test.ids, test.targets, scored["preds"],
                                                problem=get(problem))}
    problem_file = task_dir / PROBLEM_FILE
    return {**{k: (None if isinstance(x, float) and not math.isfinite(x) else x) for k, x in out.items()},
            "n_test": len(test), "test_digest": sha256_file(task_dir / "test.parquet"),
            "labels_digest": sha256_file(task_dir / "labels.json"),
            "problem_digest": sha256_file(problem_file) if problem_file.is_file() else None,
            "ids": test.ids, "pred_ids": scored["preds"], "targets": test.targets, "problem": problem,
            "probs": scores.tolist()}


def _read_json(path: Path) -> dict[str, Any] | str:
    if path.is_symlink() or not path.is_file():
        return f"missing {path.name}"
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{path.name} is not valid JSON ({err})"
    return data if isinstance(data, dict) else f"{path.name} is not a JSON object"


def _short(v: Any) -> str:
    s = str(v)
    return s[:12] if len(s) == 64 else s
