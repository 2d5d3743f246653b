"""Names (task, module, alias, registered model, run id, step) match one safe pattern wherever they come from:
a config field, a folder read from disk, a step of the DAG, a generated run id."""

from __future__ import annotations

import json

import pytest

from modpipe.config import ConfigError, load_config
from modpipe.config_base import NAME_PATTERN, check_name, is_name

HOSTILE = ["../../../../escaped", "a'b", 'a"b', "A", "-lead", "_lead", "a b", "a/b", "a\\b", "a.b", "", "x" * 65,
           "é", "a\nb", "a;b", "a=b", "a`b", "."]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_not_names(name):
    assert not is_name(name)
    with pytest.raises(ValueError, match="not a valid name"):
        check_name(name, "task")


@pytest.mark.parametrize("name", ["man_section", "a", "0", "py-package", "x" * 64, "20261205t212400z-a1b2c3"])
def test_ordinary_names_pass(name):
    assert check_name(name) == name


def test_every_step_and_generated_run_id_is_a_name():
    from modpipe.executor import new_run_id
    from modpipe.steps import STEPS

    assert all(is_name(s.name) for s in STEPS)
    assert is_name(new_run_id())
    assert NAME_PATTERN == r"[a-z0-9][a-z0-9_-]{0,63}"


@pytest.mark.parametrize("override, field", [
    ('tasks.specs=[{name: "../../../../escaped", kind: man_section}]', "tasks.specs.0.name"),
    ("""tasks.specs=[{name: "it's", kind: man_section}]""", "tasks.specs.0.name"),
    ('tasks.specs=[{name: ok, kind: man_section}, {name: ok, kind: py_package}]', "tasks.specs"),
    ('adapt.tasks=[man_section, "../x"]', "adapt.tasks.1"),
    ("""adapt.methods={"a'b": lora}""", "adapt.methods"),
    ('transfer.tasks=["A"]', "transfer.tasks.0"),
    ('transfer.langid_task="x y"', "transfer.langid_task"),
])
def test_name_fields_refuse_unsafe_names(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as err:
        load_config(overrides=[override])
    assert "not a valid name" in str(err.value) or "unique" in str(err.value)


def test_adapt_skips_task_folders_whose_names_are_unsafe(tmp_path):
    """A folder that someone put into tasks_dir by hand is not a task unless its name is a name."""
    from modpipe.adapt.data import list_tasks

    for name in ("good_task", "Bad Task", "it's"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "labels.json").write_text(json.dumps(["a", "b"]))
    assert list_tasks(tmp_path) == ["good_task"]


@pytest.mark.parametrize("run_id", ["../../escaped", "Run 1", "a'b"])
def test_a_run_id_that_is_not_a_name_is_refused_before_anything_is_written(tmp_path, run_id):
    from modpipe import pipeline

    run_dir = tmp_path / "run"
    cfg = load_config(overrides=[f"run_dir={run_dir}"])
    with pytest.raises(ValueError, match="run id .* is not a valid name"):
        pipeline.run(cfg, ["curate"], run_id=run_id)
    assert not run_dir.exists() and not list(tmp_path.rglob("*.json"))
