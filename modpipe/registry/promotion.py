"""The promotion group of the one policy check (``policy.check(..., baseline=...)``): a publish candidate against
its task's classical baseline (the baseline step's numbers), field ``promotion.baseline``. A failure here registers
the module as challenger at most; loaders never judge promotion.

``baseline_bars`` reads each task's bar from the baseline step's ``baselines.json``; ``judge_baseline`` adds the
field to a verdict whose integrity, compatibility and quality passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modpipe.registry.policy import Verdict, _number

if TYPE_CHECKING:
    from modpipe.config import PipelineConfig


@dataclass(frozen=True)
class BaselineBar:
    """The classical baseline a publish candidate is judged against (from the baseline step's baselines.json):
    its name, test predictions file, test metrics and the digests of the split it was computed on."""

    name: str
    predictions: Path
    metrics: dict[str, Any]
    test_digest: str | None
    labels_digest: str | None
    resamples: int = 1000
    confidence: float = 0.95


def baseline_bars(cfg: PipelineConfig, baselines: str | Path | None,
                  tasks: list[str]) -> dict[str, BaselineBar | str | None]:
    """Each task's promotion bar from the baseline step's ``baselines.json`` (its per-task folders beside it):
    a ``BaselineBar``, the reason there is none (the candidate then stays challenger), or None when
    ``publish.require_beat_baseline`` is off."""
    p = cfg.publish
    if not p.require_beat_baseline:
        return {t: None for t in tasks}
    if not baselines:
        return {t: "no baseline step output given to publish" for t in tasks}
    try:
        data = json.loads(Path(baselines).read_text())
    except (OSError, ValueError) as err:
        return {t: f"{baselines} unreadable: {err}" for t in tasks}
    bars: dict[str, BaselineBar | str | None] = {}
    for t in tasks:
        entry = data.get(t) if isinstance(data, dict) else None
        b = (entry or {}).get(p.baseline) if isinstance(entry, dict) else None
        if not isinstance(b, dict):
            bars[t] = (f"the baseline step has no {p.baseline} for task {t!r}"
                       + (f" ({entry['error']})" if isinstance(entry, dict) and entry.get("error") else ""))
            continue
        split = entry.get("split") or {}
        bars[t] = BaselineBar(p.baseline, Path(baselines).parent / t / str(b.get("predictions")), b,
                              split.get("test_digest"), split.get("labels_digest"), p.baseline_resamples,
                              p.baseline_confidence)
    return bars


def judge_baseline(v: Verdict, bar: BaselineBar | str) -> None:
    """``promotion.baseline``: the candidate against its task's classical baseline on the same test rows."""
    from modpipe.baseline import PAIRED, paired_bootstrap

    rules = v.rules
    if isinstance(bar, str):
        v.add("promotion", "baseline", False, f"no classical baseline to compare with: {bar}")
        return
    if v.measured.get("source") != "measured" or "pred_ids" not in v.measured:
        v.add("promotion", "baseline", False, "not measured on the current test split: no comparison")
        return
    if (bar.test_digest, bar.labels_digest) != (v.measured.get("test_digest"), v.measured.get("labels_digest")):
        v.add("promotion", "baseline", False, f"the {bar.name} baseline was computed on another test split "
              f"(test sha256 {str(bar.test_digest)[:12]}, this split {str(v.measured.get('test_digest'))[:12]})")
        return
    sign = 1 if rules.direction == "higher" else -1
    if rules.metric in PAIRED[v.measured.get("problem") or "classification"]:
        try:
            cmp = paired_bootstrap(v.measured["ids"], v.measured["pred_ids"], bar.predictions, n=bar.resamples,
                                   confidence=bar.confidence, metric=rules.metric)
        except (OSError, ValueError, KeyError) as err:
            v.add("promotion", "baseline", False, f"cannot compare with the {bar.name} baseline: {err}")
            return
        v.baseline = {"name": bar.name, "metric": rules.metric, **cmp}
        worse = (cmp["high"] if sign > 0 else -cmp["low"]) < 0
        where = (f"{rules.metric} {cmp['module']:.4f} vs {bar.name} {cmp['baseline']:.4f}: difference "
                 f"{cmp['delta']:+.4f}, {cmp['confidence']:.0%} paired-bootstrap interval "
                 f"[{cmp['low']:+.4f}, {cmp['high']:+.4f}] over {cmp['rows']} test rows")
        v.add("promotion", "baseline", not worse, f"below the {bar.name} baseline beyond noise: {where}" if worse
              else f"not below the {bar.name} baseline beyond noise: {where}")
        return
    base, mod = _number(bar.metrics.get(rules.metric)), v.value
    if base is None or mod is None:
        v.add("promotion", "baseline", False, f"no {rules.metric} for the {bar.name} baseline or the module")
        return
    v.baseline = {"name": bar.name, "metric": rules.metric, "module": mod, "baseline": base, "delta": mod - base}
    ok = rules.at_least_as_good(mod, base)
    v.add("promotion", "baseline", ok, f"{rules.metric} {mod:.4f} vs {bar.name} {base:.4f} (point values: no "
          f"interval for a metric of probabilities; {rules.direction} is better)"
          + ("" if ok else f": below the {bar.name} baseline"))
