"""A tiny world for registry tests: backbones, one task's splits, and real module dirs written by adapt's own writer.

Modules are trained in-process for a few steps (seconds on a 32-wide, 1-block Llama) and written with
``modpipe.adapt.trainer.write_module`` from a local checkpoint, so module.json, metrics.json, test predictions and
every sha256 are exactly what the adapt stage writes.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from modpipe.config import ModelConfig

TASK = "toy"
LABELS = ["alpha", "beta"]
TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64)
WORDS = {"alpha": ["ls", "cp", "grep", "sed", "awk", "cat"], "beta": ["ssh", "git", "tar", "curl", "scp", "rsync"]}
FILLER = ["the", "page", "describes", "command", "and", "its", "options", "number", "flag", "file"]


def make_tokenizer(root: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from modpipe.models.backbone import SPECIAL_TOKENS

    lines = [" ".join(FILLER + w) for w in WORDS.values()] * 4
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=120, special_tokens=SPECIAL_TOKENS))
    root.mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "tokenizer.json"))
    return root / "tokenizer.json"


def make_backbone(root: Path, tokenizer: Path, seed: int = 0, cfg: ModelConfig = TINY) -> Path:
    from tokenizers import Tokenizer

    from modpipe.models.backbone import build_causal_lm, hf_tokenizer
    from modpipe.models.fingerprint import write_backbone_fingerprint

    vocab = Tokenizer.from_file(str(tokenizer)).get_vocab_size()
    build_causal_lm(cfg, vocab, seed=seed).save_pretrained(root)
    hf_tokenizer(tokenizer).save_pretrained(root)
    write_backbone_fingerprint(root)
    return root


def make_task(tasks_dir: Path, seed: int = 0, name: str = TASK, sizes=(96, 16, 40)) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    root = tasks_dir / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.json").write_text(json.dumps(LABELS))
    n = 0
    for split, size in zip(("train", "val", "test"), sizes):
        ids, texts, labels = [], [], []
        for i in range(size):
            y = i % 2
            words = rng.sample(WORDS[LABELS[y]], 2) + rng.sample(FILLER, 4)
            rng.shuffle(words)
            ids.append(f"{split}-{n}")
            texts.append(" ".join(words))
            labels.append(y)
            n += 1
        pq.write_table(pa.table({"id": ids, "text": texts, "label_id": pa.array(labels, pa.int64())}),
                       root / f"{split}.parquet")
    return root


def train_module(backbone: Path, tasks_dir: Path, out_root: Path, steps: int, seed: int = 0, lr: float = 0.02,
                 tag: str = "", task: str = TASK) -> Path:
    """A LoRA r=4 + linear head module trained ``steps`` AdamW steps, written by adapt's ``write_module``."""
    import tempfile

    import torch
    from ray.train import Checkpoint
    from transformers import AutoTokenizer

    from modpipe.adapt.data import load_task
    from modpipe.adapt.job import AdaptJob, LoraModule, TrainRun
    from modpipe.adapt.loop import ADAPTER_DIR
    from modpipe.adapt.trainer import write_module
    from modpipe.config_adapt import FreezeConfig
    from modpipe.evaluate import classification_metrics
    from modpipe.lineage import fingerprint
    from modpipe.models.fingerprint import read_backbone_fingerprint
    from modpipe.models.modules import build_task_model, encode, predict_proba, save_weights

    data = load_task(tasks_dir, task)
    job = AdaptJob(task=task, task_dir=str(data.dir.resolve()), backbone=str(Path(backbone).resolve()),
                   labels=tuple(data.labels), module=LoraModule(r=4, alpha=8, dropout=0.0,
                                                                target_modules=("q_proj", "v_proj")),
                   head="linear", freeze=FreezeConfig(), train_fraction=1.0, lr=lr, weight_decay=0.0, epochs=1,
                   batch_size=16, max_length=32, select_metric="val_macro_f1", seed=seed)
    spec = job.spec()
    model, n_backbone = build_task_model(backbone, len(data.labels), spec, seed)
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    train = data.splits["train"]
    g = torch.Generator().manual_seed(seed)
    started = time.time()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(train), (16,), generator=g).tolist()
        enc = encode(tokenizer, [train.texts[i] for i in idx], 32)
        y = torch.tensor([train.label_ids[i] for i in idx])
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    val = data.splits["val"]
    probs = predict_proba(model, tokenizer, val.texts, 32, 16)
    metrics = classification_metrics(val.label_ids, probs.argmax(-1), prefix="val_", probs=probs, num_labels=2)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metrics.update(epoch=1, step=steps, train_loss=0.0, n_train=len(train), n_val=len(val),
                   trainable_params=trainable, backbone_params=n_backbone,
                   total_params=sum(p.numel() for p in model.parameters()), world_size=1,
                   trained_backbone_weights=0, peak_memory_mb=0.0, started_at=started, reported_at=time.time())
    bb_fp = read_backbone_fingerprint(backbone)
    fp = fingerprint({"steps": steps, "seed": seed, "lr": lr, "tag": tag, "backbone": bb_fp})
    run = TrainRun(name=f"{task}-{fp}", storage=str(out_root / "ray"), max_failures=0, module_root=str(out_root),
                   fp=fp, backbone_fingerprint=bb_fp, config={"steps": steps, "seed": seed, "tag": tag},
                   inputs={"backbone": str(backbone), "task_dir": str(data.dir), "data_digests": data.digests})
    with tempfile.TemporaryDirectory() as tmp:
        save_weights(model, "lora", Path(tmp) / ADAPTER_DIR)
        out = write_module(job, run, [(Checkpoint.from_directory(tmp), metrics)], "in-process", time.time() - started,
                           fit_started=started)
    return Path(out["module"])


def write_data_manifest(root: Path) -> Path:
    path = root / "manifest.json"
    path.write_text(json.dumps({"digest": "m" * 64, "shards": []}))
    return path


def resign(module_dir: Path, **changes) -> None:
    """Edit module.json (``changes`` merged in) and recompute its files list, as a forger would."""
    from modpipe.models.manifest import write_manifest

    manifest = json.loads((module_dir / "module.json").read_text())
    manifest.pop("files", None)
    manifest.pop("format", None)
    manifest.update(changes)
    write_manifest(module_dir, manifest)


# ---------------------------------------------------------------------------------------------------- concurrency


def publish_one(run_dir: str, uri: str, artifacts: str | None, backbone: str, module: str, manifest: str,
                run_id: str, out_json: str, ready, go) -> None:
    """One publisher process: wait for the start signal, publish one module, write the result (or the error) as
    JSON. The barrier is always reached, so one broken process cannot hang the others."""
    import traceback

    res: dict = {}
    try:
        from modpipe.config import load_config
        from modpipe.registry import publish

        sets = [f"run_dir={run_dir}", f"publish.tracking_uri={uri}", "publish.min_metric=0.0",
                "publish.require_beat_baseline=false",  # champion mechanics under concurrency, no baseline step
                f"publish.cache_dir={Path(run_dir).parent / 'cache'}"]  # one verified download cache for all
        cfg = load_config(overrides=sets + ([f"publish.artifact_location={artifacts}"] if artifacts else []))
    except BaseException as err:  # noqa: BLE001 - reported to the test
        res = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    try:
        ready.wait(600)
        go.wait(600)
        if not res:
            import time

            t0, c0 = time.time(), time.process_time()
            res = publish(cfg, backbone, {TASK: module}, manifest, run_id=run_id)
            res["seconds"], res["cpu_seconds"] = time.time() - t0, time.process_time() - c0
    except BaseException as err:  # noqa: BLE001 - reported to the test
        res = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    Path(out_json).write_text(json.dumps(res, default=str))


def publish_concurrently(uri: str, artifacts: str | None, backbone: Path, modules: list[Path], manifest: Path,
                         out: Path) -> list[dict]:
    """``len(modules)`` processes (forked from a server that imported the registry once) publishing at once."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow", "mlflow.tracking", "modpipe.registry.publish", "modpipe.models.modules",
                                "registry_world"])
    ready, go = ctx.Barrier(len(modules) + 1), ctx.Event()
    out.mkdir(parents=True, exist_ok=True)
    procs = [ctx.Process(target=publish_one, args=(str(out / f"run-{i}"), uri, artifacts, str(backbone), str(m),
                                                   str(manifest), f"run-{i}", str(out / f"{i}.json"), ready, go))
             for i, m in enumerate(modules)]
    for p in procs:
        p.start()
    try:
        ready.wait(600)  # every process is up and has its config: start them together
    finally:
        go.set()
    for p in procs:
        p.join(600)
    return [json.loads((out / f"{i}.json").read_text()) if (out / f"{i}.json").is_file()
            else {"error": f"process exit {p.exitcode}"} for i, p in enumerate(procs)]
