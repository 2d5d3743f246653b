"""The run report of a real small run (the smoke recipe), a good one and a failed one: its data against the files
the steps wrote, its links, the Data Docs it points at, the end of ``modpipe run``, the Prefect summary, and the
page as headless Chromium renders it at 1280 px (``make browser`` installs Debian's chromium + chromedriver).

The good run reuses the session's curate/contracts/pretrain build (``smoke_built``) and runs adapt, tune (one
trial) and publish; the failed one curates again under a contract no document meets (``min_doc_tokens``)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest

from modpipe.config import load_config
from run_helpers import MICRO, SMOKE, copy_run

FAILING_CONTRACT = "contracts.min_doc_tokens=100000"
WIDTH = 1280


@pytest.fixture(scope="module")
def good_run(smoke_built, tmp_path_factory):
    from modpipe import pipeline, steps

    run_dir = copy_run(smoke_built[0], tmp_path_factory.mktemp("report-good") / "run")
    summary = pipeline.run(load_config(SMOKE, [f"run_dir={run_dir}", *MICRO]), steps.dag_targets())
    assert summary["outcome"] == "succeeded"
    return run_dir, summary


@pytest.fixture(scope="module")
def failed_run(smoke_built, tmp_path_factory):
    from modpipe import pipeline, steps
    from modpipe.contracts import ContractViolation

    run_dir = copy_run(smoke_built[0], tmp_path_factory.mktemp("report-failed") / "run", steps=("raw", "curate"))
    with pytest.raises(ContractViolation):
        pipeline.run(load_config(SMOKE, [f"run_dir={run_dir}", FAILING_CONTRACT]), steps.dag_targets())
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["outcome"] == "failed" and summary["failed_step"] == "contracts"
    return run_dir, summary


def _facts(run):
    from modpipe.report.facts import collect

    return collect(run[1], run[0])


def _links(html: str) -> list[str]:
    return re.findall(r"data-rel='([^']+)'", html)


# ------------------------------------------------------------------------------------------- the figures' data


def test_funnel_counts_equal_stats_json(good_run):
    from modpipe.report import figures

    run_dir, summary = good_run
    stats = json.loads(Path(summary["curate"]["stats"]).read_text())
    funnel = _facts(good_run)["funnel"]
    docs_steps = [s for s in stats["steps"] if s.get("unit", "docs") == "docs"]
    assert [(s["step"], s["in"], s["out"], s["removed"]) for s in funnel["steps"]] == [
        (s["name"], s["in"], s["out"], s["removed"]) for s in docs_steps]
    assert funnel["docs_in"] == docs_steps[0]["in"] and funnel["docs_out"] == docs_steps[-1]["out"] == stats["docs"]
    for row, st in zip(funnel["steps"], docs_steps):  # the largest reasons, largest first, from removed_by_reason
        expected = sorted(((r, n) for r, n in (st.get("removed_by_reason") or {}).items() if n), key=lambda x: -x[1])
        assert row["reasons"] == expected[:3] and row["other_reasons"] == sum(n for _, n in expected[3:])
    assert [s["step"] for s in funnel["token_steps"]] == [s["name"] for s in stats["steps"] if s not in docs_steps]
    # the quarantine summary counts every row of the quarantine file
    rows = [json.loads(line) for line in Path(summary["curate"]["quarantine"]).read_text().splitlines()]
    assert funnel["quarantine"]["total"] == len(rows) == stats["quarantined"]
    assert sum(r["rows"] for r in funnel["quarantine"]["by_reason"]) == len(rows)
    assert figures.funnel(funnel)[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_data_of_the_other_sections(good_run):
    run_dir, summary = good_run
    facts = _facts(good_run)
    # timeline: every DAG step, the three copied ones reused, the rest ran with this run's seconds
    states = {r["step"]: r["state"] for r in facts["timeline"]}
    assert states == {"curate": "reused", "contracts": "reused", "profile": "ran", "drift": "ran",
                      "pretrain": "reused", "adapt": "ran", "baseline": "ran", "shift": "ran", "tune": "ran",
                      "publish": "ran"}
    assert all(r["seconds"] == summary["steps"][r["step"]]["seconds"] for r in facts["timeline"] if r["state"] == "ran")
    # pretraining: the loss curve is metrics.json's
    pm = json.loads(Path(summary["pretrain"]["metrics"]).read_text())
    assert facts["pretrain"]["train_curve"] == [(c["step"], c["loss"]) for c in pm["loss_curve"]]
    # modules: publish's candidates (tune's module for the tuned task), metrics and confusion from metrics.json
    cands = summary["publish"]["candidates"]
    for m in facts["modules"]:
        assert m["from"] == cands[m["task"]]["from"]
        metrics = json.loads((run_dir / m["dir"] / "metrics.json").read_text())
        assert m["test_macro_f1"] == metrics["test_macro_f1"] and m["confusion"] == metrics["test_confusion"]
        assert sum(b["count"] for b in m["reliability"]) == metrics["n_test"] == sum(map(sum, m["confusion"]))
        # the classical baseline is the baseline step's TF-IDF + LR, compared on the same test rows
        base = json.loads(Path(summary["baseline"]["baselines"]).read_text())[m["task"]]
        assert m["baseline"]["test_macro_f1"] == base["tfidf_lr"]["test_macro_f1"]
        assert m["baseline"]["majority_macro_f1"] == base["majority"]["test_macro_f1"]
        d = m["baseline"]["delta"]
        assert d["rows"] == metrics["n_test"] and d["low"] <= d["delta"] <= d["high"]
        assert d["delta"] == pytest.approx(metrics["test_macro_f1"] - base["tfidf_lr"]["test_macro_f1"], abs=1e-9)
        assert m["full"] is None  # no transfer run on this backbone
    # tune: trials.json's trials, the best config's trial chosen
    trials = json.loads(Path(summary["tune"]["trials"]).read_text())
    best = json.loads(Path(summary["tune"]["best_config"]).read_text())
    assert [(t["trial"], t["metric"]) for t in facts["tune"]["trials"]] == [(t["trial_id"], t["best_metric"])
                                                                             for t in trials]
    assert [t["trial"] for t in facts["tune"]["trials"] if t["chosen"]] == [best["trial_id"]]
    # registry and the headline
    assert {r["task"] for r in facts["registry"]["registered"]} == {r["task"] for r in summary["publish"]["registered"]}
    champions = [r for r in summary["publish"]["registered"] if r["alias"] == "champion"]
    assert len(facts["headline"]["promoted"]) == len(champions)
    # the default gate: a module below its classical baseline beyond noise stays challenger, and says so
    for r in summary["publish"]["registered"]:
        below = r["baseline"]["high"] < 0
        assert (r["alias"] == "challenger") if below else True, r
        if below:
            assert "below the tfidf_lr baseline beyond noise" in r["decision"]["reason"]
    assert len(facts["headline"]["challengers"]) == len(summary["publish"]["registered"]) - len(champions)
    assert facts["headline"]["config_fingerprint"] and facts["failure"] is None


# --------------------------------------------------------------------------------------------------- the page


def test_good_report_is_self_contained_with_relative_links(good_run):
    run_dir, summary = good_run
    page = Path(summary["report"])
    html = page.read_text()
    assert (run_dir / "report.html").read_text() == html
    # nothing loaded from elsewhere: every image is embedded, no URL of another host anywhere
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", html)
    imgs = re.findall(r"<img [^>]*src='([^']*)'", html)
    assert len(imgs) >= 7 and all(s.startswith("data:image/png;base64,") for s in imgs)
    # a section per stage, with data; paths relative to the run dir, each naming a file that exists
    for title in ("Stage timeline", "Curation funnel", "Data contracts", "Pretraining", "Modules per task", "Tune",
                  "Registry"):
        assert f"<summary>{title}<span" in html, title
    assert "not computed" in html  # full fine-tuning: no transfer result for this backbone
    assert str(run_dir) not in html.replace(f"run dir</dt><dd>{run_dir}<", "")
    links = _links(html)
    assert any("data_docs/local_site/index.html" in x for x in links) and any(x.endswith("stats.json") for x in links)
    for rel in links:
        assert (run_dir / rel).exists(), rel


def test_failed_report_starts_with_what_failed(failed_run):
    run_dir, summary = failed_run
    html = (run_dir / "report.html").read_text()
    assert html.index("What failed: contracts") < html.index("class=tiles") < html.index("Stage timeline")
    why = html[html.index("What failed"):html.index("class=tiles")]
    assert "n_tokens" in why and "curated_docs" in why and "100000" in why
    assert str(run_dir) not in why  # paths relative to the run dir
    for section in ("Pretraining", "Modules per task", "Tune", "Registry"):
        assert re.search(f"<summary>{section}<span class='sub'>not computed: the run stopped at contracts", html)
    facts = _facts(failed_run)
    assert [r["state"] for r in facts["timeline"]] == ["reused", "failed"] + ["not run"] * 8
    assert facts["contracts"]["success"] is False and facts["headline"]["promoted"] == []
    failed = [(d["asset"], f["severity"], f["column"]) for d in facts["contracts"]["datasets"] for f in d["failed"]]
    assert ("curated_docs", "error", "n_tokens") in failed
    for rel in _links(html):  # the failed attempt's record, results and Data Docs
        assert (run_dir / rel).exists(), rel
    assert any(".failed-" in x and x.endswith("index.html") for x in _links(html))


def test_data_docs_name_assets_and_runs_and_list_them_offline(failed_run):
    from modpipe.contracts.gx import validation_pages

    run_dir, summary = failed_run
    index = next(run_dir.glob("contracts/contracts-*.failed-*/gx/uncommitted/data_docs/local_site/index.html"))
    pages = validation_pages(index.parent)
    assets = {p["asset"] for p in pages}
    assert {"raw_corpus", "curated_docs", "curated_shards"} <= assets
    assert {f"task-{t}-{s}" for t in ("man_section", "man_language") for s in ("train", "val", "test")} <= assets
    assert {p["run_name"] for p in pages} == {summary["run_id"]}
    docs_page = (index.parent / next(p["page"] for p in pages if p["asset"] == "curated_docs")).read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", docs_page))
    assert "Data asset: curated_docs" in text and summary["run_id"] in text and "__none__" not in text
    # the index lists every validation in plain HTML (GX's own list needs scripts from CDNs)
    static = index.read_text().split("modpipe: static index")[1].split("</section>")[0]
    assert static.count("<tr>") == len(pages) + 1 and "failed" in static and "curated_docs" in static


def test_end_of_modpipe_run_is_one_screen(good_run, failed_run):
    from rich.console import Console

    from modpipe import cli

    for (run_dir, summary), must in ((good_run, ("succeeded", "modpipe-man_section v", "pretrain loss")),
                                     (failed_run, ("failed at contracts", "n_tokens", "data contracts"))):
        old = cli.console
        cli.console = Console(record=True, width=160, file=io.StringIO())
        try:
            cli._print_run_table(summary)
            out = cli.console.export_text()
        finally:
            cli.console = old
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert len(lines) <= 24, out
        assert lines[-1].startswith(f"report: {run_dir / 'report.html'}"), out
        assert all(m in out for m in must), out
        assert "┏" not in out  # the timing table is gone


def test_prefect_summary_text(good_run, failed_run):
    """What the DAG flow publishes (markdown content + table rows), without a Prefect server."""
    from modpipe.report.text import funnel_rows, markdown, module_rows

    good, bad = _facts(good_run), _facts(failed_run)
    md = markdown(good)
    assert md.startswith(f"# modpipe run {good_run[1]['run_id']}: succeeded") and "file://" not in md
    assert all(f"| {k} |" in md for k, _ in good["metrics"]) and "**modpipe-man_section v" in md
    md_bad = markdown(bad)
    assert md_bad.index("## What failed: contracts") < md_bad.index("## Steps") and "n_tokens" in md_bad
    assert [r["step"] for r in funnel_rows(good)][:2] == ["read", "normalize"]
    assert {r["task"] for r in module_rows(good)} == set(good_run[1]["adapt"]["modules"])
    assert all(isinstance(r["classical_baseline_macro_f1"], float) for r in module_rows(good))


@pytest.mark.slow  # a real Prefect server starts (10-35 s on 2 cores)
def test_prefect_artifacts_carry_the_content(good_run):
    """The DAG flow's run summary: a markdown artifact with the headline numbers and table artifacts of the
    funnel and the module table."""
    from prefect.artifacts import Artifact
    from prefect.testing.utilities import prefect_test_harness

    from flows.artifacts import artifact_key, run_summary

    run_dir, summary = good_run
    cfg = load_config(SMOKE, [f"run_dir={run_dir}", *MICRO])
    with prefect_test_harness(server_startup_timeout=120):
        run_summary(cfg)
        md = Artifact.get(artifact_key(cfg, "run-summary"), _sync=True)
        funnel = json.loads(Artifact.get(artifact_key(cfg, "curation-funnel"), _sync=True).data)
        modules = json.loads(Artifact.get(artifact_key(cfg, "modules"), _sync=True).data)
    assert md.type == "markdown" and f"modpipe run {summary['run_id']}: succeeded" in md.data
    assert "curated docs" in md.data and "**modpipe-man_section v" in md.data
    stats = json.loads(Path(summary["curate"]["stats"]).read_text())
    assert [(r["step"], r["in"], r["out"]) for r in funnel] == [(s["name"], s["in"], s["out"]) for s in stats["steps"]]
    assert {r["task"] for r in modules} == set(summary["adapt"]["modules"])


# ------------------------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("headless Chromium is missing: `make browser` installs Debian's chromium + chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={WIDTH},900"):
        opts.add_argument(arg)
    d = webdriver.Chrome(options=opts, service=Service(driver))  # the Debian driver: Selenium Manager stays idle
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    yield d
    d.quit()


RENDERED = """
document.querySelectorAll('details').forEach(d => d.open = true);
const imgs = [...document.images].map(i => ({w: i.naturalWidth, h: i.naturalHeight, ok: i.complete,
  shown: i.getBoundingClientRect().width, fits: i.getBoundingClientRect().right <= innerWidth}));
const root = document.documentElement;
const wide = [...document.querySelectorAll('main *')].filter(e => e.getBoundingClientRect().right > innerWidth + 1
  && !e.closest('.scroll')).map(e => e.tagName + '.' + e.className);
const links = [...document.querySelectorAll('a[data-rel]')].map(a => a.href);
return {imgs, scrollWidth: root.scrollWidth, clientWidth: root.clientWidth, wide, links,
        title: document.title, first: document.querySelector('main').firstElementChild.className};
"""


@pytest.mark.slow
@pytest.mark.parametrize("which", ["good", "failed"])
def test_rendered_in_headless_chromium(which, good_run, failed_run, browser):
    """From the rendered page: every image loads with a non-zero size inside the window, nothing is wider than
    1280 px (wide tables scroll inside their box), links resolve from both copies of the report."""
    from urllib.parse import unquote, urlparse

    run_dir, summary = good_run if which == "good" else failed_run
    for page in (run_dir / "report.html", Path(summary["report"])):
        browser.get(page.as_uri())
        r = browser.execute_script(RENDERED)
        assert r["title"].endswith(summary["outcome"]) and r["first"].startswith("head")
        assert r["imgs"] and all(i["ok"] and i["w"] > 0 and i["h"] > 0 and i["shown"] > 0 and i["fits"]
                                 for i in r["imgs"]), r["imgs"]
        assert len(r["imgs"]) >= (7 if which == "good" else 2)
        assert r["scrollWidth"] <= r["clientWidth"] == WIDTH, r
        assert not r["wide"], r["wide"]
        for href in r["links"]:  # resolved by the browser, from where this copy lives
            assert Path(unquote(urlparse(href).path)).exists(), (page, href)
