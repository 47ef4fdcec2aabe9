"""Headless runs from the command line: ``run``, ``resume``, ``show``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from nbdurable.cli import tables
from nbdurable.cli.base import (
    EXIT_FAILED,
    EXIT_SUSPENDED,
    AtLeast,
    main,
    notebook_store_option,
    open_store,
    resolve_run,
    store_option,
)
from nbdurable.cli.control import compensate_report
from nbdurable.errors import OptionsError, RunNotFoundError
from nbdurable.runtime.session import resolve_store_path

EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process ended by SIGINT
EXIT_CANCELLED = 4  # the run was cancelled (`nbdurable cancel`): for good, nothing resumes it

on_change_option = click.option(
    "--on-change", "on_change", type=click.Choice(["continue", "fail"]), default="continue", show_default=True,
    help="When resuming, and cells before the run's resumption point changed since it recorded them (edited, "
    "inserted, removed; listed): continue (the changed cells and what they reach execute, the rest is restored) "
    "or fail (nothing executed: `run` and `resume` exit 2, the worker logs it and leaves the run).",
)

suspend_option = click.option(
    "--suspend-after", "suspend_after", type=AtLeast(0), default=None, metavar="SECONDS",
    help="Suspend the run (exit code 3) at a durable sleep or event wait longer than this many seconds "
    "(default 60).",
)


def timeout_options(command: Any) -> Any:
    """``--execution-timeout`` and ``--start-timeout``, as papermill's options of the same names."""
    command = click.option(
        "--start-timeout", "start_timeout", type=AtLeast(0, exclusive=True), default=60.0,
        metavar="SECONDS", help="How many seconds the kernel may take to start (default 60).",
    )(command)
    return click.option(
        "--execution-timeout", "execution_timeout", type=AtLeast(0), default=None, metavar="SECONDS",
        help="Fail a cell that runs longer than this many seconds (it is interrupted; the run is resumable, and "
        "that cell runs again on resume). Default (or 0): no limit.",
    )(command)


def _run_store(store: str | None, notebook: Path) -> Path | str:
    """``--store``, else NBDURABLE_STORE, else ``.nbdurable`` beside the notebook (as in Jupyter)."""
    return resolve_store_path(store, notebook=str(notebook.resolve()))


def _execute(notebook: Path, output: str | None, params: dict[str, Any], *, store: str | None, cwd: str | None,
             kernel: str | None, fresh: bool = False, resume_run: str | None = None, reuse: bool = False,
             progress: bool = True,
             suspend_after: float | None = None, execution_timeout: float | None = None,
             start_timeout: float = 60.0, on_change: str = "continue", nb: Any = None,
             fork: tuple[str, int] | None = None) -> None:
    """Run ``notebook`` headless and report (``nb``: the notebook already prepared, e.g. a fork's; ``fork``:
    see ``HeadlessRunner``)."""
    from tqdm import tqdm

    from nbdurable.headless.params import load_notebook
    from nbdurable.headless.result import executes
    from nbdurable.headless.runner import HeadlessRunner

    nb = nb if nb is not None else load_notebook(notebook, params, kernel)
    code_cells = sum(1 for c in nb.cells if executes(c))
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
        fresh=fresh, resume_run=resume_run, reuse=reuse, on_cell=on_cell, suspend_after=suspend_after,
        execution_timeout=execution_timeout, start_timeout=start_timeout, on_change=on_change, fork=fork,
        notify=lambda text: click.echo(f"nbdurable: {text}", err=True),
    )  # fmt: skip
    try:
        result = runner.execute()
    except KeyboardInterrupt:  # a second Ctrl-C while the run was being wound up (or before it started)
        bar.close()
        click.echo("Interrupted. Run the same command again to resume from there.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        bar.close()
    resumed = f" (resumed run {result.resumed_from})" if result.resumed_from else ""
    if fork:
        resumed = f" (forked from run {fork[0]} after cell {fork[1]})"
    exited = (f"; the notebook exited early at cell {result.exited_at + 1} (sys.exit), the cells after it did not run"
              if result.exited_at is not None and result.status == "completed" else "")
    click.echo(
        f"{result.status}: run {result.run_id}{resumed}: {result.executed} executed, {result.restored} restored "
        f"(saved {tables.seconds(result.time_saved)}) in {tables.seconds(result.seconds)}{exited}"
        + (f"; output {output}" if output else "") + f"; store {tables.notebook(runner.store.display)}"
    )
    if result.status == "completed":
        return
    if result.status == "suspended":
        click.echo(f"Run {result.run_id} is {result.describe_suspension()}; "
                   "`nbdurable worker` resumes it when it is due.", err=True)
        sys.exit(EXIT_SUSPENDED)
    at = f" (cell {result.stopped_at + 1})" if result.stopped_at is not None else ""
    if result.status == "cancelled":
        click.echo(f"Cancelled{at}: {result.error or 'cancelled'}. The run is over for good "
                   f"(`nbdurable resume {result.run_id} --force` would go on from there).", err=True)
        if result.run_id is not None and result.cancel:  # its kernel was killed: the undos run in a new one
            compensate_report(runner.store, result.run_id, result.cancel)
        sys.exit(EXIT_CANCELLED)
    if result.interrupted:
        click.echo(f"Interrupted{at}. Run the same command again to resume from there.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(f"Error: {result.error}{at}\nRun the same command again to resume from there.", err=True)
    sys.exit(EXIT_FAILED)


@main.command("run")
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", required=False, type=click.Path(dir_okay=False))
@click.option("-p", "--parameter", "parameters", nargs=2, multiple=True, metavar="NAME VALUE",
              help="A parameter (typed like papermill: True/False/None/int/float, else str). Repeatable.")
@click.option("-f", "--parameters-file", "files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A YAML file of parameters. Repeatable; -p wins.")
@click.option("--fresh", is_flag=True, help="Start a new run even if an unfinished one exists.")
@click.option("--reuse", is_flag=True,
              help="Also restore the cells whose code and inputs match an execution of any completed run of this "
              "notebook (a rerun after a fix executes only what the fix reaches; a parameter sweep shares the "
              "cells that do not read the parameters).")
@notebook_store_option
@click.option("--cwd", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Working directory of the kernel (default: the notebook's).")
@click.option("--kernel", default=None, metavar="NAME", help="Kernel name (default: the notebook's kernelspec).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@suspend_option
@on_change_option
@timeout_options
def run(notebook: Path, output: str | None, parameters: tuple[tuple[str, str], ...], files: tuple[str, ...],
        fresh: bool, reuse: bool, store: str | None, cwd: str | None, kernel: str | None, progress: bool,
        suspend_after: float | None, on_change: str, execution_timeout: float | None, start_timeout: float) -> None:
    """Run NOTEBOOK headless; write OUTPUT (an .ipynb) if given.

    The same notebook with the same parameters resumes its unfinished (crashed, failed, interrupted or
    suspended) run: a cell is restored when a recorded execution of the run ran the same code on the same
    inputs (whatever its position), the rest executes (`nbdurable plan` tells which and why). A cell
    calling `sys.exit()` or `sys.exit(0)` ends the notebook early and successfully (as in papermill): the
    cells after it do not run.

    \b
    Exit codes: 0 completed (also after such an early exit);
    1 a cell failed or timed out, or the kernel died;
    2 usage error (bad options or parameters, a run of the notebook live elsewhere,
      cells changed under the run being resumed with --on-change fail);
    3 the run suspended itself on a long `nbd.sleep` or `nbd.wait_for_event`
      (`nbdurable worker` resumes it when it is due);
    4 the run was cancelled (`nbdurable cancel`): nothing resumes it
      (`nbdurable resume RUN_ID --force` can);
    130 interrupted (Ctrl-C).
    After 1, 3 or 130 the same command resumes the run from where it stopped;
    after 4 it starts a new run."""
    from nbdurable.headless.params import load_parameters

    _execute(notebook, output, load_parameters(parameters, files), store=store, cwd=cwd, kernel=kernel,
             fresh=fresh, reuse=reuse, progress=progress, suspend_after=suspend_after,
             execution_timeout=execution_timeout, start_timeout=start_timeout, on_change=on_change)


@main.command("resume")
@click.argument("run_id")
@click.argument("output", required=False, type=click.Path(dir_okay=False))
@store_option
@click.option("--cwd", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Working directory of the kernel (default: the notebook's).")
@click.option("--kernel", default=None, metavar="NAME", help="Kernel name (default: the notebook's kernelspec).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.option("--force", is_flag=True, help="Resume RUN_ID even though it was cancelled.")
@suspend_option
@on_change_option
@timeout_options
def resume(run_id: str, output: str | None, store: str | None, cwd: str | None, kernel: str | None, progress: bool,
           force: bool, suspend_after: float | None, on_change: str, execution_timeout: float | None,
           start_timeout: float) -> None:
    """Resume RUN_ID: run its notebook again with its parameters, restoring what it completed (same exit
    codes as `run`). A cancelled run is resumed only with --force."""
    opened = open_store(store)
    run_id = resolve_run(opened, run_id)
    records = opened.read_journal(run_id)
    head = records[0] if records else {}
    notebook = head.get("notebook_path")
    if not notebook or not Path(notebook).exists():
        raise OptionsError(f"run {run_id} has no notebook file to run ({notebook or 'unnamed session'}).",
                           hint="interactive sessions resume in Jupyter with `%durable resume RUN_ID`.")
    if any(r.get("t") == "run_end" and r.get("status") == "completed" for r in records):
        raise OptionsError(f"run {run_id} completed: there is nothing to resume.",
                           hint="`nbdurable run NOTEBOOK --fresh` runs it again.")
    from nbdurable.runtime.control import was_cancelled

    if not force and was_cancelled(opened, run_id):
        raise OptionsError(f"run {run_id} was cancelled: nothing resumes it unless forced.",
                           hint=f"`nbdurable resume {run_id} --force` resumes it anyway; `nbdurable show {run_id}` "
                           "says who cancelled it and why.")
    from nbdurable.headless.params import secrets_from_environment

    _execute(Path(notebook), output or head.get("output_path"),
             secrets_from_environment(head.get("params") or {}, run_id),
             store=store or opened.location, cwd=cwd, kernel=kernel, resume_run=run_id, progress=progress,
             suspend_after=suspend_after, execution_timeout=execution_timeout, start_timeout=start_timeout,
             on_change=on_change)


@main.command("show")
@click.argument("run_id")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(run_id: str, store: str | None, as_json: bool) -> None:
    """Show RUN_ID and its steps: status, duration, executed or restored (and from where)."""
    opened = open_store(store)
    run_id = resolve_run(opened, run_id)
    catalog = opened.catalog()
    runs = catalog.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    if runs.empty:
        raise RunNotFoundError(f"no run {run_id!r} in store {opened.display}", hint="`nbdurable runs` lists run ids")
    steps = catalog.steps(run_id)
    if as_json:
        click.echo(json.dumps({"run": runs.iloc[0].to_dict(), "steps": steps.to_dict("records")}, default=str,
                              indent=1))
        return
    import pandas as pd

    row = runs.iloc[0]
    resumed = row.resumed_from if isinstance(row.resumed_from, str) else "-"
    click.echo(f"run {row.run_id}  {row.status}  {tables.notebook(row.notebook)}\n"
               f"  started {tables.when(row.started_at)}  ended {tables.when(row.ended_at)}  "
               f"duration {tables.seconds(row.duration_s)}  saved {tables.seconds(row.time_saved_s or 0.0)}\n"
               f"  params {row.params or '{}'}  resumed from {resumed}")
    forks = catalog.query("SELECT run_id, forked_at_cell FROM runs WHERE forked_from = ? ORDER BY run_id", [run_id])
    lineage = tables.lineage(row, list(forks.itertuples(index=False, name=None)))
    if lineage:
        click.echo(f"  {lineage}")
    if row.status == "suspended":
        from nbdurable.errors import describe_suspension

        wake_at = None if pd.isna(row.wake_at) else row.wake_at.tz_localize("UTC").timestamp()
        waiting = json.loads(row.waiting_for) if isinstance(row.waiting_for, str) else None
        click.echo(f"  {describe_suspension(wake_at, waiting)}: `nbdurable worker` resumes it when it is due")
    else:
        if row.status == "cancelled":
            click.echo(f"  {tables.cancelled(row.cancelled_by, row.cancel_reason, row.cancel_requested_at)}")
        click.echo(f"  {tables.ENDINGS.get(str(row.status), str(row.status))}")
    if str(row.get("time_skipped")) == "True":  # numpy bool, or None/NaN for older rows
        click.echo("  time-skipped: durable waits advanced a virtual clock; its step times are virtual")
    undone = int(steps["name"].fillna("").str.startswith("compensate:").sum())
    if undone:
        click.echo(f"  compensated: {undone} compensation step(s) undid its completed steps (`nbd.compensate`); "
                   "the next `nbdurable run` starts a new run")
    click.echo()
    top = steps["parent"].isna()
    first_line = steps["source"].fillna("").map(lambda s: (s.strip().splitlines() or [""])[0][:50])
    own = (steps["ended_at"] - steps["started_at"]).dt.total_seconds()  # a restored step: its restore's time
    table = steps.assign(
        cell=top.cumsum().where(top).map(lambda n: "" if pd.isna(n) else str(int(n))),
        status=steps["status"].map(lambda st: tables.step_status(st, str(row.status))),
        duration=own.where(steps["status"] == "restored", steps["duration_s"]).map(tables.seconds),
        source=first_line.where(top, "  ↳ " + steps["name"].fillna("")),
        from_=(steps["restored_from_run"].fillna("")
               + steps["restored_from_ordinal"].map(lambda o: "" if pd.isna(o) else f" #{int(o)}")
               + (steps["duration_s"] - own).clip(lower=0).map(lambda d: f" (saved {tables.seconds(d)})").where(
                   steps["status"] == "restored", "")),
    )[["cell", "ordinal", "status", "duration", "from_", "source"]].rename(
        columns={"from_": "restored from", "ordinal": "step"})
    width = int(table["source"].str.len().max() or 0)
    click.echo(table.to_string(index=False, formatters={"source": f"{{:<{width}}}".format}))

