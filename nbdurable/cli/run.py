"""Headless runs from the command line: ``run``, ``resume``, ``show``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from nbdurable.cli import EXIT_FAILED, EXIT_SUSPENDED, _open_store, main, store_option
from nbdurable.errors import OptionsError, RunNotFoundError


suspend_option = click.option(
    "--suspend-after", "suspend_after", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
    help="Suspend the run (exit code 3) at a durable sleep or event wait longer than this (default 60).",
)


def _run_store(store: str | None, notebook: Path) -> Path:
    """``--store``, else NBDURABLE_STORE, else ``.nbdurable`` beside the notebook (as in Jupyter)."""
    return Path(store or os.environ.get("NBDURABLE_STORE") or notebook.resolve().parent / ".nbdurable")


def _execute(notebook: Path, output: str | None, params: dict[str, Any], *, store: str | None, cwd: str | None,
             kernel: str | None, fresh: bool = False, resume_run: str | None = None, progress: bool = True,
             suspend_after: float | None = None) -> None:
    from tqdm import tqdm

    from nbdurable.headless.params import load_notebook
    from nbdurable.headless.runner import HeadlessRunner

    nb = load_notebook(notebook, params, kernel)
    code_cells = sum(1 for c in nb.cells if c.cell_type == "code")
    bar = tqdm(total=code_cells, unit="cell", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    counts = {"executed": 0, "restored": 0}

    def on_cell(index: int, meta: dict[str, Any]) -> None:
        if meta["status"] in counts:
            counts[meta["status"]] += 1
        bar.set_postfix(counts, refresh=False)
        bar.update(1)

    runner = HeadlessRunner(
        nb, notebook_path=notebook, store_path=_run_store(store, notebook), params=params,
        output_path=Path(output) if output else None, kernel_name=kernel, cwd=Path(cwd) if cwd else None,
        fresh=fresh, resume_run=resume_run, on_cell=on_cell, suspend_after=suspend_after,
    )  # fmt: skip
    try:
        result = runner.execute()
    finally:
        bar.close()
    resumed = f" (resumed run {result.resumed_from})" if result.resumed_from else ""
    click.echo(
        f"{result.status}: run {result.run_id}{resumed}: {result.executed} executed, {result.restored} restored "
        f"(saved {result.time_saved:.1f} s) in {result.seconds:.1f} s" + (f"; output {output}" if output else "")
    )
    if result.status == "suspended":
        click.echo(f"Run {result.run_id} is {result.describe_suspension()}; `nbdurable worker` resumes it when it is due.",
                   err=True)
        sys.exit(EXIT_SUSPENDED)
    if result.status != "completed":
        click.echo(f"Error: {result.error}. Run the same command again to resume from there.", err=True)
        sys.exit(EXIT_FAILED)


@main.command("run")
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", required=False, type=click.Path(dir_okay=False))
@click.option("-p", "--parameter", "parameters", nargs=2, multiple=True, metavar="NAME VALUE",
              help="A parameter (typed like papermill: True/False/None/int/float, else str). Repeatable.")
@click.option("-f", "--parameters-file", "files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A YAML file of parameters. Repeatable; -p wins.")
@click.option("--fresh", is_flag=True, help="Start a new run even if an unfinished one exists.")
@store_option
@click.option("--cwd", type=click.Path(exists=True, file_okay=False), help="Working directory of the kernel (default: the notebook's).")
@click.option("--kernel", default=None, help="Kernel name (default: the notebook's kernelspec).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@suspend_option
def run(notebook: Path, output: str | None, parameters: tuple[tuple[str, str], ...], files: tuple[str, ...],
        fresh: bool, store: str | None, cwd: str | None, kernel: str | None, progress: bool,
        suspend_after: float | None) -> None:
    """Run NOTEBOOK headless; write OUTPUT (an .ipynb) if given.

    The same notebook with the same parameters resumes its unfinished (crashed, failed or suspended) run:
    cells it completed are restored, the rest executes. Exit code 0 completed, 1 a cell failed or the
    kernel died, 3 the run suspended itself on a long `nbd.sleep` or `nbd.wait_for_event`
    (`nbdurable worker` resumes it when it is due)."""
    from nbdurable.headless.params import load_parameters

    _execute(notebook, output, load_parameters(parameters, files), store=store, cwd=cwd, kernel=kernel,
             fresh=fresh, progress=progress, suspend_after=suspend_after)


@main.command("resume")
@click.argument("run_id")
@click.argument("output", required=False, type=click.Path(dir_okay=False))
@store_option
@click.option("--cwd", type=click.Path(exists=True, file_okay=False), help="Working directory of the kernel.")
@click.option("--kernel", default=None, help="Kernel name (default: the notebook's kernelspec).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@suspend_option
def resume(run_id: str, output: str | None, store: str | None, cwd: str | None, kernel: str | None, progress: bool,
           suspend_after: float | None) -> None:
    """Resume RUN_ID: run its notebook again with its parameters, restoring what it completed (same exit
    codes as `run`)."""
    records = _open_store(store).read_journal(run_id)
    head = records[0] if records else {}
    notebook = head.get("notebook_path")
    if not notebook or not Path(notebook).exists():
        raise OptionsError(f"run {run_id} has no notebook file to run ({notebook or 'unnamed session'}).",
                           hint="interactive sessions resume in Jupyter with `%durable resume RUN_ID`.")
    if any(r.get("t") == "run_end" and r.get("status") == "completed" for r in records):
        raise OptionsError(f"run {run_id} completed: there is nothing to resume.", hint="`nbdurable run NOTEBOOK --fresh` runs it again.")
    from nbdurable.headless.params import secrets_from_environment

    _execute(Path(notebook), output or head.get("output_path"), secrets_from_environment(head.get("params") or {}, run_id),
             store=store or str(_open_store(store).path), cwd=cwd, kernel=kernel, resume_run=run_id, progress=progress,
             suspend_after=suspend_after)


@main.command("show")
@click.argument("run_id")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(run_id: str, store: str | None, as_json: bool) -> None:
    """Show RUN_ID and its steps: status, duration, executed or restored (and from where)."""
    catalog = _open_store(store).catalog()
    runs = catalog.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    if runs.empty:
        raise RunNotFoundError(f"no run {run_id!r} in this store.", hint="`nbdurable runs` lists run ids.")
    steps = catalog.steps(run_id)
    if as_json:
        click.echo(json.dumps({"run": runs.iloc[0].to_dict(), "steps": steps.to_dict("records")}, default=str, indent=1))
        return
    import pandas as pd

    row = runs.iloc[0]
    click.echo(f"run {row.run_id}  {row.status}  {row.notebook}\n  params {row.params}  started {row.started_at}  "
               f"resumed from {row.resumed_from if isinstance(row.resumed_from, str) else '-'}  "
               f"saved {0.0 if pd.isna(row.time_saved_s) else row.time_saved_s:.1f} s")
    if row.status == "suspended":
        from nbdurable.errors import describe_suspension

        wake_at = None if pd.isna(row.wake_at) else row.wake_at.tz_localize("UTC").timestamp()
        waiting = json.loads(row.waiting_for) if isinstance(row.waiting_for, str) else None
        click.echo(f"  {describe_suspension(wake_at, waiting)}: `nbdurable worker` resumes it when it is due")
    click.echo()
    first_line = steps["source"].fillna("").map(lambda s: (s.strip().splitlines() or [""])[0][:50])
    table = steps.assign(
        source=first_line.where(steps["parent"].isna(), "  ↳ " + steps["name"].fillna("")),
        from_=steps["restored_from_run"].fillna("") + steps["restored_from_ordinal"].map(lambda o: "" if pd.isna(o) else f"#{int(o)}"),
    )[["ordinal", "status", "duration_s", "from_", "source"]].rename(columns={"from_": "restored from"})
    width = int(table["source"].str.len().max() or 0)
    click.echo(table.to_string(index=False, formatters={"source": f"{{:<{width}}}".format}))

