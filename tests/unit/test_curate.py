"""Curate stage on a small real slice of /usr/share/man (and on user files with bad input)."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from modpipe.config import load_config
from modpipe.curate import harvest as hv
from modpipe.curate import tasks as tk
from modpipe.curate.normalize import apply_steps, normalize, text_key
from modpipe.curate.troff import strip_troff
from modpipe.lineage import sha256_file
from prose_corpus import prose

MAN = Path("/usr/share/man")
needs_man = pytest.mark.skipif(not (MAN / "man1").is_dir(), reason="no /usr/share/man on this machine")

SMALL = [
    "corpus.sections=[1,5,8]", "corpus.max_docs_per_section=15", "corpus.max_docs_per_language=10",
    "corpus.min_docs_per_language=5", "corpus.min_pages=10", "tasks.min_examples_per_label=5",
    "curate.vocab_size=400", "curate.seq_len=64", "curate.rows_per_shard=200",
]


def small_cfg(run_dir: Path, *extra: str):
    return load_config(None, [f"run_dir={run_dir}", *SMALL, *extra])


# --- troff ------------------------------------------------------------------------------------------------------


@needs_man
def test_strip_troff_real_page():
    page = MAN / "man1" / "ls.1.gz"
    if not page.is_file():
        pytest.skip("ls.1.gz not installed")
    text = strip_troff(gzip.open(page).read().decode("utf-8"))
    assert "ls - list directory contents" in text
    assert "-a, --all" in text and "do not ignore entries starting with ." in text
    for markup in ("\\f", "\\-", ".TH", ".SH", ".TP", '.\\"'):
        assert markup not in text
    assert "User Commands" not in text  # .TH (which names the section) is dropped


def test_strip_troff_constructs():
    src = "\n".join([
        '.\\" a comment',
        ".de XX",
        "macro body that must not appear",
        "..",
        '.ds Qx quoted\\(em string',
        ".TH FOO 8 2024",
        ".SH \"SEE ALSO\"",
        ".BR foo (1),",
        "\\fIbar\\fP \\*(Qx",
        ".ie n nroff\\ branch",
        ".el troff branch",
        ".if t \\{\\",
        "hidden block",
        ".\\}",
        "caf\\['e] \\(co \\[u00FC]ber x\\-y \\e",
        ".Nm ssh",
        ".Fl v Ar host",
        ".Xr ssh_config 5",
    ])
    text = strip_troff(src)
    assert "macro body" not in text and "a comment" not in text and "hidden block" not in text
    assert "troff branch" not in text and "nroff branch" in text
    assert "SEE ALSO" in text and "foo(1),\nbar quoted\u2014 string" in text
    assert "caf\u00e9 \u00a9 \u00fcber x-y \\" in text
    assert "-v host" in text and "ssh_config(5)" in text
    assert "FOO" not in text and "2024" not in text


ADVERSARIAL = {  # generated troff that made the stripper grow without bound or go quadratic (size ~ n)
    "string_doubling": lambda n: ".ds a xxxxxxxx\n" + ".as a \\*a\n" * (n // 10) + "\\*a\\*a\n" * (n // 10),
    "interpolation_fanout": lambda n: ".ds a " + "y" * 200 + "\n" + "\\*a" * n + "\n",
    "append_growth": lambda n: ".as a xxxxxxxxxx\n" * n + "\\*a\n",
    "mdoc_name_fanout": lambda n: ".Nm " + "n" * 200 + "\n.It " + "Nm " * n + "\n",
    "unclosed_bracket": lambda n: "\\[" * n + "\n",
    "unclosed_delimiters": lambda n: "".join("\\h" + chr(0x4E00 + i) for i in range(n)) + "\n",
    "nested_if": lambda n: ".if n " * n + "x\n",
    "continuations": lambda n: "word \\\n" * n + "end\n",
    "comparison_fanout": lambda n: ".ds a " + "z" * 200 + "\n.if '" + "\\*a" * n + "'x' y\n",
}


def test_strip_troff_233_byte_string_doubling():
    from modpipe.curate.troff import MAX_STRING

    src = ".ds a xxxxxxxx\n" + ".as a \\*a\n" * 20 + "\\*a\n"  # 8.4 M characters on main
    assert len(src) < 240 and len(strip_troff(src)) <= 2 * len(src) + MAX_STRING


@pytest.mark.parametrize("kind", sorted(ADVERSARIAL))
def test_strip_troff_is_linear_with_bounded_output(kind):
    """Output at most 3x the source; work (characters handed to each line, render and string definition:
    ``Budget.work``) linear: 4x the source costs at most ~4x the work, and a bounded multiple of its size."""
    from modpipe.curate.troff import Budget

    sizes, work = [], []
    for n in (2000, 8000):
        src = ADVERSARIAL[kind](n)
        budget = Budget(2 * len(src))
        out = strip_troff(src, budget)
        assert len(out) <= 3 * len(src), (kind, len(src), len(out))
        assert budget.work <= 70 * len(src), (kind, budget.work, len(src))
        sizes.append(len(src))
        work.append(budget.work)
    assert work[1] / work[0] <= 1.15 * sizes[1] / sizes[0], (kind, sizes, work)


# --- markup: decided by the reader, never by the data -------------------------------------------------------------


def test_markup_is_the_readers_decision_not_a_field_of_the_data(tmp_path):
    """A raw part whose record says ``markup: troff`` is read as plain text unless the raw corpus is the man
    harvest (``harvest.MARKUP`` by kind): a user cannot switch the troff stripper on."""
    from modpipe.curate import _markup
    from modpipe.curate.passes import normalize_shard

    part = tmp_path / "part-00000.jsonl"
    text = ".SH NAME\nuser \\- text\n.B bold"
    part.write_text(json.dumps({"id": "u", "text": text, "source": "user.jsonl", "line": 1, "markup": "troff"})
                    + "\n")
    assert _markup({"kind": "files"}) is None and _markup({"kind": "pydocs"}) is None
    assert _markup({"kind": "man"}) == "troff"
    for kind, expected in (("files", ".SH NAME\nuser \\- text\n.B bold"), ("man", "NAME\n\nuser - text\nbold")):
        item = {"index": 0, "part": str(part), "out": str(tmp_path / f"{kind}.parquet"),
                "stats": str(tmp_path / f"{kind}.json")}
        normalize_shard(item, ["troff", "nfc", "control_chars", "whitespace"], 1000, markup=_markup({"kind": kind}))
        assert pd.read_parquet(item["out"])["text"].tolist() == [expected], kind


# --- normalisation steps ----------------------------------------------------------------------------------------


def test_normalize_steps_by_name():
    from modpipe.curate.normalize import STEPS, check_steps

    raw = "Cafe\u0301\r\nNUL\x00 and\u200b zero-width,\t\ttabs   and spaces \n\n\n\nend "
    assert apply_steps(raw, ["nfc"]) == raw.replace("e\u0301", "\u00e9")
    assert apply_steps(raw, ["control_chars"]) == raw.replace("\r\n", "\n").replace("\x00", "").replace("\u200b", "")
    assert apply_steps("a \t b  \n\n\n\n c ", ["whitespace"]) == "a b\n\nc"
    assert apply_steps(raw, ["nfc", "control_chars", "whitespace"]) == normalize(raw) == \
        "Caf\u00e9\nNUL and zero-width, tabs and spaces\n\nend"
    page = '.TH LS 1\n.SH NAME\nls \\- list\n.B \\-a'
    assert apply_steps(page, ["troff"], "troff") == "NAME\n\nls - list\n-a"
    assert apply_steps(page, ["troff"], None) == page  # user text is never read as troff
    assert set(STEPS) == {"troff", "nfc", "control_chars", "whitespace"}
    with pytest.raises(ValueError, match="unknown normalize step"):
        check_steps(["nfc", "lowercase"])
    with pytest.raises(Exception, match="curate.normalize"):
        load_config(None, ["curate.normalize=[nfc, lowercase]"])


# --- harvest + tasks --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("curate")


@needs_man
def test_harvest_and_tasks(run_dir):
    cfg = small_cfg(run_dir)
    out = hv.harvest_man(cfg)
    assert out["kind"] == "man"
    records = hv.read_raw(out["raw_dir"])
    assert len(records) == out["records"] and len({r["id"] for r in records}) == len(records)
    en = [r for r in records if r["language"] == "en"]
    assert {r["section"] for r in en} == {"1", "5", "8"}
    assert all(sum(r["section"] == s for r in en) <= 15 for s in "158")
    assert sum(r["id"].startswith("man/man1/gcloud") for r in en) <= cfg.corpus.max_docs_per_cluster
    assert all(not r["text"].lstrip().startswith(".so ") for r in records)
    # raw/ keeps the troff source; the troff normalisation step strips it
    assert all(r["markup"] == "troff" for r in records)
    assert sum(bool(re.search(r"^\.(SH|TH) ", r["text"], re.M)) for r in records) > len(records) // 2
    steps = cfg.curate.normalize
    assert steps[0] == "troff"
    stripped = [apply_steps(r["text"], steps, r["markup"]) for r in records]
    # pages about troff (lexgrog, groff) legitimately quote markup; anything more means a stripper bug
    marked = [r["id"] for r, t in zip(records, stripped) if re.search(r"\\f[BIR]|^\.(SH|TP|PP|B|I) ", t, re.M)]
    assert len(marked) <= max(1, len(records) // 50), marked
    assert apply_steps(records[0]["text"], steps[1:], "troff") == normalize(records[0]["text"])  # step off
    records = [{**r, "text": t} for r, t in zip(records, stripped)]
    for r in records[:50]:  # sources are real, non-symlink pages
        assert Path(r["source"]).is_file() and not Path(r["source"]).is_symlink()

    tasks = tk.build_tasks(records, cfg, out["kind"])
    assert {t.name for t in tasks} == {"man_section", "man_language", "py_package"}
    for t in tasks:
        for split in tk.SPLITS:
            assert len({r["label"] for r in t.splits[split]}) >= 2, (t.name, split)
        train, test = t.splits["train"], t.splits["test"]
        assert not {r["id"] for r in train} & {r["id"] for r in test}
        assert not {text_key(r["text"]) for r in train} & {text_key(r["text"]) for r in test}
        assert all(len(r["text"]) <= 2000 for s in t.splits.values() for r in s)
    # deterministic: a second harvest is the same step dir, same tasks
    assert hv.harvest_man(cfg)["raw_dir"] == out["raw_dir"]


def test_pydocs_fallback(tmp_path):
    cfg = small_cfg(tmp_path, f"corpus.man_root={tmp_path / 'no-man-here'}")
    out = hv.harvest_man(cfg)
    assert out["kind"] == "pydocs" and out["records"] > 100
    records = hv.read_raw(out["raw_dir"])
    tasks = tk.build_tasks(records, cfg, out["kind"])
    assert [t.name for t in tasks] == ["py_package"]
    assert len(tasks[0].labels) >= 2 and "json" in tasks[0].labels


def test_source_digest_names_the_raw_content(tmp_path):
    """The step version's external input: the raw step dirs' names, which follow the user files' bytes."""
    from modpipe.curate import source_digest

    data = tmp_path / "corpus"
    data.mkdir()
    (data / "a.jsonl").write_text(json.dumps({"id": "a", "text": prose(1)}) + "\n")
    cfg = small_cfg(tmp_path / "run", f"corpus.man_root={tmp_path / 'no-man'}", "corpus.source=files",
                    f"corpus.paths=[{data}]")
    first = source_digest(cfg)
    assert first["harvest"].startswith("pydocs-") and first["raw"].startswith("files-")
    assert (tmp_path / "run" / "raw" / first["raw"]).is_dir()
    assert source_digest(cfg) == first  # same bytes, same names (the raw dirs are reused)
    (data / "a.jsonl").write_text(json.dumps({"id": "a", "text": prose(2)}) + "\n")
    changed = source_digest(cfg)
    assert changed["raw"] != first["raw"] and changed["harvest"] == first["harvest"]


# --- the whole stage --------------------------------------------------------------------------------------------


def curate(cfg):
    """Curate through the executor; the step's result."""
    from modpipe.executor import run_steps

    return run_steps(cfg, ["curate"])["curate"]


@needs_man
def test_curate_run_shards_manifest_reuse(run_dir, ray_local, caplog, capfd):
    from modpipe.models.backbone import EOS_ID, SPECIAL_TOKENS

    cfg = small_cfg(run_dir)
    with caplog.at_level(logging.INFO, logger="modpipe"):
        result = curate(cfg)
    out = result.outputs
    root = Path(out["curate_dir"])
    assert root == result.dir and root.parent == run_dir / "curate" and not result.skipped
    manifest = json.loads(Path(out["manifest"]).read_text())
    assert manifest["seq_len"] == 64 and manifest["total_rows"] > 0
    assert manifest["tokenizer_sha256"] == sha256_file(out["tokenizer"])
    assert set(manifest["tasks"]) == {"man_section", "man_language", "py_package"}
    rows = 0
    for s in manifest["shards"]:
        path = root / s["path"]
        assert sha256_file(path) == s["sha256"]
        col = pq.read_table(path).column("input_ids").to_pylist()
        assert len(col) == s["rows"] and all(len(r) == 64 for r in col)
        assert max(max(r) for r in col) < manifest["vocab_size"]
        rows += len(col)
    assert rows == manifest["total_rows"]
    assert manifest["digest"] == hashlib.sha256("".join(s["sha256"] for s in manifest["shards"]).encode()).hexdigest()
    first = pq.read_table(root / manifest["shards"][0]["path"]).column("input_ids").to_pylist()
    assert EOS_ID in sum(first, [])  # EOS-separated packing

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(out["tokenizer"])
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert manifest["vocab_size"] == tok.get_vocab_size() <= cfg.curate.vocab_size

    docs = pd.concat(pd.read_parquet(p) for p in sorted(Path(out["docs_dir"]).glob("*.parquet")))
    assert list(docs.columns)[:5] == ["id", "text", "source", "n_chars", "n_words"] and docs["id"].is_unique
    assert docs["n_chars"].between(cfg.curate.min_chars, cfg.curate.max_chars).all()
    # the troff step ran in curate: the docs are text, not markup
    assert sum(bool(re.search(r"^\.(SH|TH|TP) ", t, re.M)) for t in docs["text"]) <= max(1, len(docs) // 50)
    for name, info in manifest["tasks"].items():
        labels = json.loads((root / "tasks" / name / "labels.json").read_text())
        assert labels == info["labels"]
        test = pd.read_parquet(root / "tasks" / name / "test.parquet")
        assert list(test.columns) == ["id", "text", "label", "label_id"]
        assert all(labels[i] == lab for i, lab in zip(test["label_id"], test["label"]))
        assert not set(test["id"]) & set(docs["id"])  # decontaminated
    stats = json.loads(Path(out["stats"]).read_text())
    names = [s["name"] for s in stats["steps"]]
    assert names[:5] == ["read", "normalize", "dedup_exact", "dedup_minhash", "decontaminate"]
    assert {"language", "gopher_quality", "gopher_repetition", "pii", "tokenize", "pack"} <= set(names)
    assert all({"name", "in", "out", "removed", "removed_by_reason"} <= set(s) for s in stats["steps"])
    for s in stats["steps"][:-2]:
        assert s["in"] - s["removed"] == s["out"]
    quarantined = [json.loads(x) for x in Path(out["quarantine"]).read_text().splitlines()]
    assert len(quarantined) == stats["quarantined"]
    assert {"source", "line", "reason", "detail"} <= set(quarantined[0])

    # nothing written names the temp dir the outputs were built in; the executor left no temp or work dir
    for p in root.rglob("*"):
        assert not p.is_file() or b".tmp-curate" not in p.read_bytes(), p
    assert not list((run_dir / "curate").glob(".tmp-*")) and not list((run_dir / "curate").glob(".work-*"))
    # a quiet healthy run: one line per pass, no Ray Data progress dumps, no traceback
    passes = [r.getMessage().split(":")[1].strip() for r in caplog.records
              if re.match(r"curate: (normalize|filter|encode): +\d+ shard", r.getMessage())]
    assert passes == ["normalize", "filter", "encode"]
    printed = capfd.readouterr()
    assert "Running Dataset" not in printed.err + printed.out and "Traceback" not in printed.err + printed.out

    # a second run reuses the step dir untouched
    stamp = (root / "status.json").stat().st_mtime_ns
    again = curate(cfg)
    assert again.skipped and again.outputs == out and (root / "status.json").stat().st_mtime_ns == stamp


# --- user files: bad input, decontamination ---------------------------------------------------------------------



@needs_man
def test_files_bad_input_and_decontamination(run_dir, tmp_path, ray_local, caplog):
    # a held-out example of the man tasks, planted in the user's corpus twice: as is, and as the full page
    cfg0 = small_cfg(run_dir)
    harvest = hv.harvest_man(cfg0)
    records = {r["id"]: {**r, "text": strip_troff(r["text"])} for r in hv.read_raw(harvest["raw_dir"])}
    section = next(t for t in tk.build_tasks(list(records.values()), cfg0, "man") if t.name == "man_section")
    long_ex = next(r for r in section.splits["test"] if len(normalize(records[r["id"]]["text"])) > 2100)
    short_ex = next(r for r in section.splits["test"] if r["id"] != long_ex["id"])

    data = tmp_path / "corpus"
    data.mkdir()
    good = [{"id": f"g{i}", "text": f"Document {i}. " + prose(i, 4 + i % 3)} for i in range(6)]
    (data / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    (data / "mixed.jsonl").write_text(
        json.dumps({"id": "m1", "text": "Mixed one. " + prose(11)}) + "\n"
        + '{"id": "m2", "text": "unterminated\n'
        + json.dumps({"id": "m3", "body": "no text field"}) + "\n"
        + json.dumps({"text": "Mixed four has no id. " + prose(12)}) + "\n"
    )
    (data / "latin1.jsonl").write_bytes(
        (json.dumps({"id": "l1", "text": "Fine line. " + prose(13)}) + "\n").encode()
        + b'{"id": "l2", "text": "caf\xe9 au lait"}\n'
    )
    (data / "empty.jsonl").write_bytes(b"")
    (data / "binary.txt").write_bytes(b"first line\nsecond line\n\xff\xfe\x00 third\n")
    (data / "note.txt").write_text("A plain text note. " + prose(14, 9))
    (data / "planted.jsonl").write_text(
        json.dumps({"id": "p1", "text": short_ex["text"]}) + "\n"
        + json.dumps({"id": "p2", "text": records[long_ex["id"]]["text"]}) + "\n"
    )
    before = {p.name: sha256_file(p) for p in data.iterdir()}

    cfg = small_cfg(run_dir, "corpus.source=files", f"corpus.paths=[{data}]", "curate.min_chars=50",
                    "curate.min_words=5")
    with caplog.at_level(logging.WARNING, logger="modpipe.curate"):
        out = curate(cfg).outputs
    assert {p.name: sha256_file(p) for p in data.iterdir()} == before  # raw input untouched

    q = [json.loads(x) for x in Path(out["quarantine"]).read_text().splitlines()]
    by = {(Path(r["source"]).name, r["line"], r["reason"]) for r in q}
    assert ("mixed.jsonl", 2, "malformed_json") in by
    assert ("mixed.jsonl", 3, "missing_field") in by
    assert ("latin1.jsonl", 2, "invalid_utf8") in by
    assert ("empty.jsonl", None, "empty_file") in by
    assert ("binary.txt", 3, "invalid_utf8") in by
    contaminated = {Path(r["source"]).name + ":" + str(r["line"]) for r in q if r["reason"] == "contaminated"}
    assert contaminated == {"planted.jsonl:1", "planted.jsonl:2"}
    assert any("mixed.jsonl" in m and "line 2" in m and "malformed_json" in m for m in caplog.messages)

    docs = pd.concat(pd.read_parquet(p) for p in Path(out["docs_dir"]).glob("*.parquet"))
    assert {f"g{i}" for i in range(6)} | {"m1", "l1"} <= set(docs["id"])
    assert len(docs) == 6 + 2 + 2  # + the id-less line 4 of mixed.jsonl + note.txt
    assert not {"p1", "p2", "m2", "m3", "l2"} & set(docs["id"])
    # pretraining text = the user files, tasks still from the man harvest
    assert set(docs["source"].map(lambda s: Path(s).name)) <= {p.name for p in data.iterdir()}
    assert (Path(out["tasks_dir"]) / "man_section" / "test.parquet").is_file()
    assert json.loads(Path(out["manifest"]).read_text())["total_rows"] > 0
