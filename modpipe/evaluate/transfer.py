"""Transfer evaluation: what each module method buys and costs, per task, through the adapt stage itself.

Step entry ``run(cfg, ctx)``: the contracts gate, then ``evaluate`` on the backbone of ``ctx.inputs["pretrain"]``
and the tasks of ``ctx.inputs["curate"]``, writing into the step dir. Library function
``evaluate(cfg, backbone, tasks_dir, out) -> {"dir", "results", "report", "curve", "rows"}`` (paths + rows):

1. every ``transfer.methods`` on the whole train split, then every ``transfer.curve_methods`` at each
   ``transfer.fractions`` below 1: one ``modpipe.adapt.train_tasks`` per (method, fraction) with ``adapt.method`` and
   ``adapt.train_fraction`` set, all tasks of a run training concurrently.  Module dirs are the adapt stage's own
   (fingerprinted by method, head, freeze policy and fraction), so a rerun, or a DAG run with the same adapt config,
   reuses them;
2. per task, ``transfer.router``: an AdapterFusion-style router over the other tasks' LoRA modules (100% data),
   next to that task's fresh LoRA module (``modpipe.compose.router``);
3. ``transfer.langid_task``: py3langid as an external baseline on the same test split;
4. the baseline step's majority and TF-IDF + LR rows beside the modules (``vs_tfidf``, ``below_baseline``), the
   shift step's domain shift per task;
5. rows (task x method x fraction: metrics, gap to full fine-tuning in points, trainable %, cost) ->
   ``results.json``; ``modpipe.report.transfer`` draws ``curve.png`` and writes ``report.html``.

Output: ``out`` (the step dir, versioned by the executor on the transfer and adapt config and the upstream
steps). A failed (method, task) is a row with its error; the others go on.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modpipe.config import PipelineConfig

if TYPE_CHECKING:
    from modpipe.executor import StepContext

log = logging.getLogger("modpipe.transfer")

RESULTS_FILE = "results.json"
REFERENCE = "full"
ROW_METRICS = ("test_accuracy", "test_macro_f1", "test_auroc_ovr", "test_ece", "val_macro_f1", "trainable_params",
               "trainable_pct", "train_seconds", "peak_memory_mb", "latency_ms_per_batch", "n_train",
               "test_max_slice_gap", "test_micro_f1", "test_map", "test_rmse", "test_mae", "test_spearman")
CLASSICAL = ("majority", "tfidf_lr")
"""The baseline step's classical baselines, shown as rows beside the modules (same test split)."""


def with_adapt(cfg: PipelineConfig, **adapt: Any) -> PipelineConfig:
    """``cfg`` with some ``adapt`` fields replaced (validated like a loaded config)."""
    data = cfg.model_dump(mode="json")
    data["adapt"].update(adapt)
    return PipelineConfig.model_validate(data)


def plan(cfg: PipelineConfig) -> list[tuple[str, float]]:
    """(method, train fraction) adapt runs: every method at 1.0, the curve methods at the smaller fractions."""
    t = cfg.transfer
    runs = [(m, 1.0) for m in t.methods]
    runs += [(m, f) for m in t.curve_methods for f in t.fractions if f < 1.0]
    return list(dict.fromkeys(runs))


def _row(task: str, method: str, fraction: float, metrics_path: str | None, module: str | None,
         error: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"task": task, "method": method, "train_fraction": fraction}
    if error:
        return {**row, "error": error}
    m = json.loads(Path(metrics_path).read_text())
    row.update({k: m.get(k) for k in ROW_METRICS})
    row.update(module=module, head=m.get("head"), freeze_policy=m.get("freeze_policy"))
    return row


def add_gaps(rows: list[dict[str, Any]], metric: str) -> None:
    """``gap_to_full`` (points, row - full fine-tuning at the same task and fraction) on every row that has both."""
    ref = {(r["task"], r["train_fraction"]): r.get(metric) for r in rows
           if r["method"] == REFERENCE and r.get(metric) is not None}
    for r in rows:
        full = ref.get((r["task"], r.get("train_fraction", 1.0)))
        if full is None:
            full = ref.get((r["task"], 1.0)) if r.get("train_fraction") is None else None
        r["gap_to_full"] = (round(100.0 * (r[metric] - full), 2)
                            if full is not None and r.get(metric) is not None else None)


def add_classical(rows: list[dict[str, Any]], classical: dict[str, Any], metric: str) -> None:
    """The baseline step's majority and TF-IDF + LR rows per task, and on every module row ``vs_tfidf`` (points,
    row - TF-IDF + LR on the same test split) and ``below_baseline`` (True where the module scores lower)."""
    tasks = {r["task"] for r in rows}
    for task in sorted(tasks & set(classical)):
        for name in CLASSICAL:
            b = classical[task].get(name) if isinstance(classical[task], dict) else None
            if isinstance(b, dict):
                rows.append({"task": task, "method": name, "train_fraction": None,
                             **{k: b.get(k) for k in ROW_METRICS}})
    for r in rows:
        b = classical.get(r["task"]) if isinstance(classical.get(r["task"]), dict) else {}
        base = (b.get("tfidf_lr") or {}).get(metric)
        if r["method"] not in CLASSICAL and base is not None and r.get(metric) is not None:
            r["vs_tfidf"] = round(100.0 * (r[metric] - base), 2)
            r["below_baseline"] = r[metric] < base


def run(cfg: PipelineConfig, ctx: StepContext) -> dict[str, Any]:
    """Step entry: the contracts gate, then the transfer report of the pretrained backbone into the step dir, with
    the baseline step's classical baselines and the shift step's domain shift beside the modules."""
    from modpipe.gates import require_contracts

    require_contracts(ctx)
    classical = json.loads(Path(ctx.inputs["baseline"]["baselines"]).read_text())
    shift = json.loads(Path(ctx.inputs["shift"]["shift"]).read_text())
    return evaluate(cfg, ctx.inputs["pretrain"]["backbone"], ctx.inputs["curate"]["tasks_dir"], ctx.out,
                    classical=classical, shift=shift)


def evaluate(cfg: PipelineConfig, backbone: str | Path, tasks_dir: str | Path, out: str | Path, *,
             classical: dict[str, Any] | None = None, shift: dict[str, Any] | None = None) -> dict[str, Any]:
    """The transfer report of ``backbone`` on the tasks in ``tasks_dir``, written into ``out``; ``classical``:
    the baseline step's baselines.json, ``shift``: the shift step's shift.json (each shown when given)."""
    from modpipe import adapt
    from modpipe.report.transfer import write_transfer_report

    t = cfg.transfer
    # absolute: Ray Train workers run in their own working directories
    backbone, tasks_dir, out = str(Path(backbone).resolve()), str(Path(tasks_dir).resolve()), Path(out)
    tasks = list(t.tasks) or adapt.select_tasks(cfg, tasks_dir)
    t0 = time.time()
    rows, lora_modules = _train_methods(cfg, backbone, tasks_dir, tasks)
    out.mkdir(parents=True, exist_ok=True)
    routing = _routing(cfg, backbone, tasks_dir, lora_modules, out / "router") if t.router else {}
    for task, cmp in routing.items():
        if "router" in cmp:
            rows.append({"task": task, "method": "router", "train_fraction": 1.0,
                         **{k: cmp["router"].get(k) for k in ROW_METRICS}, "sources": cmp["router"]["sources"]})
    baselines = _baselines(cfg, tasks_dir, tasks, out, rows)
    add_classical(rows, classical or {}, t.metric)
    add_gaps(rows, t.metric)
    results = {"metric": t.metric, "tasks": tasks, "methods": list(t.methods), "fractions": list(t.fractions),
               "curve_methods": list(t.curve_methods), "rows": rows, "routing": routing,
               "baselines": baselines, "shift": (shift or {}).get("tasks"), "backbone": backbone,
               "seconds": round(time.time() - t0, 1)}
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
    write_transfer_report(results, out)
    log.info("transfer: %d rows in %.0f s -> %s", len(rows), time.time() - t0, out)
    return {"dir": str(out), "results": str(out / RESULTS_FILE), "report": str(out / "report.html"),
            "curve": str(out / "curve.png") if (out / "curve.png").is_file() else None, "rows": rows}


def _train_methods(cfg: PipelineConfig, backbone: str, tasks_dir: str,
                   tasks: list[str]) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """One adapt run per (method, fraction) of the plan: a row per task, and the LoRA modules at 100% by task."""
    from modpipe import adapt

    rows: list[dict[str, Any]] = []
    lora_modules: dict[str, dict[str, str]] = {}  # task -> {"module", "metrics"} of LoRA at 100%
    runs = plan(cfg)
    for i, (method, fraction) in enumerate(runs, 1):
        log.info("transfer: [%d/%d] %s at %g of the train split on %s", i, len(runs), method, fraction, tasks)
        sub = with_adapt(cfg, tasks=tasks, method=method, methods={}, train_fraction=fraction)
        try:
            out = adapt.train_tasks(sub, backbone, tasks_dir)
        except adapt.AdaptError as err:
            rows += [_row(task, method, fraction, None, None, error=str(err)) for task in tasks]
            continue
        for task in tasks:
            if task in out["metrics"]:
                rows.append(_row(task, method, fraction, out["metrics"][task], out["modules"][task]))
                if method == "lora" and fraction == 1.0:
                    lora_modules[task] = {"module": out["modules"][task], "metrics": out["metrics"][task]}
            else:
                rows.append(_row(task, method, fraction, None, None, error=out["failed"].get(task, "not trained")))
    return rows, lora_modules


def _baselines(cfg: PipelineConfig, tasks_dir: str, tasks: list[str], out: Path,
               rows: list[dict[str, Any]]) -> dict[str, Any]:
    """External baselines (py3langid on ``transfer.langid_task``): results by task, a row each."""
    t = cfg.transfer
    baselines: dict[str, Any] = {}
    if t.langid_task in tasks and (Path(tasks_dir) / t.langid_task).is_dir():
        from modpipe.evaluate import langid_baseline

        try:
            baselines[t.langid_task] = langid_baseline.write(Path(tasks_dir) / t.langid_task, out / "langid.json")
            rows.append({"task": t.langid_task, "method": "py3langid (external)", "train_fraction": None,
                         **{k: baselines[t.langid_task].get(k) for k in ROW_METRICS}})
        except Exception as err:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
            log.error("transfer: py3langid baseline failed: %s", err)
            baselines[t.langid_task] = {"error": f"{type(err).__name__}: {err}"}
    return baselines


def _routing(cfg: PipelineConfig, backbone: str, tasks_dir: str, lora: dict[str, dict[str, str]],
             out: Path) -> dict[str, Any]:
    """Per classification task with a fresh LoRA module: the router over the other tasks' LoRA modules vs that
    fresh module (the router's head is a classifier: multilabel and regression tasks are left out, said so)."""
    from modpipe.compose.router import route_vs_fresh
    from modpipe.evaluate.problems import read_problem

    result: dict[str, Any] = {}
    for task in lora:
        sources = {t: v["module"] for t, v in lora.items() if t != task}
        if not sources:
            continue
        problem = read_problem(Path(tasks_dir) / task)["problem"]
        if problem != "classification":
            result[task] = {"error": f"no router for a {problem} task (the router's head is a classifier)"}
            continue
        try:
            result[task] = route_vs_fresh(backbone, sources, Path(tasks_dir) / task, lora[task]["metrics"],
                                          out / task, epochs=cfg.transfer.router_epochs, seed=cfg.seed,
                                          max_length=cfg.adapt.max_length, batch_size=cfg.adapt.batch_size)
        except Exception as err:  # noqa: BLE001 - reported in the results, the table goes on
            log.exception("transfer: router for %s failed", task)
            result[task] = {"error": f"{type(err).__name__}: {err}"}
    return result
