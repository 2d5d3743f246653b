"""Contracts stage: validate the curate output with Great Expectations suites and build Data Docs.

``run(cfg, ctx)`` (the ``contracts`` step, ``modpipe/steps.py``) -> ``{"data_docs": <index.html>, "results":
<results JSON>, "warnings", "counts", "datasets"}``, written into the step dir.

Datasets and their suites (files in ``cfg.contracts.suites_dir``):

================  =====================================  ==========================================
suite             data                                   read by
================  =====================================  ==========================================
raw_corpus        ``curate_out["raw_dir"]/**/*.jsonl``     ``datasets.read_raw`` (+ text columns)
curated_docs      ``curate_out["docs_dir"]/*.parquet``     ``datasets.read_docs`` (+ text columns)
curated_shards    shards listed in ``manifest.json``       ``datasets.read_shards`` (+ token columns)
task_dataset      ``tasks_dir/<task>/{train,val,test}``    ``datasets.read_task`` (+ overlap, labels, tokens)
task_multilabel   the same, of a multilabel task           ``datasets.read_task`` (+ label-id sets)
task_regression   the same, of a regression task           ``datasets.read_task`` (+ finite targets)
================  =====================================  ==========================================

Text columns (``derive.py``): text hash (duplicate rate), language and its share, token counts under the run's
tokenizer (``curate_out["tokenizer"]``).  Any other dataset: ``validate_path`` / ``python -m modpipe.contracts``.

Everything validates first, Data Docs are built and a results JSON is written in the step dir; then, if any
error-severity expectation failed (or a dataset is missing or empty, or there is none), ``ContractViolation`` is
raised naming suite, expectation, column, data path and Data Docs.  Warnings are only reported.  The executor
keeps a failed attempt as ``<step dir>.failed-<run_id>``: every consumer (``modpipe.gates``) refuses the curate
output until a contracts record for it says succeeded.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from modpipe.config import PipelineConfig
from modpipe.contracts.datasets import Dataset, read_docs, read_raw, read_shards, read_task
from modpipe.contracts.suites import (
    STOPS, SuiteError, check_parameters, config_parameters, load_suite_spec, referenced_parameters,
)
from modpipe.lineage import sha256_file

SUITES = ("raw_corpus", "curated_docs", "curated_shards", "task_dataset", "task_multilabel", "task_regression")

log = logging.getLogger("modpipe.contracts")

__all__ = ["ContractViolation", "SuiteError", "run", "validate_dataframe", "validate_path", "load_suite_spec",
           "describe"]


class ContractViolation(RuntimeError):
    """Error-severity expectations failed; ``failures`` lists them, ``data_docs`` and ``results`` locate the detail."""

    def __init__(self, message: str, failures: list[dict] | None = None, data_docs: str | None = None,
                 results: str | None = None):
        super().__init__(message)
        self.failures = failures or []
        self.data_docs = data_docs
        self.results = results

    def __reduce__(self):  # keep the detail when a task runner (Prefect, Ray) ships the exception elsewhere
        return (type(self), (str(self), self.failures, self.data_docs, self.results))


def describe(f: dict[str, Any]) -> str:
    """``expect_x(column=c): 3 of 40 unexpected, e.g. [..]`` or ``...: observed 1``."""
    col = f"column={f['column']}" if f.get("column") else ""
    obs = f.get("observed") or {}
    if f.get("exception"):
        detail = f"raised: {f['exception']}"
    elif "unexpected_count" in obs:
        detail = f"{obs['unexpected_count']} of {obs.get('element_count')} rows unexpected"
        if obs.get("partial_unexpected_list"):
            detail += f", e.g. {obs['partial_unexpected_list'][:3]}"
        if obs.get("unexpected_ids"):
            detail += f" (ids {obs['unexpected_ids'][:5]})"
    else:
        detail = f"observed {obs.get('observed_value')!r}"
    bounds = {k: v for k, v in f.get("kwargs", {}).items() if k in ("min_value", "max_value", "value_set")}
    return f"{f['type']}({col}) {bounds or ''}: {detail}".replace(" : ", ": ")


def _violation_message(failed: list[dict[str, Any]], data_docs: str | None) -> str:
    lines = [f"data contract failed ({len(failed)} error-severity expectation(s)):"]
    for f in failed:
        what = f["exception"] if f.get("structural") else describe(f)
        lines.append(f"  suite {f['suite']!r} on {f['data']} ({f['data_path']}): {what}")
    if data_docs:
        lines.append(f"Data Docs: {data_docs}")
    return "\n".join(lines)


def _summarise(ds_name: str, data_path: str, spec: dict, records: list[dict], rows: int, rows_total: int,
               notes: list[str]) -> dict[str, Any]:
    failed = [r for r in records if not r["success"]]
    errors = [r for r in failed if r["severity"] == STOPS]
    for r in failed:
        r.update(suite=spec["name"], data=ds_name, data_path=data_path)
    return {
        "suite": spec["name"], "suite_path": spec["path"], "data": ds_name, "data_path": data_path,
        "rows_validated": rows, "rows_total": rows_total, "success": not errors,
        "errors": errors, "warnings": [r for r in failed if r["severity"] != STOPS],
        "expectations": records, "notes": notes,
    }


def validate_dataframe(df: pd.DataFrame, suite_name_or_path: str | Path, data_name: str, cfg: PipelineConfig, *,
                       data_path: str | None = None, runner=None, raise_on_error: bool = True,
                       build_docs: bool = True, rows_total: int | None = None,
                       notes: list[str] | None = None) -> dict[str, Any]:
    """Validate one DataFrame against a suite (by name in ``cfg.contracts.suites_dir``, or a path).

    Returns the summary (suite, data, success, errors, warnings, per-expectation observed values, and
    ``data_docs`` when built).  With ``raise_on_error`` a failed error-severity expectation raises
    ``ContractViolation``.  ``runner`` (a ``gx.GXRunner``) is shared across calls by ``run``; without it one is
    opened under ``<run_dir>/contracts``.
    """
    spec = load_suite_spec(suite_name_or_path, cfg.contracts.suites_dir)
    params = config_parameters(cfg)
    check_parameters(spec, params)
    if runner is None:
        from modpipe.contracts.gx import GXRunner

        runner = GXRunner(cfg.run_path / "contracts")
    t0 = time.perf_counter()
    records = runner.validate(df, spec, data_name, params)
    summary = _summarise(data_name, data_path or data_name, spec, records, len(df),
                         len(df) if rows_total is None else rows_total, list(notes or []))
    log.info("contracts: %s against suite %s: %s (%d error(s), %d warning(s), %d rows, %.1f s)", data_name,
             spec["name"], "ok" if summary["success"] else "FAILED", len(summary["errors"]),
             len(summary["warnings"]), len(df), time.perf_counter() - t0)
    for w in summary["warnings"]:
        log.warning("contracts: warning on %s: %s", data_name, describe(w))
    if build_docs:
        summary["data_docs"] = runner.build_docs()
    if raise_on_error and summary["errors"]:
        raise ContractViolation(_violation_message(summary["errors"], summary.get("data_docs")),
                                summary["errors"], summary.get("data_docs"))
    return summary


def _inputs(curate_out: dict[str, Any]) -> dict[str, Path | None]:
    """Paths of the four dataset kinds; defaults inside ``curate_dir`` where a key is missing."""
    base = Path(curate_out["curate_dir"]) if curate_out.get("curate_dir") else None

    def pick(key: str, default: str | None) -> Path | None:
        if curate_out.get(key):
            return Path(curate_out[key])
        return base / default if base is not None and default else None

    return {"raw_dir": pick("raw_dir", None), "docs_dir": pick("docs_dir", "docs"),
            "manifest": pick("manifest", "manifest.json"), "tasks_dir": pick("tasks_dir", "tasks"),
            "tokenizer": pick("tokenizer", "tokenizer/tokenizer.json")}


def _load_datasets(paths: dict[str, Path | None], max_rows: int, seed: int) -> list[Dataset]:
    from modpipe.contracts.derive import load_tokenizer

    tok = load_tokenizer(paths["tokenizer"])
    out: list[Dataset] = []
    if paths["raw_dir"] is not None and paths["raw_dir"].is_dir():
        out.append(read_raw(paths["raw_dir"], max_rows, seed))  # raw pages: not tokenized (cost, pre-cleaning)
    if paths["docs_dir"] is not None and paths["docs_dir"].is_dir():
        out.append(read_docs(paths["docs_dir"], max_rows, seed, tok))
    if paths["manifest"] is not None and paths["manifest"].is_file():
        out.append(read_shards(paths["manifest"], max_rows, seed))
    if paths["tasks_dir"] is not None and paths["tasks_dir"].is_dir():
        for task_dir in sorted(p for p in paths["tasks_dir"].iterdir() if p.is_dir()):
            out.extend(read_task(task_dir, max_rows, seed, tok))
    if tok is None:
        for ds in out:
            if ds.suite in ("curated_docs", "task_dataset", "task_multilabel", "task_regression"):
                ds.notes.append(f"no tokenizer at {paths['tokenizer']}: n_tokens not derived")
    return out


def suites_digest(cfg: PipelineConfig) -> dict[str, str]:
    """sha256 of each bundled suite file in ``contracts.suites_dir`` (part of the contracts step's version)."""
    return {n: sha256_file(load_suite_spec(n, cfg.contracts.suites_dir)["path"]) for n in SUITES}


def run(cfg: PipelineConfig, ctx) -> dict[str, Any]:
    """The contracts step: ``check`` the curate output into the step dir; a failure's results and Data Docs stay
    in the failed record ``<step dir>.failed-<run_id>/``, which the error message names."""
    failed_dir = ctx.failed_dir or ctx.final.parent / f"{ctx.final.name}.failed-{ctx.run_id}"
    return check(cfg, ctx.inputs["curate"].outputs, ctx.out, failed_dir=failed_dir, run_id=ctx.run_id)


def check(cfg: PipelineConfig, curate_out: dict[str, Any], out: Path, *, failed_dir: Path | None = None,
          run_id: str | None = None) -> dict[str, Any]:
    """Validate every dataset of a curate output; results + Data Docs under ``out``.

    Fails closed: a dataset kind absent from the curate output, no dataset at all, or an empty dataset is an
    error like a failed error-severity expectation; all raise ``ContractViolation`` after the results and Data
    Docs are written (``failed_dir``: where ``out`` will be then, for the message)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    failed_dir = failed_dir or out
    paths = _inputs(curate_out)
    specs = {n: load_suite_spec(n, cfg.contracts.suites_dir) for n in SUITES}
    params = config_parameters(cfg)
    for spec in specs.values():
        check_parameters(spec, params)

    t0 = time.perf_counter()
    missing = [k for k, p in paths.items() if k != "raw_dir" and (p is None or not p.exists())]
    datasets = _load_datasets(paths, cfg.contracts.max_rows, cfg.seed)
    from modpipe.contracts.gx import GXRunner

    runner = GXRunner(out, run_id=run_id)
    summaries = []
    for i, ds in enumerate(datasets, 1):
        log.info("contracts: [%d/%d] %s (%s)", i, len(datasets), ds.name, ds.suite)
        summaries.append(validate_dataframe(
            ds.df, specs[ds.suite]["path"], ds.name, cfg, data_path=ds.path, runner=runner,
            raise_on_error=False, build_docs=False, rows_total=ds.rows_total, notes=ds.notes))
    data_docs = Path(runner.build_docs())
    docs_rel = data_docs.relative_to(out)
    errors = [e for s in summaries for e in s["errors"]]
    errors += [_structural(f"{k} absent from the curate output", str(paths[k])) for k in missing]
    errors += [_structural("dataset is empty (0 rows)", ds.path, ds.suite, ds.name)
               for ds in datasets if ds.rows_total == 0]
    if not datasets:
        errors.append(_structural("no dataset to check: the curate output holds none", str(paths["docs_dir"])))
    record = {
        "success": not errors, "run_id": run_id, "data_docs": str(docs_rel),
        "seconds": round(time.perf_counter() - t0, 2), "not_validated": missing, "datasets": summaries,
        "structural_errors": [e for e in errors if e.get("structural")],
        "counts": {"datasets": len(summaries), "failed": sum(not s["success"] for s in summaries),
                   "errors": len(errors), "warnings": sum(len(s["warnings"]) for s in summaries)},
    }
    results_path = out / "results.json"
    results_path.write_text(json.dumps(record, indent=2, default=str))
    log.info("contracts: %d dataset(s), %d error(s), %d warning(s)", len(summaries), len(errors),
             record["counts"]["warnings"])
    if errors:
        raise ContractViolation(_violation_message(errors, str(failed_dir / docs_rel)), errors,
                                str(failed_dir / docs_rel), str(failed_dir / "results.json"))
    return {**_outcome(record, results_path), "data_docs": str(data_docs), "datasets": len(summaries)}


def _structural(problem: str, data_path: str, suite: str = "contracts", data: str | None = None) -> dict[str, Any]:
    """A failure that is not an expectation's (missing or empty data), in the same shape for messages."""
    return {"type": "modpipe_input_present", "kwargs": {}, "success": False, "severity": STOPS, "structural": True,
            "suite": suite, "data": data or Path(data_path).name, "data_path": data_path,
            "exception": problem}


def _outcome(record: dict[str, Any], results_path: Path) -> dict[str, Any]:
    """What a caller (flow, report) needs: Data Docs, the results file and the warnings, one line each."""
    warnings = [f"{d['suite']} on {d['data']}: {describe(w)}" for d in record["datasets"] for w in d["warnings"]]
    return {"data_docs": str(results_path.parent / record["data_docs"]), "results": str(results_path),
            "warnings": warnings, "counts": record["counts"]}


def validate_path(path: str | Path, suite_name_or_path: str | Path, cfg: PipelineConfig, *,
                  tokenizer: str | Path | None = None, data_name: str | None = None,
                  raise_on_error: bool = True) -> dict[str, Any]:
    """Validate a user's dataset file or folder (Parquet, JSONL[.gz], CSV) against a suite.

    Rows beyond ``cfg.contracts.max_rows`` are sampled; with a ``text`` column the text columns of
    ``derive.py`` are added (``n_tokens`` only with ``tokenizer``), so a suite can bound duplicate rate,
    language mix and token counts; with a ``label`` column, ``label_share``.  See ``validate_dataframe``.
    """
    from modpipe.contracts.datasets import read_table
    from modpipe.contracts.derive import add_label_columns, add_text_columns, load_tokenizer

    df, rows_total = read_table(path, cfg.contracts.max_rows, cfg.seed)
    if "label" in df.columns:
        df = add_label_columns(df, None).drop(columns=["label_matches_id"])
    df = add_text_columns(df, tokenizer=load_tokenizer(tokenizer))
    return validate_dataframe(df, suite_name_or_path, data_name or Path(path).stem, cfg, data_path=str(path),
                              raise_on_error=raise_on_error, rows_total=rows_total)
