"""The ``nbdurable`` command line.

Exit codes: 0 success; 1 a run or check failed; 2 usage error (bad options, unknown run id);
3 a run suspended itself (waiting on a timer or an event; `nbdurable worker` resumes it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from nbdurable.errors import NbdurableError, OptionsError, RunNotFoundError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SUSPENDED = 3
RUNS_LIMIT_MAX = 1_000_000  # as `%durable runs --limit`; far more is no listing (and DuckDB refuses past int64)


def _store_path(store: str | None) -> Path:
    return Path(store or os.environ.get("NBDURABLE_STORE") or ".nbdurable")


def _open_store(store: str | None, *, create: bool = False) -> Any:
    from nbdurable.store import Store

    path = _store_path(store)
    if not create and not path.exists():  # a typo in --store is a usage error, not damage
        raise OptionsError(f"no nbdurable store at {path.resolve()}",
                           hint="pass --store DIR (or set NBDURABLE_STORE); a store is created by the first run")
    return Store.open(path, create=create)


class _Group(click.Group):
    """Turns nbdurable errors into one clear message and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (RunNotFoundError, OptionsError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except NbdurableError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_FAILED)


store_option = click.option(
    "--store", "store", metavar="DIR", default=None, help="Store directory (default: $NBDURABLE_STORE, else ./.nbdurable)."
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nbdurable")
def main() -> None:
    """Durable execution for Jupyter notebooks: every cell a durable step, crashed runs resume."""


@main.command("install-kernel")
@click.option("--user", is_flag=True, help="Install for the current user only.")
@click.option("--name", default="nbdurable", show_default=True, help="Kernelspec name.")
@click.option("--prefix", default=None, metavar="DIR", help="Install under this prefix (e.g. a virtualenv).")
def install_kernel(user: bool, name: str, prefix: str | None) -> None:
    """Register the "Python 3 (nbdurable)" kernel, which loads nbdurable at start."""
    from nbdurable.kernelspec import install_kernelspec

    path = install_kernelspec(name, user=user, prefix=prefix)
    click.echo(f"Installed kernelspec {name!r} in {path}")


@main.command("runs")
@store_option
@click.option("--notebook", default=None, help="Only runs of this notebook (path or attached name).")
@click.option("--status", type=click.Choice(["running", "completed", "failed", "suspended", "cancelled", "crashed"]), default=None)
@click.option("--limit", type=click.IntRange(min=1, max=RUNS_LIMIT_MAX), default=20, show_default=True,
              help="How many runs, newest first.")
def runs(store: str | None, notebook: str | None, status: str | None, limit: int) -> None:
    """List recent runs, newest first."""
    from nbdurable.kernel_ext.identity import notebook_identity

    table = _open_store(store).catalog().runs(
        notebook=notebook_identity(notebook) if notebook else None, status=status, limit=limit
    )
    if table.empty:
        click.echo("No runs.")
        return
    columns = ["run_id", "status", "notebook", "started_at", "steps_executed", "steps_restored", "time_saved_s"]
    click.echo(table[[c for c in columns if c in table.columns]].to_string(index=False))


@main.command("demo")
@click.option("--dir", "workdir", default=None, metavar="DIR", help="Where to run (default: a new temporary directory).")
def demo(workdir: str | None) -> None:
    """Run a bundled notebook, kill its kernel mid-run, run it again, and show what was restored."""
    from nbdurable.demo import run_demo, summarize

    report = run_demo(Path(workdir) if workdir else None, echo=click.echo)
    click.echo(summarize(report))
    if not any(r.how == "restored" for r in report.second):
        click.echo("Error: nothing was restored on the second run.", err=True)
        sys.exit(EXIT_FAILED)


def _register_commands() -> None:
    """Commands defined in the package's other modules attach themselves to ``main``."""
    from nbdurable.cli import maintenance, report, run, worker  # noqa: F401


_register_commands()

if __name__ == "__main__":
    main()
