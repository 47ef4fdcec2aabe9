"""``nbdurable sweep NOTEBOOK -p NAME VALUE… [--dask ADDRESS | --workers N]``: a parameter grid, each
combination a durable headless run (``headless/sweep.py``) placed by ``headless/placement.py``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from nbdurable.cli import tables
from nbdurable.cli.base import EXIT_FAILED, EXIT_SUSPENDED, AtLeast, main, notebook_store_option
from nbdurable.cli.run import EXIT_INTERRUPTED, _run_store, timeout_options
from nbdurable.errors import OptionsError


def parse_grid(tokens: tuple[str, ...]) -> list[tuple[str, list[Any]]]:
    """``-p lr 0.1 0.01 -p depth 3 5`` → ``[("lr", [0.1, 0.01]), ("depth", [3, 5])]`` (values typed as ``run -p``)."""
    from nbdurable.headless.params import _is_name, parse_value

    parameters: list[tuple[str, list[Any]]] = []
    words = list(tokens)
    while words:
        flag = words.pop(0)
        if flag not in ("-p", "--parameter"):
            where = f"after -p {parameters[-1][0]}" if parameters else "before the first -p"
            raise OptionsError(f"unexpected {flag!r} {where}",
                               hint="give parameters as -p NAME VALUE [VALUE…], e.g. -p lr 0.1 0.01 -p depth 3 5")
        if not words or words[0] in ("-p", "--parameter"):
            raise OptionsError(f"{flag} needs a parameter name and values", hint="e.g. -p lr 0.1 0.01")
        name = words.pop(0)
        if not _is_name(name):
            raise OptionsError(f"-p {name}: not a valid parameter name",
                               hint="names are Python identifiers (not keywords), e.g. -p learning_rate 0.1 0.01")
        values = []
        while words and words[0] not in ("-p", "--parameter"):
            values.append(parse_value(words.pop(0)))
        parameters.append((name, values))
    if not parameters:
        raise OptionsError("a sweep needs parameters", hint="e.g. nbdurable sweep NOTEBOOK -p lr 0.1 0.01 -p depth 3 5")
    return parameters


@main.command("sweep", context_settings={"ignore_unknown_options": True})
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("grid_args", nargs=-1, type=click.UNPROCESSED, metavar="-p NAME VALUE [VALUE…]…")
@click.option("--dask", "dask_address", metavar="ADDRESS", default=None,
              help="Run the combinations on the workers of this Dask scheduler (e.g. tcp://10.0.0.5:8786); they "
              "must see NOTEBOOK and the store at the same paths.")
@click.option("--workers", type=AtLeast(1, integer=True), default=None, metavar="N",
              help="Run the combinations on N processes of this machine (default: the number of CPUs, at most "
              "the number of combinations).")
@notebook_store_option
@click.option("--output-dir", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Write each combination's output notebook here (<name>-<param>=<value>….ipynb).")
@click.option("--kernel", default=None, metavar="NAME", help="Kernel name (default: the notebook's kernelspec).")
@click.option("--reuse", is_flag=True,
              help="Also restore the cells whose code and inputs match an execution of any completed run of this "
              "notebook (as `run --reuse`): the cells that do not read the swept parameters run once, in the "
              "combinations that ran first.")
@timeout_options
def sweep(notebook: Path, grid_args: tuple[str, ...], dask_address: str | None, workers: int | None,
          store: str | None, output_dir: Path | None, kernel: str | None, reuse: bool,
          execution_timeout: float | None, start_timeout: float) -> None:
    """Run NOTEBOOK once for every combination of parameter values, each a durable run.

    `-p NAME VALUE [VALUE…]` (repeatable) gives a parameter's values, typed as `run -p` types them; the
    sweep is their cartesian product. Each combination runs as `nbdurable run NOTEBOOK -p …` would, in
    its own kernel, on Dask workers (--dask) or on local processes (--workers). Running the same sweep
    again resumes each combination on its own: one whose run completed is not run again, a failed,
    crashed or interrupted one resumes from where it stopped. A line is printed as each combination
    ends, and a table at the end.

    \b
    Exit codes: 0 every combination completed; 1 one or more failed (or could not run);
    2 usage error (bad -p, an unreachable --dask scheduler); 3 none failed but some suspended
    themselves (`nbdurable worker` resumes them); 130 interrupted (Ctrl-C)."""
    from nbdurable.headless.params import load_notebook
    from nbdurable.headless.placement import DaskPlacement, LocalPool, Placement
    from nbdurable.headless.sweep import grid

    combos = grid(parse_grid(grid_args))
    if dask_address and workers:
        raise OptionsError("--dask and --workers exclude each other",
                           hint="--dask ADDRESS runs on a Dask cluster, --workers N on this machine")
    load_notebook(notebook, combos[0], kernel)  # a file that is no notebook: one error, before anything is placed
    specs = _combinations(notebook, combos, store, output_dir, kernel, reuse, execution_timeout, start_timeout)
    placement: Placement = (DaskPlacement(dask_address) if dask_address
                            else LocalPool(workers or max(1, min(os.cpu_count() or 1, len(combos)))))
    click.echo(f"sweep: {len(combos)} combination{'s' if len(combos) > 1 else ''} of "
               f"{tables.notebook(str(notebook.resolve()))} on {placement.description}; "
               f"store {tables.notebook(specs[0].store)}", err=True)
    try:
        outcomes = _run_all(placement, specs)
    except KeyboardInterrupt:
        click.echo("Interrupted. Run the same sweep again: completed combinations are not run again, the others "
                   "resume.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        placement.close()
    click.echo(_summary(outcomes))
    statuses = {o.status for o in outcomes}
    if statuses - {"completed", "suspended"}:
        sys.exit(EXIT_FAILED)
    if "suspended" in statuses:
        sys.exit(EXIT_SUSPENDED)


def _combinations(notebook: Path, combos: list[dict[str, Any]], store: str | None, output_dir: Path | None,
                  kernel: str | None, reuse: bool, execution_timeout: float | None, start_timeout: float) -> list[Any]:
    from nbdurable.headless.sweep import Combination, output_path

    where = _run_store(store, notebook)
    store_path = where if isinstance(where, str) else str(where.resolve())  # a shared store's URL as it is
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    return [Combination(str(notebook.resolve()), store_path, params,
                        str(output_path(output_dir.resolve(), notebook, params)) if output_dir else None,
                        kernel, reuse, execution_timeout, start_timeout) for params in combos]


def _run_all(placement: Any, specs: list[Any]) -> list[Any]:
    """Every combination's outcome, in grid order; a progress line as each ends."""
    from nbdurable.headless.sweep import NOT_RUN, Outcome, label, run_combination

    outcomes: list[Any] = [_completed_before(spec) for spec in specs]  # not placed at all
    for done, outcome in enumerate((o for o in outcomes if o is not None), start=1):
        click.echo(f"[{done}/{len(specs)}] {_line(outcome)}", err=True)
    todo = [i for i, o in enumerate(outcomes) if o is None]
    futures = [placement.submit(run_combination, specs[i], label(specs[i].params)) for i in todo]
    index = {id(f): i for i, f in zip(todo, futures, strict=True)}
    for done, future in enumerate(placement.finished(futures), start=len(specs) - len(todo) + 1):
        i = index[id(future)]
        try:
            outcome = future.result()
        except Exception as exc:  # the placement lost it (a pool process or Dask worker died for good)
            outcome = Outcome(specs[i].params, "error", NOT_RUN, error=f"{type(exc).__name__}: {exc}")
        outcomes[i] = outcome
        click.echo(f"[{done}/{len(specs)}] {_line(outcome)}", err=True)
        for notice in outcome.notices:  # what the runner told (cells changed under a resumed run, …)
            click.echo(f"    nbdurable: {notice}", err=True)
    return outcomes


def _completed_before(spec: Any) -> Any:
    """The outcome of a combination whose newest run completed (None: it must run)."""
    from nbdurable.headless.sweep import DONE_BEFORE, Outcome, completed_run
    from nbdurable.store import Store

    store = Path(spec.store)
    run_id = completed_run(Store.open(store), spec.notebook, spec.params) if store.exists() else None
    return Outcome(spec.params, "completed", DONE_BEFORE, run_id=run_id) if run_id else None


def _line(o: Any) -> str:
    from nbdurable.headless.sweep import DONE_BEFORE, label

    if o.how == DONE_BEFORE:
        return f"{label(o.params)}: completed before (run {o.run_id}), not run again"
    run = f" run {o.run_id}" if o.run_id else ""
    run += f" (resumed run {o.resumed_from})" if o.resumed_from else ""
    counts = f" ({o.executed} executed, {o.restored} restored) in {tables.seconds(o.seconds)}" if o.run_id else ""
    error = f": {o.error}" if o.error and o.status != "completed" else ""
    return f"{label(o.params)}: {o.status}{run}{counts}{error}"


def _summary(outcomes: list[Any]) -> str:
    import pandas as pd

    from nbdurable.headless.sweep import DONE_BEFORE

    rows = []
    for o in outcomes:
        fresh = o.how != DONE_BEFORE
        rows.append({**{k: str(v) for k, v in o.params.items()}, "run": o.run_id or "-", "status": o.status,
                     "this sweep": o.how, "duration": tables.seconds(o.seconds) if fresh and o.run_id else "-",
                     "executed": str(o.executed) if fresh else "-", "restored": str(o.restored) if fresh else "-",
                     "error": (o.error or "").splitlines()[0][:60] if o.status != "completed" and o.error else ""})
    table = pd.DataFrame(rows)
    if not table["error"].any():
        table = table.drop(columns="error")
    done = sum(o.status == "completed" for o in outcomes)
    return f"{table.to_string(index=False)}\n{done} of {len(outcomes)} combinations completed"
