"""The drift checks: a current profile against the reference profile, each check with a severity.

``compare(current, reference, cfg) -> list[Check]``, one row per check and subject:

- ``psi``: population-stability index of a length distribution (document characters and tokens, each task's
  example characters), binned on the reference's quantile edges: ``sum((c - r) * ln(c / r))`` over the bins'
  shares (an empty bin counts as ``EPSILON``);
- ``label_share``: the largest absolute change of one label's share of a task (string labels only);
- ``language_share``: the largest absolute change of one language's share of the documents;
- ``top_tokens_jaccard``: Jaccard similarity of the two top-token sets (lower is more drift);
- ``task_added`` / ``task_removed``: a task present in only one of the profiles.

A check's severity is ``error`` past its error threshold, else ``warn`` past its warning threshold, else ``ok``
(a ``None`` threshold is off). Numbers, not verdicts, are what the report shows beside the thresholds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from modpipe.config_drift import DriftConfig

EPSILON = 1e-4
"""Share given to an empty bin in the PSI (the usual floor: ln(0) is undefined)."""
OK, WARN, ERROR = "ok", "warn", "error"


@dataclass(frozen=True)
class Check:
    check: str
    subject: str
    value: float | None
    warn: float | None
    error: float | None
    severity: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bin_shares(values: list[float] | np.ndarray, edges: list[float]) -> np.ndarray:
    """Shares of ``values`` in the bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def psi(current: list[float], reference: dict[str, Any]) -> tuple[float, np.ndarray, np.ndarray]:
    """(PSI, current shares, reference shares) of ``current`` values on the reference distribution's edges."""
    edges = reference["edges"]
    ref = np.maximum(bin_shares(reference["values"], edges), EPSILON)
    cur = np.maximum(bin_shares(current, edges), EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref))), cur, ref


def severity(value: float, warn: float | None, error: float | None, higher_is_worse: bool = True) -> str:
    def past(limit: float | None) -> bool:
        return limit is not None and (value >= limit if higher_is_worse else value <= limit)
    return ERROR if past(error) else WARN if past(warn) else OK


def _psi_check(subject: str, cur: dict[str, Any], ref: dict[str, Any], cfg: DriftConfig) -> Check:
    if not cur["values"] or not ref["values"]:
        return Check("psi", subject, None, cfg.psi_warn, cfg.psi_error, OK, "no values on one side")
    value, _, _ = psi(cur["values"], ref)
    detail = f"mean {ref['mean']:.1f} -> {cur['mean']:.1f}, n {ref['n']} -> {cur['n']}"
    return Check("psi", subject, round(value, 6), cfg.psi_warn, cfg.psi_error,
                 severity(value, cfg.psi_warn, cfg.psi_error), detail)


def _share_check(check: str, subject: str, cur: dict[str, float], ref: dict[str, float], warn: float | None,
                 error: float | None) -> Check:
    moved = {k: cur.get(k, 0.0) - ref.get(k, 0.0) for k in sorted(set(cur) | set(ref))}
    key = max(moved, key=lambda k: round(abs(moved[k]), 9))  # ties (two labels trading shares): the first key
    value = abs(moved[key])
    detail = f"{key!s}: {ref.get(key, 0.0):.3f} -> {cur.get(key, 0.0):.3f}"
    return Check(check, subject, round(value, 6), warn, error, severity(value, warn, error), detail)


def _task_checks(current: dict, reference: dict, cfg: DriftConfig) -> list[Check]:
    out = []
    cur, ref = current.get("tasks") or {}, reference.get("tasks") or {}
    sev = cfg.task_change or OK
    for name in sorted(set(cur) ^ set(ref)):
        what = "task_added" if name in cur else "task_removed"
        out.append(Check(what, name, None, None, None, sev, f"{what.replace('_', ' ')} since the reference"))
    for name in sorted(set(cur) & set(ref)):
        out.append(_psi_check(f"task {name} example chars", cur[name]["example_chars"],
                              ref[name]["example_chars"], cfg))
        if cur[name].get("label_shares") and ref[name].get("label_shares"):
            out.append(_share_check("label_share", f"task {name}", cur[name]["label_shares"],
                                    ref[name]["label_shares"], cfg.label_share_warn, cfg.label_share_error))
    return out


def compare(current: dict[str, Any], reference: dict[str, Any], cfg: DriftConfig) -> list[Check]:
    """Every check of ``current`` against ``reference`` (see the module docstring)."""
    checks = [_psi_check("document chars", current["docs"]["chars"], reference["docs"]["chars"], cfg),
              _psi_check("document tokens", current["docs"]["tokens"], reference["docs"]["tokens"], cfg)]
    if current.get("languages") and reference.get("languages"):
        checks.append(_share_check("language_share", "documents", current["languages"], reference["languages"],
                                   cfg.language_share_warn, cfg.language_share_error))
    checks += _task_checks(current, reference, cfg)
    cur_top = {t for t, _ in current.get("top_tokens") or []}
    ref_top = {t for t, _ in reference.get("top_tokens") or []}
    if cur_top and ref_top:
        jaccard = len(cur_top & ref_top) / len(cur_top | ref_top)
        checks.append(Check("top_tokens_jaccard", f"top {len(ref_top)} tokens", round(jaccard, 6),
                             cfg.top_tokens_jaccard_warn, cfg.top_tokens_jaccard_error,
                             severity(jaccard, cfg.top_tokens_jaccard_warn, cfg.top_tokens_jaccard_error,
                                      higher_is_worse=False),
                             f"{len(cur_top & ref_top)} shared; new: {sorted(cur_top - ref_top)[:5]}"))
    return checks
