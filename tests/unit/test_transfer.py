"""Transfer evaluation: the runner (task x method x train fraction through the real adapt stage), the router rows,
the HTML report with its sample-efficiency PNG, and the py3langid baseline on real translated manual pages."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_adapt import adapt_cfg, step_ctx
from test_compose import shared_world

MAN = Path("/usr/share/man")


def test_plan_and_gaps_to_full_fine_tuning(tmp_path):
    from modpipe.evaluate.transfer import add_gaps, plan

    cfg = adapt_cfg(tmp_path, ["t"], **{"method": "lora"})
    cfg = cfg.model_validate({**cfg.model_dump(mode="json"), "transfer": {
        "methods": ["lora", "ia3", "full"], "curve_methods": ["lora", "full"], "fractions": [1.0, 0.1, 0.01]}})
    assert plan(cfg) == [("lora", 1.0), ("ia3", 1.0), ("full", 1.0), ("lora", 0.01), ("lora", 0.1),
                         ("full", 0.01), ("full", 0.1)]
    rows = [{"task": "t", "method": "full", "train_fraction": 1.0, "test_macro_f1": 0.8},
            {"task": "t", "method": "lora", "train_fraction": 1.0, "test_macro_f1": 0.795},
            {"task": "t", "method": "lora", "train_fraction": 0.1, "test_macro_f1": 0.5},
            {"task": "t", "method": "ia3", "train_fraction": 1.0, "error": "boom"}]
    add_gaps(rows, "test_macro_f1")
    assert [r["gap_to_full"] for r in rows] == [0.0, -0.5, None, None]  # no full run at 10%: no gap


def _fake_translated_task(tasks_dir: Path, langs: list[str], per_lang: int = 6) -> Path:
    """A man_language-like task from real translated pages of this machine (text = stripped page)."""
    from modpipe.curate.normalize import normalize
    from modpipe.curate.troff import strip_troff

    rows = []
    for label_id, lang in enumerate(langs):
        pages = sorted((MAN / lang).glob("man*/*.gz"))
        random.Random(0).shuffle(pages)
        got = 0
        for p in pages:
            if p.is_symlink() or got == per_lang:
                continue
            text = normalize(strip_troff(gzip.open(p).read().decode("utf-8", "replace")))[:2000]
            if len(text) > 300:
                rows.append((f"{lang}/{p.name}", text, lang, label_id))
                got += 1
    d = tasks_dir / "man_language"
    d.mkdir(parents=True)
    for split, part in (("train", rows[0::3]), ("val", rows[1::3]), ("test", rows[2::3])):
        pq.write_table(pa.table({"id": [r[0] for r in part], "text": [r[1] for r in part],
                                 "label": [r[2] for r in part], "label_id": pa.array([r[3] for r in part], pa.int64())}),
                       d / f"{split}.parquet")
    (d / "labels.json").write_text(json.dumps(langs))
    return d


@pytest.mark.skipif(not all((MAN / lang).is_dir() for lang in ("de", "fr", "pt", "pt_BR")),
                    reason="translated man pages not installed")
def test_langid_baseline_on_translated_pages(tmp_path):
    from modpipe.evaluate.langid_baseline import evaluate, iso_code

    assert [iso_code(x) for x in ("pt_BR", "sr@latin", "zh_CN.UTF-8", "de")] == ["pt", "sr", "zh", "de"]
    task_dir = _fake_translated_task(tmp_path, ["de", "fr", "pt", "pt_BR"])
    r = evaluate(task_dir)
    assert r["shared_codes"] == {"pt": ["pt", "pt_BR"]} and r["unmapped_labels"] == []
    test = pq.read_table(task_dir / "test.parquet").to_pydict()
    assert r["n_test"] == len(test["id"]) and r["trainable_params"] == 0
    # German and French pages are told apart; pt / pt_BR share one code, so at most one of them is ever right
    assert r["test_accuracy"] >= 0.5 and 0.0 <= r["test_ece"] <= 1.0 and 0.5 <= r["test_auroc_ovr"] <= 1.0


@pytest.mark.slow
def test_transfer_runner_report_and_curve(tmp_path_factory, ray_local):
    from modpipe.evaluate import transfer

    world = shared_world(tmp_path_factory)
    base = adapt_cfg(world["root"] / "run", ["doc_module", "doc_kind"], epochs=1)  # the world's LoRA config
    cfg = base.model_validate({**base.model_dump(mode="json"), "transfer": {
        "methods": ["lora", "full"], "curve_methods": ["lora", "full"], "fractions": [0.5, 1.0],
        "tasks": ["doc_kind"], "router": True, "router_epochs": 5, "langid_task": "man_language"}})
    from modpipe.baseline import compute

    classical = json.loads(Path(compute(cfg, world["tasks_dir"], world["root"] / "classical")["baselines"]).read_text())
    shift = {"tasks": {"doc_kind": {"perplexity": 12.5, "perplexity_ratio": 1.8, "js_divergence": 0.21}}}
    out = transfer.evaluate(cfg, str(world["backbone"]), str(world["tasks_dir"]), world["root"] / "transfer-out",
                            classical=classical, shift=shift)
    assert out["dir"] == str(world["root"] / "transfer-out")
    # the baseline step's classical baselines beside the modules, on the same test split
    tfidf = classical["doc_kind"]["tfidf_lr"]["test_macro_f1"]
    classical_rows = {r["method"]: r for r in out["rows"] if r["method"] in ("majority", "tfidf_lr")}
    assert set(classical_rows) == {"majority", "tfidf_lr"} and classical_rows["tfidf_lr"]["test_macro_f1"] == tfidf
    out["rows"] = [r for r in out["rows"] if r["method"] not in classical_rows]
    for r in out["rows"]:
        assert r["vs_tfidf"] == pytest.approx(100 * (r["test_macro_f1"] - tfidf), abs=0.01)
        assert r["below_baseline"] == (r["test_macro_f1"] < tfidf)
        assert "test_max_slice_gap" in r
    rows = out["rows"]
    trained = {(r["task"], r["method"], r["train_fraction"]): r for r in rows if r["method"] != "router"}
    assert set(trained) == {("doc_kind", m, f) for m in ("lora", "full") for f in (0.5, 1.0)}
    assert all("error" not in r for r in rows), [r.get("error") for r in rows]
    for (task, method, fraction), r in trained.items():
        assert r["n_train"] == (60 if fraction == 1.0 else pytest.approx(30, abs=3))
        assert 0.0 <= r["test_macro_f1"] <= 1.0 and r["train_seconds"] > 0 and r["module"]
        full = trained[(task, "full", fraction)]
        assert r["gap_to_full"] == pytest.approx(100 * (r["test_macro_f1"] - full["test_macro_f1"]), abs=0.01)
        assert (r["trainable_pct"] > 90) == (method == "full")
    # the LoRA modules at 100% are the ones the adapt stage had already trained: reused, not retrained
    assert trained[("doc_kind", "lora", 1.0)]["module"] == world["modules"]["doc_kind"]
    # one task: no other task's module to route over (test_compose trains the router on the world's modules)
    assert not [r for r in rows if r["method"] == "router"]
    results = json.loads(Path(out["results"]).read_text())
    assert results["routing"] == {} and results["baselines"] == {}  # man_language not among the tasks
    page = Path(out["report"]).read_text()
    assert "Task x method" in page and "curve.png" in page and "doc_kind" in page
    assert "Domain shift" in page and "1.8" in page and "vs_tfidf" in page
    grads = sorted(p.name for p in Path(out["dir"]).glob("grad-*.png"))
    assert grads and all(g in page for g in grads) and "Gradient flow" in page
    png = Path(out["curve"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_step_refuses_data_whose_contracts_failed(tmp_path):
    from modpipe.evaluate import transfer
    from modpipe.gates import GateError

    ctx = step_ctx(tmp_path, "transfer", tmp_path / "backbone", tmp_path / "tasks", "failed")
    cfg = adapt_cfg(tmp_path / "run", ["t"])
    with pytest.raises(GateError, match="contracts failed"):
        transfer.run(cfg, ctx)
    assert not list(ctx.out.iterdir()) and not cfg.run_path.exists()
