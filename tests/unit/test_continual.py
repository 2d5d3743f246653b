"""Continual-learning guarantee: training and adding a new task's module (real ``adapt.train_tasks``) leaves every
existing module's files and outputs on a fixed batch bitwise identical, loaded alone or composed on one backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_compose import TEXTS, shared_world


def _digests(module_dir: str) -> dict[str, str]:
    from modpipe.lineage import sha256_file

    return {p.name: sha256_file(p) for p in sorted(Path(module_dir).iterdir()) if p.is_file()}


def _alone(backbone, module_dir, ids, mask):
    import torch

    from modpipe.models.modules import load_module

    with torch.no_grad():
        return load_module(backbone, module_dir)(input_ids=ids, attention_mask=mask).logits


@pytest.mark.slow
def test_adding_a_task_leaves_existing_modules_bitwise_identical(tmp_path_factory, ray_local):
    import torch

    from modpipe import adapt
    from modpipe.compose import MultiModuleModel
    from test_adapt import adapt_cfg

    world = shared_world(tmp_path_factory)
    existing = {t: world["modules"][t] for t in ("doc_module", "doc_kind")}
    composed = MultiModuleModel.load(world["backbone"], existing)
    ids, mask = composed.encode(TEXTS, 64)  # the fixed batch
    files_before = {t: _digests(d) for t, d in existing.items()}
    alone_before = {t: _alone(world["backbone"], d, ids, mask) for t, d in existing.items()}
    composed_before = {t: composed.logits(t, ids, mask) for t in existing}
    mixed_before = composed.mixed_logits(ids, mask, ["doc_module", "doc_kind"] * 3)

    # the new task trains in the same run dir, through the same stage, with the existing tasks still configured
    cfg = adapt_cfg(world["root"] / "run", ["doc_module", "doc_kind", "doc_source"], epochs=1)
    out = adapt.train_tasks(cfg, str(world["backbone"]), str(world["tasks_dir"]))
    assert set(out["modules"]) == {"doc_module", "doc_kind", "doc_source"} and not out["failed"]
    assert {t: out["modules"][t] for t in existing} == existing  # existing modules were not retrained
    assert json.loads(Path(out["metrics"]["doc_source"]).read_text())["n_train"] == 60

    for task, mdir in existing.items():
        assert _digests(mdir) == files_before[task]
        assert torch.equal(_alone(world["backbone"], mdir, ids, mask), alone_before[task])
    # add the new module to the live composition, and compose all three from scratch: old outputs unchanged
    composed.add("doc_source", out["modules"]["doc_source"])
    fresh = MultiModuleModel.load(world["backbone"], out["modules"])
    for model in (composed, fresh):
        for task in existing:
            assert torch.equal(model.logits(task, ids, mask), composed_before[task])
    for a, b in zip(composed.mixed_logits(ids, mask, ["doc_module", "doc_kind"] * 3), mixed_before):
        assert torch.equal(a, b)
    # the new module really is another function of the input
    assert composed.logits("doc_source", ids, mask).shape == (len(TEXTS), 3)
