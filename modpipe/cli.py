"""`modpipe` command line: the whole DAG or one stage, on the embedded default or a user config.

Every command takes ``--config FILE`` and repeated ``--set key.path=value``; on failure it prints one line
``error: <reason>`` to stderr and exits non-zero.  The stage commands are also the Ray job entrypoints:
``ray job submit --working-dir . -- python -m modpipe curate --set run_dir=/shared/runs/x``.
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
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if os.environ.get("MODPIPE_DEBUG"):
            console.print_exception()
        console.print(f"[red]error:[/red] {type(e).__name__}: {reason}", highlight=False)
        raise typer.Exit(1) from None


def _emit(result: Any) -> None:
    """Results go to stdout as JSON so scripts (and Ray job logs) can read them."""
    print(json.dumps(result, indent=2, default=str))


@app.command()
def run(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    engine: Annotated[str, typer.Option(help="prefect: the Prefect DAG flow; local: plain calls (Ray jobs)")] = "prefect",
) -> None:
    """Run the whole DAG."""
    _setup_logging()

    def go():
        cfg = _load(config, set_)  # validate before starting anything
        if engine == "prefect":
            from flows.dag import dag_flow  # lazy: the library itself never imports prefect

            return dag_flow(config_path=config, overrides=list(set_ or []))
        if engine == "local":
            from modpipe.pipeline import run_all

            return run_all(cfg)
        raise ConfigError(f"--engine must be 'prefect' or 'local', not {engine!r}")

    result = _guard(go)
    _emit(result)
    _print_run_table(result)


def _print_run_table(result: dict) -> None:
    t = Table(title="modpipe run")
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for k, v in (result.get("timings_s") or {}).items():
        t.add_row(k, f"{v:.1f}")
    console.print(t)
    pub = result.get("publish") or {}
    for r in pub.get("registered", []):
        console.print(f"registered {r.get('name')} v{r.get('version')}")
    for r in pub.get("rejected", []):
        console.print(f"not published: {r.get('task')}: {r.get('reason')}")
    dd = (result.get("curate") or {}).get("data_docs") or (result.get("contracts") or {}).get("data_docs")
    if dd:
        console.print(f"Data Docs: {dd}")
    console.print(f"summary: {result.get('summary')}")
    console.print(f"report: {result.get('report')}")


@app.command()
def curate(config: ConfigOpt = None, set_: SetOpt = None, validate: bool = True) -> None:
    """Harvest/read raw text, clean, dedup, filter, decontaminate, tokenize into shards; check contracts."""
    _setup_logging()

    def go():
        from modpipe import contracts
        from modpipe import curate as stage

        cfg = _load(config, set_)
        out = stage.run(cfg)
        if validate and cfg.contracts.enabled:
            checked = contracts.run(cfg, out)
            console.print(f"Data Docs: {checked['data_docs']}")
            out = {**out, **checked}
        return out

    _emit(_guard(go))


def _stage(name: str, config: str | None, set_: list[str] | None) -> None:
    _setup_logging()

    def go():
        from modpipe.pipeline import run_stage

        out = run_stage(_load(config, set_), name)
        for r in out.get("rejected", []) if name == "publish" else []:
            console.print(f"not published: {r['task']}: {r['reason']}")
        return out

    _emit(_guard(go))


@app.command()
def pretrain(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Pretrain the backbone (DeepSpeed ZeRO inside Ray Train); curates first if needed."""
    _stage("pretrain", config, set_)


@app.command()
def adapt(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Train one LoRA module + head per task on the frozen backbone, tasks in parallel."""
    _stage("adapt", config, set_)


@app.command()
def tune(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Ray Tune (ASHA) over learning rate and LoRA rank for one task."""
    _stage("tune", config, set_)


@app.command()
def publish(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Gate the modules and register those that pass in the MLflow registry."""
    _stage("publish", config, set_)


@app.command()
def transfer(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Transfer report: every task x module method (and train fraction), router, external baselines; HTML + PNG."""
    _setup_logging()

    def go():
        from modpipe.evaluate import transfer as stage
        from modpipe.pipeline import run_stage

        cfg = _load(config, set_)
        curated = run_stage(cfg, "curate")
        backbone = run_stage(cfg, "pretrain", curated=curated)["backbone"]
        out = stage.run(cfg, backbone, curated["tasks_dir"])
        console.print(f"transfer report: {out['report']}")
        return {k: v for k, v in out.items() if k != "rows"}

    _emit(_guard(go))


@registry_app.command("list")
def registry_list(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """List registered modules with versions, aliases and lineage tags."""
    _setup_logging()

    def go():
        from modpipe import registry

        return registry.list_modules(_load(config, set_))

    rows = _guard(go)
    t = Table(title="modpipe registry")
    for col in ("name", "version", "aliases", "metric", "backbone"):
        t.add_column(col)
    for r in rows:
        tags = r.get("tags") or {}
        gate = tags.get("gate.metric", "")
        metric = f"{gate}={float(tags[f'metric.{gate}']):.4f}" if f"metric.{gate}" in tags else ""
        t.add_row(str(r.get("name")), str(r.get("version")), ",".join(r.get("aliases") or []), metric,
                  str(tags.get("backbone_fingerprint", ""))[:12])
    Console(width=None if sys.stdout.isatty() else 160).print(t)


@app.command("config")
def show_config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config as YAML."""
    print(_guard(lambda: dump_config(_load(config, set_))), end="")


def main() -> None:
    app(prog_name="modpipe")


if __name__ == "__main__":
    sys.exit(main())
