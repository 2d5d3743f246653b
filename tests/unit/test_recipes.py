"""Every recipe resolves into the DeepSpeed config pretrain would hand to ``deepspeed.initialize``, and that config
agrees with the recipe (stage, precision, batch sizes, optimizer) and passes DeepSpeed's own parser; a recipe's
header names the KubeRay manifest it goes with, and that manifest runs it on as many GPUs as it has workers.
(tests/unit/test_config.py checks that each recipe validates in its own run dir.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from modpipe.config import ModelConfig, PretrainConfig, load_config
from modpipe.paths import REPO_ROOT
from modpipe.pretrain.ds_config import build_ds_config, load_ds_config

RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


def _header(recipe: Path) -> str:
    lines = recipe.read_text().splitlines()
    return "\n".join(line for line in lines[:next((i for i, x in enumerate(lines) if not x.startswith("#")),
                                                   len(lines))])


def _resolved(recipe: Path):
    cfg = load_config(str(recipe))
    p = cfg.pretrain
    base = load_ds_config(p.deepspeed_config)
    # What the loop builds on each worker: world size = Ray Train workers, GPU when the recipe asks for it.
    return cfg, base, build_ds_config(base, p, world_size=p.num_workers, on_gpu=p.use_gpu)


def test_there_are_cpu_and_multi_gpu_recipes():
    names = {r.stem for r in RECIPES}
    assert {"cpu-default", "gpu-2x8", "smoke"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_resolves_to_a_consistent_deepspeed_config(recipe):
    cfg, base, ds = _resolved(recipe)
    p = cfg.pretrain
    assert ds["zero_optimization"]["stage"] == p.zero_stage
    assert base["zero_optimization"]["stage"] == p.zero_stage, (
        f"pretrain.zero_stage {p.zero_stage} overrides {p.deepspeed_config}'s stage: point deepspeed_config at "
        f"infra/deepspeed/zero{p.zero_stage}.json")
    assert ds["train_micro_batch_size_per_gpu"] == p.micro_batch_size
    assert ds["gradient_accumulation_steps"] == p.gradient_accumulation_steps
    assert ds["train_batch_size"] == p.micro_batch_size * p.gradient_accumulation_steps * p.num_workers
    assert ds["bf16"]["enabled"] is p.use_gpu and "fp16" not in ds  # bf16 on GPU, fp32 on CPU, never fp16
    params = ds["optimizer"]["params"]
    assert params["lr"] == p.lr and params["torch_adam"] is True  # never DeepSpeed's JIT-built FusedAdam
    assert params.get("fused", False) is p.fused_adam
    assert ds["scheduler"]["params"]["total_num_steps"] == p.steps
    assert 1 <= ds["scheduler"]["params"]["warmup_num_steps"] < p.steps
    assert cfg.curate.seq_len <= cfg.model.max_position_embeddings


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_deepspeed_parses_the_resolved_config(recipe):
    """DeepSpeed's own config classes (unknown ZeRO keys are refused). Outside a process group it takes world size
    1, so the global batch it checks is left for it to derive; the test above checks ours."""
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg, _, ds = _resolved(recipe)
    parsed = DeepSpeedConfig({k: v for k, v in ds.items() if k != "train_batch_size"})
    assert parsed.zero_optimization_stage == cfg.pretrain.zero_stage
    assert parsed.bfloat16_config.enabled is cfg.pretrain.use_gpu
    assert parsed.train_batch_size == cfg.pretrain.micro_batch_size * cfg.pretrain.gradient_accumulation_steps


def test_gpu_2x8_is_zero3_bf16_fused_checkpointed_sdpa():
    cfg, _, ds = _resolved(REPO_ROOT / "recipes" / "gpu-2x8.yaml")
    p = cfg.pretrain
    assert (p.num_workers, p.use_gpu, p.zero_stage) == (16, True, 3)
    assert p.fused_adam and p.activation_checkpointing and p.attn_implementation == "sdpa"
    assert ds["bf16"]["enabled"] and ds["optimizer"]["params"]["fused"] is True
    assert ds["train_batch_size"] == 16 * 2 * 16
    assert 100e6 < _params(cfg.model, cfg.curate.vocab_size) < 160e6  # the ~125M class of gpu-125m.yaml


def _params(m: ModelConfig, vocab: int) -> int:
    """Llama parameters with tied embeddings: embeddings + per block (4 attention + 3 MLP matmuls, 2 norms) + norm."""
    h = m.hidden_size
    return vocab * h + m.num_layers * (4 * h * h + 3 * h * m.intermediate_size + 2 * h) + h


def test_cpu_default_is_the_embedded_default_written_out():
    """Every model and pretrain field is spelled out, and every step gets the version a plain ``modpipe run`` gets."""
    from modpipe.steps import STEPS

    recipe = REPO_ROOT / "recipes" / "cpu-default.yaml"
    written = yaml.safe_load(recipe.read_text())
    assert set(written["model"]) == set(ModelConfig.model_fields), "write the new model field into the recipe"
    assert set(written["pretrain"]) == set(PretrainConfig.model_fields), "write the new pretrain field into the recipe"
    cfg, default = load_config(str(recipe)), load_config()
    for step in STEPS:
        assert step.config_of(cfg) == step.config_of(default), step.name
        assert step.external_of(cfg) == step.external_of(default), step.name


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_header_commands_and_kuberay_manifest_match_the_recipe(recipe):
    header = _header(recipe)
    for named in re.findall(r"--config (?:\S*/)?recipes/([\w.-]+)\.yaml", header):
        assert named == recipe.stem, f"{recipe.name}'s header runs recipes/{named}.yaml"
    manifests = re.findall(r"infra/kuberay/[\w.-]+\.yaml", header)
    if recipe.stem in ("cpu-default", "gpu-2x8"):
        assert "ray job submit" in header and manifests, f"{recipe.name}: give the ray job submit command and manifest"
    cfg = load_config(str(recipe))
    for rel in manifests:
        job = yaml.safe_load((REPO_ROOT / rel).read_text())
        assert job["kind"] == "RayJob"
        assert f"recipes/{recipe.stem}.yaml" in job["spec"]["entrypoint"], f"{rel} does not run {recipe.name}"
        cluster = job["spec"]["rayClusterSpec"]
        groups = cluster["workerGroupSpecs"]
        gpus = sum(int(g["replicas"]) * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]
                                            .get("nvidia.com/gpu", 0)) for g in groups)
        if cfg.pretrain.use_gpu:
            assert gpus == cfg.pretrain.num_workers, f"{rel}: {gpus} GPUs for {cfg.pretrain.num_workers} workers"
        else:
            assert gpus == 0
        run_dir = cfg.run_dir
        if "--set run_dir=" in job["spec"]["entrypoint"]:
            run_dir = job["spec"]["entrypoint"].split("--set run_dir=")[1].split()[0]
        mounts = [m["mountPath"] for m in groups[0]["template"]["spec"]["containers"][0]["volumeMounts"]]
        assert any(run_dir.startswith(m + "/") for m in mounts), f"{rel}: run_dir {run_dir} not on a shared volume"
