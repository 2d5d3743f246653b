import json
import subprocess
import sys


def _modpipe(*args):
    return subprocess.run([sys.executable, "-m", "modpipe", *args], capture_output=True, text=True, timeout=120)


def test_config_command_applies_overrides():
    r = _modpipe("config", "--set", "pretrain.steps=7")
    assert r.returncode == 0, r.stderr
    assert "steps: 7" in r.stdout


def test_invalid_config_exits_nonzero_with_one_line_reason():
    r = _modpipe("pretrain", "--set", "pretrain.steps=abc")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pretrain.steps" in lines[0] and lines[0].startswith("error:")


def test_runtime_failure_exits_nonzero(tmp_path):
    # a user corpus with no readable file: curate fails cleanly with one line, not a traceback
    r = _modpipe("curate", "--set", "corpus.source=files", "--set", f"corpus.paths=[{tmp_path / 'missing'}]",
                 "--set", f"run_dir={tmp_path / 'run'}", "--set", "corpus.max_docs_per_section=5")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "error:" in r.stderr.strip().splitlines()[-1]
