"""Contracts stage against a real Great Expectations file context, on tiny files laid out like curate's output."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modpipe.config import load_config
from modpipe.contracts import ContractViolation, SuiteError, run, validate_dataframe

SEQ_LEN, VOCAB = 8, 50
LABELS = ["alpha", "beta"]


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
    with open(raw / "man1.jsonl", "w") as f:
        for i in range(12):
            f.write(json.dumps({"id": f"man1/page{i}", "text": f"page {i} " * 20, "source": "man",
                                "section": "1", "language": "en"}) + "\n")
    cur = tmp_path / "curate"
    (cur / "docs").mkdir(parents=True)
    texts = [f"document {i} " * 5 for i in range(10)]
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
            "raw_dir": str(raw), "docs_dir": str(cur / "docs")}


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
    # same inputs, passed before: reused without revalidating
    again = run(cfg, curated)
    assert again == out


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
