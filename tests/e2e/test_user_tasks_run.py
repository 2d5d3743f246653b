"""A run with only user tasks and a user corpus, no man pages: every DAG step on the smoke recipe's sizes.

Five tasks from files: a JSONL task split by hash (with bad rows), a Parquet task with given splits, a multilabel
JSONL task (which modules a source file imports), a regression CSV task (the log of a file's size, judged by RMSE,
lower is better) and a task with a single label. The first four train, are evaluated beside their classical
baselines and are registered; the last fails on its own with a clear error and the run ends failed for it."""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.csv  # noqa: F401 - pa.csv
import pyarrow.parquet as pq
import pytest

from modpipe import pipeline
from modpipe.config import load_config
from modpipe.steps import dag_targets
from run_helpers import SMOKE

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from test_problems import code_examples  # noqa: E402 - the unit tests' real-text examples
from test_user_tasks import stdlib_examples, write_jsonl  # noqa: E402

pytestmark = [pytest.mark.slow]

CORPUS_PACKAGES = ("multiprocessing", "concurrent", "http", "urllib", "ctypes", "sqlite3", "logging", "tomllib",
                   "zipfile", "wsgiref", "venv", "curses", "dbm", "html", "encodings")


def write_corpus(root: Path) -> Path:
    """Pretraining text: the source files of other stdlib packages than the tasks' (JSONL, one file a record)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = [{"id": str(p.relative_to(stdlib)), "text": p.read_text(errors="replace")}
            for pkg in CORPUS_PACKAGES for p in sorted((stdlib / pkg).rglob("*.py")) if "test" not in p.parts]
    root.mkdir()
    write_jsonl(root / "code.jsonl", rows)
    return root


def test_a_run_with_only_user_tasks(ray_local, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    rows = [{**r, "file": "package" if r["id"].endswith("__init__.py") else "module"} for r in stdlib_examples()]
    hashed = write_jsonl(tmp_path / "code.jsonl", rows + [{"id": "x", "text": "a text without a label at all"}])
    given = [{**r, "split": ("test", "val", "train", "train", "train")[i % 5]} for i, r in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(given), tmp_path / "given.parquet")
    single = write_jsonl(tmp_path / "single.jsonl", [{**r, "label": "one"} for r in rows])
    code = code_examples()
    imports = write_jsonl(tmp_path / "imports.jsonl", code)
    size = tmp_path / "size.csv"
    pa.csv.write_csv(pa.Table.from_pylist([{"id": r["id"], "text": r["text"], "log_size": r["log_size"]}
                                           for r in code]), size)
    specs = (f"[{{name: code_pkg, source: files, path: '{hashed}', slice_fields: [file]}}, "
             f"{{name: code_given, source: files, path: '{tmp_path / 'given.parquet'}', split_field: split}}, "
             f"{{name: code_imports, source: files, path: '{imports}', problem: multilabel, label_field: imports}}, "
             f"{{name: code_size, source: files, path: '{size}', problem: regression, label_field: log_size}}, "
             f"{{name: one_label, source: files, path: '{single}'}}]")
    run_dir = tmp_path / "run"
    cfg = load_config(SMOKE, [f"run_dir={run_dir}", "corpus.source=files", f"corpus.paths=['{corpus}']",
                              "corpus.man_root=/nonexistent", f"tasks.specs={specs}",
                              "tasks.min_examples_per_label=4", "tasks.min_chars=20",
                              "tune.tasks=[code_pkg, code_size]", "tune.num_samples=1",
                              "publish.task_metrics={code_size: {metric: test_rmse, direction: lower, threshold: 5}}"])
    with pytest.raises(pipeline.TaskDataError, match="one_label.*a classifier needs two"):
        pipeline.run(cfg, dag_targets())  # what `modpipe run` runs

    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["outcome"] == "failed" and set(summary["failed_tasks"]) == {"one_label"}
    assert list(summary["steps"]) == ["curate", "contracts", "profile", "drift", "pretrain", "adapt", "baseline",
                                      "shift", "tune", "publish"]
    assert all(s["state"] == "succeeded" for s in summary["steps"].values())
    assert not list(run_dir.glob("raw/man-*"))  # no man page was read
    trained = {"code_pkg", "code_given", "code_imports", "code_size"}
    assert set(summary["adapt"]["modules"]) == trained
    registered = {r["task"]: r for r in summary["publish"]["registered"]}
    assert set(registered) == trained
    baselines = json.loads(Path(summary["baseline"]["baselines"]).read_text())
    assert trained <= set(baselines)

    # multilabel: its metrics, a decision threshold chosen on val and stored with the module, the default rule
    ml = json.loads((Path(summary["adapt"]["modules"]["code_imports"]) / "metrics.json").read_text())
    assert {"test_micro_f1", "test_macro_f1", "test_map", "test_label_f1", "decision_threshold"} <= set(ml)
    manifest = json.loads((Path(summary["adapt"]["modules"]["code_imports"]) / "module.json").read_text())
    assert manifest["problem"] == "multilabel" and manifest["decision_threshold"] == ml["decision_threshold"]
    assert list(registered["code_imports"]["metric"]) == ["test_macro_f1"]
    # regression: RMSE / MAE / Spearman, judged by RMSE (lower is better) against ridge on the same rows
    rg = json.loads((Path(summary["adapt"]["modules"]["code_size"]) / "metrics.json").read_text())
    assert {"test_rmse", "test_mae", "test_spearman"} <= set(rg) and rg["selected_by"] == "val_rmse"
    assert list(registered["code_size"]["metric"]) == ["test_rmse"]
    assert registered["code_size"]["baseline"]["metric"] == "test_rmse"
    assert registered["code_size"]["baseline"]["baseline"] == pytest.approx(baselines["code_size"]["tfidf_lr"]["test_rmse"])
    assert set(summary["tune"]["best_metric"]) == {"code_pkg", "code_size"}
    metrics = json.loads((Path(summary["adapt"]["modules"]["code_pkg"]) / "metrics.json").read_text())
    assert set(metrics["test_slices"]) == {"length", "file"}
    assert sum(s["n"] for s in metrics["test_slices"]["file"].values()) == metrics["n_test"]

    curate_dir = Path(summary["curate"]["curate_dir"])
    quarantine = [json.loads(x) for x in (curate_dir / "quarantine" / "quarantine.jsonl").read_text().splitlines()]
    missing = [q for q in quarantine if q.get("reason") == "missing_label"]
    assert [(q["task"], q["source"], q["line"]) for q in missing] == [("code_pkg", str(hashed), len(rows) + 1)]
    labels = json.loads((curate_dir / "tasks" / "code_given" / "labels.json").read_text())
    test_ids = set(pq.read_table(curate_dir / "tasks" / "code_given" / "test.parquet")["id"].to_pylist())
    assert test_ids <= {r["id"] for r in given if r["split"] == "test"} and len(labels) >= 5
