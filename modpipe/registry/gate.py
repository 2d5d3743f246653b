"""The publish gate: what a module directory must satisfy before it is registered.

A module passes when
1. its metrics.json holds ``cfg.publish.metric`` and the value is >= ``cfg.publish.min_metric``;
2. its module.json names the backbone it was trained on and that fingerprint equals the current backbone's;
3. its files are intact: adapter weights are safetensors (never a pickle), and, where module.json lists
   ``files`` (relative path -> sha256), every listed digest matches the file on disk.

Digests of every file are computed here; the registry stores them as tags and checks them again on the
uploaded copy and whenever a version is resolved.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modpipe.lineage import canonical_json, sha256_file, sha256_text

METRICS_FILE = "metrics.json"
MODULE_FILE = "module.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass
class ModuleCheck:
    task: str
    path: Path
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    module: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    """relative path -> sha256 of every file in the module dir."""

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def digest(self) -> str:
        """One sha256 over (path, sha256) of all files: the identity of the published content."""
        return module_digest(self.files)


def module_digest(files: dict[str, str]) -> str:
    return sha256_text(canonical_json(sorted(files.items())))


def file_digests(root: str | Path) -> dict[str, str]:
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _read_json(path: Path, reasons: list[str]) -> dict[str, Any]:
    if not path.is_file():
        reasons.append(f"missing {path.name}")
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        reasons.append(f"{path.name} is not valid JSON ({err})")
        return {}
    if not isinstance(data, dict):
        reasons.append(f"{path.name} is not a JSON object")
        return {}
    return data


def check_module(task: str, module_dir: str | Path, backbone_fingerprint: str, metric: str,
                 min_metric: float) -> ModuleCheck:
    """Run every gate rule and collect all the reasons a module fails (not only the first)."""
    root = Path(module_dir)
    check = ModuleCheck(task=task, path=root)
    if not root.is_dir():
        check.reasons.append(f"module dir not found: {root}")
        return check
    check.files = file_digests(root)
    check.metrics = _read_json(root / METRICS_FILE, check.reasons)
    check.module = _read_json(root / MODULE_FILE, check.reasons)

    if check.metrics:
        value = check.metrics.get(metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            check.reasons.append(f"metrics.json has no numeric {metric!r}")
        elif value < min_metric:
            check.reasons.append(f"{metric}={value:.4f} below the gate's min_metric={min_metric}")

    if check.module:
        recorded = check.module.get("backbone_fingerprint")
        if not recorded:
            check.reasons.append("module.json has no backbone_fingerprint")
        elif recorded != backbone_fingerprint:
            check.reasons.append(
                f"trained on backbone {str(recorded)[:12]}, current backbone is {backbone_fingerprint[:12]}"
            )
        declared = check.module.get("files")
        if isinstance(declared, dict):
            for rel, digest in sorted(declared.items()):
                actual = check.files.get(rel)
                if actual is None:
                    check.reasons.append(f"file listed in module.json is missing: {rel}")
                elif actual != digest:
                    check.reasons.append(f"sha256 mismatch for {rel}: {actual[:12]} != recorded {str(digest)[:12]}")

    if ADAPTER_CONFIG not in check.files:
        check.reasons.append(f"missing {ADAPTER_CONFIG}")
    if ADAPTER_WEIGHTS not in check.files:
        check.reasons.append(f"missing {ADAPTER_WEIGHTS} (weights must be safetensors)")
    pickles = sorted(rel for rel in check.files if rel.endswith(PICKLE_SUFFIXES))
    if pickles:
        check.reasons.append(f"pickle files are not published: {', '.join(pickles)}")
    return check


def verify_files(root: str | Path, expected: dict[str, str]) -> list[str]:
    """Differences between the files under ``root`` and ``expected`` digests (empty when identical)."""
    actual = file_digests(root)
    problems = [f"missing {rel}" for rel in sorted(set(expected) - set(actual))]
    problems += [f"unexpected file {rel}" for rel in sorted(set(actual) - set(expected))]
    problems += [f"sha256 mismatch for {rel}: {actual[rel][:12]} != registered {expected[rel][:12]}"
                 for rel in sorted(set(actual) & set(expected)) if actual[rel] != expected[rel]]
    return problems
