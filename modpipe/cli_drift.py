"""``modpipe drift``: run the drift step (with what it reads), or manage its reference profile.

- ``modpipe drift [--config ...]``: the drift step, like every ``modpipe <step>`` command;
- ``modpipe drift accept --why "..."``: the latest profile becomes the reference, recorded with who and why;
- ``modpipe drift show``: the latest drift check's outcome and the reference history.
"""

from __future__ import annotations

from typing import Annotated, Callable, Optional

import typer

ConfigOpt = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML file merged over the defaults")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override, e.g. drift.psi_error=0.3")]
ForceOpt = Annotated[bool, typer.Option("--force", help="rebuild steps whose last attempt failed")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", help="name this run (default: <UTC time>-<hex>)")]


def drift_group(step_command: Callable[..., None], help_text: str) -> typer.Typer:
    group = typer.Typer(help=help_text + " Subcommands manage the reference profile.")

    @group.callback(invoke_without_command=True)
    def drift(ctx: typer.Context, config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False,
              run_id: RunIdOpt = None) -> None:
        """Run the drift step (upstream steps are reused when built, built otherwise)."""
        if ctx.invoked_subcommand is None:
            step_command(config=config, set_=set_, force=force, run_id=run_id)

    @group.command("accept")
    def accept(why: Annotated[str, typer.Option("--why", help="why the change is intended (recorded)")],
               config: ConfigOpt = None, set_: SetOpt = None) -> None:
        """Make the latest profile the reference (a change that is intended), recorded with who and why."""
        from modpipe.cli import _emit, _guard, _load, _setup_logging

        _setup_logging()

        def go():
            from modpipe.drift import accept as accept_profile

            return accept_profile(_load(config, set_), why)

        _emit(_guard(go))

    @group.command("show")
    def show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
        """The latest drift check (checks that moved) and the reference history, as JSON."""
        from modpipe.cli import _emit, _guard, _load

        def go():
            from modpipe.drift import latest_check
            from modpipe.drift.reference import history

            cfg = _load(config, set_)
            return {"pipeline": cfg.name, "latest_check": latest_check(cfg), "references": history(cfg)}

        _emit(_guard(go))

    return group

