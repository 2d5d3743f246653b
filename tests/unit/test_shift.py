"""The shift step: JS divergence by hand, perplexity of a tiny real backbone, shift.json from a tiny curate dir, and
its section of the run report."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from registry_world import FILLER, TINY, WORDS, make_backbone, make_task, make_tokenizer

SEQ_LEN = 32


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the models are tiny, and two threads on a busy 2-core machine mostly wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.sample(list(WORDS.values())[i % 2], 2) + rng.sample(FILLER, 4)
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def test_js_divergence_matches_a_hand_computation():
    from scipy.spatial.distance import jensenshannon

    from modpipe.evaluate.shift import js_divergence

    assert js_divergence([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-12)  # counts: the same distribution
    assert js_divergence([1, 1, 0, 0], [0, 0, 5, 1]) == pytest.approx(1.0)  # disjoint supports
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4); KL(p||m) = log2(4/3); KL(q||m) = (log2(2/3) + log2(2)) / 2
    hand = 0.5 * math.log2(4 / 3) + 0.5 * 0.5 * (math.log2(2 / 3) + 1.0)
    assert js_divergence([1, 0], [0.5, 0.5]) == pytest.approx(hand)
    p, q = np.array([0.1, 0.4, 0.5]), np.array([0.3, 0.3, 0.4])
    assert js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    # vectors of different lengths are padded; ignored ids are left out of both
    assert js_divergence([1, 1], [1, 1, 0]) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([9, 1, 1], [0, 1, 1], ignore=[0]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        js_divergence([0, 0], [1, 1])


def test_perplexity_of_a_tiny_backbone_is_lower_on_its_own_text_than_on_random_tokens(tmp_path):
    import torch
    from tokenizers import Tokenizer

    from modpipe.curate.shards import pack
    from modpipe.evaluate.shift import perplexity
    from modpipe.models.backbone import EOS_ID, build_causal_lm

    tok = Tokenizer.from_file(str(make_tokenizer(tmp_path / "tok")))
    vocab = tok.get_vocab_size()
    rows = torch.from_numpy(pack([np.array(e.ids) for e in tok.encode_batch(_sentences(400, 0))], SEQ_LEN)).long()
    model = build_causal_lm(TINY, vocab, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(80):
        batch = rows[torch.randint(0, len(rows), (16,), generator=g)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    natural = [np.concatenate([[EOS_ID], e.ids]) for e in tok.encode_batch(_sentences(40, 1))]
    rng = np.random.default_rng(0)
    noise = [np.concatenate([[EOS_ID], rng.integers(3, vocab, len(s) - 1)]) for s in natural]
    nat, rnd = perplexity(model, natural), perplexity(model, noise)
    assert nat["n_tokens"] == rnd["n_tokens"] == sum(len(s) - 1 for s in natural)
    assert np.isfinite(nat["perplexity"]) and np.isfinite(rnd["perplexity"])
    assert 1.0 < nat["perplexity"] < rnd["perplexity"] / 3, (nat, rnd)
    assert nat["perplexity"] == pytest.approx(math.exp(nat["nll"]))
    # batching and padding do not change the number: one sequence at a time gives the same
    assert perplexity(model, natural, batch_size=1)["perplexity"] == pytest.approx(nat["perplexity"], rel=1e-4)


def _curate_dir(root: Path) -> Path:
    """manifest.json + two token shards (the shard writer's own format) + tokenizer + one task, like curate's."""
    from tokenizers import Tokenizer

    from modpipe.curate.shards import pack, write_manifest, write_shard
    from modpipe.lineage import sha256_file

    tok_path = make_tokenizer(root / "tokenizer")
    tok = Tokenizer.from_file(str(tok_path))
    (root / "shards").mkdir(parents=True)
    shards = []
    for i in range(2):
        rows = pack([np.array(e.ids) for e in tok.encode_batch(_sentences(120, 10 + i))], SEQ_LEN)
        path = root / "shards" / f"shard-{i:05d}-000.parquet"
        write_shard(rows, path, rows_per_row_group=16)
        shards.append({"path": f"shards/{path.name}", "rows": len(rows), "tokens": int(rows.size),
                       "sha256": sha256_file(path)})
    make_task(root / "tasks")
    write_manifest(root / "manifest.json", seq_len=SEQ_LEN, vocab_size=tok.get_vocab_size(),
                   tokenizer_rel="tokenizer/tokenizer.json", tokenizer_sha=sha256_file(tok_path), shards=shards,
                   tasks={})
    return root


def _ctx(curate: Path, backbone: Path, out: Path, contracts: bool = True, **pretrain_out):
    from modpipe.executor import StepResult

    inputs = {"curate": StepResult("curate", "c1", curate, "succeeded", {}, {
                  "manifest": str(curate / "manifest.json"), "tasks_dir": str(curate / "tasks")}),
              "pretrain": StepResult("pretrain", "p1", backbone, "succeeded", {},
                                     {"backbone": str(backbone), **pretrain_out})}
    if contracts:
        inputs["contracts"] = StepResult("contracts", "k1", curate, "succeeded", {}, {"datasets": 1})
    return SimpleNamespace(step="shift", out=out, inputs=inputs)


def test_step_writes_shift_json_from_a_curate_dir(tmp_path, monkeypatch):
    from modpipe import gates
    from modpipe.config import PipelineConfig
    from modpipe.evaluate import shift

    curate = _curate_dir(tmp_path / "curate")
    backbone = make_backbone(tmp_path / "backbone", curate / "tokenizer" / "tokenizer.json")
    cfg = PipelineConfig()
    with pytest.raises(gates.GateError, match="no data-contract record"):  # the gate holds, nothing written
        shift.run(cfg, _ctx(curate, backbone, tmp_path / "refused", contracts=False))
    assert not (tmp_path / "refused").exists()

    monkeypatch.setattr(gates, "require_contracts", lambda ctx: None)  # a contracts record: test_executor's part
    out = shift.run(cfg, _ctx(curate, backbone, tmp_path / "out"))
    assert out == {"shift": str(tmp_path / "out" / "shift.json")}
    data = json.loads(Path(out["shift"]).read_text())
    manifest = json.loads((curate / "manifest.json").read_text())
    ref = data["reference"]
    assert ref["shard"] == manifest["shards"][-1]["path"] and ref["sha256"] == manifest["shards"][-1]["sha256"]
    assert ref["held_out"] is False and ref["n_rows"] == min(shift.REFERENCE_ROWS, manifest["shards"][-1]["rows"])
    assert ref["n_tokens"] == ref["n_rows"] * (SEQ_LEN - 1) and np.isfinite(ref["perplexity"])
    assert data["corpus"]["tokens"] == manifest["total_tokens"] and data["split"] == "test"
    t = data["tasks"]["toy"]
    assert set(t) >= {"perplexity", "perplexity_ratio", "js_divergence", "n_texts", "n_tokens"}
    assert t["n_texts"] == 40 and t["n_tokens"] > 0 and 0.0 <= t["js_divergence"] <= 1.0
    assert t["perplexity_ratio"] == pytest.approx(t["perplexity"] / ref["perplexity"])
    # deterministic: the same inputs give the same file
    shift.run(cfg, _ctx(curate, backbone, tmp_path / "again"))
    assert (tmp_path / "again" / "shift.json").read_text() == Path(out["shift"]).read_text()

    # a held-out shard named by pretrain is the reference, flagged as held out; a bounded task sample
    heldout = curate / "shards" / "shard-00000-000.parquet"
    out2 = shift.compute(curate / "manifest.json", curate / "tasks", backbone, tmp_path / "held", seed=0,
                         heldout=str(heldout), max_texts=8, reference_rows=4)
    data2 = json.loads(Path(out2["shift"]).read_text())
    assert data2["reference"]["held_out"] is True and data2["reference"]["shard"] == "shards/shard-00000-000.parquet"
    assert data2["reference"]["n_rows"] == 4 and data2["tasks"]["toy"]["n_texts"] == 8


def test_report_section_shows_perplexity_js_and_the_gain_over_the_baseline(tmp_path):
    from modpipe.report import facts as F
    from modpipe.report import page

    path = tmp_path / "shift" / "shift-x" / "shift.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "reference": {"shard": "shards/shard-00010-000.parquet", "held_out": False, "n_rows": 64, "n_tokens": 8128,
                      "perplexity": 100.0},
        "split": "test", "seq_len": 128,
        "tasks": {"a": {"perplexity": 150.0, "perplexity_ratio": 1.5, "js_divergence": 0.2, "n_texts": 10,
                        "n_tokens": 900},
                  "b": {"perplexity": 90.0, "perplexity_ratio": 0.9, "js_divergence": 0.1, "n_texts": 10,
                        "n_tokens": 800}}}))
    modules = [{"task": "a", "test_macro_f1": 0.40, "baseline": {"test_macro_f1": 0.45, "delta": {
                    "delta": -0.05, "low": -0.08, "high": -0.02, "rows": 10, "resamples": 200}}},
               {"task": "b", "test_macro_f1": 0.70, "baseline": {"test_macro_f1": 0.60, "delta": None}}]
    s = F.shift({"shift": str(path)}, modules, F.RunPaths(tmp_path))
    rows = {r["task"]: r for r in s["rows"]}
    assert rows["a"]["gain"]["points"] == pytest.approx(-5.0) and rows["a"]["gain"]["high"] == pytest.approx(-2.0)
    assert rows["b"]["gain"]["points"] == pytest.approx(10.0) and rows["b"]["gain"]["low"] is None
    assert s["reference"]["held_out"] is False and s["file"] == "shift/shift-x/shift.json"
    html = page._shift({"shift": s})
    assert "Domain shift" in html and "not held out" in html and "below baseline" in html
    assert "-5.0 [-8.0, -2.0]" in html and "+10.0" in html and "1.500" in html
    # no shift step in the run: the section stays and says why
    assert F.shift(None, modules, F.RunPaths(tmp_path)) is None
    missing = page._shift({"shift": None, "timeline": [{"step": "curate", "state": "ran"}], "failure": None})
    assert "not computed: shift is not among this run&#x27;s steps" in missing
