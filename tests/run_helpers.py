"""Helpers for tests that run whole steps: the smoke recipe, copies of a built run dir, Ray for subprocesses."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from modpipe.paths import REPO_ROOT

SMOKE = str(REPO_ROOT / "recipes" / "smoke.yaml")
MICRO = ["tune.num_samples=1", "tune.tasks=[man_section]"]
"""On top of the smoke recipe, for the many whole-DAG runs: one tune trial of one task (adapt is already one
epoch)."""


def copy_run(built_dir: Path, dst: Path, steps=("raw", "curate", "contracts", "pretrain")) -> Path:
    """A new run dir holding copies of some built steps (no locks, no run summaries)."""
    dst.mkdir(parents=True, exist_ok=True)
    for s in steps:
        shutil.copytree(built_dir / s, dst / s, ignore=shutil.ignore_patterns("*.lock"))
    return dst


def ray_env(ray) -> dict:
    """Environment for a subprocess that attaches to the test session's Ray instead of starting its own."""
    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
