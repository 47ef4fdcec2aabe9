"""``nbdurable plan``: what ``nbdurable run`` would do with each cell, and why, without running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from nbdurable.cli.base import main, notebook_store_option


def _transform(source: str) -> str:
    """IPython's transformation of a cell with magics (imported only for such cells: planning stays fast)."""
    if not any(line.lstrip().startswith(("%", "!")) or line.rstrip().endswith("?") for line in source.splitlines()):
        return source
    from IPython.core.inputtransformer2 import TransformerManager

    return str(TransformerManager().transform_cell(source))


@main.command("plan")
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-p", "--parameter", "parameters", nargs=2, multiple=True, metavar="NAME VALUE",
              help="A parameter, as for `nbdurable run` (its cells read it). Repeatable.")
@click.option("-f", "--parameters-file", "files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A YAML file of parameters. Repeatable; -p wins.")
@click.option("--reuse", is_flag=True, help="Plan as `nbdurable run --reuse` (executions of completed runs too).")
@click.option("--fresh", is_flag=True, help="Plan as `nbdurable run --fresh` (nothing resumed).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per cell instead of the table.")
@notebook_store_option
def plan(notebook: Path, parameters: tuple[tuple[str, str], ...], files: tuple[str, ...], reuse: bool, fresh: bool,
         as_json: bool, store: str | None) -> None:
    """What `nbdurable run NOTEBOOK` (same options) would do with each cell: restore it (from which run and
    step, and the time that saves) or execute it, and why (edited; reads `b`, changed by cell 3; a file it
    read changed; its state cannot be stored; never ran; --always). Nothing runs.

    A cell that executes is assumed to change what it assigns: a cell reading it is planned to execute, even
    if the real run then finds the value unchanged and restores it."""
    from nbdurable.headless.params import load_parameters, recorded_params
    from nbdurable.runtime.planning import format_plan, plan_cells
    from nbdurable.runtime.replay import ReplayPlan, find_resumable
    from nbdurable.runtime.session import resolve_store_path
    from nbdurable.store import Store

    params = load_parameters(parameters, files)
    sources = _parameterized_sources(notebook, params)  # (read as `run` reads it: the same error for a non-notebook)
    recorded = recorded_params(params)
    identity = str(notebook.resolve())
    store_obj = Store.open(resolve_store_path(store, notebook=identity))
    run_id, note = (None, None) if fresh else find_resumable(store_obj, identity, recorded)
    replay = ReplayPlan.from_run(store_obj, run_id) if run_id else ReplayPlan(None)
    if reuse:
        replay.add_reuse(store_obj, identity)
    cells = plan_cells(sources, replay, transform=_transform)
    if as_json:
        for cell in cells:
            click.echo(json.dumps(cell.as_record()))
        return
    source = f"resuming run {run_id}" if run_id else "a new run"
    if reuse:
        source += f", reusing {len(replay.reused)} execution(s) of completed runs"
    if note:
        source += f" ({note})"
    click.echo(f"nbdurable run {notebook.name} would start {source}:")
    click.echo(format_plan(cells))
    if not reuse:  # completed runs are not resumed: say what opting in would restore
        offered = ReplayPlan.from_run(store_obj, run_id) if run_id else ReplayPlan(None)
        offered.add_reuse(store_obj, identity)
        more = (sum(c.action == "restore" for c in plan_cells(sources, offered, transform=_transform))
                - sum(c.action == "restore" for c in cells))
        if more > 0:
            click.echo(f"With --reuse, {more} more cell(s) would be restored from completed runs of this notebook.")


def _parameterized_sources(notebook: Path, params: dict[str, Any]) -> list[str | None]:
    """The notebook's cells with the parameters injected as `nbdurable run` injects them."""
    from nbdurable.headless.params import load_notebook
    from nbdurable.headless.result import executes

    nb = load_notebook(notebook, params, None)
    return [cell.source if executes(cell) else None for cell in nb.cells]
