"""The whole DAG as the Prefect flow, on a small slice of the default corpus, against a real Prefect server."""

import json
from pathlib import Path

import pytest

from modpipe.paths import REPO_ROOT

SMOKE = str(REPO_ROOT / "recipes" / "smoke.yaml")
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def dag_result(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    from flows.dag import dag_flow

    run_dir = tmp_path_factory.mktemp("dag")
    with prefect_test_harness(server_startup_timeout=120):
        result = dag_flow(config_path=SMOKE, overrides=[f"run_dir={run_dir}"])
    return run_dir, result


def test_dag_leaves_every_artifact(dag_result):
    import mlflow
    import peft
    import pyarrow.parquet as pq
    import transformers

    run_dir, result = dag_result
    assert set(result["timings_s"]) == {"curate", "pretrain", "adapt", "tune", "publish"}

    manifest = json.loads(Path(result["curate"]["manifest"]).read_text())
    assert manifest["total_rows"] > 0 and manifest["shards"]
    shard = Path(result["curate"]["curate_dir"]) / manifest["shards"][0]["path"]
    assert pq.read_table(shard).num_rows == manifest["shards"][0]["rows"]
    assert Path(result["curate"]["data_docs"]).is_file()

    backbone = result["pretrain"]["backbone"]
    model = transformers.AutoModel.from_pretrained(backbone)
    assert model.config.hidden_size == 32

    for task, module_dir in result["adapt"]["modules"].items():
        labels = json.loads((Path(module_dir) / "module.json").read_text())["labels"]
        base = transformers.AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=len(labels))
        peft.PeftModel.from_pretrained(base, module_dir)

    client = mlflow.MlflowClient(tracking_uri=result["publish"]["tracking_uri"])
    names = {m.name for m in client.search_registered_models()}
    assert {r["name"] for r in result["publish"]["registered"]} <= names
    assert result["publish"]["registered"], result["publish"]
    assert Path(result["summary"]).is_file()
