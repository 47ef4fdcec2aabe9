"""The ``nbdurable`` command line.

Exit codes: 0 success; 1 a run or check failed; 2 usage error (bad options, unknown run id);
3 a run suspended itself (waiting on a timer or an event; `nbdurable worker` resumes it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nbdurable.cli.base import EXIT_FAILED, RUNS_LIMIT_MAX, main, open_store, store_option
from nbdurable.store.records import RUN_STATUSES

__all__ = ["entry", "main"]


@main.command("install-kernel")
@click.option("--user", is_flag=True, help="Install for the current user only.")
@click.option("--name", default="nbdurable", metavar="NAME", help="Kernelspec name (default: nbdurable).")
@click.option("--prefix", default=None, metavar="DIR", help="Install under this prefix (e.g. a virtualenv).")
def install_kernel(user: bool, name: str, prefix: str | None) -> None:
    """Register the "Python 3 (nbdurable)" kernel, which loads nbdurable at start."""
    from nbdurable.kernelspec import install_kernelspec

    path = install_kernelspec(name, user=user, prefix=prefix)
    click.echo(f"Installed kernelspec {name!r} in {path}")


def _positive_limit(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if not 1 <= value <= RUNS_LIMIT_MAX:
        raise click.BadParameter(f"must be at least 1 and at most {RUNS_LIMIT_MAX}, not {value}")
    return value


@main.command("runs")
@store_option
@click.option("--notebook", default=None, help="Only runs of this notebook (path or attached name).")
@click.option("--status", type=click.Choice(list(RUN_STATUSES)),
              default=None, help="Only runs with this status.")
@click.option("--limit", type=int, default=20, show_default=True, metavar="N", callback=_positive_limit,
              help="How many runs, newest first.")
def runs(store: str | None, notebook: str | None, status: str | None, limit: int) -> None:
    """List recent runs, newest first."""
    from nbdurable.runtime.identity import notebook_identity

    table = open_store(store).catalog().runs(
        notebook=notebook_identity(notebook) if notebook else None, status=status, limit=limit
    )
    if table.empty:
        click.echo("No runs.")
        return
    from nbdurable.cli import tables

    shown = table.assign(
        notebook=table["notebook"].map(tables.notebook), started=table["started_at"].map(tables.when),
        executed=table["steps_executed"].fillna(0).astype(int), restored=table["steps_restored"].fillna(0).astype(int),
        duration=table["duration_s"].map(tables.seconds), saved=table["time_saved_s"].fillna(0.0).map(tables.seconds),
    )[["run_id", "status", "started", "duration", "executed", "restored", "saved", "notebook"]]
    click.echo(shown.to_string(index=False))


@main.command("demo")
@click.option("--dir", "workdir", default=None, metavar="DIR",
              help="Run in DIR and keep the notebook, its output and the store there (default: a temporary "
              "directory, removed at the end).")
def demo(workdir: str | None) -> None:
    """Run a bundled notebook, kill its kernel mid-run, run it again, and show what was restored."""
    from nbdurable.demo import run_demo, summarize, temporary_workdir

    with temporary_workdir(Path(workdir) if workdir else None) as where:
        report = run_demo(where, echo=click.echo, kept=workdir is not None)
        click.echo(summarize(report))
    if not any(r.how == "restored" for r in report.second):
        click.echo("Error: nothing was restored on the second run.", err=True)
        sys.exit(EXIT_FAILED)


def _register_commands() -> None:
    """Commands defined in the package's other modules attach themselves to ``main``."""
    from nbdurable.cli import (  # noqa: F401
        control,
        fork,
        maintenance,
        migrate,
        plan,
        queue,
        report,
        run,
        schedule,
        serve,
        sweep,
        triggers,
        worker,
    )


_register_commands()


def entry() -> None:
    """The ``nbdurable`` command itself (the console script and ``python -m nbdurable``): ``main`` in a process
    that skips the slow optional imports first (``nbdurable.startup``)."""
    from nbdurable.startup import skip_slow_imports

    skip_slow_imports()
    main()


if __name__ == "__main__":
    entry()
