"""The Great Expectations side: a file-backed context, one validation per dataset, Data Docs.

great_expectations is imported here only, and this module is imported only when a validation actually runs
(``import great_expectations`` costs ~2.7 s).
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

log = logging.getLogger("modpipe.contracts")

DATASOURCE = "modpipe"
BATCH = "whole"
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 10}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", name)


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
    """A file-backed GX context under ``<root>/gx``; validates DataFrames against suite specs."""

    def __init__(self, root: str | Path):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no phone-home from a pipeline
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.context = gx.get_context(mode="file", project_root_dir=str(self.root))
        if self.context.variables.progress_bars is None:
            self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
            self.context.variables.save()
        self.source = self.context.data_sources.add_or_update_pandas(DATASOURCE)

    def _batch_definition(self, data_name: str):
        name = _safe(data_name)
        try:
            asset = self.source.get_asset(name)
        except LookupError:
            asset = self.source.add_dataframe_asset(name=name)
        try:
            return asset.get_batch_definition(BATCH)
        except KeyError:
            return asset.add_batch_definition_whole_dataframe(BATCH)

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
        suite = self._suite(spec)
        vd = self.gx.ValidationDefinition(name=_safe(data_name), data=self._batch_definition(data_name), suite=suite)
        vd = self.context.validation_definitions.add_or_update(vd)
        result = vd.run(batch_parameters={"dataframe": df}, expectation_parameters=params,
                        result_format=RESULT_FORMAT)
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

    def build_docs(self) -> str:
        """Rebuild Data Docs; the local path of index.html."""
        self.context.build_data_docs()
        for site in self.context.get_docs_sites_urls():
            url = site.get("site_url") or ""
            if url.startswith("file://"):
                return unquote(urlparse(url).path)
        return str(self.root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html")


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
