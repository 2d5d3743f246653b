"""Module kinds, freeze policies and the module contract, trained in-process for a few steps on a tiny backbone
(no Ray): the same build / step / save / load functions the adapt workers use."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from modpipe.adapt.loop import build_trainable, make_optimizer, train_step
from modpipe.models.modules import METHODS, encode, get_method, load_module, predict_proba, save_weights
from test_adapt import make_backbone, make_tasks  # tests/unit is on sys.path (rootdir-relative test modules)

SECTIONS = {
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "ia3": {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    "prefix": {"num_virtual_tokens": 4},
    "bottleneck": {"reduction_factor": 8, "placement": "houlsby", "activation": "relu"},
}
FROZEN = {"policy": "frozen", "top_k": 1, "unfreeze_every": 2, "layer_lr_decay": 1.0, "gradient_checkpointing": False}
STEPS, BATCH, MAX_LEN = 4, 8, 48


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from modpipe.adapt.data import load_task
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("modules")
    backbone = make_backbone(root / "model")
    make_tasks(root / "tasks")
    task = load_task(root / "tasks", "doc_module")  # 3 labels
    return {"root": root, "backbone": backbone, "task": task, "tokenizer": AutoTokenizer.from_pretrained(backbone)}


def job(method: str, head: str = "linear", **freeze) -> dict:
    """``build_trainable``'s keyword arguments: the typed module (its section above), head, freeze policy, seed."""
    from modpipe.adapt.job import KINDS
    from modpipe.config_adapt import FreezeConfig

    cls = KINDS[method]
    module = cls(kind=method, **(SECTIONS[cls.section] if cls.section else {}))
    return {"module": module, "head": head, "freeze": FreezeConfig(**{**FROZEN, **freeze}), "seed": 0}


def backbone_state(backbone: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(backbone.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def in_model(t, name: str) -> torch.Tensor:
    """The trained model's copy of backbone weight ``name`` (``model.layers.0...``), whatever wraps it."""
    hits = [p for n, p in t.model.named_parameters()
            if n.endswith(name) or n.endswith(name.replace(".weight", ".base_layer.weight"))]
    assert len(hits) == 1, (name, len(hits))
    return hits[0].detach()


def train(world, t, lr: float = 0.05, steps: int = STEPS, layer_lr_decay: float = 1.0):
    texts, labels = world["task"].splits["train"].texts, world["task"].splits["train"].label_ids
    side = get_method(t.spec["method"]).padding_side
    opt = make_optimizer(t, lr, 0.0, layer_lr_decay)
    t.model.train()
    for step in range(steps):
        sl = slice(step * BATCH, (step + 1) * BATCH)
        train_step(t.model, opt, encode(world["tokenizer"], texts[sl], MAX_LEN, side), torch.tensor(labels[sl]),
                   step, t.unfreezer)
    return opt


def save(world, t, out: Path, steps: int = STEPS) -> Path:
    from modpipe.models.manifest import backbone_facts, write_manifest

    save_weights(t.model, t.spec["method"], out, t.trained_backbone(steps))
    write_manifest(out, {"task": "doc_module", "labels": world["task"].labels, "num_labels": 3, "seed": 0,
                         "module": {**t.spec, "freeze": FROZEN}, **backbone_facts(world["backbone"])})
    return out


def changed(before: dict[str, torch.Tensor], t) -> set[str]:
    return {n for n, w in before.items() if not torch.equal(w, in_model(t, n))}


# ---------------------------------------------------------------- every kind: train, save, load, same outputs


@pytest.mark.parametrize("method,head", [(m, "linear") for m in METHODS] + [("bottleneck", "mlp"), ("lora", "mlp"),
                                                                            ("lora", "mean"), ("linear_probe", "mean")])
def test_every_kind_trains_saves_and_reloads_to_identical_predictions(world, tmp_path, method, head):
    before = backbone_state(world["backbone"])
    t = build_trainable(str(world["backbone"]), 3, **job(method, head))
    test_texts = world["task"].splits["test"].texts
    untrained = predict_proba(t.model, world["tokenizer"], test_texts, MAX_LEN, BATCH,
                              padding_side=get_method(method).padding_side)
    train(world, t)
    probs = predict_proba(t.model, world["tokenizer"], test_texts, MAX_LEN, BATCH,
                          padding_side=get_method(method).padding_side)
    assert probs.shape == (len(test_texts), 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert not np.allclose(probs, untrained), "training changed nothing"

    # frozen policy: every backbone weight bitwise unchanged (``full`` trains them all)
    moved = changed(before, t)
    if method == "full":
        assert moved and t.trainable_params(STEPS) == sum(p.numel() for p in t.model.parameters())
    else:
        assert moved == set()
        assert 0 < t.trainable_params(STEPS) < 0.2 * t.backbone_params

    mdir = save(world, t, tmp_path / method)
    assert (mdir / "adapter_config.json").is_file() and (mdir / "adapter_model.safetensors").is_file()
    assert not list(mdir.glob("*.bin")) and not list(mdir.glob("*.pt"))
    if get_method(method).peft:
        assert json.loads((mdir / "adapter_config.json").read_text())["peft_type"]
    loaded = load_module(world["backbone"], mdir)
    assert not loaded.training and loaded.modpipe_manifest["module"]["method"] == method
    np.testing.assert_array_equal(predict_proba(loaded, world["tokenizer"], test_texts, MAX_LEN, BATCH), probs)


def test_bottleneck_placements_and_identity_init(world):
    """A fresh adapter is the identity (up-projection zero): outputs equal the plain classifier's."""
    from modpipe.models.bottleneck import BottleneckModel
    from modpipe.models.modules import build_classifier

    enc = encode(world["tokenizer"], world["task"].splits["val"].texts[:4], MAX_LEN)
    plain = build_classifier(world["backbone"], 3, "linear", 0).eval()
    for placement, per_block in (("pfeiffer", 1), ("houlsby", 2)):
        base = build_classifier(world["backbone"], 3, "linear", 0)
        model = BottleneckModel(base, {**SECTIONS["bottleneck"], "placement": placement}).eval()
        assert len(model.adapters) == per_block * base.config.num_hidden_layers
        assert model.adapters["0_mlp"].down.out_features == 32 // 8
        with torch.no_grad():
            torch.testing.assert_close(model(**enc).logits, plain(**enc).logits)
    with pytest.raises(ValueError, match="placement"):
        BottleneckModel(build_classifier(world["backbone"], 3, "linear", 0), {**SECTIONS["bottleneck"],
                                                                               "placement": "everywhere"})


# ---------------------------------------------------------------- the module contract


@pytest.fixture(scope="module")
def module_dir(world, tmp_path_factory):
    t = build_trainable(str(world["backbone"]), 3, **job("lora"))
    train(world, t, steps=1)
    return save(world, t, tmp_path_factory.mktemp("contract") / "lora")


def _backbone_variant(world, name: str, hidden: int | None = None, perturb: bool = False,
                      tokenizer_edit: bool = False) -> Path:
    """A copy of the test backbone changed in one way, with its own fingerprint record."""
    from modpipe.config import ModelConfig
    from modpipe.models.backbone import build_causal_lm
    from modpipe.models.fingerprint import write_backbone_fingerprint
    from transformers import AutoModelForCausalLM

    src, out = world["backbone"], world["root"] / name
    if out.exists():
        return out
    shutil.copytree(src, out)
    if hidden is not None:
        vocab = json.loads((src / "config.json").read_text())["vocab_size"]
        model = build_causal_lm(ModelConfig(hidden_size=hidden, num_layers=2, num_heads=2, intermediate_size=64,
                                            max_position_embeddings=128), vocab, seed=0)
        model.save_pretrained(out)
    if perturb:
        model = AutoModelForCausalLM.from_pretrained(src)
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
        model.save_pretrained(out)
    if tokenizer_edit:  # same vocabulary, different file: e.g. another normalizer would also change the hash
        tok = json.loads((out / "tokenizer.json").read_text())
        (out / "tokenizer.json").write_text(json.dumps(tok, indent=1))
    write_backbone_fingerprint(out)
    return out


def _refused(backbone: Path, mdir: Path) -> list[str]:
    from modpipe.models.manifest import ModuleContractError

    with pytest.raises(ModuleContractError) as err:
        load_module(backbone, mdir)
    assert str(mdir) in str(err.value)
    return err.value.fields


def test_module_attaches_to_its_own_backbone(world, module_dir):
    manifest = json.loads((module_dir / "module.json").read_text())
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}  # PEFT card
    assert manifest["hidden_size"] == 32 and manifest["num_layers"] == 2
    assert load_module(world["backbone"], module_dir).modpipe_manifest == manifest


def test_wrong_backbone_fingerprint_is_refused(world, module_dir):
    other = _backbone_variant(world, "perturbed", perturb=True)
    assert _refused(other, module_dir) == ["backbone_fingerprint"]


def test_wrong_hidden_size_is_refused(world, module_dir):
    other = _backbone_variant(world, "wider", hidden=48)
    fields = _refused(other, module_dir)
    assert fields[0] == "hidden_size" and "backbone_fingerprint" in fields


def test_wrong_tokenizer_hash_is_refused(world, module_dir):
    other = _backbone_variant(world, "retokenized", tokenizer_edit=True)
    fields = _refused(other, module_dir)
    assert fields[0] == "tokenizer_sha256" and "hidden_size" not in fields


def test_tampered_weight_file_is_refused(world, module_dir, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(module_dir, copy)
    data = bytearray((copy / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    (copy / "adapter_model.safetensors").write_bytes(bytes(data))
    assert _refused(world["backbone"], copy) == ["files[adapter_model.safetensors]"]
    (copy / "adapter_model.safetensors").unlink()
    assert _refused(world["backbone"], copy) == ["files[adapter_model.safetensors]"]


def test_manifest_without_a_field_is_refused(world, module_dir, tmp_path):
    copy = tmp_path / "no-hidden"
    shutil.copytree(module_dir, copy)
    manifest = json.loads((copy / "module.json").read_text())
    del manifest["hidden_size"]
    manifest["module"]["method"] = "mystery"
    (copy / "module.json").write_text(json.dumps(manifest))
    assert _refused(world["backbone"], copy) == ["hidden_size", "module.method"]


def test_mean_head_pools_every_real_token_and_ignores_right_padding(world):
    """The ``mean`` head's logits for a text are the same alone and in a right-padded batch beside a longer one,
    and equal the linear layer applied to the mean of the text's hidden states."""
    from modpipe.models.modules import build_classifier, encode

    model = build_classifier(world["backbone"], 3, "mean", seed=0).eval()
    short, long = "grep searches files", "tar creates and extracts archives of many files in one go " * 3
    with torch.no_grad():
        alone = model(**encode(world["tokenizer"], [short], MAX_LEN)).logits
        batch = model(**encode(world["tokenizer"], [short, long], MAX_LEN)).logits
        enc = encode(world["tokenizer"], [short], MAX_LEN)
        states = model.model(**enc).last_hidden_state
        by_hand = model.score[1](states[0].mean(0))
    torch.testing.assert_close(batch[0], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone[0], by_hand, rtol=1e-5, atol=1e-6)
    from modpipe.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="adapt.head=linear"):  # the default head, with prompt tuning
        load_config(None, ["adapt.method=prompt"])
    with pytest.raises(ConfigError, match="pads on the left"):
        load_config(None, ['adapt.methods={"t": "prompt"}', "adapt.head=mean"])
    assert load_config(None, ["adapt.method=prompt", "adapt.head=linear"]).adapt.head == "linear"
