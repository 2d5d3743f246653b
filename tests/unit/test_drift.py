"""Drift between runs: the checks on profiles built by hand (one PSI computed by hand), and real curated runs of
the same data twice (silent), of changed data (flagged, stops consumers), after ``drift accept`` (passes again).

The corpus is real English text from this machine: docstrings of the standard library."""

from __future__ import annotations

import getpass
import importlib
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest

from modpipe.config import ConfigError, load_config
from modpipe.config_drift import DriftConfig
from modpipe.drift.compare import ERROR, OK, WARN, compare, psi
from modpipe.drift.profile import distribution

DOC_MODULES = ("argparse", "collections", "csv", "functools", "logging", "pathlib", "shutil", "subprocess",
               "textwrap", "threading", "zipfile", "tarfile", "ftplib", "imaplib", "smtplib", "configparser")
TASK_MODULES = {"net": ("http.client", "urllib.request", "socketserver"),
                "text": ("string", "difflib", "calendar", "decimal", "fractions")}


def docstrings(modules, min_chars: int = 250) -> list[str]:
    """Docstrings of the public functions and classes of ``modules`` (at least ``min_chars`` long), in order."""
    out = []
    for name in modules:
        mod = importlib.import_module(name)
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj) if getattr(obj, "__module__", None) == mod.__name__ else None
            if doc and len(doc) >= min_chars:
                out.append(doc)
    return out


def profile_of(chars, tokens, labels: dict[str, float] | None = None, cfg: DriftConfig = DriftConfig()) -> dict:
    tasks = {} if labels is None else {"topic": {"examples": 100, "label_shares": labels,
                                                 "example_chars": distribution(np.array(chars), cfg)}}
    return {"schema": 1, "docs": {"count": len(chars), "chars": distribution(np.array(chars), cfg),
                                  "tokens": distribution(np.array(tokens), cfg)},
            "languages": {"en": 0.9, "de": 0.1}, "tasks": tasks, "top_tokens": [["the", 0.1], ["a", 0.05]]}


# --- the checks -------------------------------------------------------------------------------------------------


def test_psi_on_the_reference_edges_equals_the_hand_computed_value():
    cfg = DriftConfig(bins=4)
    ref = distribution(np.arange(1, 101), cfg)  # 1..100: quartile edges 25.75, 50.5, 75.25
    assert ref["edges"] == pytest.approx([25.75, 50.5, 75.25])
    current = [10] * 10 + [40] * 20 + [60] * 30 + [90] * 40  # shares 0.1 0.2 0.3 0.4 against 0.25 each
    value, cur, base = psi(current, ref)
    by_hand = sum((c - 0.25) * math.log(c / 0.25) for c in (0.1, 0.2, 0.3, 0.4))  # = 0.2282...
    assert cur == pytest.approx([0.1, 0.2, 0.3, 0.4]) and base == pytest.approx([0.25] * 4)
    assert value == pytest.approx(by_hand) and round(by_hand, 4) == 0.2282
    # the same PSI through compare: past psi_warn (0.1), below psi_error (0.25) -> a warning with that value
    checks = compare(profile_of(current, current, cfg=cfg), profile_of(range(1, 101), range(1, 101), cfg=cfg), cfg)
    doc = next(c for c in checks if c.subject == "document chars")
    assert doc.severity == WARN and doc.value == pytest.approx(by_hand, abs=1e-6)


def test_the_same_profile_is_silent_and_moved_ones_are_flagged_with_their_numbers():
    rng = np.random.default_rng(0)
    chars = rng.lognormal(7, 0.5, 2000).round()
    same = profile_of(chars, chars / 4, {"a": 0.5, "b": 0.5})
    assert all(c.severity == OK for c in compare(same, same, DriftConfig()))
    assert all(c.value in (0.0, 1.0) for c in compare(same, same, DriftConfig()) if c.value is not None)

    moved = profile_of(chars * 3, chars * 3 / 4, {"a": 0.58, "b": 0.42})
    moved["languages"] = {"en": 0.6, "de": 0.4}
    moved["tasks"]["extra"] = moved["tasks"]["topic"]
    checks = {(c.check, c.subject): c for c in compare(moved, same, DriftConfig())}
    assert checks[("psi", "document chars")].severity == ERROR and checks[("psi", "document chars")].value > 1
    label = checks[("label_share", "task topic")]
    assert label.severity == WARN and label.value == pytest.approx(0.08) and label.detail == "a: 0.500 -> 0.580"
    lang = checks[("language_share", "documents")]
    assert lang.severity == ERROR and lang.value == pytest.approx(0.3)
    assert checks[("task_added", "extra")].severity == WARN
    strict = compare(moved, same, DriftConfig(label_share_error=0.05, task_change="error", psi_error=None))
    assert {(c.check, c.severity) for c in strict if c.check in ("label_share", "task_added", "psi")} == {
        ("label_share", ERROR), ("task_added", ERROR), ("psi", WARN)}


def test_drift_config_checks_its_thresholds():
    with pytest.raises(ConfigError, match="psi_error"):
        load_config(None, ["drift.psi_warn=0.3", "drift.psi_error=0.2"])
    with pytest.raises(ConfigError, match="drift.task_change"):
        load_config(None, ["drift.task_change=loud"])
    with pytest.raises(ConfigError, match="name"):
        load_config(None, ["name=Has Spaces"])
    from modpipe.drift import _compare

    status, message, checks, ref = _compare(load_config(None, ["drift.enabled=false"]), {})
    assert (status, checks, ref) == ("disabled", [], None) and "drift.enabled: false" in message


# --- real runs --------------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def corpus(root: Path, *, joined: int, net_rows: int) -> list[str]:
    """A docs corpus (each doc ``joined`` docstrings long) and a labelled task file (``net_rows`` rows of label
    ``net``, every ``text`` row) under ``root``; the config overrides that curate them (files, no man pages)."""
    root.mkdir(parents=True)
    docs = docstrings(DOC_MODULES)
    rows = [{"id": f"d{i}", "text": "\n\n".join(docs[i:i + joined])} for i in range(0, len(docs), joined)]
    write_jsonl(root / "docs.jsonl", rows)
    net = [{"id": f"n{i}", "text": t, "label": "net"} for i, t in enumerate(docstrings(TASK_MODULES["net"], 80))]
    text = [{"id": f"t{i}", "text": t, "label": "text"} for i, t in enumerate(docstrings(TASK_MODULES["text"], 80))]
    write_jsonl(root / "task.jsonl", net[:net_rows] + text)
    return ["corpus.source=files", f"corpus.paths=[{root / 'docs.jsonl'}]", "curate.min_chars=50",
            "curate.min_words=5", "curate.vocab_size=400", "curate.seq_len=64", "curate.rows_per_shard=200",
            "tasks.min_examples_per_label=4", "tasks.min_chars=20",
            f"tasks.specs=[{{name: topic, source: files, path: '{root / 'task.jsonl'}'}}]"]


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory, ray_local):
    """A run dir where the same curated data ran twice: (root, config, first summary, second summary)."""
    from modpipe import pipeline

    root = tmp_path_factory.mktemp("drift")
    cfg = load_config(None, [f"run_dir={root / 'run'}", *corpus(root / "a", joined=1, net_rows=1000)])
    first = pipeline.run(cfg, ["drift"])
    return root, cfg, first, pipeline.run(cfg, ["drift"])


def test_first_run_has_no_reference_then_the_same_data_is_silent(first_runs):
    from modpipe.drift import reference

    _, cfg, first, again = first_runs
    assert first["drift"]["status"] == "no_reference"
    assert "no reference yet" in Path(first["drift"]["report"]).read_text()
    prof = json.loads(Path(first["profile"]["profile"]).read_text())
    assert prof["docs"]["count"] > 50 and prof["languages"]["en"] > 0.9
    shares = prof["tasks"]["topic"]["label_shares"]
    assert set(shares) == {"net", "text"} and sum(shares.values()) == pytest.approx(1.0)
    assert len(prof["top_tokens"]) == 50 and prof["docs"]["tokens"]["mean"] > 10
    ref = reference.load(cfg)  # the succeeded run's profile is the reference now
    assert ref is not None and ref.tags["kind"] == "succeeded-run" and ref.tags["run_id"] == first["run_id"]
    # the second run, same data: the check ran again (a new reference), nothing moved
    assert again["steps"]["profile"]["skipped"] and not again["steps"]["drift"]["skipped"]
    assert again["drift"]["status"] == "ok" and again["drift"]["warnings"] == 0 and again["drift"]["errors"] == 0
    checks = json.loads(Path(again["drift"]["checks"]).read_text())["checks"]
    assert {c["check"] for c in checks} >= {"psi", "label_share", "language_share", "top_tokens_jaccard"}
    assert all(c["severity"] == "ok" for c in checks)
    assert all(c["value"] == 0.0 for c in checks if c["check"] in ("psi", "label_share", "language_share"))


def test_changed_data_fails_the_gate_for_consumers_until_accepted(first_runs):
    from typer.testing import CliRunner

    from modpipe import pipeline, steps
    from modpipe.cli import app
    from modpipe.drift import DriftError, reference
    from modpipe.executor import StepFailed, execute, load_result, run_steps
    from modpipe.gates import GateError

    root, first_cfg, _, _ = first_runs
    run_dir = first_cfg.run_path
    before = reference.load(first_cfg)
    # docs three times as long; the task loses most of its `net` rows
    changed = [f"run_dir={run_dir}", *corpus(root / "b", joined=3, net_rows=8)]
    cfg = load_config(None, changed)
    with pytest.raises(DriftError) as err:
        pipeline.run(cfg, ["baseline"])
    message = str(err.value)
    assert "psi document chars" in message and "label_share task topic" in message and "drift accept" in message
    failed = next((run_dir / "drift").glob("drift-*.failed-*"))
    record = json.loads((failed / "drift.json").read_text())
    label = next(c for c in record["checks"] if c["check"] == "label_share")
    old, new = before.profile["tasks"]["topic"]["label_shares"], json.loads(
        Path(record["profile"]).read_text())["tasks"]["topic"]["label_shares"]
    assert label["value"] == pytest.approx(abs(new["net"] - old["net"]), abs=1e-6) and label["severity"] == "error"
    page = (failed / "drift.html").read_text()
    assert "label_share" in page and "net: 0." in page and "&lt;= " in page and not (run_dir / "baseline").exists()
    with pytest.raises(StepFailed, match="DriftError"):  # the next attempt is refused with the reason
        pipeline.run(cfg, ["pretrain"])
    assert not (run_dir / "pretrain").exists()
    # a consumer handed a failed drift record by hand: the executor's gate check refuses it
    results = run_steps(cfg, ["contracts"])  # both reused
    with pytest.raises(GateError, match="drift gate did not pass: DriftError"):
        execute(steps.get("baseline"), cfg, {**results, "drift": load_result(failed)}, run_id="by-hand")
    with pytest.raises(GateError, match="drift gate has not run"):
        execute(steps.get("baseline"), cfg, results, run_id="by-hand")

    # `modpipe drift accept`: the latest profile (this data's) becomes the reference, with who and why
    cli = CliRunner()
    sets = ["--set", f"run_dir={run_dir}"]
    done = cli.invoke(app, ["drift", "accept", "--why", "longer documents on purpose", *sets])
    assert done.exit_code == 0, done.output
    accepted = json.loads(done.stdout)
    assert accepted["profile"] == record["profile"]
    assert accepted["kind"] == "accepted" and accepted["accepted_by"] == getpass.getuser()
    assert accepted["why"] == "longer documents on purpose"
    ok = pipeline.run(cfg, ["drift"])
    assert ok["drift"]["status"] == "ok" and ok["drift"]["reference"]["kind"] == "accepted"
    kinds = [h["kind"] for h in reference.history(cfg)]
    assert kinds[:2] == ["accepted", "succeeded-run"]
    shown = cli.invoke(app, ["drift", "show", *sets])
    assert shown.exit_code == 0, shown.output
    shown = json.loads(shown.stdout)
    assert shown["latest_check"]["status"] == "ok" and shown["latest_check"]["moved"] == []
    assert [r["kind"] for r in shown["references"]] == kinds
    step = cli.invoke(app, ["drift", *[x for o in changed for x in ("--set", o)]])  # `modpipe drift`: the step
    assert step.exit_code == 0, step.output
    assert json.loads(step.stdout)["status"] == "ok" and json.loads(step.stdout)["step"]["skipped"]

    # a reference whose stored profile was changed after it was recorded is refused, not compared with
    stored = next(p for p in (run_dir / "registry" / "artifacts").rglob("profile.json")
                  if reference.sha256_file(p) == reference.load(cfg).sha256)
    stored.write_text(stored.read_text().replace('"schema":1', '"schema":1 '))
    with pytest.raises(reference.ReferenceError_, match="differs from the recorded"):
        reference.load(cfg)
