"""`modpipe` command line: the whole DAG or one stage, on the embedded default or a user config.

Every command takes ``--config FILE`` and repeated ``--set key.path=value``; on failure it prints one line
``error: <reason>`` to stderr and exits non-zero.  ``run`` and one command per step of ``modpipe/steps.py`` go
through the one executor; the step commands are also the Ray job entrypoints:
``ray job submit --working-dir . -- python -m modpipe curate --set run_dir=/shared/runs/x``. While they run,
long steps show progress bars on an interactive terminal outside CI, plain log lines anywhere else
(``modpipe.progress``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from modpipe.config import ConfigError, PipelineConfig, dump_config, load_config
from modpipe.progress import terminal_bars

app = typer.Typer(add_completion=False, no_args_is_help=True, help="modpipe: curate -> pretrain -> adapt -> tune -> publish")
registry_app = typer.Typer(no_args_is_help=True, help="Inspect the module registry.")
app.add_typer(registry_app, name="registry")
console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML file merged over the defaults")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override, e.g. pretrain.steps=50")]


def _setup_logging(verbose: bool = False) -> None:
    # Rich on a terminal; plain lines (no wrapping at 80 columns) in logs of jobs, workers and CI.
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        fmt = "%(name)s: %(message)s"
    else:
        handler, fmt = logging.StreamHandler(), "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, handlers=[handler], force=True)
    for noisy in ("urllib3", "httpx", "alembic", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # DeepSpeed must see the CPU accelerator before it is first imported (here or in Ray workers).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # No usage telemetry from an unattended pipeline (offline it only adds tracebacks); the user may turn it on.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _load(config: str | None, overrides: list[str] | None) -> PipelineConfig:
    return load_config(config, overrides or [])


def _guard(fn: Callable[[], Any]) -> Any:
    """Run a command; any failure becomes one line on stderr and exit code 1."""
    try:
        return fn()
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("[red]error:[/red] interrupted")
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - the CLI's job is to turn any failure into one line
        lines = str(e).strip().splitlines()
        # a refused step or a failed contract explains itself over a few lines (expectations, Data Docs)
        explained = type(e).__name__ in ("ContractViolation", "DriftError", "GateError", "StepError", "StepFailed",
                                              "StepBusy")
        reason = "\n".join(lines[:40]) if explained and lines else (lines[0] if lines else type(e).__name__)
        if os.environ.get("MODPIPE_DEBUG"):
            console.print_exception()
        console.print(f"[red]error:[/red] {type(e).__name__}: {reason}", highlight=False)
        raise typer.Exit(1) from None


def _emit(result: Any) -> None:
    """Results go to stdout as JSON so scripts (and Ray job logs) can read them."""
    print(json.dumps(result, indent=2, default=str))


ForceOpt = Annotated[bool, typer.Option("--force", help="rebuild steps whose last attempt failed")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", help="name this run (default: <UTC time>-<hex>)")]


@app.command()
def run(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    engine: Annotated[str, typer.Option(help="prefect: the Prefect DAG flow; local: plain calls (Ray jobs)")] = "prefect",
    force: ForceOpt = False,
    run_id: RunIdOpt = None,
) -> None:
    """Run the whole DAG (every step of modpipe/steps.py that is part of it); finished steps are reused."""
    _setup_logging()

    def go():
        from modpipe import steps

        cfg = _load(config, set_)  # validate before starting anything
        if engine not in ("prefect", "local"):
            raise ConfigError(f"--engine must be 'prefect' or 'local', not {engine!r}")
        try:
            with terminal_bars(console):
                if engine == "prefect":
                    from flows.dag import dag_flow  # lazy: the library itself never imports prefect

                    return dag_flow(config_path=config, overrides=list(set_ or []), force=force, run_id=run_id)
                from modpipe.pipeline import run as run_pipeline

                return run_pipeline(cfg, steps.dag_targets(), run_id=run_id, force=force)
        except Exception:
            _print_failed_run(cfg)
            raise

    result = _guard(go)
    _emit(result)
    _print_run_table(result)


def _print_failed_run(cfg: PipelineConfig) -> None:
    """A failed run still wrote its summary and report (what failed first): say where they are."""
    try:
        summary = json.loads((cfg.run_path / "run_summary.json").read_text())
    except (OSError, ValueError):
        return
    if summary.get("outcome") == "failed":
        console.print(f"run {summary.get('run_id')} failed at step {summary.get('failed_step')}; "
                      f"report: {cfg.run_path / 'report.html'}", highlight=False)


def _print_run_table(result: dict) -> None:
    """The last screen of ``modpipe run``: outcome, the headline numbers, what was promoted and what not, where
    the report is (the same numbers as the report's headline: ``modpipe.report.facts``)."""
    from pathlib import Path

    from modpipe.report import run_dir_of
    from modpipe.report.facts import collect

    report = result.get("report")
    try:
        facts = collect(result, run_dir_of(report)) if report else None
    except Exception as err:  # noqa: BLE001 - the run is done; a summary that cannot be read must not fail it
        console.print(f"[yellow]run summary not readable: {type(err).__name__}: {err}[/yellow]")
        facts = None
    ok = result.get("outcome") == "succeeded"
    states = ""
    if facts:
        counts = {s: sum(r["state"] == s for r in facts["timeline"]) for s in ("ran", "reused", "failed", "not run")}
        states = " (" + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ")"
    console.print(f"\n[bold {'green' if ok else 'red'}]modpipe run {result.get('run_id')}: {result.get('outcome')}[/] "
                  f"in {result.get('seconds', 0):.1f} s{states}", highlight=False)
    if not ok and result.get("error"):
        lines = str(result["error"]).splitlines()
        console.print(f"[red]failed at {result.get('failed_step')}:[/red] " + "\n  ".join(lines[:8]), highlight=False)
    if facts:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column()
        for label, value in facts["metrics"]:
            grid.add_row(label, value)
        console.print(grid)
    reg = (facts or {}).get("registry") or {}
    for r in reg.get("registered", []):
        metric = ", ".join(f"{k} {v:.3f}" for k, v in (r.get("metric") or {}).items())
        what = "[green]promoted[/green]" if r["promoted"] else "[yellow]stays challenger[/yellow]"
        console.print(f"{what} {r['name']} v{r['version']}" + (f" -> {r['alias']}" if r.get("alias") else "")
                      + f" ({', '.join(x for x in (r.get('from'), metric) if x)})"
                      + ("" if r["promoted"] or not r.get("reason") else f": {r['reason']}"), highlight=False)
    for r in reg.get("rejected", []):
        console.print(f"[yellow]refused by the gate[/yellow] {r.get('task')}: {r.get('reason')}", highlight=False)
    if ok and not reg:
        console.print("promoted: nothing (publish did not run)")
    dd = (result.get("contracts") or {}).get("data_docs")
    if dd:
        console.print(f"Data Docs: {dd}", highlight=False)
    drift = result.get("drift") or {}
    if drift.get("status"):
        console.print(f"drift: {drift['status']}, {drift.get('warnings', 0)} warning(s): {drift.get('report')}",
                      highlight=False)
    if report:
        latest = run_dir_of(report) / "report.html"
        console.print(f"[bold]report:[/bold] {latest if latest.is_file() else report}"
                      + (f"  (also runs/{Path(report).name})" if latest.is_file() else ""), highlight=False)


def _step_command(name: str, help_text: str) -> None:
    """``modpipe <step>``: that step and what it reads, through the same executor and gates as ``modpipe run``.
    These are also the Ray job entrypoints (``ray job submit -- python -m modpipe <step> ...``)."""

    def command(config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False,
                run_id: RunIdOpt = None) -> None:
        _setup_logging()

        def go():
            from modpipe.pipeline import run as run_pipeline

            cfg = _load(config, set_)
            with terminal_bars(console):
                summary = run_pipeline(cfg, [name], run_id=run_id, force=force)
            out = {"run_id": summary["run_id"], "step": summary["steps"][name], **summary[name]}
            for r in out.get("rejected", []) if name == "publish" else []:
                console.print(f"not published: {r['task']}: {r['reason']}")
            if name == "contracts":
                console.print(f"Data Docs: {out.get('data_docs')}")
            return out

        _emit(_guard(go))

    if name == "drift":  # `modpipe drift` runs the step; `modpipe drift accept|show` manage its reference
        from modpipe.cli_drift import drift_group

        app.add_typer(drift_group(command, help_text), name=name)
        return
    app.command(name=name, help=help_text + " Upstream steps are reused when built, built otherwise.")(command)


def _register_step_commands() -> None:
    from modpipe.steps import STEPS

    for step in STEPS:
        _step_command(step.name, step.help)


_register_step_commands()


@registry_app.command("list")
def registry_list(config: ConfigOpt = None, set_: SetOpt = None,
                  as_json: Annotated[bool, typer.Option("--json", help="JSON rows on stdout")] = False) -> None:
    """List registered modules and backbones with versions, aliases, the gate's measurement and lineage."""
    _setup_logging()

    def go():
        from modpipe import registry

        return registry.list_modules(_load(config, set_))

    rows = _guard(go)
    if as_json:
        _emit(rows)
        return
    t = Table(title="modpipe registry")
    for col in ("name", "version", "aliases", "measured", "backbone"):
        t.add_column(col)
    for r in rows:
        tags = r.get("tags") or {}
        gate = tags.get("gate.metric", "")
        value = tags.get(f"measured.{gate}") or tags.get(f"metric.{gate}")
        metric = f"{gate}={float(value):.4f}" if value else r.get("error", "")
        backbone = (f"{tags['backbone.name']} v{tags.get('backbone.version')}" if tags.get("backbone.name")
                    else str(tags.get("backbone_fingerprint", ""))[:12])
        t.add_row(str(r.get("name")), str(r.get("version")), ",".join(r.get("aliases") or []), metric, backbone)
    Console(width=None if sys.stdout.isatty() else 160).print(t)


NameArg = Annotated[str, typer.Argument(help="registered model name, e.g. modpipe-man_section")]
AliasOpt = Annotated[Optional[str], typer.Option("--alias", help="alias (default: publish.alias)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON on stdout")]


def _store(config: str | None, set_: list[str] | None):
    from modpipe.registry import store_of

    cfg = _load(config, set_)
    return cfg, store_of(cfg)


def _print_moves(moves: list[dict], title: str) -> None:
    t = Table(title=title)
    for col in ("time", "alias", "from", "to", "kind", "reason", "run", "user"):
        t.add_column(col, overflow="fold")
    for m in moves:
        t.add_row(m.get("time", ""), m.get("alias", ""), str(m.get("from") or "-"), str(m.get("to") or "-"),
                  m.get("kind", ""), m.get("reason", ""), str(m.get("run_id") or ""), m.get("user", ""))
    Console(width=None if sys.stdout.isatty() else 200).print(t)


@registry_app.command("history")
def registry_history(name: NameArg, alias: Annotated[Optional[str], typer.Option("--alias", help="only this alias")] = None,
                     config: ConfigOpt = None, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Every alias move of NAME (promotions, challengers, rollbacks, manual promotes), newest first."""
    _setup_logging()

    def go():
        from modpipe.registry import ledger

        return ledger.history(_store(config, set_)[1], name, alias)

    moves = _guard(go)
    _emit(moves) if as_json else _print_moves(moves, f"{name}: alias moves, newest first")


@registry_app.command("rollback")
def registry_rollback(name: NameArg, alias: AliasOpt = None,
                      reason: Annotated[str, typer.Option("--reason", help="why (recorded)")] = "",
                      config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Move the alias one step back (undo its latest move that is not undone yet); recorded as a move."""
    _setup_logging()

    def go():
        from modpipe.registry import ledger

        cfg, store = _store(config, set_)
        return ledger.rollback(store, name, alias or cfg.publish.alias, reason)

    _emit(_guard(go))


@registry_app.command("promote")
def registry_promote(name: NameArg, version: Annotated[int, typer.Argument(help="version number")],
                     reason: Annotated[str, typer.Option("--reason", help="why (recorded; required)")],
                     alias: AliasOpt = None, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Point the alias at VERSION by hand (after the one check passes on it); recorded as a move."""
    _setup_logging()

    def go():
        from modpipe.registry import ledger
        from modpipe.registry.load import verify
        from modpipe.registry.policy import PolicyError

        cfg, store = _store(config, set_)
        verdict, _ = verify(store, f"{name}/{version}")
        if not verdict.passed:
            raise PolicyError(verdict, f"{name} v{version}")
        return ledger.promote(store, name, str(version), alias or cfg.publish.alias, reason)

    _emit(_guard(go))


@registry_app.command("at")
def registry_at(ref: Annotated[str, typer.Argument(help="NAME@ALIAS")],
                time: Annotated[str, typer.Option("--time", help="ISO 8601, e.g. 2026-05-01T12:00:00Z")],
                config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Which version NAME@ALIAS pointed to at a time (from the alias ledger)."""
    _setup_logging()

    def go():
        from modpipe.registry import ledger

        name, _, alias = ref.partition("@")
        if not alias:
            raise ValueError(f"{ref!r}: expected NAME@ALIAS")
        when = ledger.parse_time(time)
        return {"name": name, "alias": alias, "time": when.isoformat(),
                "version": ledger.at(_store(config, set_)[1], name, alias, when)}

    _emit(_guard(go))


@registry_app.command("verify")
def registry_verify(ref: Annotated[str, typer.Argument(help="NAME@ALIAS or NAME/VERSION")],
                    tasks_dir: Annotated[Optional[str], typer.Option(
                        "--tasks-dir", help="also measure on <tasks-dir>/<task>/test.parquet")] = None,
                    config: ConfigOpt = None, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """The one promotion check on a registered version, field by field; exit 1 when it refuses."""
    _setup_logging()

    def go():
        from pathlib import Path

        from modpipe.registry.load import verify

        cfg, store = _store(config, set_)
        task_dir = None
        if tasks_dir:
            from modpipe.registry.load import fetch_version, parse_ref

            task = fetch_version(store, *parse_ref(ref, cfg.publish.alias)).tags.get("task", "")
            task_dir = Path(tasks_dir) / task
        verdict, got = verify(store, ref, task_dir=task_dir, default_alias=cfg.publish.alias)
        return {"name": got.name, "version": got.version, "backbone": got.backbone, **verdict.to_dict()}

    out = _guard(go)
    if as_json:
        _emit(out)
    else:
        t = Table(title=f"{out['name']} v{out['version']}: {'passes' if out['passed'] else 'REFUSED'}")
        for col in ("group", "field", "", "detail"):
            t.add_column(col, overflow="fold")
        for f in out["fields"]:
            t.add_row(f["group"], f["name"], "ok" if f["ok"] else "FAIL", f["detail"])
        Console(width=None if sys.stdout.isatty() else 200).print(t)
    if not out["passed"]:
        raise typer.Exit(1)


@registry_app.command("matrix")
def registry_matrix(out: Annotated[Optional[str], typer.Option("--out", help="write the HTML page here")] = None,
                    config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Compatibility matrix: every registered module version x every registered backbone version (loads / refused
    and which checks decided), as JSON on stdout and an HTML page."""
    _setup_logging()

    def go():
        from pathlib import Path

        from modpipe.registry.matrix import matrix, to_html

        cfg, store = _store(config, set_)
        result = matrix(store, cfg.publish.model_prefix)
        page = Path(out) if out else cfg.run_path / "registry" / "compatibility.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(to_html(result))
        return {**result, "html": str(page)}

    _emit(_guard(go))


@app.command("predict")
def predict_command(
    model: Annotated[str, typer.Option("--model", "-m", help="NAME@ALIAS, NAME/VERSION or models:/...")],
    input_: Annotated[list[str], typer.Option("--input", "-i", help="JSONL / Parquet / txt file or folder (repeat)")],
    output: Annotated[str, typer.Option("--output", "-o", help="Parquet file to write")],
    tracking_uri: Annotated[Optional[str], typer.Option(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the config's registry)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    config: ConfigOpt = None, set_: SetOpt = None,
) -> None:
    """Batch predictions of a registered module on Ray Data (inputs read through the corpus' hardened readers,
    bad rows quarantined beside the output); the module passes the one registry check first."""
    _setup_logging()

    def go():
        from modpipe.curate.readers import limits_of
        from modpipe.predict import predict
        from modpipe.registry import tracking_uri as config_uri
        from modpipe.registry.store import default_cache

        cfg = _load(config, set_)
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or config_uri(cfg)
        cache = cfg.publish.cache_dir or default_cache()
        c = cfg.corpus
        return predict(model, list(input_), output, uri, cache, text_field=c.text_field, id_field=c.id_field,
                       batch_size=batch_size, max_record_bytes=c.max_record_bytes, limits=limits_of(c),
                       ray_config=cfg.ray)

    _emit(_guard(go))


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config as YAML."""
    print(_guard(lambda: dump_config(_load(config, set_))), end="")


def main() -> None:
    app(prog_name="modpipe")


if __name__ == "__main__":
    sys.exit(main())
