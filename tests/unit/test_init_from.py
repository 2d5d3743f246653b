"""Continued pretraining (``pretrain.init_from``): a run starts from another run's exported backbone, the lineage
says so, the checkpoint's bytes are in the versions, and bad checkpoint dirs are refused naming the path before
Ray starts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from modpipe.config import ConfigError, load_config
from modpipe.pretrain.init_from import InitFromError
from test_pretrain import make_curate_output, tiny_cfg

TINY_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
              "max_position_embeddings": 64}


@pytest.fixture()
def checkpoint(tmp_path) -> tuple[Path, dict]:
    """(an HF checkpoint dir as pretrain exports it, fresh weights; the curate output whose tokenizer it holds)."""
    from modpipe.config import ModelConfig
    from modpipe.models.backbone import build_causal_lm, hf_tokenizer

    curated = make_curate_output(tmp_path / "curate")
    vocab = json.loads(Path(curated["manifest"]).read_text())["vocab_size"]
    root = tmp_path / "ckpt"
    build_causal_lm(ModelConfig(**TINY_MODEL), vocab, seed=3).save_pretrained(root)
    hf_tokenizer(curated["tokenizer"]).save_pretrained(root)
    return root, curated


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_the_architecture_comes_from_the_checkpoint(checkpoint, tmp_path):
    root, _ = checkpoint
    cfg = load_config(overrides=[f"pretrain.init_from={root}"])  # no model section: the checkpoint's
    assert cfg.model.model_dump() == TINY_MODEL
    assert load_config(overrides=[f"pretrain.init_from={root}", "model.hidden_size=32"]).model == cfg.model
    with pytest.raises(ConfigError, match=rf"{re.escape(str(root))}.*model\.hidden_size=64 \(checkpoint: 32\)"):
        load_config(overrides=[f"pretrain.init_from={root}", "model.hidden_size=64"])
    # A YAML file: the same refusal names the checkpoint and the field.
    recipe = tmp_path / "continue.yaml"
    recipe.write_text(f"pretrain:\n  init_from: {root}\nmodel:\n  num_layers: 4\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(recipe))}.*{re.escape(str(root))}.*model\.num_layers=4"):
        load_config(recipe)


@pytest.mark.parametrize("damage, message", [
    ("missing", "checkpoint dir not found"),
    ("no_config", "no config.json"),
    ("pickle_only", r"no \*\.safetensors weights \(only pytorch_model\.bin: pickled weights are never loaded"),
    ("no_tokenizer", "no tokenizer.json"),
    ("symlink", r"model\.safetensors \(symlink\)"),
    ("vocab", r"vocab_size 999 != \d+ ids in .*tokenizer\.json"),
    ("gqa", r"an architecture modpipe's trainer cannot build: num_key_value_heads=1 \(modpipe builds 2\)"),
    ("gpt2", r"model_type 'gpt2'.*LlamaForCausalLM only"),
    ("special_tokens", r"special tokens .* have ids"),
])
def test_bad_checkpoints_are_refused_at_config_load_naming_the_path(checkpoint, tmp_path, damage, message):
    root, _ = checkpoint
    if damage == "missing":
        shutil.rmtree(root)
    elif damage == "no_config":
        (root / "config.json").unlink()
    elif damage == "pickle_only":
        (root / "model.safetensors").rename(root / "pytorch_model.bin")
    elif damage == "no_tokenizer":
        (root / "tokenizer.json").unlink()
    elif damage == "symlink":
        (root / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
        (root / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    elif damage == "vocab":
        _edit_json(root / "config.json", vocab_size=999)
    elif damage == "gqa":
        _edit_json(root / "config.json", num_key_value_heads=1)
    elif damage == "gpt2":
        _edit_json(root / "config.json", model_type="gpt2", architectures=["GPT2LMHeadModel"])
    elif damage == "special_tokens":
        tok = json.loads((root / "tokenizer.json").read_text())
        tok["added_tokens"][0]["content"] = "[PAD]"
        vocab = tok["model"]["vocab"]
        vocab["[PAD]"] = vocab.pop("<pad>")
        (root / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(root))}.*{message}"):
        load_config(overrides=[f"pretrain.init_from={root}"])


def test_weights_that_do_not_fit_are_refused_before_ray_starts(checkpoint, tmp_path):
    """config.json says 2 layers, the safetensors hold 1: refused by the driver from the headers alone."""
    from modpipe.config import ModelConfig
    from modpipe.models.backbone import build_causal_lm
    from modpipe.pretrain import init_from

    root, _ = checkpoint
    vocab = json.loads((root / "config.json").read_text())["vocab_size"]
    build_causal_lm(ModelConfig(**{**TINY_MODEL, "num_layers": 1}), vocab).save_pretrained(tmp_path / "one")
    shutil.copy(tmp_path / "one" / "model.safetensors", root / "model.safetensors")
    cfg = load_config(overrides=[f"pretrain.init_from={root}"])
    with pytest.raises(InitFromError, match=rf"{re.escape(str(root))}: weights do not fit config.json: missing: "
                                            rf"model\.layers\.1"):
        init_from.check_weights(root, cfg.model, vocab)


def test_the_checkpoint_bytes_are_in_the_versions(checkpoint, tmp_path):
    """Pretrain's version follows every checkpoint file; curate's follows its tokenizer files (not the weights)."""
    from modpipe.curate import source_digest
    from modpipe.executor import step_version
    from modpipe.steps import get
    from prose_corpus import prose

    root, _ = checkpoint
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "a.jsonl").write_text(json.dumps({"id": "a", "text": prose(1)}) + "\n")
    cfg = load_config(overrides=[f"run_dir={tmp_path / 'run'}", f"pretrain.init_from={root}", "corpus.source=files",
                                 f"corpus.paths=[{data}]", f"corpus.man_root={tmp_path / 'no-man'}"])
    scratch = load_config(overrides=[f"run_dir={tmp_path / 'run'}", *(f"model.{k}={v}" for k, v in TINY_MODEL.items())])

    def versions() -> tuple[str, dict]:
        return step_version(get("pretrain"), cfg, {"curate": "c", "contracts": "k"})[0], source_digest(cfg)

    pretrain_v, curate_ext = versions()
    assert pretrain_v != step_version(get("pretrain"), scratch, {"curate": "c", "contracts": "k"})[0]
    assert curate_ext["tokenizer_from"]
    weights = bytearray((root / "model.safetensors").read_bytes())
    weights[-1] ^= 1  # one bit of one weight
    (root / "model.safetensors").write_bytes(bytes(weights))
    pretrain_w, curate_w = versions()
    assert pretrain_w != pretrain_v and curate_w == curate_ext  # the corpus's tokens are the same
    _edit_json(root / "tokenizer_config.json", model_max_length=512)
    pretrain_t, curate_t = versions()
    assert pretrain_t != pretrain_w and curate_t["tokenizer_from"] != curate_ext["tokenizer_from"]


def test_curate_encodes_with_the_checkpoint_tokenizer(checkpoint, tmp_path):
    """Curate's tokenizer pass copies the checkpoint's tokenizer.json (no BPE is trained)."""
    from modpipe.curate import _tokenizer

    root, _ = checkpoint
    cfg = load_config(overrides=[f"pretrain.init_from={root}"])
    work = SimpleNamespace(tokenizer=tmp_path / "work" / "tokenizer" / "tokenizer.json")
    text = _tokenizer(work, cfg.curate, cfg.pretrain.init_from)
    assert text == (root / "tokenizer.json").read_text() == work.tokenizer.read_text()


def test_continued_pretraining_starts_from_the_checkpoint(ray_local, tmp_path):
    """Train from scratch, then continue from that export: the second run's first loss is far below the first
    run's, the export loads with AutoModelForCausalLM, and its lineage names the checkpoint and its digest."""
    from transformers import AutoModelForCausalLM

    from modpipe import pretrain
    from modpipe.models.fingerprint import FINGERPRINT_FILE, compute_backbone_fingerprint, read_backbone_fingerprint

    curated = make_curate_output(tmp_path / "curate")
    sets = {"steps": 4, "log_every": 1, "checkpoint_every": 4, "eval_every": 0}
    first = pretrain.train(tiny_cfg(tmp_path / "run", **sets), curated, tmp_path / "first", tmp_path / "w1")
    scratch = json.loads(Path(first["metrics"]).read_text())
    assert scratch["init_from"] is None

    cfg = tiny_cfg(tmp_path / "run", **sets, init_from=first["backbone"])
    digest = compute_backbone_fingerprint(first["backbone"])["fingerprint"]
    second = pretrain.train(cfg, curated, tmp_path / "second", tmp_path / "w2")
    cont = json.loads(Path(second["metrics"]).read_text())
    losses = [p["loss"] for p in scratch["loss_curve"]], [p["loss"] for p in cont["loss_curve"]]
    # Step 1 of the second run is scored on the first run's final weights: near its last loss, not a fresh start.
    assert cont["loss_curve"][0]["loss"] < scratch["loss_curve"][0]["loss"] - 0.1, losses
    assert cont["loss_curve"][0]["loss"] < scratch["loss_curve"][-1]["loss"] + 0.1, losses

    record = {"path": str(Path(first["backbone"]).absolute()), "digest": digest}
    assert cont["init_from"] == record
    assert json.loads((tmp_path / "second" / FINGERPRINT_FILE).read_text())["init_from"] == record
    assert second["fingerprint"] == read_backbone_fingerprint(second["backbone"], verify=True)
    lm = AutoModelForCausalLM.from_pretrained(second["backbone"])
    assert lm.config.hidden_size == 32 and lm.config.vocab_size == cont["vocab_size"]

    # A curate output whose tokenizer is not the checkpoint's is refused before Ray starts.
    other = make_curate_output(tmp_path / "other")
    tok = json.loads(Path(other["tokenizer"]).read_text())
    tok["model"]["vocab"] = {k if i else "zz": v for i, (k, v) in enumerate(tok["model"]["vocab"].items())}
    Path(other["tokenizer"]).write_text(json.dumps(tok))
    manifest = json.loads(Path(other["manifest"]).read_text())
    manifest.pop("tokenizer_sha256")
    Path(other["manifest"]).write_text(json.dumps(manifest))
    with pytest.raises(InitFromError, match=rf"{re.escape(first['backbone'])}: its tokenizer is not curate's"):
        pretrain.train(cfg, other, tmp_path / "third", tmp_path / "w3")
