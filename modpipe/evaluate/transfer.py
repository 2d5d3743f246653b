"""Transfer evaluation: what each module method buys and costs, per task, through the adapt stage itself.

``run(cfg, backbone, tasks_dir) -> {"dir", "results", "report", "curve", "rows"}`` (paths + rows):

1. every ``transfer.methods`` on the whole train split, then every ``transfer.curve_methods`` at each
   ``transfer.fractions`` below 1: one ``modpipe.adapt.run`` per (method, fraction) with ``adapt.method`` and
   ``adapt.train_fraction`` set, all tasks of a run training concurrently.  Module dirs are the adapt stage's own
   (fingerprinted by method, head, freeze policy and fraction), so a rerun, or a DAG run with the same adapt config,
   reuses them;
2. per task, ``transfer.router``: an AdapterFusion-style router over the other tasks' LoRA modules (100% data),
   next to that task's fresh LoRA module (``modpipe.compose.router``);
3. ``transfer.langid_task``: py3langid as an external baseline on the same test split;
4. rows (task x method x fraction: metrics, gap to full fine-tuning in points, trainable %, cost) ->
   ``results.json``; ``modpipe.report.transfer`` draws ``curve.png`` and writes ``report.html``.

Output: ``<run_dir>/transfer/transfer-<fp>`` (fp: the transfer and adapt config, backbone fingerprint, task data).
A failed (method, task) is a row with its error; the others go on.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from modpipe.config import PipelineConfig

log = logging.getLogger("modpipe.transfer")

RESULTS_FILE = "results.json"
REFERENCE = "full"
ROW_METRICS = ("test_accuracy", "test_macro_f1", "test_auroc_ovr", "test_ece", "val_macro_f1", "trainable_params",
               "trainable_pct", "train_seconds", "peak_memory_mb", "latency_ms_per_batch", "n_train")


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


def fingerprint(cfg: PipelineConfig, backbone: str, tasks_dir: str, tasks: list[str]) -> str:
    from modpipe.adapt.data import load_task
    from modpipe.lineage import fingerprint as fp
    from modpipe.models.fingerprint import read_backbone_fingerprint

    digests = {}
    for t in tasks:
        try:
            digests[t] = load_task(tasks_dir, t).digests
        except Exception as err:  # noqa: BLE001 - a bad task is reported by adapt; it still keys the run
            digests[t] = f"unreadable: {err}"
    return fp("transfer", cfg.transfer.model_dump(mode="json"), cfg.adapt.model_dump(mode="json"), cfg.seed,
              read_backbone_fingerprint(backbone), digests)


def run(cfg: PipelineConfig, backbone: str, tasks_dir: str) -> dict[str, Any]:
    """Evaluate (or reuse) the transfer report of ``backbone`` on the tasks in ``tasks_dir``."""
    from modpipe import adapt
    from modpipe.lineage import StepDir
    from modpipe.report.transfer import write_transfer_report

    t = cfg.transfer
    # absolute: Ray Train workers run in their own working directories
    backbone, tasks_dir = str(Path(backbone).resolve()), str(Path(tasks_dir).resolve())
    tasks = list(t.tasks) or adapt.select_tasks(cfg, tasks_dir)
    step = StepDir(cfg.run_path / "transfer", "transfer", fingerprint(cfg, backbone, tasks_dir, tasks))
    if step.done():
        log.info("transfer: reusing %s", step.path)
        return _outputs(step.path)
    t0 = time.time()
    rows: list[dict[str, Any]] = []
    lora_modules: dict[str, dict[str, str]] = {}  # task -> {"module", "metrics"} of LoRA at 100%
    runs = plan(cfg)
    for i, (method, fraction) in enumerate(runs, 1):
        log.info("transfer: [%d/%d] %s at %g of the train split on %s", i, len(runs), method, fraction, tasks)
        sub = with_adapt(cfg, tasks=tasks, method=method, methods={}, train_fraction=fraction)
        try:
            out = adapt.run(sub, backbone, tasks_dir)
        except adapt.AdaptError as err:
            rows += [_row(task, method, fraction, None, None, error=str(err)) for task in tasks]
            continue
        for task in tasks:
            if task in out["metrics"]:
                rows.append(_row(task, method, fraction, out["metrics"][task], out["modules"][task]))
                if method == "lora" and fraction == 1.0:
                    lora_modules[task] = {"module": out["modules"][task], "metrics": out["metrics"][task]}
            else:
                rows.append(_row(task, method, fraction, None, None,
                                 error=out["failed"].get(task, "not trained")))
    with step.building(config={"transfer": t.model_dump(mode="json"), "adapt": cfg.adapt.model_dump(mode="json")},
                       inputs={"backbone": backbone, "tasks_dir": tasks_dir, "tasks": tasks}) as tmp:
        routing = _routing(cfg, backbone, tasks_dir, lora_modules, tmp / "router") if t.router else {}
        for task, cmp in routing.items():
            if "router" in cmp:
                rows.append({"task": task, "method": "router", "train_fraction": 1.0,
                             **{k: cmp["router"].get(k) for k in ROW_METRICS}, "sources": cmp["router"]["sources"]})
        baselines = {}
        if t.langid_task in tasks and (Path(tasks_dir) / t.langid_task).is_dir():
            from modpipe.evaluate import langid_baseline

            try:
                baselines[t.langid_task] = langid_baseline.write(Path(tasks_dir) / t.langid_task, tmp / "langid.json")
                rows.append({"task": t.langid_task, "method": "py3langid (external)", "train_fraction": None,
                             **{k: baselines[t.langid_task].get(k) for k in ROW_METRICS}})
            except Exception as err:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
                log.error("transfer: py3langid baseline failed: %s", err)
                baselines[t.langid_task] = {"error": f"{type(err).__name__}: {err}"}
        add_gaps(rows, t.metric)
        results = {"metric": t.metric, "tasks": tasks, "methods": list(t.methods), "fractions": list(t.fractions),
                   "curve_methods": list(t.curve_methods), "rows": rows, "routing": routing,
                   "baselines": baselines, "backbone": backbone, "seconds": round(time.time() - t0, 1)}
        (tmp / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=str))
        write_transfer_report(results, tmp)
    log.info("transfer: %d rows in %.0f s -> %s", len(rows), time.time() - t0, step.path)
    return _outputs(step.path)


def _routing(cfg: PipelineConfig, backbone: str, tasks_dir: str, lora: dict[str, dict[str, str]],
             out: Path) -> dict[str, Any]:
    """Per task with a fresh LoRA module: the router over the other tasks' LoRA modules vs that fresh module."""
    from modpipe.compose.router import route_vs_fresh

    result: dict[str, Any] = {}
    for task in lora:
        sources = {t: v["module"] for t, v in lora.items() if t != task}
        if not sources:
            continue
        try:
            result[task] = route_vs_fresh(backbone, sources, Path(tasks_dir) / task, lora[task]["metrics"],
                                          out / task, epochs=cfg.transfer.router_epochs, seed=cfg.seed,
                                          max_length=cfg.adapt.max_length, batch_size=cfg.adapt.batch_size)
        except Exception as err:  # noqa: BLE001 - reported in the results, the table goes on
            log.exception("transfer: router for %s failed", task)
            result[task] = {"error": f"{type(err).__name__}: {err}"}
    return result


def _outputs(path: Path) -> dict[str, Any]:
    results = json.loads((path / RESULTS_FILE).read_text())
    return {"dir": str(path), "results": str(path / RESULTS_FILE), "report": str(path / "report.html"),
            "curve": str(path / "curve.png") if (path / "curve.png").is_file() else None, "rows": results["rows"]}
