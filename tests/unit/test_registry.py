"""Publish stage against a real MLflow sqlite store, with a real tiny backbone and real PEFT LoRA module dirs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modpipe.config import ModelConfig, load_config
from modpipe.lineage import sha256_file

TASK = "toy"
LABELS = ["alpha", "beta"]
TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64)
LINES = [f"the {w} page describes command number {i} and its options" for i, w in
         enumerate(["ls", "cp", "grep", "sed", "awk", "tar", "ssh", "git"] * 4)]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny backbone (safetensors + tokenizer + fingerprint) and one good LoRA module trained on nothing."""
    from peft import LoraConfig, TaskType, get_peft_model
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForSequenceClassification

    from modpipe.models.backbone import SPECIAL_TOKENS, build_causal_lm, hf_tokenizer
    from modpipe.models.fingerprint import write_backbone_fingerprint

    root = tmp_path_factory.mktemp("registry_assets")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(LINES, trainers.BpeTrainer(vocab_size=120, special_tokens=SPECIAL_TOKENS))
    tok.save(str(root / "tokenizer.json"))

    backbone = root / "backbone"
    build_causal_lm(TINY, tok.get_vocab_size()).save_pretrained(backbone)
    hf_tokenizer(root / "tokenizer.json").save_pretrained(backbone)
    fp = write_backbone_fingerprint(backbone)

    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=len(LABELS))
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    module = root / "module"
    get_peft_model(model, lora).save_pretrained(module)
    assert (module / "adapter_model.safetensors").is_file()
    (module / "metrics.json").write_text(json.dumps({
        "test_accuracy": 0.75, "test_macro_f1": 0.7, "val_accuracy": 0.8, "val_macro_f1": 0.72, "n_train": 32}))
    (module / "module.json").write_text(json.dumps({
        "task": TASK, "labels": LABELS, "backbone_fingerprint": fp, "seed": 0, "train_data_digest": "t" * 64,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}))
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"digest": "m" * 64, "shards": []}))
    return {"backbone": backbone, "module": module, "manifest": manifest, "fingerprint": fp}


def _variant(assets, dest: Path, metrics: dict | None = None, module: dict | None = None) -> str:
    shutil.copytree(assets["module"], dest)
    for name, patch in (("metrics.json", metrics), ("module.json", module)):
        if patch:
            data = json.loads((dest / name).read_text())
            (dest / name).write_text(json.dumps({**data, **patch}))
    return str(dest)


def _cfg(tmp_path: Path, *extra: str):
    return load_config(overrides=[f"run_dir={tmp_path / 'run'}", "publish.min_metric=0.5", *extra])


def test_gate_registers_passing_module_with_lineage_and_alias(tmp_path, assets):
    from mlflow import MlflowClient

    from modpipe.lineage import fingerprint
    from modpipe.registry import list_modules, publish, resolve

    cfg = _cfg(tmp_path)
    modules = {
        TASK: str(assets["module"]),
        "weak": _variant(assets, tmp_path / "weak", metrics={"test_macro_f1": 0.1}),
        "stale": _variant(assets, tmp_path / "stale", module={"backbone_fingerprint": "0" * 64}),
        "lying": _variant(assets, tmp_path / "lying", module={"files": {"adapter_model.safetensors": "f" * 64}}),
    }
    out = publish(cfg, str(assets["backbone"]), modules, str(assets["manifest"]))
    assert out["tracking_uri"] == f"sqlite:///{cfg.run_path / 'registry' / 'mlflow.db'}"
    assert [r["task"] for r in out["registered"]] == [TASK]
    reasons = {r["task"]: r["reason"] for r in out["rejected"]}
    assert set(reasons) == {"weak", "stale", "lying"}
    assert "test_macro_f1=0.1000 below" in reasons["weak"]
    assert "current backbone is " + assets["fingerprint"][:12] in reasons["stale"]
    assert "sha256 mismatch for adapter_model.safetensors" in reasons["lying"]

    reg = out["registered"][0]
    assert reg["name"] == f"modpipe-{TASK}" and reg["version"] == "1" and reg["new"] is True
    client = MlflowClient(tracking_uri=out["tracking_uri"], registry_uri=out["tracking_uri"])
    mv = client.get_model_version_by_alias(reg["name"], "champion")
    assert str(mv.version) == "1" and mv.run_id == reg["run_id"]
    assert mv.tags["backbone_fingerprint"] == assets["fingerprint"]
    assert mv.tags["data_manifest_digest"] == "m" * 64
    assert mv.tags["config_fingerprint"] == fingerprint(cfg.model_dump(mode="json"))
    assert mv.tags["metric.test_macro_f1"] == "0.7"
    weights = assets["module"] / "adapter_model.safetensors"
    assert mv.tags["sha256.adapter_model.safetensors"] == sha256_file(weights)
    run = client.get_run(reg["run_id"])
    assert run.data.metrics["test_macro_f1"] == pytest.approx(0.7)
    assert run.data.params["lora.r"] == "4" and run.data.params["labels"] == json.dumps(LABELS)
    artifacts = {a.path for a in client.list_artifacts(reg["run_id"], "module")}
    assert {"module/adapter_model.safetensors", "module/adapter_config.json", "module/module.json"} <= artifacts
    # artifacts live under the run dir, as configured
    assert Path(resolve(cfg, TASK)).is_relative_to(cfg.run_path / "registry" / "artifacts")

    # idempotent: same content -> same version, no new run
    again = publish(cfg, str(assets["backbone"]), {TASK: str(assets["module"])}, str(assets["manifest"]))
    assert [(r["version"], r["run_id"], r["new"]) for r in again["registered"]] == [("1", reg["run_id"], False)]
    assert len(client.search_model_versions(f"name = '{reg['name']}'")) == 1

    # changed content -> v2, alias follows
    better = _variant(assets, tmp_path / "better", metrics={"test_macro_f1": 0.9})
    v2 = publish(cfg, str(assets["backbone"]), {TASK: better}, str(assets["manifest"]))["registered"][0]
    assert v2["version"] == "2" and str(client.get_model_version_by_alias(reg["name"], "champion").version) == "2"
    rows = list_modules(cfg)
    assert [(r["name"], r["version"], r["aliases"]) for r in rows] == [
        (reg["name"], "1", []), (reg["name"], "2", ["champion"])]
    assert rows[1]["tags"]["metric.test_macro_f1"] == "0.9" and rows[1]["source"].endswith("/module")


def test_resolve_loads_and_refuses_tampered_files(tmp_path, assets):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from modpipe.registry import RegistryError, publish, resolve

    cfg = _cfg(tmp_path, "publish.alias=prod", "publish.model_prefix=team")
    out = publish(cfg, str(assets["backbone"]), {TASK: str(assets["module"])}, str(assets["manifest"]))
    assert out["registered"][0]["name"] == f"team-{TASK}"
    path = Path(resolve(cfg, TASK, "prod"))
    assert path == Path(resolve(cfg, TASK, 1))
    base = AutoModelForSequenceClassification.from_pretrained(assets["backbone"], num_labels=len(LABELS))
    model = PeftModel.from_pretrained(base, str(path))
    assert any("lora_A" in n for n, _ in model.named_parameters())

    with pytest.raises(RegistryError, match="no version 'champion'"):
        resolve(cfg, TASK, "champion")
    (path / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="sha256 mismatch for adapter_model.safetensors"):
        resolve(cfg, TASK, "prod")
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(RegistryError, match="missing adapter_model.safetensors"):
        resolve(cfg, TASK, "prod")


def test_unusable_backbone_rejects_everything(tmp_path, assets):
    from modpipe.registry import publish

    backbone = tmp_path / "backbone"
    shutil.copytree(assets["backbone"], backbone)
    (backbone / "config.json").write_text((backbone / "config.json").read_text().replace("32", "33", 1))
    out = publish(_cfg(tmp_path), str(backbone), {TASK: str(assets["module"])}, str(assets["manifest"]))
    assert out["registered"] == []
    assert out["rejected"][0]["task"] == TASK and "backbone files changed" in out["rejected"][0]["reason"]
    assert not (tmp_path / "run" / "registry" / "mlflow.db").exists()  # nothing to publish, no store touched
