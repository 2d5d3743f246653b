"""Baseline step: each task's classical baselines, on the same splits the modules train and test on.

``run(cfg, ctx)`` (the ``baseline`` step) -> ``{"baselines": <baselines.json>, "tasks": {task: dir}}``;
``compute(cfg, tasks_dir, out)`` is the same without the contract gate. Per task, two baselines fit on the train
split and scored on the test split with the modules' own metric code (``evaluate.scoring``), per problem
(``baseline.fit``):

- ``majority``: the most frequent train label (multilabel: each label's train frequency as its probability;
  regression: the train mean);
- ``tfidf_lr``: scikit-learn TF-IDF over character 2-4-grams of the first ``baseline.max_chars`` characters,
  then logistic regression (multilabel: one-vs-rest; regression: ridge), a few seconds per task on 2 cores.

Each baseline's test predictions go to ``<task>/<baseline>.parquet`` (``evaluate.scoring``'s columns) so that a
module can be compared with it on the very same rows (``paired.paired_bootstrap``: module minus baseline on
resamples of the test rows). The publish gate (``registry.policy``'s ``promotion.baseline`` field) makes that comparison once per
candidate and records it; the run report shows the gate's record. ``baselines.json`` records the sha256 of each
task's test split and labels, so a comparison against a baseline of another split is refused rather than made.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any


from modpipe.config import PipelineConfig
from modpipe.lineage import sha256_file

log = logging.getLogger("modpipe.baseline")

BASELINES_FILE = "baselines.json"
BASELINES = ("majority", "tfidf_lr")


def run(cfg: PipelineConfig, ctx) -> dict[str, Any]:
    from modpipe.gates import require_contracts

    require_contracts(ctx)
    return compute(cfg, ctx.inputs["curate"]["tasks_dir"], ctx.out)


def compute(cfg: PipelineConfig, tasks_dir: str | Path, out: Path) -> dict[str, Any]:
    from modpipe.adapt.data import TaskDataError, list_tasks, load_task
    from modpipe.evaluate.problems import get

    out = Path(out)
    results: dict[str, Any] = {}
    for name in list_tasks(tasks_dir):
        try:
            task = load_task(tasks_dir, name)
        except TaskDataError as err:
            results[name] = {"error": str(err)}
            log.warning("baseline: %s skipped: %s", name, err)
            continue
        (out / name).mkdir(parents=True)
        results[name] = {b: _fit_score(cfg, task, b, out / name) for b in BASELINES}
        results[name]["problem"] = task.problem
        results[name]["split"] = {"test_digest": sha256_file(Path(tasks_dir) / name / "test.parquet"),
                                  "labels_digest": sha256_file(Path(tasks_dir) / name / "labels.json")}
        key = f"test_{get(task.problem).gate_metric}"
        log.info("baseline: %s (%s): majority %s %.3f, TF-IDF %s %s %.3f", name, task.problem, key,
                 results[name]["majority"][key] or 0.0, "+ LR" if task.problem != "regression" else "+ ridge",
                 key, results[name]["tfidf_lr"][key] or 0.0)
    (out / BASELINES_FILE).write_text(json.dumps(results, indent=2))
    return {"baselines": str(out / BASELINES_FILE),
            "tasks": {t: str(out / t) for t, r in results.items() if "error" not in r}}


def _fit_score(cfg: PipelineConfig, task, kind: str, out: Path) -> dict[str, Any]:
    """One baseline fit on the train split, its scores on val (multilabel: the decision threshold is chosen
    there, as for a module) and test, scored by the modules' own code (``evaluate.scoring``)."""
    from modpipe.baseline.fit import fit_predict
    from modpipe.evaluate.problems import choose_threshold
    from modpipe.evaluate.scoring import score_split

    train, val, test = (task.splits[s] for s in ("train", "val", "test"))
    t0 = time.perf_counter()
    val_scores, test_scores = fit_predict(cfg, kind, task, train, [val.texts, test.texts])
    seconds = time.perf_counter() - t0
    manifest = {"problem": task.problem, "labels": task.labels,
                "target_scale": {"target_mean": 0.0, "target_std": 1.0}}  # baselines predict in the target's units
    if task.problem == "multilabel":
        manifest["decision_threshold"] = choose_threshold(val.targets, val_scores)
    scored = score_split(manifest, test, test_scores, out / f"{kind}.parquet")
    return {**scored["metrics"], "n_train": len(train.texts), "n_test": len(test.texts),
            "predictions": f"{kind}.parquet", "train_seconds": round(seconds, 3),
            **({"threshold": manifest["decision_threshold"]} if "decision_threshold" in manifest else {})}


from modpipe.baseline.paired import PAIRED, PAIRED_METRICS, _accuracy, _macro_f1, compare, paired_bootstrap  # noqa: E402

__all__ = ["BASELINES", "BASELINES_FILE", "PAIRED", "PAIRED_METRICS", "compare", "compute", "paired_bootstrap",
           "run", "_accuracy", "_macro_f1"]
