"""What every ``nbdurable`` command shares: the command group, exit codes, the ``--store`` option and
opening the store it names (by the one store-path rule of ``runtime/session.py``).

Exit codes: 0 success; 1 a run or check failed; 2 usage error (bad options, unknown run id);
3 a run suspended itself (waiting on a timer or an event; `nbdurable worker` resumes it).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from nbdurable.errors import NbdurableError, OptionsError, RunNotFoundError
from nbdurable.runtime.session import resolve_store_path
from nbdurable.store import Store

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SUSPENDED = 3
RUNS_LIMIT_MAX = 1_000_000  # as `%durable runs --limit`; far more is no listing (and DuckDB refuses past int64)


def open_store(store: str | None, *, create: bool = False) -> Store:
    """The store ``--store`` names, else the rule's; one that does not exist is a usage error unless ``create``."""
    path = resolve_store_path(store)
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
    "--store", "store", metavar="DIR", default=None,
    help="Store directory (default: $NBDURABLE_STORE, else ./.nbdurable)."
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nbdurable")
def main() -> None:
    """Durable execution for Jupyter notebooks: every cell a durable step, crashed runs resume."""
