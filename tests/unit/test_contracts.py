"""Contracts stage against a real Great Expectations file context, on tiny files laid out like curate's output."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modpipe.config import load_config
from modpipe.contracts import ContractViolation, SuiteError, check, validate_dataframe

SEQ_LEN, VOCAB = 8, 50
LABELS = ["alpha", "beta"]


def _tokenizer(path: Path) -> str:
    """A word-level tokenizers JSON over the fixture's words (one token per whitespace-separated word)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["document page example number with words train val test x"],
                            trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return str(path)


def run(cfg, curated: dict) -> dict:
    """The contracts check into <run_dir>/contracts (the step runs it into its step dir)."""
    return check(cfg, curated, cfg.run_path / "contracts")


def _cfg(tmp_path: Path, *extra: str):
    return load_config(overrides=[
        f"run_dir={tmp_path / 'run'}", f"curate.seq_len={SEQ_LEN}", f"curate.vocab_size={VOCAB}",
        "curate.min_chars=10", "curate.max_chars=1000", *extra,
    ])


def _task_split(prefix: str, n: int) -> pd.DataFrame:
    ids = [f"{prefix}-{i}" for i in range(n)]
    label_id = [i % 2 for i in range(n)]
    return pd.DataFrame({
        "id": ids, "text": [f"example {prefix} number {i} with words" for i in range(n)],
        "label": [LABELS[j] for j in label_id], "label_id": pd.Series(label_id, dtype="int64"),
    })


def _write_shard(path: Path, rows: list[list[int]]) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"input_ids": pa.array(rows, type=pa.list_(pa.int32()))}), path)
    return {"path": str(path.relative_to(path.parent.parent)), "rows": len(rows),
            "tokens": sum(map(len, rows)), "sha256": "0" * 64}


@pytest.fixture
def curated(tmp_path: Path) -> dict:
    """A good curate output: raw JSONL, docs parquet, two shards + manifest, one task with three splits."""
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(raw / "part-00000.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"id": f"man1/page{i}", "text": f"page {i} " * 20, "source": "man",
                                "section": "1", "language": "en" if i < 9 else "de"}) + "\n")
    cur = tmp_path / "curate"
    (cur / "docs").mkdir(parents=True)
    texts = [f"document {i} " * 10 for i in range(10)]
    pd.DataFrame({"id": [f"d{i}" for i in range(10)], "text": texts, "source": "man",
                  "n_chars": [len(t) for t in texts], "n_words": [len(t.split()) for t in texts]}
                 ).to_parquet(cur / "docs" / "docs-00000.parquet")
    shards = [_write_shard(cur / "shards" / f"shard-{k:05d}.parquet",
                           [[(r * 7 + j) % VOCAB for j in range(SEQ_LEN)] for r in range(20)]) for k in range(2)]
    tasks = cur / "tasks" / "toy"
    tasks.mkdir(parents=True)
    for split, n in (("train", 30), ("val", 6), ("test", 8)):
        _task_split(split, n).to_parquet(tasks / f"{split}.parquet")
    (tasks / "labels.json").write_text(json.dumps(LABELS))
    manifest = {"seq_len": SEQ_LEN, "vocab_size": VOCAB, "shards": shards, "total_rows": 40,
                "total_tokens": 40 * SEQ_LEN, "digest": "d" * 64, "tasks": {"toy": {"labels": LABELS}}}
    (cur / "manifest.json").write_text(json.dumps(manifest))
    return {"curate_dir": str(cur), "manifest": str(cur / "manifest.json"), "tasks_dir": str(cur / "tasks"),
            "raw_dir": str(raw), "docs_dir": str(cur / "docs"),
            "tokenizer": _tokenizer(cur / "tokenizer" / "tokenizer.json")}


def test_good_output_passes_and_builds_data_docs(tmp_path, curated):
    cfg = _cfg(tmp_path)
    out = run(cfg, curated)
    index = Path(out["data_docs"])
    assert index.name == "index.html" and index.is_file()
    assert index.is_relative_to(cfg.run_path / "contracts" / "gx")
    html = index.read_text()
    assert "tasks__toy__test" in html or "task_dataset" in html
    res = json.loads(Path(out["results"]).read_text())
    assert res["success"] is True
    by_data = {d["data"]: d for d in res["datasets"]}
    assert set(by_data) == {"raw_corpus", "curated_docs", "curated_shards", "tasks/toy/train", "tasks/toy/val",
                            "tasks/toy/test"}
    assert all(d["success"] and not d["errors"] for d in res["datasets"])
    shards = by_data["curated_shards"]
    assert shards["rows_total"] == 40
    tok = next(e for e in shards["expectations"] if e["column"] == "n_tokens")
    assert tok["kwargs"]["min_value"] == SEQ_LEN == tok["kwargs"]["max_value"]  # $PARAMETER resolved from cfg
    assert tok["observed"]["unexpected_count"] == 0 and tok["observed"]["element_count"] == 40
    labels = next(e for e in by_data["tasks/toy/train"]["expectations"]
                  if e["type"] == "expect_column_unique_value_count_to_be_between")
    assert labels["observed"]["observed_value"] == 2

    def observed(data: str, typ: str, column: str):
        e = next(e for e in by_data[data]["expectations"] if e["type"] == typ and e["column"] == column)
        return e["observed"].get("observed_value", e["observed"].get("unexpected_count"))

    # derived columns: duplicate rate, language mix, token counts, class balance
    assert observed("raw_corpus", "expect_column_unique_value_count_to_be_between", "language") == 2
    assert observed("raw_corpus", "expect_column_max_to_be_between", "language_share") == pytest.approx(9 / 12)
    assert observed("curated_docs", "expect_column_proportion_of_unique_values_to_be_between", "text_hash") == 1.0
    assert observed("curated_docs", "expect_column_values_to_be_between", "n_tokens") == 0
    assert observed("tasks/toy/train", "expect_column_min_to_be_between", "label_share") == 0.5
    assert observed("tasks/toy/test", "expect_column_values_to_be_between", "n_tokens") == 0
    # the structure the gate needs: how many datasets were checked
    assert out["datasets"] == 6 and out["counts"]["errors"] == 0


def test_duplicate_doc_id_stops_with_names(tmp_path, curated):
    docs = Path(curated["docs_dir"]) / "docs-00000.parquet"
    df = pd.read_parquet(docs)
    df.loc[3, "id"] = df.loc[4, "id"]
    df.to_parquet(docs)
    with pytest.raises(ContractViolation) as err:
        run(_cfg(tmp_path), curated)
    msg = str(err.value)
    assert "'curated_docs'" in msg and "expect_column_values_to_be_unique(column=id)" in msg
    assert curated["docs_dir"] in msg and "d4" in msg
    assert Path(err.value.data_docs).is_file() and f"Data Docs: {err.value.data_docs}" in msg
    res = json.loads(Path(err.value.results).read_text())
    assert res["success"] is False and res["counts"]["errors"] == 1


def test_wrong_token_length_and_out_of_vocab_stop(tmp_path, curated):
    shard = Path(curated["curate_dir"]) / "shards" / "shard-00001.parquet"
    rows = [[1] * SEQ_LEN for _ in range(19)] + [[1] * (SEQ_LEN - 2) + [VOCAB]]  # short; id == vocab
    rows.insert(0, [3] * (SEQ_LEN + 2))
    _write_shard(shard, rows)
    with pytest.raises(ContractViolation) as err:
        run(_cfg(tmp_path), curated)
    failed = {(f["suite"], f["column"]) for f in err.value.failures}
    assert failed == {("curated_shards", "n_tokens"), ("curated_shards", "max_token_id")}
    msg = str(err.value)
    assert "expect_column_values_to_be_between(column=n_tokens)" in msg and "2 of 41 rows unexpected" in msg
    assert str(Path(curated["curate_dir"]) / "shards") in msg


def test_overlapping_splits_stop(tmp_path, curated):
    tasks = Path(curated["tasks_dir"]) / "toy"
    train = pd.read_parquet(tasks / "train.parquet")
    test = pd.read_parquet(tasks / "test.parquet")
    test.loc[0, "text"] = "  " + train.loc[5, "text"].upper()  # same example modulo case/space -> same hash
    test.loc[1, "id"] = train.loc[6, "id"]
    test.to_parquet(tasks / "test.parquet")
    with pytest.raises(ContractViolation) as err:
        run(_cfg(tmp_path), curated)
    by_data = {(f["data"], f["column"]): f for f in err.value.failures}
    # the leak shows on both sides of the overlap
    assert set(by_data) == {("tasks/toy/test", "in_other_split"), ("tasks/toy/train", "in_other_split")}
    assert by_data[("tasks/toy/test", "in_other_split")]["observed"]["unexpected_count"] == 2
    assert by_data[("tasks/toy/test", "in_other_split")]["observed"]["unexpected_ids"] == ["test-0", "train-6"]
    assert str(tasks / "test.parquet") in str(err.value) and "(ids ['test-0', 'train-6'])" in str(err.value)


def test_validate_dataframe_severity_and_single_label(tmp_path):
    cfg = _cfg(tmp_path)
    suite = tmp_path / "mine.json"
    suite.write_text(json.dumps({"name": "mine", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}},
        {"type": "expect_column_value_lengths_to_be_between",
         "kwargs": {"column": "text", "min_value": {"$PARAMETER": "curate_min_chars"}},
         "meta": {"severity": "warning"}},
    ]}))
    df = pd.DataFrame({"id": ["a", "b"], "text": ["short", "long enough text"]})
    out = validate_dataframe(df, suite, "my/data", cfg)
    assert out["success"] is True and not out["errors"]
    assert [w["column"] for w in out["warnings"]] == ["text"]
    assert Path(out["data_docs"]).is_file()
    # a task split with one label fails the bundled suite by name
    one = _task_split("x", 4).assign(label="alpha", label_id=0, in_other_split=False, label_matches_id=True)
    with pytest.raises(ContractViolation, match=r"expect_column_unique_value_count_to_be_between\(column=label\)"):
        validate_dataframe(one, "task_dataset", "tasks/x/train", cfg, data_path="/data/x/train.parquet")


def test_unknown_parameter_is_refused(tmp_path):
    suite = tmp_path / "bad.json"
    suite.write_text(json.dumps({"name": "bad", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "n", "max_value": {"$PARAMETER": "seq_len"}}},
    ]}))
    with pytest.raises(SuiteError, match="seq_len"):
        validate_dataframe(pd.DataFrame({"n": [1]}), suite, "d", _cfg(tmp_path))


def _set_train_labels(curated: dict, alpha_share: float) -> None:
    """Relabel the toy train split so that ``alpha_share`` of it is 'alpha' (label_id kept consistent)."""
    path = Path(curated["tasks_dir"]) / "toy" / "train.parquet"
    df = pd.read_parquet(path)
    n_alpha = round(alpha_share * len(df))
    df["label_id"] = pd.Series([0] * n_alpha + [1] * (len(df) - n_alpha), dtype="int64")
    df["label"] = [LABELS[i] for i in df["label_id"]]
    df.to_parquet(path)


def test_warning_is_reported_and_does_not_stop(tmp_path, curated):
    _set_train_labels(curated, 0.9)  # above contracts.max_label_share=0.8: a warning-severity expectation
    out = run(_cfg(tmp_path), curated)
    assert len(out["warnings"]) == 1
    assert "task_dataset on tasks/toy/train" in out["warnings"][0] and "label_share" in out["warnings"][0]
    res = json.loads(Path(out["results"]).read_text())
    assert res["success"] is True and res["counts"] == {"datasets": 6, "failed": 0, "errors": 0, "warnings": 1}
    train = next(d for d in res["datasets"] if d["data"] == "tasks/toy/train")
    assert [(w["column"], w["severity"]) for w in train["warnings"]] == [("label_share", "warning")]
    assert train["warnings"][0]["observed"]["observed_value"] == pytest.approx(0.9)
    # the Data Docs page of that validation shows the failed expectation
    pages = [p for p in Path(out["data_docs"]).parent.rglob("*.html") if "task-toy-train" in str(p)]
    assert pages and any("label_share" in p.read_text() for p in pages)


def test_error_bounds_from_config_stop(tmp_path, curated):
    """Class balance, duplicate rate and token counts: bounds come from contracts.* and stop at error severity."""
    _set_train_labels(curated, 0.9)
    docs = Path(curated["docs_dir"]) / "docs-00000.parquet"
    df = pd.read_parquet(docs)
    df.loc[1, "text"] = "  " + df.loc[0, "text"].upper()  # another id, the same text modulo case and spaces
    df.to_parquet(docs)
    with pytest.raises(ContractViolation) as err:
        run(_cfg(tmp_path, "contracts.min_label_share=0.2", "contracts.min_doc_tokens=21"), curated)
    failed = {(f["data"], f["type"], f["column"]) for f in err.value.failures}
    assert failed == {
        ("tasks/toy/train", "expect_column_min_to_be_between", "label_share"),
        ("curated_docs", "expect_column_proportion_of_unique_values_to_be_between", "text_hash"),
        ("curated_docs", "expect_column_values_to_be_between", "n_tokens"),  # 20 tokens per doc < 21
    }
    assert "observed 0.9" in str(err.value) or "observed 0.1" in str(err.value)
    # the exception survives pickling (task runners ship it between processes)
    import pickle

    again = pickle.loads(pickle.dumps(err.value))
    assert again.failures == err.value.failures and again.data_docs == err.value.data_docs


def test_missing_column_fails_schema(tmp_path):
    df = pd.DataFrame({"id": ["a", "b"], "text": ["one text here", "another one"], "label_id": [0, 1]})
    with pytest.raises(ContractViolation, match=r"expect_table_columns_to_match_set"):
        validate_dataframe(df, "task_dataset", "tasks/x/train", _cfg(tmp_path), data_path="x.parquet")


def test_cli_validates_a_users_dataset(tmp_path, capsys):
    """python -m modpipe.contracts on a user's JSONL with the user's own suite: warning -> 0, error -> 1."""
    from modpipe.contracts.__main__ import main

    data = tmp_path / "reviews.jsonl"
    rows = [{"id": f"r{i}", "text": f"review number {i} is fine", "label": "pos" if i % 4 else "neg"}
            for i in range(20)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    suite = tmp_path / "reviews.json"
    suite.write_text(json.dumps({"name": "reviews", "expectations": [
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}},
        {"type": "expect_column_proportion_of_unique_values_to_be_between",
         "kwargs": {"column": "text_hash", "min_value": {"$PARAMETER": "1 - contracts_max_duplicate_rate"}}},
        {"type": "expect_column_min_to_be_between",
         "kwargs": {"column": "label_share", "min_value": {"$PARAMETER": "contracts_min_label_share"}},
         "meta": {"severity": "warning"}},
    ]}))
    base = [str(data), "--suite", str(suite), "-s", f"run_dir={tmp_path / 'run'}"]
    assert main(base + ["-s", "contracts.min_label_share=0.3"]) == 0  # neg is 25%: warning only
    out = capsys.readouterr().out
    assert "warning: expect_column_min_to_be_between(column=label_share)" in out and "ok: 20 of 20 rows" in out
    assert main(base + ["-s", "contracts.min_label_share=0.3", "-s", "contracts.max_duplicate_rate=0"]) == 0
    with open(data, "a") as f:
        f.write("\n" + json.dumps({**rows[0], "id": "r-copy"}))
    assert main(base) == 1
    assert "text_hash" in capsys.readouterr().err


@pytest.fixture(scope="module")
def prefect_api():
    """A real temporary Prefect server (SQLite) for the flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _artifact(key: str):
    from prefect.artifacts import Artifact

    return Artifact.get(key, _sync=True)


def test_missing_or_empty_data_is_an_error_not_a_pass(tmp_path, curated):
    """Fail closed: a curate output without docs, or with an empty split, does not pass its contracts."""
    import shutil

    shutil.rmtree(Path(curated["curate_dir"]) / "docs")
    with pytest.raises(ContractViolation, match="docs_dir absent from the curate output"):
        run(_cfg(tmp_path), curated)
    empty = _task_split("test", 0)
    empty.to_parquet(Path(curated["tasks_dir"]) / "toy" / "test.parquet")
    with pytest.raises(ContractViolation, match=r"tasks/toy/test .*empty"):
        run(_cfg(tmp_path, f"run_dir={tmp_path / 'run2'}"), curated)


@pytest.mark.slow  # a real Prefect server starts (10-35 s on 2 cores)
def test_contract_artifacts_warning_passes_error_stops(prefect_api, tmp_path, curated):
    """The flows publish a Data Docs link and a failed-expectation table; an error fails, a warning does not."""
    from flows.artifacts import artifact_key, contract_artifacts, curate_artifacts

    _set_train_labels(curated, 0.9)
    ok_run = [f"run_dir={tmp_path / 'ok'}", f"curate.seq_len={SEQ_LEN}", f"curate.vocab_size={VOCAB}",
              "curate.min_chars=10", "curate.max_chars=1000"]
    cfg = load_config(overrides=ok_run)
    checked = run(cfg, curated)
    contract_artifacts(cfg, checked["data_docs"], checked["results"])
    assert Path(checked["data_docs"]).is_file() and len(checked["warnings"]) == 1
    link = _artifact(artifact_key(cfg, "data-docs"))
    assert link.type == "markdown"  # Prefect stores a link artifact as markdown [text](uri)
    assert Path(checked["data_docs"]).resolve().as_uri() in link.data and "1 warning(s)" in link.description
    table = _artifact(artifact_key(cfg, "contract-failures"))
    rows = json.loads(table.data)
    assert [(r["severity"], r["data"]) for r in rows] == [("warning", "tasks/toy/train")]

    bad_run = [*ok_run[1:], f"run_dir={tmp_path / 'bad'}", "contracts.min_label_share=0.2"]
    cfg = load_config(overrides=bad_run)
    with pytest.raises(ContractViolation, match="label_share") as err:
        run(cfg, curated)
    contract_artifacts(cfg, err.value.data_docs, err.value.results)
    assert "1 error(s)" in _artifact(artifact_key(cfg, "data-docs")).description
    rows = json.loads(_artifact(artifact_key(cfg, "contract-failures")).data)
    assert {r["severity"] for r in rows} == {"error", "warning"}

    # curate's per-step counts (stats.json "steps") as a table artifact
    stats = tmp_path / "stats.json"
    steps = [{"name": "dedup_exact", "in": 10, "out": 8, "removed": 2, "removed_by_reason": {"duplicate": 2}},
             {"name": "gopher_quality", "in": 8, "out": 7, "removed": 1}]
    stats.write_text(json.dumps({"steps": steps, "docs": 7}))
    curate_artifacts(cfg, {"stats": str(stats)})
    rows = json.loads(_artifact(artifact_key(cfg, "curate-counts")).data)
    assert [(r["name"], r["in"], r["out"], r["removed"]) for r in rows] == [("dedup_exact", 10, 8, 2),
                                                                         ("gopher_quality", 8, 7, 1)]
