import pytest

from modpipe.config import ConfigError, PipelineConfig, load_config
from modpipe.lineage import StepDir, fingerprint


def test_defaults_load_and_match_schema():
    cfg = load_config()
    assert isinstance(cfg, PipelineConfig)
    assert cfg.corpus.source == "man"
    assert cfg.pretrain.zero_stage == 2
    assert set(cfg.adapt.tasks) == {"man_section", "man_language", "py_package"}


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
