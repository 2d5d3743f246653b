"""The Great Expectations side: a file-backed context, one validation per dataset, Data Docs.

great_expectations is imported here only, and this module is imported only when a validation actually runs
(``import great_expectations`` costs ~2.7 s).
"""

from __future__ import annotations

import logging
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

log = logging.getLogger("modpipe.contracts")

DATASOURCE = "modpipe"
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 10}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", name)


def asset_name(data_name: str) -> str:
    """The GX data asset (and batch) a dataset is validated as: ``tasks/<task>/<split>`` -> ``task-<task>-<split>``,
    ``curated_docs`` stays ``curated_docs``. Data Docs pages are named after it."""
    parts = data_name.split("/")
    if len(parts) == 3 and parts[0] == "tasks":
        return _safe(f"task-{parts[1]}-{parts[2]}")
    return _safe(data_name)


def batch_id(data_name: str) -> str:
    """GX's id of the whole-DataFrame batch of a dataset (``<datasource>-<asset>``): the Data Docs page's stem."""
    return f"{DATASOURCE}-{asset_name(data_name)}"


def _plain(x: Any) -> Any:
    """JSON-safe copy of a GX result value (numpy scalars, NaN, arrays)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "tolist"):
        return _plain(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


class GXRunner:
    """A file-backed GX context under ``<root>/gx``; validates DataFrames against suite specs.

    Every validation is recorded under GX's run name ``run_id`` (modpipe's run id; Data Docs show it as "Run
    Name" and file the pages under it) and its dataset's named asset (``asset_name``)."""

    def __init__(self, root: str | Path, run_id: str | None = None):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no phone-home from a pipeline
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.root = Path(root)
        self.run_id = run_id
        self.root.mkdir(parents=True, exist_ok=True)
        self.context = gx.get_context(mode="file", project_root_dir=str(self.root))
        if self.context.variables.progress_bars is None:
            self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
            self.context.variables.save()
        self.source = self.context.data_sources.add_or_update_pandas(DATASOURCE)

    def _batch_definition(self, data_name: str):
        name = asset_name(data_name)
        try:
            asset = self.source.get_asset(name)
        except LookupError:
            asset = self.source.add_dataframe_asset(name=name)
        try:
            return asset.get_batch_definition(name)
        except KeyError:
            return asset.add_batch_definition_whole_dataframe(name)

    def _suite(self, spec: dict[str, Any]):
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        exps = [
            ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"], meta=e["meta"] or None,
                                     severity=e["severity"]).to_domain_obj()
            for e in spec["expectations"]
        ]
        meta = {k: v for k, v in spec["meta"].items() if k != "great_expectations_version"}
        meta["source"] = spec["path"]
        suite = self.gx.ExpectationSuite(name=spec["name"], expectations=exps, meta=meta)
        return self.context.suites.add_or_update(suite)

    def validate(self, df: pd.DataFrame, spec: dict[str, Any], data_name: str,
                 params: dict[str, Any]) -> list[dict[str, Any]]:
        """Run the suite on ``df``; one plain record per expectation, suite order."""
        from great_expectations.core.run_identifier import RunIdentifier

        suite = self._suite(spec)
        vd = self.gx.ValidationDefinition(name=asset_name(data_name), data=self._batch_definition(data_name),
                                          suite=suite)
        vd = self.context.validation_definitions.add_or_update(vd)
        run_id = RunIdentifier(run_name=self.run_id, run_time=datetime.now(timezone.utc))
        result = vd.run(batch_parameters={"dataframe": df}, expectation_parameters=params,
                        result_format=RESULT_FORMAT, run_id=run_id)
        self._name_asset(result, suite.name, run_id, data_name)
        records = []
        for r in result.results:
            conf = r.expectation_config
            kwargs = {k: v for k, v in (conf.kwargs or {}).items() if k != "batch_id"}
            res = _plain(r.result or {})
            exc = r.exception_info or {}
            if isinstance(exc, dict) and "raised_exception" not in exc:  # keyed by metric id
                exc = next(iter(exc.values()), {}) if exc else {}
            raised = bool(getattr(exc, "get", lambda *_: False)("raised_exception"))
            records.append({
                "type": conf.type,
                "column": kwargs.get("column") or kwargs.get("column_list") or kwargs.get("column_A"),
                "kwargs": _plain(kwargs),
                "severity": str(getattr(conf.severity, "value", conf.severity)),
                "success": bool(r.success),
                "observed": _observed(res, df),
                "exception": (exc.get("exception_message") if raised else None),
            })
        order: dict[tuple[str, str], int] = {}
        for i, e in enumerate(spec["expectations"]):
            order.setdefault((e["type"], _key(e["kwargs"])), i)
        records.sort(key=lambda rec: order.get((rec["type"], _key(rec["kwargs"])), len(order)))
        return records

    def _name_asset(self, result, suite_name: str, run_id, data_name: str) -> None:
        """Store the result again with its asset named where the Data Docs renderer looks (``batch_spec``): GX's
        pandas batches leave it out, and the page says "Data asset: None"."""
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier, ValidationResultIdentifier,
        )

        result.meta.setdefault("batch_spec", {})["data_asset_name"] = asset_name(data_name)
        result.meta["modpipe"] = {"data": data_name, "run_id": self.run_id}
        key = ValidationResultIdentifier(ExpectationSuiteIdentifier(name=suite_name), run_id, batch_id(data_name))
        self.context.validation_results_store.set(key, result)

    def build_docs(self) -> str:
        """Rebuild Data Docs; the local path of index.html (with a static list of the validations on top: GX's
        own lists are drawn by scripts from CDNs and are empty offline)."""
        self.context.build_data_docs()
        index = self.root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
        for site in self.context.get_docs_sites_urls():
            url = site.get("site_url") or ""
            if url.startswith("file://"):
                index = Path(unquote(urlparse(url).path))
                break
        if index.is_file():
            _add_static_index(index, self.root / "gx" / "uncommitted" / "validations")
        return str(index)


def validation_pages(site_dir: str | Path, results_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every validation page of a Data Docs site: suite, run name, run time, asset, success, expectations passed
    of evaluated, page path (relative to the site); newest run first, then in validation order.
    ``results_dir`` (GX's ``uncommitted/validations``) supplies success and counts."""
    import json

    site = Path(site_dir)
    rows = []
    for page in sorted((site / "validations").glob("*/*/*/*.html")):
        suite, run_name, run_time, stem = page.relative_to(site / "validations").with_suffix("").parts
        success, stats = None, {}
        if results_dir is not None:
            try:
                res = json.loads((Path(results_dir) / suite / run_name / run_time / f"{stem}.json").read_text())
                success, stats = bool(res.get("success")), res.get("statistics") or {}
            except (OSError, ValueError):
                pass
        rows.append({"suite": suite, "run_name": run_name, "run_time": run_time,
                     "asset": stem.removeprefix(f"{DATASOURCE}-"), "success": success,
                     "passed": stats.get("successful_expectations"), "evaluated": stats.get("evaluated_expectations"),
                     "page": str(page.relative_to(site))})
    rows.sort(key=lambda r: r["run_time"])
    rows.sort(key=lambda r: r["run_name"], reverse=True)
    return rows


STATIC_MARK = "<!-- modpipe: static index -->"


def _add_static_index(index: Path, results_dir: Path) -> None:
    """Put a plain HTML list of validations and suites at the top of the Data Docs index (works offline)."""
    import html

    text = index.read_text()
    if STATIC_MARK in text:
        return
    rows = validation_pages(index.parent, results_dir)
    esc = html.escape
    body = "".join(
        f"<tr><td><a href='{esc(r['page'])}'>{esc(r['asset'])}</a></td><td>{esc(r['suite'])}</td>"
        f"<td style='color:{'#1a7f37' if r['success'] else '#c62828'}'>"
        f"{'passed' if r['success'] else 'failed' if r['success'] is False else '?'}</td>"
        f"<td>{r['passed'] if r['passed'] is not None else '?'} of {r['evaluated'] or '?'}</td>"
        f"<td>{esc(r['run_name'])}</td><td>{esc(r['run_time'])}</td></tr>" for r in rows)
    suites = ", ".join(f"<a href='expectations/{esc(p.name)}'>{esc(p.stem)}</a>"
                       for p in sorted((index.parent / "expectations").glob("*.html")))
    cell = "padding:3px 10px;border-bottom:1px solid #ddd;text-align:left"
    block = (
        f"{STATIC_MARK}<section style='font:14px sans-serif;margin:16px;max-width:1100px'>"
        f"<h2 style='margin:0 0 8px'>Validations ({len(rows)})</h2>"
        f"<style>.modpipe-idx td,.modpipe-idx th{{{cell}}}</style>"
        f"<table class='modpipe-idx' style='border-collapse:collapse'><tr><th>data asset</th><th>suite</th>"
        f"<th>result</th><th>expectations passed</th><th>run name</th><th>run time</th></tr>{body}</table>"
        f"<p>Expectation suites: {suites or 'none'}</p></section>")
    text = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + block, text, count=1)
    index.write_text(text)


def _key(kwargs: dict) -> str:
    col = kwargs.get("column") or kwargs.get("column_list") or kwargs.get("column_A")
    return str(col)


def _observed(res: dict[str, Any], df: pd.DataFrame) -> dict[str, Any]:
    """The few numbers a person reads first: observed value, or unexpected count/percent, examples and the
    ids of the first offending rows (when the data has an ``id`` column)."""
    keys = ("observed_value", "element_count", "unexpected_count", "unexpected_percent", "missing_count",
            "partial_unexpected_list")
    out = {k: res[k] for k in keys if k in res}
    idx = res.get("partial_unexpected_index_list")
    if idx and "id" in df.columns:
        try:
            out["unexpected_ids"] = _plain(df["id"].iloc[[int(i) for i in idx[:10]]].tolist())
        except (IndexError, TypeError, ValueError):
            pass
    return out
