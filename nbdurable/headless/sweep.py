"""A parameter sweep: the cartesian product of parameter values, each combination a durable headless run.

``grid`` expands the values; ``run_combination`` runs one combination in the calling process (a pool
process or a Dask worker, see ``placement.py``) as ``nbdurable run`` would: a combination whose newest
run completed is not run again, an unfinished one (failed, crashed, interrupted, suspended) resumes,
any other starts a new run. Its ``Outcome`` says which, and how the run ended; errors come back in it,
so one combination never stops the others.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdurable.errors import NbdurableError, OptionsError
from nbdurable.runtime.replay import find_resumable, journal_status
from nbdurable.store import Store

RAN, RESUMED, DONE_BEFORE, NOT_RUN = "new run", "resumed", "completed before", "not run"


def grid(parameters: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the values, the first parameter varying slowest (``itertools.product``)."""
    for name, values in parameters:
        if not values:
            raise OptionsError(f"-p {name} has no values", hint=f"give one or more, e.g. -p {name} 0.1 0.01")
    names = [name for name, _ in parameters]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise OptionsError(f"parameter {', '.join(twice)} given twice",
                           hint="give each parameter once, with all its values: -p lr 0.1 0.01")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(v for _, v in parameters))]


def label(params: dict[str, Any]) -> str:
    """``lr=0.1 depth=3``: how progress lines and file names name a combination."""
    return " ".join(f"{k}={v}" for k, v in params.items())


@dataclass(frozen=True)
class Combination:
    """What a placement runs: one combination of a sweep, with the paths resolved by the sweeping process."""

    notebook: str
    store: str
    params: dict[str, Any]
    output: str | None = None
    kernel: str | None = None
    reuse: bool = False
    execution_timeout: float | None = None
    start_timeout: float = 60.0


@dataclass
class Outcome:
    """How a combination's run ended (``how``: new run, resumed, completed before, not run)."""

    params: dict[str, Any]
    status: str
    how: str
    run_id: str | None = None
    resumed_from: str | None = None
    seconds: float = 0.0
    executed: int = 0
    restored: int = 0
    error: str | None = None
    notices: list[str] = field(default_factory=list)


def output_path(directory: Path, notebook: Path, params: dict[str, Any]) -> Path:
    """``DIR/<stem>-lr=0.1-depth=3.ipynb`` (characters a file name should not hold replaced by ``_``)."""
    name = "-".join([notebook.stem, *(f"{k}={v}" for k, v in params.items())])
    return directory / (re.sub(r"[^\w.=+-]", "_", name) + ".ipynb")


def completed_run(store: Store, notebook: str, params: dict[str, Any]) -> str | None:
    """The newest run of ``notebook`` with these parameters, if it completed."""
    from nbdurable.headless.params import recorded_params  # (params imports papermill, whose engines import us)

    run_id, _ = find_resumable(store, notebook, recorded_params(params), completed=True)
    if run_id is not None and journal_status(store, run_id)[0] == "completed":
        return run_id
    return None


def run_combination(combination: Combination) -> Outcome:
    """Run one combination durably in this process (see the module docstring)."""
    params = combination.params
    try:
        store = Store.open(Path(combination.store))
        done = completed_run(store, combination.notebook, params)
        if done is not None:
            return Outcome(params, "completed", DONE_BEFORE, run_id=done)
        return _execute(combination)
    except NbdurableError as exc:
        return Outcome(params, "error", NOT_RUN, error=str(exc))


def _execute(combination: Combination) -> Outcome:
    from nbdurable.headless.params import load_notebook
    from nbdurable.headless.runner import HeadlessRunner

    notebook = Path(combination.notebook)
    notices: list[str] = []
    with contextlib.redirect_stderr(io.StringIO()):  # its warning (no `parameters` cell) was shown by the sweep
        nb = load_notebook(notebook, combination.params, combination.kernel)
    runner = HeadlessRunner(
        nb, notebook_path=notebook,
        store_path=Path(combination.store), params=combination.params,
        output_path=Path(combination.output) if combination.output else None, kernel_name=combination.kernel,
        reuse=combination.reuse,
        execution_timeout=combination.execution_timeout, start_timeout=combination.start_timeout,
        notify=notices.append,
    )  # fmt: skip
    result = runner.execute()
    return Outcome(combination.params, result.status, RESUMED if result.resumed_from else RAN, run_id=result.run_id,
                   resumed_from=result.resumed_from,
                   seconds=result.seconds, executed=result.executed, restored=result.restored, error=result.error,
                   notices=notices)
