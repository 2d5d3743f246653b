"""Integrity of what a run dir holds: nothing in it is unpickled, the backbone fingerprint covers every file that
changes behaviour, symlinks in a backbone dir are refused. (The real DeepSpeed resume with a planted file is in
test_pretrain.py; a resumed adapt run bitwise equal to an uninterrupted one is in tests/integration/test_faults.py.)
"""

from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch


class _Payload:
    """Unpickling this runs ``touch marker``: what an attacker would plant in a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    """A file that looks like a torch checkpoint and runs code when loaded with weights_only=False."""
    torch.save({"module": OrderedDict(w=torch.zeros(2)), "x": _Payload(marker)}, path)


# ---------------------------------------------------------------- pretrain: DeepSpeed's checkpoint files


def test_planted_pickle_is_refused_and_never_runs(tmp_path):
    from modpipe.pretrain.safe_load import UnsafeCheckpointError, safe_torch_load

    marker, bad = tmp_path / "pwned", tmp_path / "mp_rank_00_model_states.pt"
    plant(bad, marker)
    with pytest.raises(UnsafeCheckpointError, match="mp_rank_00_model_states.pt"):
        safe_torch_load(bad, map_location="cpu")
    assert not marker.exists()
    torch.load(bad, weights_only=False)  # what DeepSpeed's own engine does: the payload runs
    assert marker.exists()


def test_deepspeed_zero_state_loads_with_the_allow_list(tmp_path):
    """The types a ZeRO checkpoint holds (seen in real DeepSpeed 0.19 files) load back as they were saved."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from modpipe.pretrain.safe_load import safe_torch_load

    state = {"optimizer_state_dict": {
        "loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients, "dynamic_loss_scale": False,
        "base_optimizer_state": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(4)}},
                                 "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0]}]},
        "single_partition_of_fp32_groups": [torch.arange(4.0)],
        "param_slice_mappings": [OrderedDict(w=fragment_address(numel=4, start=0))]},
        "param_shapes": [OrderedDict(w=torch.Size([2, 2]))], "ds_version": "0.19.8"}
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save(state, path)
    back = safe_torch_load(path, map_location=lambda storage, loc: storage)
    osd = back["optimizer_state_dict"]
    assert osd["zero_stage"] is ZeroStageEnum.gradients and osd["loss_scaler"].cur_scale == 1.0
    assert osd["param_slice_mappings"][0]["w"] == fragment_address(numel=4, start=0)
    assert torch.equal(osd["single_partition_of_fp32_groups"][0], torch.arange(4.0))
    assert back["param_shapes"][0]["w"] == torch.Size([2, 2])


def test_guard_swaps_only_the_engines_load(tmp_path):
    from modpipe.pretrain.safe_load import UnsafeCheckpointError, guard

    class Inner:
        name = "TorchCheckpointEngine"

        def load(self, path, map_location=None):
            return torch.load(path, map_location=map_location, weights_only=False)

    class Engine:
        checkpoint_engine = Inner()

    engine = Engine()
    guard(engine)
    guard(engine)  # idempotent
    assert engine.checkpoint_engine.name == "TorchCheckpointEngine"
    marker, bad = tmp_path / "pwned", tmp_path / "bad.pt"
    plant(bad, marker)
    with pytest.raises(UnsafeCheckpointError):
        engine.checkpoint_engine.load(str(bad), map_location="cpu")
    assert not marker.exists()


# ---------------------------------------------------------------- adapt: optimizer and RNG as safetensors + JSON


def _model_and_opt(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.01)


def _steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(5, 4, generator=g)
        loss = model(x).pow(2).mean()  # dropout draws from the global generator
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_adapt_state_round_trips_bitwise_without_pickle(tmp_path):
    """Optimizer + RNG saved after 3 steps, restored into a fresh model and optimizer: the next 3 steps give the
    same weights, bit for bit, as 6 uninterrupted steps."""
    from modpipe.adapt.resume import OPTIM_META, OPTIM_TENSORS, load_optimizer, load_rng, save_optimizer, save_rng

    ref, ref_opt = _model_and_opt()
    _steps(ref, ref_opt, 3, seed=1)
    save_optimizer(ref_opt, tmp_path)
    save_rng(tmp_path, 0, torch.device("cpu"))
    weights = {k: v.clone() for k, v in ref.state_dict().items()}
    _steps(ref, ref_opt, 3, seed=2)

    model, opt = _model_and_opt(seed=5)  # another init and generator state: everything must come from the files
    model.load_state_dict(weights)
    load_optimizer(opt, tmp_path, torch.device("cpu"))
    assert load_rng(tmp_path, 0, torch.device("cpu"))
    _steps(model, opt, 3, seed=2)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert sorted(p.name for p in tmp_path.iterdir()) == [OPTIM_META, OPTIM_TENSORS, "rng-rank0.safetensors"]
    assert json.loads((tmp_path / OPTIM_META).read_text())["param_groups"][0]["betas"] == [0.8, 0.95]
    assert opt.param_groups[0]["betas"] == (0.8, 0.95)


def test_adapt_resume_never_unpickles_a_planted_optimizer_file(tmp_path):
    from modpipe.adapt.resume import LEGACY_OPTIM, load_optimizer, save_optimizer

    marker = tmp_path / "pwned"
    model, opt = _model_and_opt()
    _steps(model, opt, 1, seed=1)
    save_optimizer(opt, tmp_path)
    plant(tmp_path / LEGACY_OPTIM, marker)
    load_optimizer(opt, tmp_path, torch.device("cpu"))  # the safetensors state; the planted file is not read
    assert not marker.exists()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    plant(legacy / LEGACY_OPTIM, marker)  # a checkpoint of the old format: weights_only=True refuses it
    with pytest.raises(Exception, match="Weights only load failed"):
        load_optimizer(opt, legacy, torch.device("cpu"))
    assert not marker.exists()


# ---------------------------------------------------------------- backbone fingerprint and symlinks


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from test_adapt import make_backbone

    return make_backbone(tmp_path_factory.mktemp("integrity") / "model")


def _copy(backbone: Path, dst: Path) -> Path:
    shutil.copytree(backbone, dst)
    return dst


@pytest.mark.parametrize("name, edit", [
    ("tokenizer_config.json", lambda d: {**d, "pad_token": "<unk>"}),
    ("generation_config.json", lambda d: {**d, "max_length": 7}),
    ("special_tokens_map.json", lambda d: {"pad_token": "<unk>"}),
    ("added_tokens.json", lambda d: {"<new>": 999}),
    ("chat_template.jinja", None),
])
def test_fingerprint_covers_every_file_that_changes_behaviour(backbone, tmp_path, name, edit):
    from modpipe.models.fingerprint import read_backbone_fingerprint

    copy = _copy(backbone, tmp_path / "bb")
    path = copy / name
    if edit is None:
        path.write_text("{{ messages }}")
    else:
        path.write_text(json.dumps(edit(json.loads(path.read_text()) if path.is_file() else {})))
    with pytest.raises(ValueError, match=f"backbone files changed since export.*{name}"):
        read_backbone_fingerprint(copy, verify=True)


def test_fingerprint_ignores_the_runs_records(backbone, tmp_path):
    from modpipe.models.fingerprint import read_backbone_fingerprint

    copy = _copy(backbone, tmp_path / "bb")
    before = read_backbone_fingerprint(copy, verify=True)
    (copy / "metrics.json").write_text("{}")
    (copy / "status.json").write_text('{"state": "succeeded"}')
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "transformers_version": "0.0.1"}, indent=4))
    assert read_backbone_fingerprint(copy, verify=True) == before
    assert "tokenizer_config.json" in json.loads((copy / "fingerprint.json").read_text())["files"]


def test_an_old_format_fingerprint_is_refused(backbone, tmp_path):
    from modpipe.models.fingerprint import FINGERPRINT_FILE, read_backbone_fingerprint

    copy = _copy(backbone, tmp_path / "bb")
    record = json.loads((copy / FINGERPRINT_FILE).read_text())
    del record["format"]
    (copy / FINGERPRINT_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="format 1"):
        read_backbone_fingerprint(copy, verify=True)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_symlinks_in_a_backbone_dir_are_refused_on_load(backbone, tmp_path, what):
    from modpipe.models.fingerprint import BackboneDirError, read_backbone_fingerprint
    from modpipe.models.manifest import backbone_facts
    from modpipe.models.modules import build_classifier

    copy = _copy(backbone, tmp_path / "bb")
    outside = tmp_path / "outside"
    outside.mkdir()
    if what == "file":  # the tokenizer config swapped for a link to a file nobody hashed
        (outside / "tokenizer_config.json").write_text((copy / "tokenizer_config.json").read_text())
        (copy / "tokenizer_config.json").unlink()
        (copy / "tokenizer_config.json").symlink_to(outside / "tokenizer_config.json")
    else:
        (copy / "extra").symlink_to(outside, target_is_directory=True)
    for load in (lambda: read_backbone_fingerprint(copy, verify=True), lambda: backbone_facts(copy),
                 lambda: build_classifier(copy, 2, "linear", 0)):
        with pytest.raises(BackboneDirError, match="symlink"):
            load()


def test_a_pickled_weights_file_beside_the_safetensors_is_never_loaded(backbone, tmp_path):
    """``from_pretrained`` is told safetensors only: a planted pytorch_model.bin is not read (nor executed)."""
    from modpipe.models.modules import build_classifier

    copy = _copy(backbone, tmp_path / "bb")
    marker = tmp_path / "pwned"
    plant(copy / "pytorch_model.bin", marker)
    (copy / "model.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(Exception):  # no safetensors weights: refused, the .bin is not a fallback
        build_classifier(copy, 2, "linear", 0)
    assert not marker.exists()
