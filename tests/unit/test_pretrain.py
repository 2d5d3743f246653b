"""Pretrain stage: real Ray Train (2 CPU workers) running real DeepSpeed ZeRO-2 on a tiny curate output."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modpipe.config import PipelineConfig, load_config
from modpipe.pretrain.data import BatchStream, read_rank_rows
from modpipe.pretrain.ds_config import build_ds_config, load_ds_config

SEQ_LEN = 32


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_curate_output(root: Path, n_shards: int = 2) -> dict:
    """A miniature of curate's output: BPE tokenizer with <pad>,<unk>,<eos> = 0,1,2, packed Parquet shards."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    modules = ("argparse", "collections", "email", "json", "logging", "textwrap", "typing", "unittest")
    docs = [importlib.import_module(m).__doc__ for m in modules]
    assert all(docs)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "<eos>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert [tok.token_to_id(t) for t in ("<pad>", "<unk>", "<eos>")] == [0, 1, 2]
    (root / "tokenizer").mkdir(parents=True)
    tok.save(str(root / "tokenizer" / "tokenizer.json"))

    stream: list[int] = []
    for d in docs:  # EOS-separated packing
        stream += tok.encode(d).ids + [2]
    n_rows = len(stream) // SEQ_LEN
    rows = np.asarray(stream[: n_rows * SEQ_LEN], dtype=np.int32).reshape(n_rows, SEQ_LEN)
    (root / "shards").mkdir()
    shards = []
    for i, part in enumerate(np.array_split(rows, n_shards)):
        path = root / "shards" / f"shard-{i:05d}.parquet"
        arr = pa.array([r.tolist() for r in part], type=pa.list_(pa.int32()))
        pq.write_table(pa.table({"input_ids": arr}), path)
        shards.append({"path": f"shards/{path.name}", "rows": len(part), "tokens": int(part.size),
                       "sha256": _sha(path)})
    manifest = {
        "seq_len": SEQ_LEN, "vocab_size": tok.get_vocab_size(), "tokenizer": "tokenizer/tokenizer.json",
        "tokenizer_sha256": _sha(root / "tokenizer" / "tokenizer.json"), "shards": shards,
        "total_rows": n_rows, "total_tokens": n_rows * SEQ_LEN,
        "digest": hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest(), "tasks": {},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return {"curate_dir": str(root), "manifest": str(root / "manifest.json"),
            "tokenizer": str(root / "tokenizer" / "tokenizer.json")}


def tiny_cfg(run_dir: Path, **pretrain) -> PipelineConfig:
    sets = [f"run_dir={run_dir}", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
            "model.intermediate_size=64", "model.max_position_embeddings=64", "pretrain.steps=6",
            "pretrain.micro_batch_size=4", "pretrain.warmup_steps=1", "pretrain.lr=0.01", "pretrain.num_workers=2",
            "pretrain.checkpoint_every=3", "pretrain.log_every=2"]
    return load_config(overrides=sets + [f"pretrain.{k}={v}" for k, v in pretrain.items()])


def test_rank_rows_are_disjoint_and_cover_the_data(tmp_path):
    out = make_curate_output(tmp_path / "curate", n_shards=3)
    manifest = json.loads(Path(out["manifest"]).read_text())
    shards = [str(tmp_path / "curate" / s["path"]) for s in manifest["shards"]]
    r0, s0 = read_rank_rows(shards, SEQ_LEN, 0, 2, manifest["vocab_size"])
    r1, s1 = read_rank_rows(shards, SEQ_LEN, 1, 2, manifest["vocab_size"])
    assert s0 == s1 == 0
    assert r0.shape[1] == SEQ_LEN and len(r0) + len(r1) == manifest["total_rows"]
    assert abs(len(r0) - len(r1)) <= 1
    every = np.concatenate([pq.read_table(s).column("input_ids").to_pylist() for s in shards])
    np.testing.assert_array_equal(r0, every[0::2])
    np.testing.assert_array_equal(r1, every[1::2])

    # A malformed row (wrong length) and an out-of-vocabulary row are skipped, not trained on.
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[5] * SEQ_LEN, [5] * 3, [10_000] * SEQ_LEN],
                                                   type=pa.list_(pa.int32()))}), bad)
    rows, skipped = read_rank_rows([str(bad)], SEQ_LEN, 0, 1, manifest["vocab_size"])
    assert rows.shape == (1, SEQ_LEN) and skipped == 2


def test_batch_stream_resumes_exactly():
    rows = np.arange(10 * 4).reshape(10, 4)
    s = BatchStream(rows, batch_size=3, seed=0, rank=0)
    assert s.per_epoch == 3
    it = s.iter_from(0)
    first = [next(it) for _ in range(8)]  # crosses two epoch boundaries
    it5 = s.iter_from(5)
    for epoch_batch in first[5:]:
        e, b = next(it5)
        assert e == epoch_batch[0]
        np.testing.assert_array_equal(b, epoch_batch[1])
    assert {tuple(r) for _, b in first[:3] for r in b.tolist()} <= {tuple(r) for r in rows.tolist()}


def _row_groups_shards(root: Path, sizes=(10, 7, 12), per_group: int = 3) -> list[str]:
    """Shards of distinct rows (row i is all i + 3) in row groups of ``per_group`` rows."""
    root.mkdir(parents=True, exist_ok=True)
    paths, first = [], 0
    for k, n in enumerate(sizes):
        rows = [[first + i + 3] * SEQ_LEN for i in range(n)]
        first += n
        path = root / f"s{k}.parquet"
        pq.write_table(pa.table({"input_ids": pa.array(rows, type=pa.list_(pa.int32()))}), path,
                       row_group_size=per_group)
        paths.append(str(path))
    return paths


def test_shard_stream_splits_units_over_ranks_and_resumes_from_its_position(tmp_path, monkeypatch):
    from modpipe.pretrain.data import ShardStream

    shards = _row_groups_shards(tmp_path)
    total = 10 + 7 + 12
    streams = [ShardStream(shards, SEQ_LEN, 10_000, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):  # disjoint units that cover every row, a different split each epoch
        units = [streams[r].epoch_units(epoch) for r in range(2)]
        assert not set(units[0]) & set(units[1]) and sum(b - a for u in units for _, _, a, b in u) == total
    assert streams[0].epoch_units(0) != streams[0].epoch_units(1)

    # A rank opens only its own row groups.
    opened = []
    real = ShardStream._read
    monkeypatch.setattr(ShardStream, "_read", lambda self, e, j, unit: opened.append(unit) or real(self, e, j, unit))
    s = streams[1]
    it = s.iter_from(None)
    seen, positions = [], []
    for _ in range(8):  # past the end of the first epoch
        seen.append(next(it))
        positions.append(s.position())
    assert set(opened[:len(s.epoch_units(0))]) == set(s.epoch_units(0))
    ids = [int(r[0]) - 3 for e, b in seen if e == 0 for r in b]
    assert len(ids) == len(set(ids))  # no row twice within an epoch
    assert all(b.shape == (4, SEQ_LEN) for _, b in seen)

    # From any recorded position, a fresh stream (a resumed run) yields the same batches.
    for k in (0, 2, 5):
        fresh = ShardStream(shards, SEQ_LEN, 10_000, 4, seed=0, rank=1, world_size=2)
        again = fresh.iter_from({**positions[k], "world": 2})
        assert fresh.position() == positions[k]  # before it yields (a run resumed at its last step)
        for e, b in seen[k + 1:]:
            e2, b2 = next(again)
            assert e2 == e
            np.testing.assert_array_equal(b2, b)

    # Fewer row groups than ranks: the row group is split, every rank gets a piece; malformed rows are left out.
    bad = tmp_path / "one.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[5] * SEQ_LEN, [5] * 3, [10_000] * SEQ_LEN, [6] * SEQ_LEN],
                                                   type=pa.list_(pa.int32()))}), bad)
    pair = [ShardStream([str(bad)], SEQ_LEN, 300, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    assert all(len(p.epoch_units(0)) == 1 and p.batch_size == 2 for p in pair)
    got = [next(p.iter_from(None))[1] for p in pair]  # 1 good row per piece: each batch spans two epochs
    assert all(b.shape == (2, SEQ_LEN) and set(b[:, 0].tolist()) <= {5, 6} for b in got)
    assert [p.skipped for p in pair] == [2, 2]  # one malformed row per piece read


def test_deepspeed_config_is_filled_from_the_pretrain_section(tmp_path):
    cfg = tiny_cfg(tmp_path, zero_stage=1, gradient_accumulation_steps=2)
    base = load_ds_config(cfg.pretrain.deepspeed_config)
    assert base["zero_optimization"]["stage"] == 2 and "_comment" not in base
    cpu = build_ds_config(base, cfg.pretrain, world_size=2, on_gpu=False)
    assert cpu["zero_optimization"]["stage"] == 1
    assert cpu["train_batch_size"] == 4 * 2 * 2 and cpu["train_micro_batch_size_per_gpu"] == 4
    assert cpu["optimizer"]["params"]["torch_adam"] is True and cpu["optimizer"]["params"]["lr"] == 0.01
    assert cpu["bf16"]["enabled"] is False and cpu["gradient_clipping"] > 0
    assert cpu["scheduler"]["params"]["total_num_steps"] == 6
    assert build_ds_config(base, cfg.pretrain, world_size=8, on_gpu=True)["bf16"]["enabled"] is True
    for name in ("zero1.json", "zero3.json"):
        variant = load_ds_config(Path(cfg.pretrain.deepspeed_config).with_name(name))
        assert variant["zero_optimization"]["stage"] == int(name[4])


def test_fused_adam_and_a_relative_deepspeed_path(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, fused_adam="true", deepspeed_config="infra/deepspeed/zero3.json")
    monkeypatch.chdir(tmp_path)  # not the repo: the relative path is found under the repo root
    base = load_ds_config(cfg.pretrain.deepspeed_config)
    assert base["zero_optimization"]["stage"] == 3
    for on_gpu in (False, True):
        params = build_ds_config(base, cfg.pretrain, world_size=2, on_gpu=on_gpu)["optimizer"]["params"]
        assert params["fused"] is True and params["torch_adam"] is True and "foreach" not in params
    plain = build_ds_config(base, tiny_cfg(tmp_path).pretrain, world_size=2, on_gpu=True)["optimizer"]["params"]
    assert "fused" not in plain
    with pytest.raises(ValueError, match="fused_adam needs an Adam or AdamW"):
        build_ds_config({**base, "optimizer": {"type": "Lamb", "params": {}}}, cfg.pretrain, 2, on_gpu=True)
    with pytest.raises(FileNotFoundError, match="pretrain.deepspeed_config"):
        load_ds_config("infra/deepspeed/no-such.json")


@pytest.mark.slow
def test_pretrain_trains_exports_and_reuses(ray_local, tmp_path):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    from modpipe import pretrain
    from modpipe.models.fingerprint import read_backbone_fingerprint

    curated = make_curate_output(tmp_path / "curate", n_shards=3)
    cfg = tiny_cfg(tmp_path / "run", eval_every=4, eval_rows=6)
    work = tmp_path / "work"
    out = pretrain.train(cfg, curated, tmp_path / "backbone", work)

    backbone = Path(out["backbone"])
    assert backbone == tmp_path / "backbone"
    metrics = json.loads(Path(out["metrics"]).read_text())
    assert metrics["steps"] == 6 and metrics["world_size"] == 2 and metrics["zero_stage"] == 2
    assert [p["step"] for p in metrics["loss_curve"]] == [2, 4, 6]
    losses = [p["loss"] for p in metrics["loss_curve"]]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < math.log(metrics["vocab_size"])  # below a uniform guess: it learned something
    assert losses[-1] < losses[0]
    assert metrics["params"] > 0 and metrics["tokens_per_s"] > 0 and metrics["mfu"] is None
    assert metrics["tokens_seen"] == 6 * 2 * 4 * SEQ_LEN
    assert all(p["ms_per_step"] > 0 and p["tokens_per_s"] > 0 for p in metrics["loss_curve"])

    # The last of the 3 shards is held out: named in the outputs (as shift reads it) and scored every 4 steps
    # and at the last, 3 rows per rank.
    manifest = json.loads(Path(curated["manifest"]).read_text())
    assert out["heldout_shard"] == manifest["shards"][-1]["path"] == metrics["heldout"]["path"]
    assert metrics["heldout"]["rows_scored"] == 6 and metrics["heldout"]["sha256"] == manifest["shards"][-1]["sha256"]
    assert [p["step"] for p in metrics["eval_curve"]] == [4, 6]
    assert all(math.isfinite(p["val_loss"]) and p["val_ppl"] == pytest.approx(math.exp(p["val_loss"]), rel=1e-3)
               for p in metrics["eval_curve"])
    assert metrics["final_heldout_loss"] == metrics["eval_curve"][-1]["val_loss"]

    # The run report's facts and figure: both curves.
    from modpipe.report import facts, figures

    f = facts.pretrain(out)
    assert [s for s, _ in f["heldout_curve"]] == [4, 6] and f["heldout_shard"] == out["heldout_shard"]
    assert figures.pretrain(f)[:8] == b"\x89PNG\r\n\x1a\n"

    # The export: safetensors only, loadable by the Auto classes, fingerprint verifies.
    files = {p.name for p in backbone.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert out["fingerprint"] == read_backbone_fingerprint(backbone, verify=True)
    lm = AutoModelForCausalLM.from_pretrained(backbone)
    assert lm.config.hidden_size == 32 and lm.config.num_hidden_layers == 2
    assert AutoModel.from_pretrained(backbone).config.vocab_size == metrics["vocab_size"]
    tok = AutoTokenizer.from_pretrained(backbone)
    assert (tok.pad_token_id, tok.unk_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("Command-line parsing library", return_tensors="pt")["input_ids"]
    assert lm(input_ids=ids).logits.shape == (1, ids.shape[1], metrics["vocab_size"])

    # Every rank's read position is in the checkpoints (a resumed run streams on from there).
    (last,) = sorted(p.parent for p in work.glob("ray/backbone/checkpoint_*/train_state.json"))[-1:]
    assert sorted(p.name for p in last.glob("data_rank*.json")) == ["data_rank0.json", "data_rank1.json"]
    assert json.loads((last / "data_rank1.json").read_text())["world"] == 2

    # Lost output but Ray's run is still in the work dir: the rerun resumes from the final checkpoint (no new
    # steps) and exports the same weights.
    shutil.rmtree(backbone)
    again = pretrain.train(cfg, curated, backbone, work)
    assert again["backbone"] == out["backbone"] and again["fingerprint"] == out["fingerprint"]
    again_metrics = json.loads(Path(again["metrics"]).read_text())
    assert again_metrics["resumed_from_step"] == 6 and again_metrics["eval_curve"] == metrics["eval_curve"]

    # A pickle planted in the run dir's latest checkpoint (in place of DeepSpeed's model states): the resume reads
    # it with weights_only=True and stops, naming the file; the payload never runs (DeepSpeed's own load would).
    from test_integrity import plant

    (states,) = sorted(work.glob("ray/backbone/checkpoint_*/ds/step6/mp_rank_00_model_states.pt"))[-1:]
    marker = tmp_path / "pwned"
    plant(states, marker)
    shutil.rmtree(backbone)
    with pytest.raises(pretrain.PretrainError, match="refused to load a checkpoint file"):
        pretrain.train(cfg, curated, backbone, work)
    assert not marker.exists()


def test_the_last_shard_is_held_out_when_there_are_two_or_more(tmp_path):
    from modpipe.pretrain import _read_inputs, split_heldout

    one = json.loads(Path(make_curate_output(tmp_path / "one", n_shards=1)["manifest"]).read_text())
    assert split_heldout(one) == (one["shards"], None)
    three = make_curate_output(tmp_path / "three", n_shards=3)
    manifest = json.loads(Path(three["manifest"]).read_text())
    train_entries, held = split_heldout(manifest)
    assert train_entries == manifest["shards"][:2] and held == manifest["shards"][2]
    rows = sum(s["rows"] for s in train_entries)
    _read_inputs(three, rows)  # the training rows feed this many workers ...
    with pytest.raises(ValueError, match="training rows cannot feed"):
        _read_inputs(three, rows + 1)  # ... the held-out ones do not count


def test_backbone_run_logs_the_training_curves(tmp_path):
    """register_backbone: the backbone's MLflow run holds metrics.json's settings, final figures and curves."""
    from modpipe.registry.publish import register_backbone
    from modpipe.registry.store import Store
    from registry_world import make_backbone, make_tokenizer

    backbone = make_backbone(tmp_path / "backbone", make_tokenizer(tmp_path / "tok"))
    curve = [{"step": s, "loss": 5.0 - s, "lr": 0.01, "ms_per_step": 10.0, "tokens_per_s": 100.0 * s}
             for s in (2, 4)]
    (backbone / "metrics.json").write_text(json.dumps({
        "steps": 4, "world_size": 2, "final_loss": 1.0, "initial_loss": 3.0, "tokens_per_s": 321.0, "mfu": None,
        "loss_curve": curve, "eval_curve": [{"step": 4, "val_loss": 1.5, "val_ppl": math.exp(1.5)}],
        "heldout": {"path": "shards/shard-00001.parquet"}, "final_heldout_loss": 1.5}))
    from modpipe.models.fingerprint import write_backbone_fingerprint

    fp = write_backbone_fingerprint(backbone)
    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}", cache_dir=tmp_path / "cache")
    experiment = store.experiment_id("bb", (tmp_path / "artifacts").as_uri())
    bb = register_backbone(store, load_config(overrides=[f"run_dir={tmp_path / 'run'}"]), backbone, fp, experiment,
                           "run-1")
    run = store.client.get_run(store.client.get_model_version(bb["name"], bb["version"]).run_id)
    assert run.data.params["world_size"] == "2" and run.data.params["heldout_shard"] == "shards/shard-00001.parquet"
    assert run.data.metrics["final_heldout_loss"] == 1.5 and run.data.metrics["steady_tokens_per_s"] == 321.0
    history = store.client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(2, 3.0), (4, 1.0)]
    assert [(m.step, m.value) for m in store.client.get_metric_history(run.info.run_id, "heldout_loss")] == [(4, 1.5)]
    assert "mfu" not in run.data.metrics  # CPU: no MFU


def test_tampered_shard_is_refused_before_training(tmp_path):
    from modpipe.pretrain import _read_inputs

    out = make_curate_output(tmp_path / "curate", n_shards=1)
    _read_inputs(out, 1)  # intact: accepted
    manifest = json.loads(Path(out["manifest"]).read_text())
    shard = Path(out["manifest"]).parent / manifest["shards"][0]["path"]
    shard.write_bytes(shard.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256 does not match"):
        _read_inputs(out, 1)


@pytest.mark.slow
def test_zero3_export_is_the_gathered_model(ray_local, tmp_path):
    """ZeRO-3 (2 workers, each holding half of every parameter) with the cluster knobs on (fused AdamW, activation
    checkpointing, eager attention): the export gathers the partitions through DeepSpeed's public
    ``GatheredParameters`` into the same safetensors (names, shapes, fp32) a fresh model saves, holding exactly the
    weights DeepSpeed's own ``zero_to_fp32`` consolidates from the final checkpoint's ZeRO-3 shards."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors import safe_open

    from modpipe import pretrain
    from modpipe.models.backbone import build_causal_lm

    curated = make_curate_output(tmp_path / "curate")
    cfg = tiny_cfg(tmp_path / "run", zero_stage=3, deepspeed_config="infra/deepspeed/zero3.json",
                   fused_adam="true", activation_checkpointing="true", attn_implementation="eager")
    work = tmp_path / "work"
    out = pretrain.train(cfg, curated, tmp_path / "backbone", work)
    metrics = json.loads(Path(out["metrics"]).read_text())
    assert metrics["zero_stage"] == 3 and metrics["world_size"] == 2 and metrics["steps"] == 6
    assert metrics["fused_adam"] and metrics["activation_checkpointing"] and metrics["attn_implementation"] == "eager"
    losses = [p["loss"] for p in metrics["loss_curve"]]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]

    fresh = tmp_path / "fresh"
    build_causal_lm(cfg.model, metrics["vocab_size"]).save_pretrained(fresh)

    def tensors(path: Path) -> dict:
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    exported, reference = tensors(tmp_path / "backbone"), tensors(fresh)
    assert {k: (v.dtype, v.shape) for k, v in exported.items()} == {k: (v.dtype, v.shape) for k, v in reference.items()}
    assert all(v.dtype == torch.float32 for v in exported.values())

    (ds_dir,) = sorted(work.glob("ray/backbone/checkpoint_*/ds"))[-1:]
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag="step6")
    for name, value in exported.items():
        assert torch.equal(value, consolidated[name].float()), name  # CPU trains in fp32: bit for bit
    assert not any(torch.equal(exported[k], reference[k]) for k in exported if exported[k].dim() >= 2)  # it trained
