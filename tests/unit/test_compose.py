"""Composition on one backbone with modules trained by the real adapt stage (Ray Train, PEFT LoRA): mixed batches,
weighted LoRA merge, in-place swap, and the learned router next to a fresh module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_adapt import _docstrings, _write_task, adapt_cfg, make_backbone, make_tasks

TEXTS = ["Return the absolute path of a file.", "Open a tar archive for reading.",
         "Log a message with severity ERROR on the root logger.", "A class to hold several items",
         "Get the source code of an object as a single string.", "x"]


def make_extra_task(tasks_dir: Path) -> str:
    """doc_source: which of email.message / pathlib / ssl a function or method docstring comes from."""
    mods = ["email.message", "pathlib", "ssl"]
    _write_task(tasks_dir, "doc_source", mods, {m: _docstrings(m, ("function", "method")) for m in mods})
    return "doc_source"


def shared_world(tmp_path_factory) -> dict:
    """Backbone + tasks + LoRA modules of doc_module and doc_kind trained by ``adapt.train_tasks`` (1 epoch), built
    once per test session under the session's base temp dir (test_continual and test_transfer reuse it)."""
    from modpipe import adapt

    root = tmp_path_factory.getbasetemp() / "compose-world"
    if not (root / "tasks" / "doc_source").is_dir():
        backbone = make_backbone(root / "model")
        make_tasks(root / "tasks")
        make_extra_task(root / "tasks")
    backbone, tasks_dir = root / "model" / "backbone", root / "tasks"
    cfg = adapt_cfg(root / "run", ["doc_module", "doc_kind"], epochs=1)
    out = adapt.train_tasks(cfg, str(backbone), str(tasks_dir))  # a finished module dir is reused, not retrained
    assert set(out["modules"]) == {"doc_module", "doc_kind"}, out["failed"]
    return {"root": root, "backbone": backbone, "tasks_dir": tasks_dir, "cfg": cfg, **out}


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local):
    return shared_world(tmp_path_factory)


def _alone_logits(world, task: str, ids, mask):
    """The module through the loading contract, on its own: the reference for composed outputs."""
    import torch

    from modpipe.models.modules import load_module

    model = load_module(world["backbone"], world["modules"][task])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.slow
def test_mixed_batch_equals_each_module_alone(world):
    import torch

    from modpipe.compose import MultiModuleModel

    mm = MultiModuleModel.load(world["backbone"], {t: world["modules"][t] for t in ("doc_module", "doc_kind")})
    assert mm.peft is not None and sorted(mm.peft.peft_config) == ["doc_kind", "doc_module"]
    # one backbone in memory: both adapters wrap the same base Linear tensors
    n_backbone = sum(p.numel() for p in mm.backbone_tensors().values())
    n_all = sum(p.numel() for p in mm.base.parameters())
    assert n_all - n_backbone == sum(p.numel() for n, p in mm.base.named_parameters() if "lora_" in n)
    ids, mask = mm.encode(TEXTS, 64)
    tasks = ["doc_module", "doc_kind", "doc_kind", "doc_module", "doc_kind", "doc_module"]
    mixed = mm.mixed_logits(ids, mask, tasks)
    for task in ("doc_module", "doc_kind"):
        alone = _alone_logits(world, task, ids, mask)  # (B, K_task) through the module's own classifier
        assert torch.allclose(mm.logits(task, ids, mask), alone, atol=1e-6)
        for i, t in enumerate(tasks):
            if t == task:
                assert mixed[i].shape == (len(mm.modules[task].labels),)
                assert torch.allclose(mixed[i], alone[i], atol=1e-6), (task, i)
    # rows really went through different modules
    assert not torch.allclose(mm.logits("doc_module", ids, mask)[:, :2], mm.logits("doc_kind", ids, mask))


@pytest.mark.slow
def test_merge_is_the_weighted_average_of_the_deltas_and_is_evaluated(world):
    import torch

    from modpipe.compose import MultiModuleModel
    from modpipe.compose.merge import evaluate_merge

    mm = MultiModuleModel.load(world["backbone"], {t: world["modules"][t] for t in ("doc_module", "doc_kind")})
    mm.merge("merged", ["doc_module", "doc_kind"], [0.7, 0.3])
    checked = 0
    for _, layer in mm.peft.named_modules():
        if hasattr(layer, "get_delta_weight") and "merged" in getattr(layer, "lora_A", {}):
            want = 0.7 * layer.get_delta_weight("doc_module") + 0.3 * layer.get_delta_weight("doc_kind")
            assert torch.allclose(layer.get_delta_weight("merged"), want, atol=1e-6)
            checked += 1
    assert checked == 4  # q_proj, v_proj x 2 blocks
    report = evaluate_merge(mm, "merged", world["tasks_dir"], max_length=64)
    for task in ("doc_module", "doc_kind"):
        r = report[task]
        assert 0.0 <= r["merged_test_macro_f1"] <= 1.0 and 0.0 <= r["own_test_macro_f1"] <= 1.0
        # the module's own metrics recomputed here equal the ones adapt recorded
        recorded = json.loads(Path(world["metrics"][task]).read_text())
        assert r["own_test_macro_f1"] == pytest.approx(recorded["test_macro_f1"])


@pytest.mark.slow
def test_swap_in_place_keeps_the_backbone_tensors(world, tmp_path):
    import torch

    from modpipe import adapt
    from modpipe.compose import MultiModuleModel

    # another doc_kind module: another learning rate, so other weights
    cfg = adapt_cfg(tmp_path / "run", ["doc_kind"], epochs=1, lr=0.003)
    other = adapt.train_tasks(cfg, str(world["backbone"]), str(world["tasks_dir"]))["modules"]["doc_kind"]
    mm = MultiModuleModel.load(world["backbone"], {t: world["modules"][t] for t in ("doc_module", "doc_kind")})
    ids, mask = mm.encode(TEXTS, 64)
    before = {n: (p, p.data_ptr()) for n, p in mm.backbone_tensors().items()}
    old = mm.logits("doc_kind", ids, mask)
    keep = mm.logits("doc_module", ids, mask)
    mm.swap("doc_kind", other)
    after = mm.backbone_tensors()
    assert set(after) == set(before)
    assert all(after[n] is p and after[n].data_ptr() == ptr for n, (p, ptr) in before.items())
    fresh = MultiModuleModel.load(world["backbone"], {"doc_kind": other})
    new = mm.logits("doc_kind", ids, mask)
    assert torch.equal(new, fresh.logits("doc_kind", ids, mask)) and not torch.allclose(new, old)
    assert torch.equal(mm.logits("doc_module", ids, mask), keep)


@pytest.mark.slow
def test_a_module_for_another_backbone_is_refused(tmp_path, tmp_path_factory, ray_local):
    from modpipe.compose import ComposeError, MultiModuleModel

    world = shared_world(tmp_path_factory)
    mdir = Path(world["modules"]["doc_kind"])
    manifest = json.loads((mdir / "module.json").read_text())
    copy = tmp_path / "module"
    copy.mkdir()
    for f in mdir.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    (copy / "module.json").write_text(json.dumps({**manifest, "backbone_fingerprint": "0" * 64}))
    with pytest.raises(Exception, match="backbone_fingerprint"):
        MultiModuleModel.load(world["backbone"], {"doc_kind": copy})
    (copy / "module.json").write_text(json.dumps(manifest))
    (copy / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(Exception, match="sha256"):
        MultiModuleModel.load(world["backbone"], {"doc_kind": copy})
    assert issubclass(ComposeError, ValueError)


@pytest.mark.slow
def test_router_over_existing_modules_vs_a_fresh_module(world, tmp_path):
    from safetensors.torch import load_file

    from modpipe.compose.router import ROUTER_FILE, ROUTER_WEIGHTS, route_vs_fresh

    # new task doc_kind: the router attends over the doc_module module; the fresh module is doc_kind's own
    cmp = route_vs_fresh(str(world["backbone"]), {"doc_module": world["modules"]["doc_module"]},
                         world["tasks_dir"] / "doc_kind", world["metrics"]["doc_kind"], tmp_path / "router",
                         epochs=8, max_length=64, batch_size=16)
    routed, fresh = cmp["router"], cmp["fresh"]
    for m in (routed, fresh):
        assert 0.0 <= m["test_macro_f1"] <= 1.0 and m["n_train"] == 60
    assert routed["sources"] == ["doc_module"] and set(routed["mean_attention"]) == {"doc_module"}
    assert cmp["delta_macro_f1"] == pytest.approx(routed["test_macro_f1"] - fresh["test_macro_f1"], abs=1e-4)
    assert 0 < routed["trainable_params"] and "test_auroc_ovr" in routed and "test_ece" in routed
    saved = json.loads((tmp_path / "router" / ROUTER_FILE).read_text())
    assert saved["sources"]["doc_module"]["dir"] == world["modules"]["doc_module"]
    assert set(load_file(str(tmp_path / "router" / ROUTER_WEIGHTS))) >= {"query.weight", "key.weight", "head.weight"}


def test_every_head_kind_is_rebuilt_from_its_saved_tensors():
    """``build_head`` gives back the head a module saved (linear, mlp, mean), same outputs on every position."""
    import torch

    from modpipe.compose.multi import build_head
    from modpipe.models.heads import mean_head, mlp_head

    torch.manual_seed(0)
    hidden, k = 16, 3
    x = torch.randn(2, 5, hidden)
    for head in (torch.nn.Linear(hidden, k, bias=False), mlp_head(hidden, k), mean_head(hidden, k)):
        saved = {f"score.{n}": t for n, t in head.state_dict().items()}
        rebuilt = build_head(saved, hidden)
        torch.testing.assert_close(rebuilt(x), head(x))
