"""The third downstream task (py_package: stdlib docstring -> its package), built beside the man tasks from a
different source, split by document hash and decontaminated like the others."""

from __future__ import annotations

import pandas as pd

from modpipe.config import load_config
from modpipe.curate import harvest as hv
from modpipe.curate import tasks as tk
from modpipe.curate.decontaminate import from_tasks
from modpipe.curate.normalize import normalize, text_key


def _cfg(tmp_path, *extra: str):
    return load_config(None, [f"run_dir={tmp_path}", "tasks.min_examples_per_label=10", *extra])


def _man_records() -> list[dict]:
    """Man-harvest-shaped records (section / language set): real stdlib docstrings stand in for page text."""
    docs = [r for r in hv.pydoc_records(("os", "shutil", "logging", "inspect")) if len(r["text"]) >= 120]
    return [{**r, "id": f"man/man{1 + i % 2}/{r['id']}", "section": str(1 + i % 2), "language": "en",
             "package": None} for i, r in enumerate(docs)]


def test_py_package_is_built_on_the_man_corpus_too(tmp_path):
    cfg = _cfg(tmp_path)
    assert [s.kind for s in cfg.tasks.specs] == ["man_section", "man_language", "py_package"]
    assert cfg.adapt.tasks == []  # adapt trains every task built
    tasks = {t.name: t for t in tk.build_tasks(_man_records(), cfg, "man")}
    assert set(tasks) == {"man_section", "py_package"}  # no translated pages here: man_language not built
    py = tasks["py_package"]
    assert len(py.labels) >= 3 and {"inspect", "logging"} <= set(py.labels)
    assert all(r["id"].startswith("py/") for s in py.splits.values() for r in s)  # its own source
    assert not any(r["id"].startswith("py/") for s in tasks["man_section"].splits.values() for r in s)
    # label-stratified: every label in every split; no text in two splits
    for split in tk.SPLITS:
        assert {r["label"] for r in py.splits[split]} == set(py.labels), split
    keys = {s: {r["key"] for r in py.splits[s]} for s in tk.SPLITS}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"] and not keys["val"] & keys["test"]


def test_split_order_is_the_document_hash(tmp_path):
    cfg = _cfg(tmp_path)
    py = next(t for t in tk.build_tasks(_man_records(), cfg, "man") if t.name == "py_package")
    again = next(t for t in tk.build_tasks(_man_records(), cfg, "man") if t.name == "py_package")
    assert py.splits == again.splits  # deterministic
    for label in py.labels:
        test = [r for r in py.splits["test"] if r["label"] == label]
        rest = [r for s in ("val", "train") for r in py.splits[s] if r["label"] == label]
        # the test rows of a label are the ones with the smallest hashes of their text key
        assert max(tk.doc_hash(r["key"]) for r in test) < min(tk.doc_hash(r["key"]) for r in rest)


def test_pydocs_corpus_builds_only_py_package(tmp_path):
    cfg = _cfg(tmp_path)
    records = hv.pydoc_records()
    assert [t.name for t in tk.build_tasks(records, cfg, "pydocs")] == ["py_package"]


def test_py_package_val_and_test_are_decontaminated(tmp_path):
    """curate passes every built task to ``from_tasks``: a held-out docstring in the pretraining text is dropped,
    whole or as the page it was truncated from; a training docstring stays."""
    cfg = _cfg(tmp_path, "tasks.specs=[{name: py_package, kind: py_package, max_chars: 300}]")
    py = tk.build_tasks(_man_records(), cfg, "man")[0]
    by_id = {r["id"]: r for r in hv.pydoc_records()}
    held_out = py.splits["test"][0]
    long_val = next(r for r in py.splits["val"] if len(normalize(by_id[r["id"]]["text"])) > 400)
    train = py.splits["train"][0]
    texts = {"user/a": held_out["text"], "user/b": normalize(by_id[long_val["id"]]["text"]),
             "user/c": train["text"]}
    df = pd.DataFrame({"id": list(texts), "text": list(texts.values()),
                       "key": [text_key(t) for t in texts.values()], "reason": ["", "", ""], "detail": ["", "", ""]})
    out = from_tasks([py], list(cfg.curate.decontaminate_splits))(df)
    assert out["reason"].tolist() == ["contaminated", "contaminated", ""]
    assert "py_package/test" in out["detail"][0] and "first 300 chars in py_package/val" in out["detail"][1]
