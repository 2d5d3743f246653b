"""User-defined tasks from files (``tasks.specs[].source: files``): JSONL / Parquet / CSV through the corpus's
hardened readers, bad rows quarantined with file and row, given or hash splits, unusable tasks failing on their own.

The examples are real text from this machine: the standard library's Python source files, labelled by package."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modpipe.config import ConfigError, load_config
from modpipe.curate import readers
from modpipe.curate import tasks as tk
from modpipe.curate.normalize import normalize

PACKAGES = ("asyncio", "email", "importlib", "json", "unittest", "xml")


def stdlib_examples(per_package: int = 12, chars: int = 1500) -> list[dict]:
    """Python source files of a few stdlib packages: {id, text, label} (text: the file's first ``chars``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for pkg in PACKAGES:
        files = sorted(p for p in (root / pkg).rglob("*.py") if "test" not in p.parts and p.stat().st_size > 400)
        for p in files[:per_package]:
            out.append({"id": f"{pkg}/{p.relative_to(root / pkg)}", "text": p.read_text(errors="replace")[:chars],
                        "label": pkg})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg_with(tmp_path: Path, *specs: str, extra: tuple[str, ...] = ()):
    return load_config(None, [f"run_dir={tmp_path / 'run'}", "tasks.min_examples_per_label=4",
                              "tasks.min_chars=20", f"tasks.specs=[{', '.join(specs)}]", *extra])


def test_a_jsonl_task_is_split_by_hash_and_its_bad_rows_are_quarantined(tmp_path):
    rows = stdlib_examples()
    bad = [{"id": "no-label", "text": "some text long enough to count as an example"},
           {"id": "list-label", "text": "another text long enough to count as an example", "label": ["a", "b"]},
           {"id": "blank-label", "text": "a third text long enough to count as an example", "label": "  "}]
    path = write_jsonl(tmp_path / "code.jsonl", rows[:10] + bad + rows[10:])
    raw_before = path.read_bytes()
    cfg = cfg_with(tmp_path, f"{{name: code_pkg, source: files, path: '{path}'}}")
    built = tk.build_all([], cfg, "files")
    assert built.failed == {}
    task = built.tasks[0]
    assert task.name == "code_pkg" and task.labels == sorted(PACKAGES)
    n = sum(len(s) for s in task.splits.values())
    assert n == len({r["text"].strip() for r in rows})  # every good row, deduplicated by text
    for split in tk.SPLITS:  # stratified: every label in every split
        assert {r["label"] for r in task.splits[split]} == set(PACKAGES), split
    keys = {s: {r["key"] for r in task.splits[s]} for s in tk.SPLITS}
    assert not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    reasons = {(r["line"], r["reason"]) for r in built.rejects}
    assert reasons == {(11, "missing_label"), (12, "bad_label"), (13, "missing_label")}
    assert all(r["source"] == str(path) and r["task"] == "code_pkg" for r in built.rejects)
    assert path.read_bytes() == raw_before  # the raw input is never changed


def test_a_parquet_task_keeps_its_given_splits_and_quarantines_unknown_ones(tmp_path):
    rows = stdlib_examples()
    for i, r in enumerate(rows):
        r["part"] = ("test", "val", "train", "train", "train")[i % 5]
    rows[3]["part"] = "holdout"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "code.parquet")
    cfg = cfg_with(tmp_path, f"{{name: given, source: files, path: '{tmp_path / 'code.parquet'}', "
                             f"split_field: part}}")
    built = tk.build_all([], cfg, "files")
    task = built.tasks[0]
    by_id = {r["id"]: s for s in tk.SPLITS for r in task.splits[s]}
    expect = {r["id"]: r["part"] for r in rows if r["part"] != "holdout"}
    assert by_id == {k: v for k, v in expect.items() if k in by_id} and len(by_id) >= len(expect) - 2
    assert [(r["line"], r["reason"]) for r in built.rejects] == [(4, "bad_split")]


def test_a_csv_task_reads_quoted_multiline_fields(tmp_path):
    import csv

    rows = stdlib_examples(per_package=6)
    with open(tmp_path / "code.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "category"])
        for r in rows:
            w.writerow([r["text"], r["label"]])  # source code: commas, quotes and newlines inside fields
    cfg = cfg_with(tmp_path, f"{{name: csv_task, source: files, path: '{tmp_path / 'code.csv'}', "
                             f"label_field: category}}")
    task = tk.build_all([], cfg, "files").tasks[0]
    texts = {r["text"] for s in task.splits.values() for r in s}
    assert {normalize(r["text"]).strip() for r in rows} == texts  # every field read whole
    assert task.labels == sorted(PACKAGES)


def test_csv_reader_names_the_line_of_each_bad_record(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'id,text,label\n1,"hello, world",a\n2,"two\nlines",b\n3,short\n\n4,\xff\xfe,a\n5,fine,b\n')
    got = list(readers.read_file(path, extra_fields=("label",)))
    assert [(r.get("id"), r["line"], r.get("reason")) for r in got] == [
        ("1", 2, None), ("2", 3, None), (None, 5, "bad_row"), (None, 7, "invalid_utf8"), ("5", 8, None)]
    assert got[1]["text"] == "two\nlines" and got[0]["label"] == "a"
    (tmp_path / "h.csv").write_text("a,b\n1,2\n")
    assert [r["reason"] for r in readers.read_file(tmp_path / "h.csv")] == ["missing_column"]
    (tmp_path / "e.csv").write_text("text,label\n")
    assert [r["reason"] for r in readers.read_file(tmp_path / "e.csv")] == ["empty_file"]


def test_an_unusable_task_fails_on_its_own(tmp_path):
    rows = stdlib_examples()
    one = write_jsonl(tmp_path / "one.jsonl", [{**r, "label": "same"} for r in rows])
    good = write_jsonl(tmp_path / "good.jsonl", rows)
    cfg = cfg_with(tmp_path, f"{{name: one_label, source: files, path: '{one}'}}",
                   f"{{name: fine, source: files, path: '{good}'}}")
    built = tk.build_all([], cfg, "files")
    assert [t.name for t in built.tasks] == ["fine"]
    assert "one_label" in built.failed and "a classifier needs two" in built.failed["one_label"]
    assert "'same': " in built.failed["one_label"]  # says what it found


def test_a_files_task_needs_a_path_and_kind_is_the_old_name_of_source(tmp_path):
    with pytest.raises(ConfigError, match="needs a path"):
        cfg_with(tmp_path, "{name: t, source: files}")
    with pytest.raises(ConfigError, match="only for source 'files'"):
        cfg_with(tmp_path, "{name: t, source: man_section, path: x.jsonl}")
    with pytest.raises(ConfigError, match="problem"):
        cfg_with(tmp_path, "{name: t, source: files, path: x.jsonl, problem: ranking}")
    assert cfg_with(tmp_path, "{name: t, kind: man_section}").tasks.specs[0].source == "man_section"
    for bad in ("['a<b']", "[id]", "[x, x]"):  # a slice field names a registry metric: MLflow's characters only
        with pytest.raises(ConfigError, match="slice_fields"):
            cfg_with(tmp_path, f"{{name: t, source: files, path: x.jsonl, slice_fields: {bad}}}")
