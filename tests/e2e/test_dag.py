"""The whole DAG as the Prefect flow, on a small slice of the default corpus, against a real Prefect server."""

import json
from pathlib import Path

import pytest

from modpipe.paths import REPO_ROOT

SMOKE = str(REPO_ROOT / "recipes" / "smoke.yaml")
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def prefect_api():
    """A real temporary Prefect server (SQLite) for this module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def dag_result(prefect_api, tmp_path_factory):
    from flows.dag import dag_flow

    run_dir = tmp_path_factory.mktemp("dag")
    result = dag_flow(config_path=SMOKE, overrides=[f"run_dir={run_dir}"])
    return run_dir, result


def test_failing_contract_stops_the_dag_before_pretraining(prefect_api, tmp_path):
    """A user's stricter suite fails on the curated docs: the DAG stops, naming the suite, expectation and data."""
    import shutil

    from flows.dag import dag_flow
    from modpipe.contracts import ContractViolation

    suites = tmp_path / "suites"
    shutil.copytree(REPO_ROOT / "data_contracts", suites)
    spec = json.loads((suites / "curated_docs.json").read_text())
    spec["expectations"].append({"type": "expect_column_values_to_be_between",
                                 "kwargs": {"column": "n_chars", "max_value": 10}})
    (suites / "curated_docs.json").write_text(json.dumps(spec))
    run_dir = tmp_path / "run"
    with pytest.raises(ContractViolation) as err:
        dag_flow(config_path=SMOKE, overrides=[f"run_dir={run_dir}", f"contracts.suites_dir={suites}"])
    msg = str(err.value)
    assert "curated_docs" in msg and "expect_column_values_to_be_between" in msg and "n_chars" in msg
    assert "docs" in msg and "index.html" in msg  # names the data and the Data Docs page
    assert not (run_dir / "pretrain").exists()
    assert list(run_dir.glob("contracts/**/index.html"))


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


def test_registry_list_and_report(dag_result):
    import subprocess
    import sys

    run_dir, result = dag_result
    r = subprocess.run(
        [sys.executable, "-m", "modpipe", "registry", "list", "--config", SMOKE, "--set", f"run_dir={run_dir}"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    for reg in result["publish"]["registered"]:
        assert reg["name"] in r.stdout
    report = Path(result["report"]).read_text()
    assert "Modules (test split)" in report and "man_section" in report


def test_rerun_reuses_every_stage(dag_result):
    """Stages are fingerprinted: the plain-Python DAG over the same config returns the same outputs at once."""
    from modpipe.config import load_config
    from modpipe.pipeline import run_all

    run_dir, result = dag_result
    again = run_all(load_config(SMOKE, [f"run_dir={run_dir}"]))
    assert again["pretrain"]["backbone"] == result["pretrain"]["backbone"]
    assert again["adapt"]["modules"] == result["adapt"]["modules"]
    assert [r["version"] for r in again["publish"]["registered"]] == [r["version"] for r in result["publish"]["registered"]]
