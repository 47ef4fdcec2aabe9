"""The HTML report of a run from the command line: ``report``."""

from __future__ import annotations

import re
from pathlib import Path

import click

from nbdurable.cli.base import main, open_store, resolve_run, store_option
from nbdurable.errors import OptionsError


@main.command("report")
@click.argument("run_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="The HTML file to write (default: RUN_ID.html in the current directory).")
@store_option
def report(run_id: str, output: Path | None, store: str | None) -> None:
    """Write RUN_ID as one self-contained HTML page (no network needed, opens from file://): the graph
    of its steps with their status, duration, attempts and time saved, each step's source, variables,
    error and attempts on click, and a timeline. Prints the path written."""
    from nbdurable.report import write_report

    opened = open_store(store)  # a store that is not there is a usage error (exit 2), like an unknown run id
    run_id = resolve_run(opened, run_id)
    target = output if output is not None else Path(re.sub(r"[^A-Za-z0-9._-]", "_", run_id) + ".html")
    if not target.parent.is_dir():
        raise OptionsError(f"cannot write {target}: the directory {target.parent} does not exist",
                           hint="create it first, or pass another -o FILE")
    try:
        path = write_report(opened, run_id, target)
    except OSError as exc:
        raise OptionsError(f"cannot write {target}: {exc.strerror or exc}", hint="pass another -o FILE") from None
    click.echo(str(path.resolve()))
