"""Adapt stage: real Ray Train runs (one per task, concurrently) of LoRA on a tiny real Llama backbone.

The backbone's tokenizer is a BPE trained on stdlib module docstrings; the tasks are real labels over stdlib
docstrings (which module a function/method comes from; function vs class).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modpipe.config import ModelConfig, load_config

TOKENIZER_MODULES = ("argparse", "collections", "email", "json", "logging", "textwrap", "typing", "unittest",
                     "inspect", "tarfile", "os", "shutil", "pydoc", "ast", "decimal")
TINY_MODEL = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=128)
SPLIT_SIZES = {"train": 60, "val": 15, "test": 24}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- fixtures' builders (also used by test_tune.py)


def make_backbone(root: Path) -> Path:
    """Tiny LlamaForCausalLM + its BPE tokenizer (<pad>,<unk>,<eos> = 0,1,2) saved like pretrain exports it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from modpipe.models.backbone import build_causal_lm, hf_tokenizer
    from modpipe.models.fingerprint import write_backbone_fingerprint

    docs = [importlib.import_module(m).__doc__ for m in TOKENIZER_MODULES]
    assert all(docs)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<unk>", "<eos>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert [tok.token_to_id(t) for t in ("<pad>", "<unk>", "<eos>")] == [0, 1, 2]
    root.mkdir(parents=True)
    tok.save(str(root / "tokenizer.src.json"))
    model = build_causal_lm(TINY_MODEL, tok.get_vocab_size(), seed=0)
    out = root / "backbone"
    model.save_pretrained(out)
    hf_tokenizer(root / "tokenizer.src.json").save_pretrained(out)
    write_backbone_fingerprint(out)
    return out


def _docstrings(module: str, kinds: tuple[str, ...]) -> list[tuple[str, str]]:
    """(qualified name, docstring) of public functions / classes / methods defined in ``module``."""
    mod = importlib.import_module(module)
    out = []
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isfunction(obj) and "function" in kinds and inspect.getdoc(obj):
            out.append((f"{module}.{name}", inspect.getdoc(obj)))
        elif inspect.isclass(obj):
            if "class" in kinds and obj.__doc__:
                out.append((f"{module}.{name}", inspect.cleandoc(obj.__doc__)))
            if "method" in kinds:
                for mname, meth in sorted(vars(obj).items()):
                    if inspect.isfunction(meth) and not mname.startswith("_") and meth.__doc__:
                        out.append((f"{module}.{name}.{mname}", inspect.cleandoc(meth.__doc__)))
    return out


def _write_task(tasks_dir: Path, name: str, labels: list[str], rows_by_label: dict[str, list[tuple[str, str]]]):
    """Balanced, shuffled splits in curate's layout: {train,val,test}.parquet + labels.json."""
    rng = random.Random(0)
    n_total = sum(SPLIT_SIZES.values())
    per_label = -(-n_total // len(labels))
    rows = []
    for label_id, label in enumerate(labels):
        items = list(dict(rows_by_label[label]).items())  # dedup names
        rng.shuffle(items)
        assert len(items) >= per_label, (name, label, len(items))
        rows += [(qn, text, label, label_id) for qn, text in items[:per_label]]
    rng.shuffle(rows)
    rows = rows[:n_total]
    d = tasks_dir / name
    d.mkdir(parents=True)
    start = 0
    for split, n in SPLIT_SIZES.items():
        part = rows[start:start + n]
        start += n
        pq.write_table(pa.table({
            "id": [r[0] for r in part], "text": [r[1] for r in part], "label": [r[2] for r in part],
            "label_id": pa.array([r[3] for r in part], pa.int64()),
        }), d / f"{split}.parquet")
    (d / "labels.json").write_text(json.dumps(labels))


def make_tasks(tasks_dir: Path) -> list[str]:
    """doc_module: which of inspect / logging / tarfile a function or method docstring comes from;
    doc_kind: function vs class docstring across several modules."""
    mods = ["inspect", "logging", "tarfile"]
    _write_task(tasks_dir, "doc_module", mods, {m: _docstrings(m, ("function", "method")) for m in mods})
    funcs = [x for m in ("turtle", "pydoc", "os", "shutil") for x in _docstrings(m, ("function",))]
    classes = [x for m in ("ast", "socket", "decimal", "ssl", "smtplib", "http.client", "xml.dom.minidom", "logging",
                           "tarfile", "itertools") for x in _docstrings(m, ("class",))]
    _write_task(tasks_dir, "doc_kind", ["function", "class"], {"function": funcs, "class": classes})
    return ["doc_module", "doc_kind"]


def adapt_cfg(run_dir: Path, tasks: list[str], **adapt):
    sets = [f"run_dir={run_dir}", f"adapt.tasks={json.dumps(tasks)}", "adapt.epochs=2", "adapt.batch_size=16",
            "adapt.max_length=64", "adapt.lr=0.01", "adapt.lora.r=4", "adapt.num_workers_per_task=1",
            "adapt.cpus_per_worker=1", "adapt.max_failures=0"]
    return load_config(overrides=sets + [f"adapt.{k}={v}" for k, v in adapt.items()])


def weight_digests(backbone: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in sorted(backbone.glob("*.safetensors"))}


def step_ctx(root: Path, step: str, backbone: Path, tasks_dir: Path, contracts: str | None = "succeeded"):
    """A ``StepContext`` as the executor builds it, by hand: curate and pretrain results pointing at ``tasks_dir``
    and ``backbone``, and a contracts record on disk (``status.json`` in the executor's format) in state
    ``contracts`` (None: no contracts input at all). The caller's StepResult always claims success: the gate
    must believe the record on disk."""
    from modpipe.executor import SUCCEEDED, StepContext, StepResult

    curate_dir = root / "curate" / "curate-c0ffee"
    inputs = {"curate": StepResult("curate", "c0ffee", curate_dir, SUCCEEDED, {}, {"tasks_dir": str(tasks_dir)}),
              "pretrain": StepResult("pretrain", "b4ckb0", root / "pretrain" / "pretrain-b4ckb0", SUCCEEDED, {},
                                     {"backbone": str(backbone)})}
    if contracts is not None:
        cdir = root / "contracts" / f"contracts-{contracts}"
        cdir.mkdir(parents=True, exist_ok=True)
        record = {"step": "contracts", "version": "5ca1ab", "state": contracts, "run_id": "test",
                  "upstream": {"curate": {"version": "c0ffee", "dir": str(curate_dir)}},
                  "outputs": {"datasets": 3}}
        if contracts != SUCCEEDED:
            record["error"] = "ExpectationFailed: man_section: 2 of 40 expectations failed"
        (cdir / "status.json").write_text(json.dumps(record))
        inputs["contracts"] = StepResult("contracts", "5ca1ab", cdir, SUCCEEDED, record, record["outputs"])
    out, work = root / f".tmp-{step}", root / f".work-{step}"
    out.mkdir(parents=True)
    work.mkdir(parents=True)
    return StepContext(step, "v1", "test-run", out, work, root / step / f"{step}-v1", inputs)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    backbone = make_backbone(root / "model")
    tasks_dir = root / "tasks"
    tasks = make_tasks(tasks_dir)
    broken = tasks_dir / "broken"  # a task missing its test split: reported, never trained
    broken.mkdir()
    (broken / "labels.json").write_text(json.dumps(["a", "b"]))
    for split in ("train", "val"):
        pq.write_table(pa.table({"id": ["x"], "text": ["some text"], "label": ["a"],
                                 "label_id": pa.array([0], pa.int64())}), broken / f"{split}.parquet")
    shutil.copytree(tasks_dir / "doc_module", tasks_dir / "doc_ia3")  # trained with an unusable IA3 config
    return {"root": root, "backbone": backbone, "tasks_dir": tasks_dir, "tasks": tasks}


@pytest.fixture(scope="module")
def adapted(world, ray_local):
    from modpipe import adapt

    # doc_module: LoRA (the default); doc_kind: the bottleneck adapter; doc_ia3: IA3 aimed at projections this
    # backbone lacks, so its worker fails on every attempt: retried once, then reported, the others unaffected
    cfg = adapt_cfg(world["root"] / "run", world["tasks"] + ["broken", "doc_ia3"], task_retries=1, **{
        "methods": json.dumps({"doc_kind": "bottleneck", "doc_ia3": "ia3"}), "ia3.target_modules": "[no_such_proj]",
        "ia3.feedforward_modules": "[]"})
    before = weight_digests(world["backbone"])
    out = adapt.train_tasks(cfg, str(world["backbone"]), str(world["tasks_dir"]))
    # the trained tasks again, without the failing one: a task's module dir depends on its own method only
    rerun = adapt_cfg(world["root"] / "run", world["tasks"], methods=json.dumps({"doc_kind": "bottleneck"}))
    return {"cfg": cfg, "rerun_cfg": rerun, "out": out, "weights_before": before}


# ---------------------------------------------------------------- tests without Ray


def test_metrics_come_from_sklearn_definitions():
    from modpipe.evaluate import classification_metrics, confusion

    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], prefix="test_")
    assert m["test_accuracy"] == pytest.approx(3 / 5)
    # per-class F1: class0 1/(1+0.5*(1+1)) = 0.5, class1 2/(2+0.5) = 0.8, class2 0 -> macro 0.4333
    assert m["test_macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert confusion([0, 1], [1, 1], 3) == [[0, 1, 0], [0, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0])


def test_bad_rows_are_dropped_with_reasons(tmp_path):
    from modpipe.adapt.data import TaskDataError, load_task, read_split

    d = tmp_path / "t"
    d.mkdir()
    (d / "labels.json").write_text(json.dumps(["a", "b"]))
    pq.write_table(pa.table({"id": ["1", "2", "3", "4"], "text": ["good text", "", None, "also good"],
                             "label": ["a", "a", "b", "z"], "label_id": pa.array([0, 1, 1, 7], pa.int64())}),
                   d / "train.parquet")
    s = read_split(d, "train", 2)
    assert s.ids == ["1"] and s.label_ids == [0]
    assert sorted(r["reason"] for r in s.rejects) == ["empty_text", "empty_text", "label_id_out_of_range"]
    with pytest.raises(TaskDataError, match="val.parquet: missing"):
        load_task(tmp_path, "t")
    pq.write_table(pa.table({"id": ["1"], "body": ["x"]}), d / "val.parquet")
    with pytest.raises(TaskDataError, match="missing column"):
        read_split(d, "val", 2)


def test_task_selection_falls_back_to_every_task(tmp_path):
    from modpipe.adapt import select_tasks

    for name in ("b_task", "a_task"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "labels.json").write_text("[]")
    (tmp_path / "not_a_task").mkdir()
    assert select_tasks(adapt_cfg(tmp_path / "r", ["b_task", "zzz"]), tmp_path) == ["b_task"]
    assert select_tasks(adapt_cfg(tmp_path / "r", ["zzz"]), tmp_path) == ["a_task", "b_task"]


def test_every_task_failing_raises(tmp_path, world):
    from modpipe import adapt

    bad = tmp_path / "tasks" / "only_bad"
    bad.mkdir(parents=True)
    (bad / "labels.json").write_text("not json")
    with pytest.raises(adapt.AdaptError, match="only_bad: bad task data: .*labels.json: not JSON"):
        adapt.train_tasks(adapt_cfg(tmp_path / "run", ["only_bad"]), str(world["backbone"]), str(tmp_path / "tasks"))


@pytest.mark.parametrize("contracts", [None, "failed"])
def test_step_refuses_data_without_passing_contracts(tmp_path, world, contracts):
    """No contracts record, or one that says failed (whatever the caller claims): GateError, nothing written."""
    from modpipe import adapt
    from modpipe.gates import GateError

    ctx = step_ctx(tmp_path, "adapt", world["backbone"], world["tasks_dir"], contracts)
    cfg = adapt_cfg(tmp_path / "run", world["tasks"])
    with pytest.raises(GateError, match="no data-contract record" if contracts is None else "contracts failed"):
        adapt.run(cfg, ctx)
    assert not list(ctx.out.iterdir()) and not list(ctx.work.iterdir()) and not cfg.run_path.exists()


def test_task_fingerprint_follows_the_versioned_fields(tmp_path):
    """A task's module dir is keyed by what its job trains with: each versioned field that reaches the task's job
    changes it, unversioned fields, another task's override and unused method sections do not; the step version
    (``versioned_fields``) leaves out exactly the unversioned ones."""
    from modpipe.adapt.data import Task
    from modpipe.adapt.job import Scaling, make_job, task_fingerprint
    from modpipe.config_base import versioned_fields

    task = Task("t", tmp_path / "t", ["a", "b"], {}, {"train": "1", "val": "2", "test": "3", "labels": "4"})

    def fp(*sets: str) -> str:
        cfg = load_config(overrides=list(sets))
        return task_fingerprint(make_job(cfg, task, tmp_path), Scaling.of(cfg.adapt), "bfp", task.digests)

    base = fp()
    same = ["adapt.tasks=[x]", "adapt.cpus_per_worker=2", "adapt.gpus_per_worker=0.5", "adapt.max_failures=3",
            "adapt.task_retries=0", 'adapt.methods={"other": "full"}', "adapt.ia3.target_modules=[q_proj, down_proj]",
            "adapt.bottleneck.reduction_factor=4", 'adapt.method_lr={"full": 0.1}']
    changed = ["adapt.method=ia3", 'adapt.methods={"t": "bottleneck"}', "adapt.head=mlp", "adapt.lora.r=4",
               "adapt.freeze.policy=top_k", "adapt.train_fraction=0.5", "adapt.lr=0.01",
               'adapt.method_lr={"lora": 0.1}',
               "adapt.weight_decay=0.1", "adapt.epochs=2", "adapt.batch_size=8", "adapt.max_length=64",
               "adapt.select_metric=val_accuracy", "adapt.num_workers_per_task=2", "adapt.use_gpu=true", "seed=1"]
    assert [s for s in same if fp(s) != base] == []
    assert [s for s in changed if fp(s) == base] == []
    cfg = load_config(overrides=[])
    assert set(type(cfg.adapt).model_fields) - set(versioned_fields(cfg.adapt)) == {
        "cpus_per_worker", "gpus_per_worker", "max_failures", "task_retries", "grad_profile_every"}
    assert set(type(cfg.tune).model_fields) - set(versioned_fields(cfg.tune)) == {"max_concurrent_trials", "state_dir"}


# ---------------------------------------------------------------- the real run


@pytest.mark.slow
def test_modules_written_with_metrics_and_manifest(adapted, world):
    from modpipe.lineage import sha256_file
    from modpipe.models.fingerprint import read_backbone_fingerprint

    out = adapted["out"]
    assert set(out["modules"]) == set(world["tasks"])
    assert set(out["failed"]) == {"broken", "doc_ia3"} and "test.parquet: missing" in out["failed"]["broken"]
    assert "training failed" in out["failed"]["doc_ia3"] and "(failed 2 time(s))" in out["failed"]["doc_ia3"]
    for task, method in zip(world["tasks"], ("lora", "bottleneck")):
        mdir = Path(out["modules"][task])
        assert mdir.parent == adapted["cfg"].run_path / "adapt" and mdir.name.startswith(f"{task}-")
        assert (mdir / "adapter_model.safetensors").is_file() and (mdir / "adapter_config.json").is_file()
        assert not list(mdir.glob("*.bin")) and not list(mdir.glob("*.pt"))
        m = json.loads(Path(out["metrics"][task]).read_text())
        for k in ("test_accuracy", "test_macro_f1", "test_auroc_ovr", "test_ece", "val_accuracy", "val_macro_f1",
                  "val_auroc_ovr", "val_ece"):
            assert 0.0 <= m[k] <= 1.0, (k, m[k])
        assert (m["n_train"], m["n_val"], m["n_test"]) == (60, 15, 24)
        assert (m["method"], m["head"], m["freeze_policy"], m["train_fraction"]) == (method, "mean", "frozen", 1.0)
        assert 0 < m["trainable_params"] < 0.2 * m["total_params"]
        assert m["trainable_pct"] == pytest.approx(100 * m["trainable_params"] / m["backbone_params"], abs=1e-3)
        assert m["train_seconds"] > 0 and [h["epoch"] for h in m["history"]] == [1, 2]
        assert m["peak_memory_mb"] > 0 and m["latency_ms_per_batch"] > 0
        module = json.loads((mdir / "module.json").read_text())
        assert module["task"] == task and module["num_labels"] == len(module["labels"])
        assert module["backbone_fingerprint"] == read_backbone_fingerprint(world["backbone"])
        assert module["seed"] == 0 and module["method"] == method and module["module"]["head"] == "mean"
        assert module["metrics"]["test_ece"] == m["test_ece"] and module["metrics"]["trainable_pct"] == m[
            "trainable_pct"]
        if method == "lora":
            assert module["lora"]["r"] == 4 and module["module"]["family"] == "parameter"
        else:
            assert module["bottleneck"]["placement"] == "pfeiffer" and module["module"]["family"] == "function"
        assert module["hidden_size"] == 32 and module["tokenizer_sha256"] == sha256_file(
            world["backbone"] / "tokenizer.json")
        assert module["train_data_digest"] == sha256_file(world["tasks_dir"] / task / "train.parquet")
        assert set(module["files"]) == {p.name for p in mdir.iterdir()} - {"module.json", "provenance.json"}
        assert all(sha256_file(mdir / f) == h for f, h in module["files"].items())
        adapter_cfg = json.loads((mdir / "adapter_config.json").read_text())
        assert "score" in adapter_cfg["modules_to_save"]
        assert adapter_cfg.get("task_type") == "SEQ_CLS" if method == "lora" else adapter_cfg["method"] == method


@pytest.mark.slow
def test_tasks_trained_concurrently(adapted, world):
    spans = []
    for task in world["tasks"]:
        m = json.loads(Path(adapted["out"]["metrics"][task]).read_text())
        assert m["train_started"] < m["train_finished"]
        spans.append((m["train_started"], m["train_finished"]))
    (s1, e1), (s2, e2) = spans
    assert s1 < e2 and s2 < e1, f"Ray Train runs did not overlap: {spans}"


@pytest.mark.slow
def test_backbone_weights_bitwise_unchanged(adapted, world):
    assert weight_digests(world["backbone"]) == adapted["weights_before"]


@pytest.mark.slow
def test_module_reloads_and_reproduces_test_predictions(adapted, world):
    """Both loaders give the recorded predictions: PEFT's own (the files are PEFT format) and load_module (the
    contract-checking one); the recorded metrics are those of these predictions."""
    import numpy as np
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from modpipe.evaluate import classification_metrics
    from modpipe.models.heads import attach_head
    from modpipe.models.modules import load_module, predict_proba

    tokenizer = AutoTokenizer.from_pretrained(world["backbone"])
    for task in world["tasks"]:
        mdir = Path(adapted["out"]["modules"][task])
        test = pq.read_table(world["tasks_dir"] / task / "test.parquet").to_pydict()
        recorded = pq.read_table(mdir / "test_predictions.parquet").to_pydict()
        probs = predict_proba(load_module(world["backbone"], mdir), tokenizer, test["text"], 64, 16)
        preds = probs.argmax(-1).tolist()
        assert recorded["id"] == test["id"] and recorded["pred_id"] == preds
        np.testing.assert_allclose(probs, np.array(recorded["probs"]), atol=1e-6)
        m = json.loads((mdir / "metrics.json").read_text())
        expected = classification_metrics(test["label_id"], preds, prefix="test_", probs=probs)
        for k in ("test_accuracy", "test_macro_f1", "test_auroc_ovr", "test_ece"):
            assert m[k] == pytest.approx(expected[k], abs=1e-6), k
        weights = load_file(str(mdir / "adapter_model.safetensors"))
        if m["method"] == "bottleneck":  # up-projections start at zero: non-zero means the adapters trained
            assert any(v.abs().sum() > 0 for k, v in weights.items() if k.endswith("up.weight"))
            continue
        manifest = json.loads((mdir / "module.json").read_text())
        labels = manifest["labels"]
        base = AutoModelForSequenceClassification.from_pretrained(world["backbone"], num_labels=len(labels))
        attach_head(base, manifest["module"]["head"], len(labels))  # the one modpipe call: the head's shape
        model = PeftModel.from_pretrained(base, str(mdir)).eval()
        peft_preds = []
        with torch.no_grad():
            for i in range(0, len(test["text"]), 16):  # the module's recorded batch size
                enc = tokenizer(test["text"][i:i + 16], truncation=True, max_length=64, padding=True,
                                return_tensors="pt")
                peft_preds += model(**enc).logits.argmax(-1).tolist()
        assert peft_preds == preds
        # LoRA B starts at zero: non-zero B means the adapter really trained
        lora_b = [v for k, v in weights.items() if "lora_B" in k]
        assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
        assert any("score" in k for k in weights)


@pytest.mark.slow
def test_step_entry_reuses_module_dirs_and_writes_modules_json(adapted, world, tmp_path):
    """``adapt.run`` (the executor's entry) behind a passing gate: the modules the library call trained are reused
    as they are (a task's dir depends on its own job only), listed in the step dir's modules.json."""
    from modpipe import adapt

    first = adapted["out"]
    provenance = {t: (Path(d) / "provenance.json").read_text() for t, d in first["modules"].items()}
    ctx = step_ctx(tmp_path, "adapt", world["backbone"], world["tasks_dir"])
    again = adapt.run(adapted["rerun_cfg"], ctx)
    assert again["modules"] == first["modules"] and again["metrics"] == first["metrics"] and not again["failed"]
    assert {t: (Path(d) / "provenance.json").read_text() for t, d in again["modules"].items()} == provenance
    assert json.loads((ctx.out / "modules.json").read_text())["modules"] == first["modules"]
    assert again["modules_json"] == str(ctx.out / "modules.json")


@pytest.mark.slow
def test_one_task_on_two_ddp_workers(world, ray_local):
    """world size 2: DDP over gloo, rows and val predictions split over the ranks and gathered."""
    from modpipe import adapt

    cfg = adapt_cfg(world["root"] / "run-ddp", ["doc_kind"], num_workers_per_task=2, epochs=1)
    out = adapt.train_tasks(cfg, str(world["backbone"]), str(world["tasks_dir"]))
    m = json.loads(Path(out["metrics"]["doc_kind"]).read_text())
    assert m["world_size"] == 2 and m["n_val"] == 15 and m["n_test"] == 24
    assert 0.0 <= m["val_accuracy"] <= 1.0
    # val accuracy covers every val row exactly once: it is a multiple of 1/15
    assert round(m["val_accuracy"] * 15, 6) == int(round(m["val_accuracy"] * 15))
    # the world size changes the global batch, so it is part of the module's fingerprint
    from modpipe.adapt.data import load_task
    from modpipe.adapt.job import Scaling, make_job, task_fingerprint
    from modpipe.models.fingerprint import read_backbone_fingerprint

    task, bfp = load_task(world["tasks_dir"], "doc_kind"), read_backbone_fingerprint(world["backbone"])
    one = adapt_cfg(world["root"] / "run-ddp", ["doc_kind"], num_workers_per_task=1, epochs=1)
    fp_two, fp_one = (task_fingerprint(make_job(c, task, world["backbone"]), Scaling.of(c.adapt), bfp, task.digests)
                      for c in (cfg, one))
    assert Path(out["modules"]["doc_kind"]).name == f"doc_kind-{fp_two}" and fp_one != fp_two


@pytest.mark.slow
def test_rerun_of_a_ray_run_resumes_from_its_latest_epoch(world, ray_local):
    """Same Ray run name again: Train V2 hands the worker its latest checkpoint (adapter + optimizer + state)
    and only the remaining epochs train."""
    from modpipe.adapt.data import load_task
    from modpipe.adapt.job import Scaling, make_job
    from modpipe.adapt.loop import STATE_FILE
    from modpipe.adapt.trainer import make_trainer

    cfg = adapt_cfg(world["root"] / "run-resume", ["doc_module"])
    task = load_task(world["tasks_dir"], "doc_module")
    storage = str(cfg.run_path / "adapt" / "ray")
    job, scaling = make_job(cfg, task, world["backbone"]), Scaling.of(cfg.adapt)
    first = make_trainer(job.model_copy(update={"epochs": 1}), scaling, "resume-me", storage, 0).fit()
    assert [m["epoch"] for _, m in first.best_checkpoints] == [1]
    second = make_trainer(job.model_copy(update={"epochs": 2}), scaling, "resume-me", storage, 0).fit()
    assert [m["epoch"] for _, m in second.best_checkpoints] == [1, 2]
    with second.checkpoint.as_directory() as d:
        state = json.loads(Path(d, STATE_FILE).read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    # epoch 2 ran in a new worker process, yet it continued the first run's state (its start time)
    assert state["started_at"] == first.best_checkpoints[0][1]["started_at"]
    assert second.best_checkpoints[1][1]["reported_at"] > first.best_checkpoints[0][1]["reported_at"]


# ---------------------------------------------------------------- scheduling: resources, waves, retries


def test_scheduler_keeps_within_capacity_runs_in_waves_and_retries(ray_local, tmp_path):
    import ray

    from modpipe.adapt.schedule import Job, capacity, run_jobs

    # defined here so Ray pickles it by value (test modules are not importable in Ray workers)
    def _timed_job(marker_dir: str, key: str, fail_times: int, seconds: float) -> dict:
        """A Ray task standing in for one trainer's driver: sleeps, and fails its first ``fail_times`` attempts."""
        import time

        marker = Path(marker_dir) / key
        tries = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(tries + 1))
        start = time.time()
        time.sleep(seconds)
        if key == "crash":
            raise RuntimeError("the trainer's driver crashed")
        if tries < fail_times:
            return {"error": f"deliberate failure {tries + 1}"}
        return {"start": start, "end": time.time()}

    free, total = capacity()
    assert total["CPU"] == 2 and 0 < free["CPU"] <= 2
    remote = ray.remote(num_cpus=0, max_retries=0)(_timed_job)
    jobs = [Job("ok1", {"CPU": 1.0}, ("ok1", 0)), Job("flaky", {"CPU": 1.0}, ("flaky", 1)),
            Job("ok2", {"CPU": 1.0}, ("ok2", 0)), Job("hopeless", {"CPU": 1.0}, ("hopeless", 9)),
            Job("crash", {"CPU": 1.0}, ("crash", 0)), Job("huge", {"CPU": 3.0, "GPU": 1.0}, ("huge", 0))]
    sched = run_jobs(jobs, lambda p: remote.remote(str(tmp_path), p[0], p[1], 0.3), retries=1,
                     free={"CPU": 2.0}, total={"CPU": 2.0})
    r = sched.results
    assert r["huge"]["attempts"] == 0 and "whole Ray cluster" in r["huge"]["error"]  # never waited for
    assert not (tmp_path / "huge").exists()
    assert "error" not in r["ok1"] and "error" not in r["ok2"] and r["ok1"]["attempts"] == 1
    assert "error" not in r["flaky"] and r["flaky"]["attempts"] == 2 and r["flaky"]["errors"] == [
        "deliberate failure 1"]
    assert r["hopeless"]["attempts"] == 2 and "(failed 2 time(s))" in r["hopeless"]["error"]
    assert r["crash"]["attempts"] == 2 and "the trainer's driver crashed" in r["crash"]["error"]
    # never more than the 2 CPUs held at once: 5 jobs + 3 retries = 8 launches, in waves
    assert sched.peak_in_use == {"CPU": 2.0}
    assert all(held["CPU"] <= 2.0 for _, _, held in sched.launches) and len(sched.launches) == 8
    spans = [(r[k]["start"], r[k]["end"]) for k in ("ok1", "ok2", "flaky")]
    for t in [s for s, _ in spans]:
        assert sum(1 for s, e in spans if s <= t < e) <= 2


def test_train_fraction_is_a_seeded_label_stratified_subset():
    from modpipe.adapt.data import Split, stratified_subset

    labels = [0] * 50 + [1] * 10 + [2] * 2
    split = Split([str(i) for i in range(62)], [f"t{i}" for i in range(62)], labels)
    sub = stratified_subset(split, 0.1, seed=0)
    assert [sub.label_ids.count(c) for c in (0, 1, 2)] == [5, 1, 1]  # ceil(10%), at least one per label
    assert sub.ids == sorted(sub.ids, key=int)  # file order kept
    assert stratified_subset(split, 0.1, seed=0).ids == sub.ids != stratified_subset(split, 0.1, seed=1).ids
    assert stratified_subset(split, 1.0, seed=0) is split
