"""The module lifecycle against a real MLflow SQLite store, real tiny backbones and real module dirs (adapt's writer):
the one policy check, promotion (better, worse, tie, absent champion), refusals (tampered, incompatible, foreign
backbone behind a forged module.json, symlinks, calibration), names, the alias ledger, loading by alias."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modpipe.config import ConfigError, load_config
from registry_world import (TASK, TINY, make_backbone, make_task, make_tokenizer, resign, train_module,
                            write_data_manifest)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Backbone A (the current one), backbone B (same tokenizer and shape, other weights), one task, and modules:
    ``good`` (trained), ``weak`` (untrained head), ``tie`` (good's weights, a different module.json),
    ``foreign`` (trained on B)."""
    root = tmp_path_factory.mktemp("registry")
    tok = make_tokenizer(root / "tok")
    a, b = make_backbone(root / "backbone_a", tok, seed=0), make_backbone(root / "backbone_b", tok, seed=1)
    tasks = root / "tasks"
    make_task(tasks)
    mods = root / "modules"
    good = train_module(a, tasks, mods, steps=60, tag="good")
    weak = train_module(a, tasks, mods, steps=0, tag="weak")
    tie = root / "tie"
    shutil.copytree(good, tie)
    resign(tie, note="same weights, another module.json")
    foreign = train_module(b, tasks, mods, steps=60, tag="foreign")
    return {"root": root, "tok": tok, "a": a, "b": b, "tasks": tasks, "good": good, "weak": weak, "tie": tie,
            "foreign": foreign, "manifest": write_data_manifest(root)}


def _cfg(tmp_path: Path, *extra: str):
    """Champion mechanics on their own: the baseline bar is off unless a test turns it on."""
    return load_config(overrides=[f"run_dir={tmp_path / 'run'}", "publish.min_metric=0.0",
                                  "publish.require_beat_baseline=false", *extra])


def _publish(cfg, world, module, task=TASK, run_id="test", backbone=None, baselines=None):
    from modpipe.registry import publish

    return publish(cfg, str(backbone or world["a"]), {task: str(module)}, str(world["manifest"]),
                   tasks_dir=world["tasks"], run_id=run_id, baselines=baselines)


def _metric(module: Path, key: str = "test_macro_f1") -> float:
    return json.loads((module / "metrics.json").read_text())[key]


# ---------------------------------------------------------------------------------------------------- the check


def test_one_check_passes_a_real_module_field_by_field(world):
    from modpipe.registry.policy import Rules, check

    v = check(world["good"], world["a"], Rules(threshold=0.5), task_dir=world["tasks"] / TASK)
    assert v.passed, v.reasons
    names = {(f.group, f.name) for f in v.fields}
    assert {("integrity", "files.regular"), ("integrity", "module.json"), ("integrity", "files.declared"),
            ("integrity", "weights"), ("compatibility", "backbone_fingerprint"), ("compatibility", "hidden_size"),
            ("compatibility", "tokenizer_sha256"), ("compatibility", "tokenizer_files"),
            ("compatibility", "libraries"), ("quality", "evaluated"), ("quality", "reproduces"),
            ("quality", "metric"), ("quality", "ece")} <= names
    assert v.value == pytest.approx(_metric(world["good"]), abs=1e-6)  # measured here, reproduced
    assert "module.json" in v.files  # the digest covers module.json itself

    # direction: lower is better, judged on the measured ECE
    low = check(world["good"], world["a"], Rules(metric="test_ece", direction="lower", threshold=0.5, max_ece=None),
                task_dir=world["tasks"] / TASK)
    assert low.passed and low.value == pytest.approx(v.measured["test_ece"])
    high = check(world["good"], world["a"], Rules(metric="test_ece", direction="lower", threshold=-1.0),
                 task_dir=world["tasks"] / TASK)
    assert [f.name for f in high.fields if not f.ok] == ["metric"]
    ece = check(world["good"], world["a"], Rules(max_ece=0.0), task_dir=world["tasks"] / TASK)
    assert [f.name for f in ece.fields if not f.ok] == ["ece"]


def test_the_gate_bounds_the_slice_gap(world, tmp_path):
    """On a real module: the measured gap is the hand-computed one; max_slice_gap below it refuses, at it passes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.metrics import f1_score

    from modpipe.adapt.data import read_split
    from modpipe.evaluate.slices import SLICES_FILE
    from modpipe.registry.policy import Rules, check

    task_dir = tmp_path / TASK
    shutil.copytree(world["tasks"] / TASK, task_dir)
    test = read_split(task_dir, "test", 99)
    half = ["first" if i < len(test.ids) // 2 else "second" for i in range(len(test.ids))]
    assert min(half.count("first"), half.count("second")) >= 10
    pq.write_table(pa.table({"id": test.ids, "half": half}), task_dir / SLICES_FILE)

    v = check(world["good"], world["a"], Rules(threshold=0.0, max_ece=None), task_dir=task_dir)
    preds = dict(zip(v.measured["ids"], v.measured["pred_ids"]))
    f1 = {}
    for name in ("first", "second"):
        ys = [y for y, h in zip(test.label_ids, half) if h == name]
        ps = [preds[i] for i, h in zip(test.ids, half) if h == name]
        f1[name] = f1_score(ys, ps, average="macro", labels=sorted(set(ys)), zero_division=0)
    gap = abs(f1["first"] - f1["second"])
    assert v.measured["test_slice_gap.half"] == pytest.approx(gap)
    assert v.passed and "slice_gap" not in {f.name for f in v.fields}  # not judged unless bounded

    tight = check(world["good"], world["a"], Rules(threshold=0.0, max_ece=None, max_slice_gap=gap - 1e-6),
                  task_dir=task_dir)
    assert [f.name for f in tight.fields if not f.ok] == ["slice_gap"] and "half" in tight.reasons[0]
    loose = check(world["good"], world["a"], Rules(threshold=0.0, max_ece=None, max_slice_gap=gap + 1e-6),
                  task_dir=task_dir)
    assert loose.passed


@pytest.mark.parametrize("case", ["tampered", "symlink", "incompatible", "forged", "libraries", "pickle"])
def test_one_check_refuses(world, tmp_path, case):
    """Each refusal names its field; a module failing integrity or compatibility is never evaluated."""
    from modpipe.registry.policy import Rules, check

    mod = tmp_path / "m"
    shutil.copytree(world["foreign"] if case in ("incompatible", "forged") else world["good"], mod)
    if case == "tampered":
        (mod / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    elif case == "symlink":
        (mod / "adapter_config.json").unlink()
        (mod / "adapter_config.json").symlink_to(world["good"] / "adapter_config.json")
    elif case == "forged":  # foreign weights, module.json edited (and re-signed) to name backbone A
        from modpipe.models.manifest import backbone_facts

        resign(mod, **backbone_facts(world["a"]))
    elif case == "libraries":
        m = json.loads((mod / "module.json").read_text())
        resign(mod, versions={**m["versions"], "peft": "0.1.0"})
    elif case == "pickle":
        (mod / "extra.bin").write_bytes(b"\x80\x04K\x01.")
        resign(mod)
    v = check(mod, world["a"], Rules(threshold=0.0), task_dir=world["tasks"] / TASK)
    failed = {f"{f.group}.{f.name}" for f in v.fields if not f.ok}
    expected = {"tampered": {"integrity.files.declared"}, "symlink": {"integrity.files.regular",
                                                                       "integrity.files.declared"},
                "incompatible": {"compatibility.backbone_fingerprint"}, "forged": {"quality.reproduces"},
                "libraries": {"compatibility.libraries"}, "pickle": {"integrity.weights"}}[case]
    assert expected <= failed, v.reasons
    assert not v.passed
    if case not in ("forged",):
        assert "quality.evaluated" in failed and v.value is None  # never loaded


# ---------------------------------------------------------------------------------------------------- promotion


def test_champion_moves_only_for_an_at_least_as_good_candidate(world, tmp_path):
    """worse -> challenger (champion stays, reason recorded); better and tie -> champion; identical content is one
    version; every move is in the ledger with its run id."""
    from mlflow import MlflowClient

    from modpipe.registry import ledger, store_of

    cfg = _cfg(tmp_path)
    first = _publish(cfg, world, world["weak"], run_id="r1")
    assert [(r["version"], r["alias"]) for r in first["registered"]] == [("1", "champion")]
    assert "no champion yet" in first["decisions"][0]["reason"]

    better = _publish(cfg, world, world["good"], run_id="r2")
    d = better["decisions"][0]
    assert (d["version"], d["alias"], d["champion"]["version"]) == ("2", "champion", "1")
    assert d["candidate"] == pytest.approx(_metric(world["good"]))
    assert d["candidate"] > d["champion"]["value"]

    worse = _publish(cfg, world, world["weak"], run_id="r3")  # v1 again: same content, no new version
    d = worse["decisions"][0]
    assert (d["version"], d["alias"], worse["registered"][0]["new"]) == ("1", "challenger", False)
    assert "worse than champion v2" in d["reason"] and "champion stays at v2" in d["reason"]

    tie = _publish(cfg, world, world["tie"], run_id="r4")
    d = tie["decisions"][0]
    assert (d["version"], d["alias"]) == ("3", "champion") and d["candidate"] == d["champion"]["value"]

    client = MlflowClient(tracking_uri=first["tracking_uri"], registry_uri=first["tracking_uri"])
    aliases = client.get_registered_model("modpipe-toy").aliases
    assert aliases == {"champion": 3, "challenger": 1}
    moves = ledger.history(store_of(cfg), "modpipe-toy")
    assert [(m["alias"], m["from"], m["to"], m["run_id"]) for m in moves] == [
        ("champion", "2", "3", "r4"), ("challenger", None, "1", "r3"), ("champion", "1", "2", "r2"),
        ("champion", None, "1", "r1")]
    assert all(m["user"] and m["time"] and m["reason"] for m in moves)

    # lineage: the module version links to the registered backbone, which holds the backbone's files
    mv = client.get_model_version("modpipe-toy", "2")
    assert mv.tags["backbone.name"] == "modpipe-backbone" and mv.tags["backbone.version"] == "1"
    bmv = client.get_model_version("modpipe-backbone", "1")
    from modpipe.models.fingerprint import read_backbone_fingerprint

    assert bmv.tags["backbone_fingerprint"] == read_backbone_fingerprint(world["a"])
    assert {"sha256.model.safetensors", "sha256.tokenizer.json", "sha256.tokenizer_config.json",
            "sha256.config.json"} <= set(bmv.tags)
    assert mv.tags["measured.test_macro_f1"] and mv.tags["gate.metric"] == "test_macro_f1"
    assert len(client.search_model_versions("name = 'modpipe-backbone'")) == 1


def _baselines(world, tmp_path: Path, predict) -> Path:
    """The baseline step's own output on the world's task, with its tfidf_lr predictions replaced by
    ``predict(label_ids)`` (a baseline as strong or as weak as a test needs)."""
    import pandas as pd

    from modpipe.baseline import compute

    out = tmp_path / "baseline"
    out.mkdir(parents=True)
    compute(load_config(overrides=[f"run_dir={tmp_path / 'run'}"]), world["tasks"], out)
    preds = out / TASK / "tfidf_lr.parquet"
    df = pd.read_parquet(preds)
    df.assign(pred_id=predict(df["label_id"].to_numpy())).to_parquet(preds)
    return out / "baselines.json"


def test_a_candidate_below_its_baseline_stays_challenger(world, tmp_path):
    """The default gate: a module below the classical baseline beyond noise is registered as challenger with the
    numbers; one within noise of it (here: its own predictions) may take champion; a missing baseline fails
    closed; ``publish.require_beat_baseline=false`` turns the bar off."""
    from modpipe.registry import store_of

    perfect = _baselines(world, tmp_path / "perfect", lambda y: y)  # every test label right
    cfg = _cfg(tmp_path, "publish.require_beat_baseline=true")
    out = _publish(cfg, world, world["weak"], run_id="r1", baselines=perfect)
    d = out["decisions"][0]
    assert (d["version"], d["alias"]) == ("1", "challenger"), d
    assert "below the tfidf_lr baseline beyond noise" in d["reason"] and "no champion" in d["reason"]
    assert d["baseline"]["baseline"] == 1.0 and d["baseline"]["high"] < 0 and d["baseline"]["rows"] == 40
    assert store_of(cfg).alias_version("modpipe-toy", "champion") is None
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=out["tracking_uri"]).get_model_version("modpipe-toy", "1").tags
    assert float(tags["gate.baseline.baseline"]) == 1.0 and float(tags["gate.baseline.high"]) < 0

    # the good module against a baseline that predicts exactly what the module predicts: a tie, not below
    import pandas as pd

    mine = pd.read_parquet(world["good"] / "test_predictions.parquet")
    same = _baselines(world, tmp_path / "same", lambda y: mine["pred_id"].to_numpy())
    out = _publish(cfg, world, world["good"], run_id="r2", baselines=same)
    d = out["decisions"][0]
    assert d["alias"] == "champion" and d["baseline"]["delta"] == 0.0, d

    # fail closed: no baseline output at all -> challenger, with the reason; a baseline of another split too
    out = _publish(cfg, world, world["tie"], run_id="r3")
    d = out["decisions"][0]
    assert d["alias"] == "challenger" and "no baseline step output" in d["reason"], d
    stale = json.loads(same.read_text())
    stale[TASK]["split"]["test_digest"] = "0" * 64
    same.write_text(json.dumps(stale))
    out = _publish(cfg, world, world["tie"], run_id="r4", baselines=same)
    assert out["decisions"][0]["alias"] == "challenger" and "another test split" in out["decisions"][0]["reason"]

    off = _cfg(tmp_path / "off")
    out = _publish(off, world, world["weak"], run_id="r5", baselines=perfect)
    assert out["decisions"][0]["alias"] == "champion" and out["decisions"][0]["baseline"] is None


def test_a_champion_that_cannot_be_loaded_counts_as_absent(world, tmp_path):
    from modpipe.registry.store import local_path

    cfg = _cfg(tmp_path)
    v1 = _publish(cfg, world, world["good"])["registered"][0]
    weights = local_path(v1["source"]) / "adapter_model.safetensors"
    weights.write_bytes(b"tampered")  # the champion's stored files no longer match the registry
    out = _publish(cfg, world, world["weak"])
    d = out["decisions"][0]
    assert (d["version"], d["alias"]) == ("2", "champion")
    assert "champion v1 counts as absent" in d["reason"] and "sha256 mismatch" in d["reason"]


def test_refused_candidates_register_nothing(world, tmp_path):
    from modpipe.models.manifest import backbone_facts

    forged = tmp_path / "forged"
    shutil.copytree(world["foreign"], forged)
    resign(forged, **backbone_facts(world["a"]))
    cfg = _cfg(tmp_path, "publish.min_metric=0.9")
    from modpipe.registry import publish

    out = publish(cfg, str(world["a"]), {TASK: str(forged), "weak": str(world["weak"]),
                                         "foreign": str(world["foreign"]), "Bad'name": str(world["good"])},
                  str(world["manifest"]), tasks_dir=world["tasks"])
    assert out["registered"] == []
    reasons = {r["task"]: r["reason"] for r in out["rejected"]}
    assert "quality.reproduces" in reasons[TASK]
    assert "not a valid name" in reasons["Bad'name"]
    # tasks without their own split folder cannot be measured: refused, not trusted
    assert "quality.evaluated" in reasons["weak"] and "compatibility.backbone_fingerprint" in reasons["foreign"]
    assert not (cfg.run_path / "registry" / "mlflow.db").exists()


def test_unusable_backbone_rejects_everything(world, tmp_path):
    backbone = tmp_path / "backbone"
    shutil.copytree(world["a"], backbone)
    (backbone / "config.json").write_text((backbone / "config.json").read_text().replace("32", "33", 1))
    out = _publish(_cfg(tmp_path), world, world["good"], backbone=backbone)
    assert out["registered"] == [] and "backbone files changed" in out["rejected"][0]["reason"]
    assert not (tmp_path / "run" / "registry" / "mlflow.db").exists()  # nothing to publish, no store touched


# ---------------------------------------------------------------------------------------------------- names, config


@pytest.mark.parametrize("override", ["publish.alias=", "publish.alias=v2", "publish.alias=latest",
                                      "publish.challenger_alias=champion", "publish.model_prefix=te'am",
                                      "publish.max_ece=2", "publish.alias=Champion"])
def test_bad_publish_config_fails_before_anything(override):
    with pytest.raises(ConfigError, match="publish"):
        load_config(overrides=[override])


def test_a_quoted_name_in_the_store_does_not_break_listing(world, tmp_path):
    from mlflow import MlflowClient

    from modpipe.registry import list_modules

    cfg = _cfg(tmp_path)
    out = _publish(cfg, world, world["good"])
    client = MlflowClient(tracking_uri=out["tracking_uri"], registry_uri=out["tracking_uri"])
    client.create_registered_model("modpipe-it's")  # written by something else, before names were checked
    rows = list_modules(cfg)
    assert {(r["name"], r["status"]) for r in rows} >= {("modpipe-toy", "READY"), ("modpipe-it's", "invalid name")}


# ---------------------------------------------------------------------------------------------------- consumers


def test_load_by_alias_from_a_fresh_process_with_only_the_tracking_uri(world, tmp_path):
    cfg = _cfg(tmp_path)
    out = _publish(cfg, world, world["good"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODPIPE", "MLFLOW"))}
    env.update(MLFLOW_TRACKING_URI=out["tracking_uri"], MODPIPE_CACHE=str(tmp_path / "cache"))
    code = ("import json, modpipe.registry as r; m = r.load('models:/modpipe-toy@champion');"
            "print(json.dumps({'v': m.version, 'bb': str(m.backbone_dir), 'p': m.predict(['grep sed the page'])}))")
    shutil.move(str(world["a"]), str(tmp_path / "moved"))  # the run's backbone dir is not needed
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    finally:
        shutil.move(str(tmp_path / "moved"), str(world["a"]))
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["v"] == "1" and got["bb"].startswith(str(tmp_path / "cache"))
    assert got["p"][0]["label"] == "alpha" and sum(got["p"][0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_loaders_refuse_what_the_check_refuses(world, tmp_path):
    from modpipe.registry import PolicyError, RegistryError, load, resolve
    from modpipe.registry.store import local_path

    cfg = _cfg(tmp_path, "publish.alias=prod", "publish.model_prefix=team")
    out = _publish(cfg, world, world["good"])
    uri, cache = out["tracking_uri"], tmp_path / "cache"
    assert load("team-toy@prod", uri, cache).version == "1"
    assert Path(resolve(cfg, TASK, "prod")) == Path(resolve(cfg, TASK, 1))
    with pytest.raises(RegistryError, match="no version 'champion'"):
        resolve(cfg, TASK, "champion")
    stored = local_path(out["registered"][0]["source"])
    manifest = json.loads((stored / "module.json").read_text())
    (stored / "module.json").write_text(json.dumps({**manifest, "lr": 1.0}))  # module.json is covered too
    shutil.rmtree(cache)
    with pytest.raises((PolicyError, RegistryError), match="sha256 mismatch for .*module.json"):
        load("team-toy@prod", uri, cache)


# ---------------------------------------------------------------------------------------------------- ledger CLI


def _cli(*args: str):
    from typer.testing import CliRunner

    from modpipe.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_history_rollback_promote_at_verify_through_the_cli(world, tmp_path):
    import time

    from modpipe.registry import ledger, store_of

    cfg = _cfg(tmp_path)
    sets = ["--set", f"run_dir={cfg.run_dir}", "--set", "publish.min_metric=0.0"]
    before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    _publish(cfg, world, world["weak"], run_id="nightly-1")
    time.sleep(1.1)
    between = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    time.sleep(1.1)
    _publish(cfg, world, world["good"], run_id="nightly-2")
    store = store_of(cfg)
    assert store.alias_version("modpipe-toy", "champion") == "2"

    r = _cli("registry", "history", "modpipe-toy", "--json", *sets)
    assert r.exit_code == 0, r.output
    moves = json.loads(r.stdout)
    assert [(m["from"], m["to"], m["run_id"]) for m in moves] == [("1", "2", "nightly-2"), (None, "1", "nightly-1")]

    for when, version in ((before, None), (between, "1"), ("2999-01-01T00:00:00+00:00", "2")):
        r = _cli("registry", "at", "modpipe-toy@champion", "--time", when, *sets)
        assert r.exit_code == 0 and json.loads(r.stdout)["version"] == version, (when, r.output)

    r = _cli("registry", "rollback", "modpipe-toy", "--reason", "v2 misbehaves in production", *sets)
    assert r.exit_code == 0, r.output
    undo = json.loads(r.stdout)
    assert (undo["kind"], undo["from"], undo["to"]) == ("rollback", "2", "1")
    assert undo["undoes"] == moves[0]["id"] and store.alias_version("modpipe-toy", "champion") == "1"

    r = _cli("registry", "promote", "modpipe-toy", "2", "--reason", "fixed upstream", *sets)
    assert r.exit_code == 0, r.output
    assert store.alias_version("modpipe-toy", "champion") == "2"
    kinds = [(m["kind"], m["to"]) for m in ledger.history(store, "modpipe-toy", "champion")]
    assert kinds == [("promote", "2"), ("rollback", "1"), ("publish", "2"), ("publish", "1")]
    # a rollback now undoes the manual promote, the next one the first rollback's target's own promotion
    assert ledger.rollback(store, "modpipe-toy", "champion")["to"] == "1"

    r = _cli("registry", "verify", "modpipe-toy@champion", "--json", *sets)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["passed"] and out["version"] == "1" and out["backbone"]["name"] == "modpipe-backbone"
    r = _cli("registry", "verify", "modpipe-toy/2", "--tasks-dir", str(world["tasks"]), *sets)
    assert r.exit_code == 0 and "reproduces" in r.stdout and "passes" in r.stdout, r.output
    r = _cli("registry", "list", *sets)
    assert r.exit_code == 0 and "modpipe-backbone" in r.stdout and "champion" in r.stdout, r.output


# ---------------------------------------------------------------------------------------------------- concurrency


def _distinct(world, root: Path, n: int) -> list[Path]:
    """``n`` modules with distinct content (good's weights, module.json notes differ): all tie on the metric."""
    out = []
    for i in range(n):
        m = root / f"m{i:02d}"
        shutil.copytree(world["good"], m)
        resign(m, note=f"publisher {i}")
        out.append(m)
    return out


def _assert_twenty_versions(results, uri: str, world, tmp_path):
    from mlflow import MlflowClient

    from modpipe.registry import load

    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors[:3]
    assert all(r["rejected"] == [] and len(r["registered"]) == 1 for r in results), results[:2]
    versions = sorted(int(r["registered"][0]["version"]) for r in results)
    assert versions == list(range(1, 21)) and all(r["registered"][0]["new"] for r in results)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert len(client.search_model_versions("name = 'modpipe-toy'")) == 20
    assert len(client.search_model_versions("name = 'modpipe-backbone'")) == 1
    # every candidate ties the champion: each took champion in turn, every move in the ledger, none lost
    tags = client.get_registered_model("modpipe-toy").tags
    moves = sorted(json.loads(v)["to"] for k, v in tags.items() if k.startswith("alias_move."))
    assert sorted(moves, key=int) == [str(v) for v in range(1, 21)]
    # the store is usable afterwards: a new version, and a consumer loads the champion
    again = _publish(_cfg(tmp_path, f"publish.tracking_uri={uri}",
                          f"publish.artifact_location={(tmp_path / 'late').as_uri()}"), world, world["weak"])
    assert again["registered"][0]["version"] == "21" and again["registered"][0]["alias"] == "challenger"
    champion = client.get_registered_model("modpipe-toy").aliases["champion"]
    assert load("modpipe-toy@champion", uri, tmp_path / "cache").version == str(champion)


def test_twenty_concurrent_publishes_to_a_fresh_sqlite_store(world, tmp_path):
    from registry_world import publish_concurrently

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    results = publish_concurrently(uri, None, world["a"], _distinct(world, tmp_path / "mods", 20), world["manifest"],
                                   tmp_path / "out")
    _assert_twenty_versions(results, uri, world, tmp_path)


@pytest.mark.integration
def test_twenty_concurrent_publishes_to_a_real_mlflow_server(world, tmp_path, free_port):
    import time
    import urllib.request

    from registry_world import publish_concurrently

    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "art"),
         "--workers", "1"], cwd=store, stdout=subprocess.DEVNULL, stderr=open(store / "server.log", "w"))
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, (store / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        results = publish_concurrently(uri, None, world["a"], _distinct(world, tmp_path / "mods", 20),
                                       world["manifest"], tmp_path / "out")
        assert results[0].get("tracking_uri") == uri
        source = results[0]["registered"][0]["source"]
        assert source.startswith("mlflow-artifacts:"), source  # uploaded over HTTP, not a shared path
        _assert_twenty_versions(results, uri, world, tmp_path)
    finally:
        server.terminate()
        server.wait(30)


# ---------------------------------------------------------------------------------------------------- predict, serve


def test_modpipe_predict_on_a_file_from_a_fresh_process(world, tmp_path, ray_local):
    """``modpipe predict`` with only the tracking URI (no config, no run dir): Ray Data batches, hardened readers
    (bad rows quarantined with their line), Parquet out with label, probabilities and the module version."""
    import pyarrow.parquet as pq

    out = _publish(_cfg(tmp_path), world, world["good"])
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + "\n".join([
        json.dumps({"id": "a", "text": "grep sed the page"}), "{not json", json.dumps({"id": "b", "text": 7}),
        json.dumps({"id": "c", "text": "ssh rsync the options"}), "[" * 10000,
        json.dumps({"id": "d", "text": "[" * 10000}),
    ]).encode() + b"\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODPIPE", "MLFLOW"))}
    env.update(MLFLOW_TRACKING_URI=out["tracking_uri"], MODPIPE_CACHE=str(tmp_path / "cache"),
               RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    r = subprocess.run([sys.executable, "-m", "modpipe", "predict", "--model", "modpipe-toy@champion", "--input",
                        str(src), "--output", str(tmp_path / "pred.parquet")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["version"] == "1" and summary["predicted"] == 3 and summary["quarantined"] == 3
    rows = pq.read_table(tmp_path / "pred.parquet").to_pylist()
    assert [x["id"] for x in rows] == ["a", "c", "d"]
    assert [x["label"] for x in rows[:2]] == ["alpha", "beta"]
    assert all(x["version"] == "1" and x["model"] == "modpipe-toy" and x["labels"] == ["alpha", "beta"] and
               abs(sum(x["probabilities"]) - 1) < 1e-4 for x in rows)
    bad = [json.loads(line) for line in (tmp_path / "pred.parquet.quarantine.jsonl").read_text().splitlines()]
    assert sorted((b["line"], b["reason"]) for b in bad)[:2] == [(2, "malformed_json"), (3, "bad_type")]
    assert sorted(b["line"] for b in bad)[2] == 5  # 10,000 nested brackets: quarantined, not a crash
    assert not list(tmp_path.glob(".pred.parquet*"))  # no spool or temp file left


def test_pyfunc_served_over_http_by_mlflow_models_serve(world, tmp_path, free_port):
    """Each version is an MLflow pyfunc written as models-from-code (no pickle): ``mlflow models serve -m
    models:/NAME@ALIAS --env-manager local`` on 127.0.0.1 answers real requests."""
    import time
    import urllib.request

    from modpipe.registry.store import local_path

    out = _publish(_cfg(tmp_path, "publish.alias=prod"), world, world["good"])
    model_dir = local_path(out["registered"][0]["source"]).parent.parent
    assert (model_dir / "MLmodel").is_file() and (model_dir / "pyfunc_model.py").is_file()
    assert not [p for p in model_dir.rglob("*") if p.suffix in (".pkl", ".pickle")]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODPIPE", "MLFLOW"))}
    env.update(MLFLOW_TRACKING_URI=out["tracking_uri"], MODPIPE_CACHE=str(tmp_path / "cache"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")  # an activated venv
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
                               "models:/modpipe-toy@prod", "--env-manager", "local", "-h", "127.0.0.1", "-p",
                               str(port)], env=env, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                if urllib.request.urlopen(f"{url}/ping", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        body = json.dumps({"dataframe_records": [{"text": "grep sed the page"}, {"text": "ssh rsync the flag"}]})
        req = urllib.request.Request(f"{url}/invocations", body.encode(), {"Content-Type": "application/json"})
        got = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
    assert [p["label"] for p in got] == ["alpha", "beta"]
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-4 and p["module_digest"] == out["registered"][0]["module_digest"]
               for p in got)


# ---------------------------------------------------------------------------------------------------- matrix


def test_compatibility_matrix_modules_by_backbones(world, tmp_path):
    cfg = _cfg(tmp_path)
    _publish(cfg, world, world["good"])  # on backbone A (v1)
    on_b = _publish(cfg, world, world["foreign"], backbone=world["b"])  # trained on B, published with B (v2)
    assert on_b["registered"][0]["backbone"]["version"] == "2"
    page = tmp_path / "matrix.html"
    r = _cli("registry", "matrix", "--out", str(page), "--set", f"run_dir={cfg.run_dir}", "--set",
             "publish.min_metric=0.0")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert [b["version"] for b in m["backbones"]] == ["1", "2"]
    cells = {(c["version"], c["backbone"]): c for c in m["cells"]}
    assert cells[("1", "1")]["loads"] and cells[("2", "2")]["loads"]
    assert cells[("1", "1")]["linked"] and not cells[("1", "2")]["linked"]
    for off in (("1", "2"), ("2", "1")):
        assert not cells[off]["loads"] and "compatibility.backbone_fingerprint" in cells[off]["decided_by"]
    text = page.read_text()
    assert "backbone v2" in text and "refused" in text and "compatibility.backbone_fingerprint" in text
