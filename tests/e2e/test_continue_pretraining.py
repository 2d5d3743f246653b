"""Continued pretraining through the CLI: ``modpipe pretrain --set pretrain.init_from=<the smoke run's backbone>``
re-curates with the backbone's tokenizer and pretrains from its weights (curate, contracts, the gates, pretrain:
the same steps as every run)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modpipe.paths import REPO_ROOT
from run_helpers import SMOKE, copy_run, ray_env

pytestmark = [pytest.mark.slow]


def test_pretrain_continues_from_a_backbone_through_the_cli(smoke_built, ray_local, tmp_path):
    from safetensors.torch import load_file

    from modpipe.models.fingerprint import compute_backbone_fingerprint

    built_dir, built = smoke_built
    source = Path(built["pretrain"]["backbone"])
    run_dir = copy_run(built_dir, tmp_path / "run", steps=("raw",))  # the harvest only: curate runs again
    # A vanishing learning rate: the export must be the checkpoint's weights, so they were really loaded.
    r = subprocess.run([sys.executable, "-m", "modpipe", "pretrain", "--config", SMOKE, "--set", f"run_dir={run_dir}",
                        "--set", f"pretrain.init_from={source}", "--set", "pretrain.lr=1e-12"],
                       capture_output=True, text=True, timeout=900, env=ray_env(ray_local), cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr[-3000:]

    (curate_dir,) = [p for p in (run_dir / "curate").glob("curate-*") if ".failed-" not in p.name]
    assert curate_dir.name != Path(built["curate"]["curate_dir"]).name  # the tokenizer's digest is in its version
    assert (curate_dir / "tokenizer" / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()

    (backbone,) = [p for p in (run_dir / "pretrain").glob("pretrain-*") if ".failed-" not in p.name]
    record = {"path": str(source), "digest": compute_backbone_fingerprint(source)["fingerprint"]}
    assert json.loads((backbone / "metrics.json").read_text())["init_from"] == record
    assert json.loads((backbone / "fingerprint.json").read_text())["init_from"] == record
    start, end = load_file(source / "model.safetensors"), load_file(backbone / "model.safetensors")
    assert start.keys() == end.keys()
    assert max(float((start[k] - end[k]).abs().max()) for k in start) < 1e-6
