"""What every ``nbdurable`` command shares: the command group, exit codes, the ``--store`` option and
opening the store it names (by the one store-path rule of ``runtime/session.py``).

Exit codes: 0 success; 1 a run or check failed; 2 usage error (bad options, unknown run id);
3 a run suspended itself (waiting on a timer or an event; `nbdurable worker` resumes it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nbdurable.errors import NbdurableError, OptionsError, RunNotFoundError
from nbdurable.runtime.session import STORE_DIRNAME, resolve_store_path
from nbdurable.store import Store

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SUSPENDED = 3
RUNS_LIMIT_MAX = 1_000_000  # as `%durable runs --limit`; far more is no listing (and DuckDB refuses past int64)


def open_store(store: str | None, *, create: bool = False) -> Store:
    """The store ``--store`` names, else the rule's (``$NBDURABLE_STORE``, else the nearest ``.nbdurable`` in
    the working directory or a parent, like git); one that does not exist is a usage error unless ``create``,
    and the error names the stores found nearby."""
    path = resolve_store_path(store)
    if not create and isinstance(path, Path) and not path.exists():  # a typo in --store is a usage error, not damage
        nearby = nearby_stores(Path.cwd())
        found = (f"; stores nearby: {', '.join(str(p) for p in nearby)} (pass one with --store)" if nearby
                 else "; a store is created by the first run, beside its notebook")
        raise OptionsError(f"no nbdurable store at {path.resolve()}{found}",
                           hint="pass --store DIR (or set NBDURABLE_STORE)")
    return Store.open(path, create=create)


def nearby_stores(where: Path, depth: int = 2, limit: int = 8) -> list[Path]:
    """Stores (``.nbdurable`` directories) below ``where``, up to ``depth`` levels, relative to it."""
    found: list[Path] = []
    level = [where]
    for _ in range(depth):
        following: list[Path] = []
        for folder in level:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            for child in children:
                if (child / STORE_DIRNAME).is_dir():
                    found.append((child / STORE_DIRNAME).relative_to(where))
                following.append(child)
        level = following[:200]
    return found[:limit]


def resolve_run(store: Store, run_id: str) -> str:
    """``run_id``, or the one run of ``store`` whose id starts with it. The same error for every command
    (``runtime.checkout.resolve_run``, which ``%durable checkout`` uses too)."""
    from nbdurable.runtime.checkout import resolve_run as resolve

    return resolve(store, run_id)


if TYPE_CHECKING:  # click >= 8.2 types ParamType by its value; 8.1's is no generic at run time
    _NumberType = click.ParamType[float]
else:
    _NumberType = click.ParamType


class AtLeast(_NumberType):
    """A number of at least ``minimum`` (more than it if ``exclusive``). click's ranges would print their
    bounds in --help as ``[x>=0]``; the help text says them in words, and a bad value gets a sentence."""

    def __init__(self, minimum: float, *, integer: bool = False, exclusive: bool = False) -> None:
        self.minimum, self.integer, self.exclusive = minimum, integer, exclusive
        self.name = "integer" if integer else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number: float = value
        else:
            try:
                number = int(value) if self.integer else float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not {'a whole number' if self.integer else 'a number'}", param, ctx)
        if number < self.minimum or (self.exclusive and number == self.minimum):
            bound = self.minimum if self.integer or not float(self.minimum).is_integer() else int(self.minimum)
            self.fail(f"must be {'more than' if self.exclusive else 'at least'} {bound}, not {value}", param, ctx)
        return number


class _Group(click.Group):
    """Turns nbdurable errors into one clear message and the documented exit code; lists each command with
    the whole first sentence of its help (click cuts it to the terminal's width mid-phrase)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            text = " ".join((command.help or "").split("\n\n")[0].split())
            first = text.split(". ")[0].split(": ")[0].rstrip(".") + "." if text else ""
            rows.append((name, first.replace("\b ", "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

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
    help="The store directory. Default: $NBDURABLE_STORE if set, else the nearest .nbdurable in the working "
    "directory or one of its parents (as git finds its repository).",
)
notebook_store_option = click.option(
    "--store", "store", metavar="DIR", default=None,
    help="The store directory. Default: $NBDURABLE_STORE if set, else .nbdurable beside NOTEBOOK (where "
    "Jupyter's kernels record it); created by the first run.",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nbdurable")
def main() -> None:
    """Durable execution for Jupyter notebooks: every cell a durable step, crashed runs resume."""
