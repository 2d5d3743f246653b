import pytest

from modpipe.config import ConfigError, PipelineConfig, load_config
from modpipe.lineage import StepDir, fingerprint
from modpipe.paths import REPO_ROOT


def test_defaults_load_and_match_schema():
    cfg = load_config()
    assert isinstance(cfg, PipelineConfig)
    assert cfg.corpus.source == "man"
    assert cfg.pretrain.zero_stage == 2
    assert cfg.adapt.tasks == []  # every task curate builds
    assert [s.name for s in cfg.tasks.specs] == ["man_section", "man_language", "py_package"]


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "my.yaml"
    p.write_text("pretrain:\n  steps: 9\nadapt:\n  lora:\n    r: 4\n")
    cfg = load_config(p, ["pretrain.steps=50", "adapt.lora.alpha=32", "corpus.sections=[1,8]"])
    assert cfg.pretrain.steps == 50
    assert cfg.adapt.lora.r == 4 and cfg.adapt.lora.alpha == 32
    assert cfg.corpus.sections == [1, 8]


@pytest.mark.parametrize("override, field", [
    ("pretrain.steps=abc", "pretrain.steps"),
    ("pretrain.stepz=3", "pretrain.stepz"),
    ("tasks.test_frac=0.9", "tasks.test_frac"),
])
def test_invalid_config_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(overrides=[override])


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(overrides=["pretrain.steps"])


def test_stepdir_is_atomic_and_reused(tmp_path):
    fp = fingerprint({"a": 1})
    assert fp == fingerprint({"a": 1}) and fp != fingerprint({"a": 2})
    step = StepDir(tmp_path, "thing", fp)
    with pytest.raises(RuntimeError):
        with step.building() as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert not step.done() and not [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    with step.building(config={"a": 1}) as tmp:
        (tmp / "out.txt").write_text("ok")
    assert step.done() and (step.path / "out.txt").read_text() == "ok"


def test_stepdir_second_builder_keeps_the_first_result(tmp_path):
    """Two builders of one content-addressed dir: the one that finishes second drops its copy, never the dir."""
    first, second = StepDir(tmp_path, "thing", "f1"), StepDir(tmp_path, "thing", "f1")
    with second.building() as late:
        (late / "out.txt").write_text("second")
        with first.building() as early:
            (early / "out.txt").write_text("first")
        assert (first.path / "out.txt").read_text() == "first"
    assert (first.path / "out.txt").read_text() == "first"
    assert not list(tmp_path.glob(".tmp-*"))


# ---------------------------------------------------------------- ranges and cross-field rules


@pytest.mark.parametrize("override, field, why", [
    ("pretrain.max_failures=-1", "pretrain.max_failures", "greater than or equal to 0"),
    ("pretrain.lr=-0.001", "pretrain.lr", "greater than 0"),
    ("pretrain.lr=0", "pretrain.lr", "greater than 0"),
    ("pretrain.lr=.nan", "pretrain.lr", "finite"),
    ("pretrain.lr=.inf", "pretrain.lr", "finite"),
    ("pretrain.warmup_steps=-1", "pretrain.warmup_steps", "greater than or equal to 0"),
    ("pretrain.weight_decay=-0.1", "pretrain.weight_decay", "greater than or equal to 0"),
    ("pretrain.peak_tflops=0", "pretrain.peak_tflops", "greater than 0"),
    ("adapt.lr=-0.002", "adapt.lr", "greater than 0"),
    ("adapt.method_lr={full: -0.0001}", "adapt.method_lr.full", "greater than 0"),
    ("adapt.method_lr={lora: 0}", "adapt.method_lr.lora", "greater than 0"),
    ("adapt.max_failures=-1", "adapt.max_failures", "greater than or equal to 0"),
    ("adapt.weight_decay=-1", "adapt.weight_decay", "greater than or equal to 0"),
    ("adapt.lora.r=0", "adapt.lora.r", "greater than or equal to 1"),
    ("adapt.lora.dropout=1.5", "adapt.lora.dropout", r"\[0, 1\)"),
    ("adapt.lora.target_modules=[]", "adapt.lora.target_modules", "at least one"),
    ("adapt.ia3.feedforward_modules=[up_proj]", "adapt.ia3.feedforward_modules", "not in ia3.target_modules"),
    ("adapt.prefix.num_virtual_tokens=0", "adapt.prefix.num_virtual_tokens", "greater than or equal to 1"),
    ("adapt.bottleneck.reduction_factor=0", "adapt.bottleneck.reduction_factor", "greater than or equal to 1"),
    ("model.num_heads=3", "model.num_heads", r"must divide model.hidden_size \(128\)"),
    ("model.num_heads=128", "model.num_heads", "must be even"),
    ("model.num_heads=0", "model.num_heads", "greater than or equal to 1"),
    ("model.hidden_size=100", "model.num_heads", "head size .* = 25 must be even"),
    ("model.hidden_size=-128", "model.hidden_size", "greater than or equal to 1"),
    ("model.max_position_embeddings=0", "model.max_position_embeddings", "greater than or equal to 1"),
    ("seed=-1", "seed", "greater than or equal to 0"),
    ("ray.num_cpus=0", "ray.num_cpus", "greater than or equal to 1"),
    ("tasks.min_examples_per_label=0", "tasks.min_examples_per_label", "greater than or equal to 1"),
    ("tasks.specs=[{name: a, kind: man_section, max_chars: 0}]", "tasks.specs.0.max_chars", "greater than or"),
    ("contracts.min_doc_tokens=500000", "contracts.max_doc_tokens", "must be >= min_doc_tokens"),
    ("contracts.min_label_share=0.9", "contracts.max_label_share", "must be >= min_label_share"),
    ("transfer.router_epochs=0", "transfer.router_epochs", "greater than or equal to 1"),
    ("transfer.methods=[]", "transfer.methods", "at least one"),
    ("run_dir_access=world", "run_dir_access", "private"),
])
def test_numeric_ranges_and_cross_field_rules_name_the_field(override, field, why):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    msg = str(err.value)
    assert f"{field}:" in msg, msg
    import re

    assert re.search(why, msg), msg


def test_valid_edges_still_load():
    cfg = load_config(overrides=["pretrain.max_failures=0", "model.hidden_size=96", "model.num_heads=3",
                                 "adapt.lora.dropout=0", "adapt.method_lr={full: 1e-4, lora: 0.01}",
                                 "adapt.ia3.feedforward_modules=[]", "run_dir_access=group-read"])
    assert cfg.model.num_heads == 3 and cfg.adapt.method_lr["lora"] == 0.01 and cfg.run_dir_access == "group-read"


def test_bad_config_stops_the_cli_before_anything_starts(tmp_path):
    """`modpipe run` with a bad config: exit 2, the field named, no run dir created."""
    import subprocess
    import sys

    from modpipe.paths import REPO_ROOT

    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "modpipe", "run", "--engine", "local", "--set", f"run_dir={run_dir}",
                        "--set", "model.num_heads=3", "--set", 'tasks.specs=[{name: "../../x", kind: man_section}]'],
                       capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "model.num_heads" in r.stderr and "tasks.specs.0.name" in r.stderr
    assert not run_dir.exists() and not (tmp_path / "x").exists()


# ---------------------------------------------------------------- run dir permissions


@pytest.mark.parametrize("access, mode", [("private", 0o700), ("group-read", 0o750), ("group-write", 0o2770)])
def test_run_dir_gets_the_configured_mode(tmp_path, access, mode):
    import stat

    from modpipe.rundir import ensure_run_dir

    run_dir = tmp_path / "a" / "run"
    cfg = load_config(overrides=[f"run_dir={run_dir}", f"run_dir_access={access}"])
    assert ensure_run_dir(cfg) == run_dir
    assert stat.S_IMODE(run_dir.stat().st_mode) == mode
    run_dir.chmod(0o777)  # an existing dir left open is tightened
    ensure_run_dir(cfg)
    assert stat.S_IMODE(run_dir.stat().st_mode) == mode


def _noop_step(cfg, ctx):
    (ctx.out / "x.txt").write_text("x")
    return {"x": str(ctx.out / "x.txt")}


def test_executor_creates_a_private_run_dir(tmp_path):
    import stat

    from modpipe.executor import execute
    from modpipe.steps import Step

    run_dir = tmp_path / "run"
    cfg = load_config(overrides=[f"run_dir={run_dir}"])
    res = execute(Step("noop", f"{__name__}:_noop_step", ("seed",)), cfg, {}, run_id="r1")
    assert res.succeeded and stat.S_IMODE(run_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize("recipe", sorted((REPO_ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(recipe):
    """Each recipe validates and runs in its own run dir (runs/<recipe name>): recipes never share steps' dirs."""
    cfg = load_config(str(recipe))
    assert str(cfg.run_dir).rstrip("/").endswith(f"runs/{recipe.stem}"), cfg.run_dir
