"""``nbdurable fork`` and ``nbdurable rerun``: a new headless run that starts from a recorded run's state after
one of its cells (the rule: ``headless/fork.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from nbdurable.cli.base import main, open_store, store_option
from nbdurable.cli.run import _execute, suspend_option, timeout_options


def _common(command: Any) -> Any:
    """The options `fork` and `rerun` share with `run`."""
    for option in reversed([
        store_option,
        click.option("--cwd", type=click.Path(exists=True, file_okay=False),
                     help="Working directory of the kernel (default: the notebook's)."),
        click.option("--kernel", default=None, help="Kernel name (default: the notebook's kernelspec)."),
        click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar."),
        suspend_option,
        timeout_options,
    ]):
        command = option(command)
    return command


def _fork(run_id: str, from_cell: int, output: str | None, overrides: dict[str, Any], notebook: Path | None, *,
          store: str | None, default_output: bool, **options: Any) -> None:
    from nbdurable.headless.fork import prepare_fork

    opened = open_store(store)
    plan = prepare_fork(opened, run_id, from_cell, overrides=overrides, notebook=notebook, kernel=options["kernel"])
    _execute(plan.notebook_path, output or (plan.output_path if default_output else None), plan.params,
             store=opened.location, nb=plan.nb, fork=(plan.source, plan.restored_cells), **options)


@main.command("fork")
@click.argument("run_id")
@click.argument("output", required=False, type=click.Path(dir_okay=False))
@click.option("--from-cell", "from_cell", type=click.IntRange(min=1), required=True, metavar="N",
              help="The first cell to execute, numbered as `nbdurable show RUN_ID` numbers them; cells 1..N-1 "
              "are restored as the run recorded them.")
@click.option("-p", "--parameter", "parameters", nargs=2, multiple=True, metavar="NAME VALUE",
              help="A new value for a parameter (typed like papermill); applies from cell N on. Repeatable.")
@click.option("-f", "--parameters-file", "files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A YAML file of parameters. Repeatable; -p wins.")
@click.option("--notebook", "notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Run this (edited) notebook instead of the run's own: its cells from N on execute; its cells "
              "before N must be the code the run ran there.")
@_common
def fork(run_id: str, output: str | None, from_cell: int, parameters: tuple[tuple[str, str], ...],
         files: tuple[str, ...], notebook: Path | None, **options: Any) -> None:
    """Fork RUN_ID from cell N: a new headless run restores cells 1..N-1 from it and executes the rest.

    The cells before N are restored exactly as RUN_ID recorded them (state and outputs): nothing of them runs
    again, even when new parameters or edits would change what they compute. New parameters (-p, -f; the
    others stay RUN_ID's) apply from cell N: when papermill would inject them before N, a new
    `injected-parameters` cell runs just before cell N. With --notebook, the cells before N must be unchanged
    (exit 2 names the first that is not). The new run records that it was forked from RUN_ID after cell N-1
    (`nbdurable show` says so). A unique prefix of RUN_ID is enough. Exit codes as `run`."""
    from nbdurable.headless.params import load_parameters

    _fork(run_id, from_cell, output, load_parameters(parameters, files), notebook, default_output=False, **options)


@main.command("rerun")
@click.argument("run_id")
@click.argument("output", required=False, type=click.Path(dir_okay=False))
@click.option("--from-cell", "from_cell", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="The first cell to execute; cells 1..N-1 are restored as the run recorded them.")
@_common
def rerun(run_id: str, output: str | None, from_cell: int, **options: Any) -> None:
    """Run RUN_ID again: its notebook with its parameters, from cell N (default 1: everything executes).

    A fork with nothing changed (see `nbdurable fork`): the new run records that it reruns RUN_ID, and writes
    OUTPUT, else the run's own output notebook if it had one. Exit codes as `run`."""
    _fork(run_id, from_cell, output, {}, None, default_output=True, **options)
