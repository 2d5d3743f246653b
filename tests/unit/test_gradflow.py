"""Gradient-flow profile: per-block gradient norms of a real module model (PEFT LoRA on a tiny 2-layer Llama, built
by modpipe's own module code), what freeze policies do to it, that recording it leaves training bitwise as it is,
the report's folding into block lines and figure, and (slow) a real adapt run writing it into metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from modpipe.adapt.gradflow import GradProfiler, by_block, group_of, group_params
from modpipe.adapt.loop import build_trainable, make_optimizer, train_step
from modpipe.models.modules import encode, get_method
from test_adapt import adapt_cfg, make_backbone, make_tasks  # tests/unit is on sys.path
from test_modules import job

BATCH, MAX_LEN = 8, 48
LORA_GROUPS = ["layer.0/lora_A", "layer.0/lora_B", "layer.1/lora_A", "layer.1/lora_B", "head"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    from modpipe.adapt.data import load_task

    root = tmp_path_factory.mktemp("gradflow")
    backbone = make_backbone(root / "model")  # LlamaForCausalLM, 2 layers, hidden 32
    make_tasks(root / "tasks")
    return {"root": root, "backbone": backbone, "tasks_dir": root / "tasks",
            "task": load_task(root / "tasks", "doc_module"), "tokenizer": AutoTokenizer.from_pretrained(backbone)}


def _train(tiny, t, steps: int, every: int | None):
    """``steps`` optimizer steps as the adapt worker takes them; with ``every``, profiled. Returns the state."""
    split = tiny["task"].splits["train"]
    side = get_method(t.spec["method"]).padding_side
    opt = make_optimizer(t, 0.05, 0.0, 1.0)
    prof = GradProfiler(t.model.named_parameters(), every) if every else None
    state: dict = {}
    t.model.train()
    for step in range(steps):
        sl = slice(step * BATCH, (step + 1) * BATCH)
        train_step(t.model, opt, encode(tiny["tokenizer"], split.texts[sl], MAX_LEN, side),
                   torch.tensor(split.label_ids[sl]), step, t.unfreezer, prof.record if prof else None)
    if prof:
        prof.flush(state)
    return state


def _build(tiny, method: str = "lora", **freeze):
    return build_trainable(str(tiny["backbone"]), 3, **job(method, **freeze))


# ---------------------------------------------------------------- grouping


def test_group_names_of_every_kind_of_parameter():
    assert group_of("base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight") == "layer.3/lora_A"
    assert group_of("base_model.model.model.layers.0.self_attn.v_proj.lora_B.default.weight") == "layer.0/lora_B"
    assert group_of("base_model.model.model.layers.1.self_attn.q_proj.base_layer.weight") == "layer.1/backbone"
    assert group_of("base_model.model.model.layers.1.mlp.down_proj.ia3_l.default") == "layer.1/ia3"
    assert group_of("adapters.12_self_attn.down.weight") == "layer.12/adapter"
    assert group_of("base.model.layers.10.input_layernorm.weight") == "layer.10/backbone"
    assert group_of("base.model.embed_tokens.weight") == "embeddings/backbone"
    assert group_of("base.model.norm.weight") == "norm/backbone"
    assert group_of("base_model.model.score.modules_to_save.default.weight") == "head"
    assert group_of("base.score.weight") == group_of("base.score.0.bias") == "head"
    assert group_of("prompt_encoder.default.embedding.weight") == "prompt"


def test_lora_profile_has_a_group_per_layer_and_part_all_learning(tiny):
    t = _build(tiny)  # LoRA r=4 on q_proj, v_proj; backbone frozen
    assert list(group_params(t.model.named_parameters())) == LORA_GROUPS
    profile = _train(tiny, t, steps=4, every=1)["grad_profile"]
    assert profile["every"] == 1 and profile["steps"] == [0, 1, 2, 3]
    assert list(profile["groups"]) == LORA_GROUPS  # no backbone group: the frozen policy opens no backbone weight
    g = profile["groups"]
    assert all(v is not None and math.isfinite(v) for vs in g.values() for v in vs)
    # LoRA B starts at zero, so A gets no gradient at the first step; B and the head do, and A does once B moved
    assert g["layer.0/lora_A"][0] == 0.0 and g["layer.1/lora_A"][0] == 0.0
    assert all(g[k][0] > 0 for k in ("layer.0/lora_B", "layer.1/lora_B", "head"))
    assert all(v > 0 for k in LORA_GROUPS for v in g[k][1:])
    json.dumps(profile, allow_nan=False)  # plain JSON


def test_group_norm_is_the_norm_of_its_gradients_together(tiny):
    t = _build(tiny)
    state = _train(tiny, t, steps=1, every=1)  # gradients of step 0 are still on the parameters
    named = dict(t.model.named_parameters())
    b1 = [n for n in named if ".layers.1." in n and ".lora_B." in n]
    assert len(b1) == 2  # q_proj and v_proj
    expected = torch.cat([named[n].grad.flatten() for n in b1]).norm().item()
    assert state["grad_profile"]["groups"]["layer.1/lora_B"][0] == pytest.approx(expected, rel=1e-5)


def test_top_k_freezes_layer_0_which_gets_no_norm(tiny):
    t = _build(tiny, policy="top_k", top_k=1)
    g = _train(tiny, t, steps=3, every=1)["grad_profile"]["groups"]
    assert "layer.1/backbone" in g and all(v > 0 for v in g["layer.1/backbone"])  # the opened top block learns
    assert "layer.0/backbone" not in g and not any(k.startswith("embeddings") for k in g)  # frozen: nothing
    # the head only: layer 0 (frozen) has no group at all, layer 1 (opened) has its norms
    probe = _build(tiny, "linear_probe", policy="top_k", top_k=1)
    g = _train(tiny, probe, steps=3, every=1)["grad_profile"]["groups"]
    assert list(g) == ["layer.1/backbone", "head"]
    lines = dict(by_block({"steps": [0, 1, 2], "groups": g})["lines"])
    assert list(lines) == ["layer 1", "head"] and all(v > 0 for v in lines["layer 1"])


def test_progressive_unfreezing_shows_a_block_only_once_it_is_open(tiny):
    t = _build(tiny, policy="progressive", unfreeze_every=2)  # block 1 opens at step 2, block 0 at step 4
    g = _train(tiny, t, steps=4, every=1)["grad_profile"]["groups"]
    assert g["layer.1/backbone"][:2] == [None, None] and all(v > 0 for v in g["layer.1/backbone"][2:])
    assert g["layer.0/backbone"] == [None] * 4
    assert all(v is not None for v in g["layer.0/lora_B"])  # the module trains from the start


def test_recording_leaves_training_bitwise_unchanged(tiny):
    """The profile reads gradients only: the trained weights are bitwise those of an unprofiled run."""
    runs = []
    for every in (None, 1):
        t = _build(tiny, policy="top_k", top_k=1)
        _train(tiny, t, steps=3, every=every)
        runs.append({n: p.detach().clone() for n, p in t.model.named_parameters()})
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_every_n_steps_and_a_resumed_run_continues_the_profile(tiny):
    t = _build(tiny)
    prof = GradProfiler(t.model.named_parameters(), 2)
    assert [s for s in range(7) if prof.due(s)] == [0, 2, 4, 6]
    assert not GradProfiler(t.model.named_parameters(), 0).due(0)  # 0: off
    # a resumed run's state (from train_state.json) already holds the earlier epochs: new records append
    state = json.loads(json.dumps({"grad_profile": {"every": 2, "steps": [0, 2],
                                                    "groups": {g: [1.0, 2.0] for g in LORA_GROUPS}}}))
    for p in t.model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    prof.record(4)
    prof.record(5)  # not due
    t.model.base_model.model.score.modules_to_save.default.weight.grad = torch.full_like(
        t.model.base_model.model.score.modules_to_save.default.weight, float("nan"))
    prof.record(6)
    out = prof.flush(state)
    assert state["grad_profile"] is out and out["steps"] == [0, 2, 4, 6]
    head = t.model.base_model.model.score.modules_to_save.default.weight
    assert out["groups"]["head"] == [1.0, 2.0, pytest.approx(math.sqrt(head.numel())), None]  # NaN -> None
    assert prof.flush(state)["steps"] == [0, 2, 4, 6]  # nothing pending: unchanged


# ---------------------------------------------------------------- report


def test_blocks_fold_into_at_most_eight_lines_in_model_order():
    groups = {f"layer.{i}/{part}": [3.0, None] for i in range(12) for part in ("lora_A", "lora_B")}
    groups.update({"head": [4.0, 1.0], "embeddings/backbone": [None, None], "prompt": [1.0, 1.0]})
    out = by_block({"every": 5, "steps": [0, 5], "groups": groups})
    labels = [label for label, _ in out["lines"]]
    assert labels == ["prompt", "embeddings", "layers 0-2", "layers 3-5", "layers 6-8", "layers 9-11", "head"]
    lines = dict(out["lines"])
    assert lines["layers 3-5"] == [pytest.approx(3.0 * math.sqrt(6)), None]  # 6 groups of norm 3, none at step 5
    assert [label for label, _ in by_block({"steps": [0], "groups": {f"layer.{i}/lora_A": [1.0] for i in range(9)}})[
        "lines"]] == ["layers 0-1", "layers 2-3", "layers 4-5", "layers 6-7", "layer 8"]
    assert lines["embeddings"] == [None, None] and lines["head"] == [4.0, 1.0]
    few = by_block({"steps": [0], "groups": {"layer.0/lora_A": [1.0], "layer.1/lora_B": [2.0], "head": [3.0]}})
    assert [label for label, _ in few["lines"]] == ["layer 0", "layer 1", "head"]
    assert by_block(None) is None and by_block({"steps": [], "groups": {}}) is None


def test_figure_is_png_and_the_page_draws_it_per_task(tiny):
    from modpipe.report import figures, page
    from modpipe.report.facts import _grad_flow

    t = _build(tiny, policy="top_k", top_k=1)
    metrics = {"freeze_policy": "top_k", "grad_profile": _train(tiny, t, steps=3, every=1)["grad_profile"]}
    flow = _grad_flow(metrics)
    assert [label for label, _ in flow["lines"]] == ["layer 0", "layer 1", "head"]
    assert flow["freeze_policy"] == "top_k" and flow["steps"] == [0, 1, 2]
    png = figures.grad_flow(flow)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert figures.grad_flow({"steps": [0], "lines": [("head", [None])]})[:4] == b"\x89PNG"  # nothing to draw
    assert _grad_flow({}) is None and _grad_flow({"grad_profile": {"steps": "junk"}}) is None
    row = {"task": "doc_module", "from": "adapt", "method": "lora", "test_accuracy": 0.5, "test_macro_f1": 0.4,
           "labels": ["a", "b", "c"], "grad_flow": flow}
    html = page._modules({"modules": [row, {**row, "task": "old", "grad_flow": None}]})
    assert "<img alt='doc_module gradient norm per block'" in html
    assert "gradient flow: not computed" in html  # the module without a profile says so


# ---------------------------------------------------------------- config


def test_interval_is_unversioned_and_reaches_the_job_but_not_the_fingerprint(tmp_path):
    from modpipe.adapt.data import Task
    from modpipe.adapt.job import Scaling, make_job, task_fingerprint
    from modpipe.config import load_config
    from modpipe.config_base import versioned_fields

    task = Task("t", tmp_path / "t", ["a", "b"], {}, {"train": "1", "val": "2", "test": "3", "labels": "4"})
    default, other = load_config(overrides=[]), load_config(overrides=["adapt.grad_profile_every=3"])
    assert default.adapt.grad_profile_every == 10 and "grad_profile_every" not in versioned_fields(default.adapt)
    jobs = [make_job(c, task, tmp_path) for c in (default, other)]
    assert [j.grad_profile_every for j in jobs] == [10, 3]
    assert len({task_fingerprint(j, Scaling.of(default.adapt), "bfp", task.digests) for j in jobs}) == 1
    with pytest.raises(Exception, match="grad_profile_every"):
        load_config(overrides=["adapt.grad_profile_every=-1"])


# ---------------------------------------------------------------- a real adapt run


@pytest.mark.slow
def test_adapt_run_writes_the_profile_into_metrics_json(tiny, ray_local):
    from modpipe import adapt

    cfg = adapt_cfg(tiny["root"] / "run", ["doc_module"], grad_profile_every=2, **{"freeze.policy": "top_k"})
    out = adapt.train_tasks(cfg, str(tiny["backbone"]), str(tiny["tasks_dir"]))
    m = json.loads(Path(out["metrics"]["doc_module"]).read_text())
    p = m["grad_profile"]
    assert p["every"] == 2 and p["steps"] == [0, 2, 4, 6]  # 60 rows / 16 = 4 steps per epoch, 2 epochs
    assert list(p["groups"]) == ["layer.0/lora_A", "layer.0/lora_B", "layer.1/lora_A", "layer.1/lora_B",
                                 "layer.1/backbone", "head"]  # top_k=1: layer 0's backbone weights stay frozen
    assert all(len(v) == 4 and all(x is not None for x in v) for v in p["groups"].values())
    assert all(x > 0 for k in ("layer.1/backbone", "head", "layer.0/lora_B") for x in p["groups"][k])
    assert "grad_profile" not in json.loads((Path(out["modules"]["doc_module"]) / "module.json").read_text())[
        "metrics"]
