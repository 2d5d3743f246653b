"""Freeze policies on a tiny backbone, trained in-process: only the weights a policy opens may change, bitwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modpipe.adapt.loop import build_trainable
from modpipe.models.freeze import block_index, param_groups
from modpipe.models.modules import load_module, predict_proba
from test_modules import BATCH, MAX_LEN, backbone_state, changed, job, save, train, world  # noqa: F401 (fixture)


def by_block(names: set[str]) -> set:
    return {block_index(n) for n in names}


@pytest.mark.parametrize("method", ["lora", "bottleneck", "linear_probe"])
def test_top_k_changes_only_the_top_blocks_and_the_module_carries_them(world, tmp_path, method):
    before = backbone_state(world["backbone"])
    t = build_trainable(str(world["backbone"]), 3, **job(method, policy="top_k", top_k=1))
    assert by_block(set(t.opened)) == {1}  # 2 blocks: the top one opens
    train(world, t)
    moved = changed(before, t)
    assert moved and by_block(moved) == {1}, moved  # block 0, embeddings, final norm: bitwise unchanged
    # trainable count = module + head + the opened block
    params = dict(t.model.named_parameters())
    assert t.trainable_params(4) == sum(p.numel() for p in params.values() if p.requires_grad)
    # the trained block travels with the module: reloading reproduces the predictions
    texts = world["task"].splits["test"].texts
    probs = predict_proba(t.model, world["tokenizer"], texts, MAX_LEN, BATCH)
    mdir = save(world, t, tmp_path / method)
    assert (mdir / "backbone_delta.safetensors").is_file() or method != "lora"
    np.testing.assert_array_equal(predict_proba(load_module(world["backbone"], mdir), world["tokenizer"], texts,
                                                MAX_LEN, BATCH), probs)


def test_progressive_unfreezes_one_more_block_every_n_steps(world):
    before = backbone_state(world["backbone"])
    t = build_trainable(str(world["backbone"]), 3, **job("lora", policy="progressive", unfreeze_every=2))
    assert by_block(set(t.opened)) == {0, 1}  # may train over time...
    train(world, t, steps=2)
    assert changed(before, t) == set()  # ...but steps 0-1 train none
    assert t.trained_backbone(2) == [] and t.trainable_params(2) < t.trainable_params(3)
    train(world, t, steps=4)  # a fresh optimizer, steps 0..3 again: steps 2-3 open the top block
    moved = changed(before, t)
    assert moved and by_block(moved) == {1}
    assert by_block(set(t.trained_backbone(4))) == {1} and by_block(set(t.trained_backbone(5))) == {0, 1}


def test_layer_wise_lr_decay_groups(world):
    t = build_trainable(str(world["backbone"]), 3, **job("full"))
    groups = param_groups(t.model, 1.0, 0.1, 0.5, t.num_layers)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(t.model.named_parameters())
    assert lr_of[id(named["base.score.weight"])] == 1.0
    assert lr_of[id(named["base.model.layers.1.mlp.up_proj.weight"])] == 0.5  # top block: one decay step
    assert lr_of[id(named["base.model.layers.0.mlp.up_proj.weight"])] == 0.25
    assert lr_of[id(named["base.model.embed_tokens.weight"])] == 0.125
    assert sum(len(g["params"]) for g in groups) == len(named)
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.dim() < 2 for p in g["params"]))


def test_gradient_checkpointing_gives_the_same_update(world):
    outs = []
    for ckpt in (False, True):
        t = build_trainable(str(world["backbone"]), 3, **job("lora", policy="top_k", gradient_checkpointing=ckpt))
        assert t.model.get_base_model().is_activation_checkpointing is ckpt
        train(world, t, steps=2)
        outs.append({n: p.detach().clone() for n, p in t.model.named_parameters() if p.requires_grad})
    assert outs[0].keys() == outs[1].keys()
    with pytest.raises(ValueError, match="prefix .*gradient_checkpointing"):
        build_trainable(str(world["backbone"]), 3, **job("prefix", gradient_checkpointing=True))
    for n in outs[0]:
        torch.testing.assert_close(outs[0][n], outs[1][n], rtol=1e-4, atol=1e-5)
