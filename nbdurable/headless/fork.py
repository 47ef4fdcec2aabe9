"""``nbdurable fork`` and ``rerun``: the notebook a fork runs, and the rule for its cells.

The rule (README, "Fork and rerun"): a fork of run R from cell N restores cells 1..N-1 **exactly as R recorded
them** (their state and outputs; nothing of them executes, whatever the new parameters or the edited notebook
would compute now) and executes cell N and every cell after it. Cells are numbered as ``nbdurable show R``
numbers them: R's N-th cell (its N-th top-level step), so papermill's injected-parameters cell counts when R
had parameters. Hence:

- **parameters apply from cell N**: when papermill would inject them before cell N, the restored cells keep
  R's values (their injected cell is restored as recorded) and a new ``injected-parameters`` cell holding the
  fork's parameters runs just before cell N; when the injection point lies at or after N, the parameters are
  injected there as in any run. The fork's parameters are R's, updated by ``-p``/``-f``.
- **an edited notebook** (``--notebook PATH``) supplies cell N onwards; its cells before N must be the code R
  ran there (checked by source hash), since their recorded state stands for them: a fork never restores a
  cell whose code it does not show. Edit from cell N on, or fork from an earlier cell.
- the cells before N must have completed (or been restored) in R: a fork does not pass a failed or unfinished
  cell; fork from that cell to run it again.
- ``rerun`` is a fork with R's own notebook and parameters, from cell 1 by default (nothing restored: a fresh
  run of the same inputs, recorded as R's rerun).

The kernel does the restoring with ``Durable.checkout(R, cell=N-1, arm=False)`` (one request), then nbclient
executes the rest; the new run records ``forked_from`` = R and ``forked_at_cell`` = N-1 (the state it took).
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from nbdurable.errors import NbdurableError, OptionsError
from nbdurable.headless.params import INJECTED_TAG, load_notebook, secrets_from_environment
from nbdurable.headless.result import executes
from nbdurable.runtime.cells import classify
from nbdurable.runtime.checkout import resolve_run, top_level_steps
from nbdurable.store import Store


@dataclass
class ForkPlan:
    """What ``nbdurable fork``/``rerun`` runs."""

    source: str  # the run forked
    restored_cells: int  # cells 1..restored_cells come from the source run (N - 1)
    nb: nbformat.NotebookNode  # parameterized, the new injected cell in place
    notebook_path: Path
    params: dict[str, Any]
    output_path: str | None  # the source run's output notebook (what `rerun` writes by default)


def is_step_cell(cell: Any) -> bool:
    """A cell that becomes a top-level step when a headless run sends it (a code cell, not only `%durable`)."""
    if not executes(cell):
        return False
    try:
        return not classify(cell.source.rstrip("\n")).control
    except NbdurableError:
        return True  # bad %%durable options: sent, and it fails as a step


def step_cells(nb: nbformat.NotebookNode) -> list[int]:
    """The indices of the notebook's step cells, in order: the k-th is the run's cell k."""
    return [i for i, cell in enumerate(nb.cells) if is_step_cell(cell)]


def prepare_fork(store: Store, run_id: str, from_cell: int, *, overrides: dict[str, Any] | None = None,
                 notebook: Path | None = None, kernel: str | None = None) -> ForkPlan:
    """The notebook a fork of ``run_id`` from ``from_cell`` runs (see the module's rule); OptionsError (exit 2)
    when the rule cannot be kept, saying which cell and what to do."""
    run_id = resolve_run(store, run_id)
    holder = store.lease_holder(run_id)
    if holder is not None:
        raise OptionsError(f"run {run_id} is still being recorded by process {holder.get('pid')} on "
                           f"{holder.get('host')}", hint="fork it once it has finished (or stop it)")
    records = store.read_journal(run_id)
    head = next((r for r in records if r.get("t") == "run"), {})
    path = notebook or (Path(head["notebook_path"]) if head.get("notebook_path") else None)
    if path is None or not path.is_file():
        raise OptionsError(f"run {run_id} has no notebook file to fork ({path or 'an unnamed session'})",
                           hint="pass the notebook with --notebook PATH (or `%durable checkout` it in Jupyter)")
    cells = top_level_steps(records)
    if not 1 <= from_cell <= len(cells) + 1:
        raise OptionsError(f"run {run_id} has {len(cells)} cell(s): cannot fork from cell {from_cell}",
                           hint=f"give --from-cell from 1 to {len(cells) + 1} (`nbdurable show {run_id}` numbers "
                           "them; 1 runs everything again)")
    for number, (_, end) in enumerate(cells[:from_cell - 1], start=1):
        status = end.get("status") if end else "never ended"
        if status not in ("completed", "restored"):
            raise OptionsError(f"cell {number} of run {run_id} did not complete ({status}): a fork restores only "
                               "completed cells", hint=f"fork from cell {number} at the latest (it then runs again)")
    old = secrets_from_environment(dict(head.get("params") or {}), run_id)
    params = {**old, **(overrides or {})}
    nb = load_notebook(path, old, kernel)
    where = step_cells(nb)
    if len(where) < from_cell - 1:
        raise OptionsError(f"{path} has {len(where)} code cell(s); run {run_id} ran {from_cell - 1} before cell "
                           f"{from_cell}", hint="fork from an earlier cell, or pass the notebook the run ran")
    for number, (index, (start, _)) in enumerate(zip(where, cells[:from_cell - 1], strict=False), start=1):
        if classify(nb.cells[index].source.rstrip("\n")).source_hash != start.get("source_hash"):
            raise OptionsError(
                f"cell {number} of {path} is not the code run {run_id} ran there: the cells before "
                f"cell {from_cell} are restored as the run recorded them, so they must be unchanged",
                hint=f"fork from cell {number} (it and the cells after it run from the notebook), or "
                "`nbdurable run --reuse` to run again only what the edits reach")
    cut = where[from_cell - 2] + 1 if from_cell > 1 else 0
    if params != old:
        nb = _with_parameters(nb, load_notebook(path, params, kernel), cut, run_id, from_cell)
    return ForkPlan(run_id, from_cell - 1, nb, path, params, head.get("output_path"))


def _with_parameters(old: nbformat.NotebookNode, new: nbformat.NotebookNode, cut: int, run_id: str,
                     from_cell: int) -> nbformat.NotebookNode:
    """The fork's notebook with its own parameters: papermill's where they fall at or after the cut (the restored
    cells before it are the same in both), else a copy of the new injected cell just before cell N."""
    injected = next((i for i, c in enumerate(new.cells) if INJECTED_TAG in (c.metadata.get("tags") or [])), None)
    if injected is None or injected >= cut:
        return new
    nb = copy.deepcopy(old)
    cell = copy.deepcopy(new.cells[injected])
    cell.source = (f"# Parameters of this fork (applied from cell {from_cell}; the cells above are restored as "
                   f"run {run_id} recorded them)\n" + cell.source)
    if "id" in cell:
        cell["id"] = uuid.uuid4().hex[:8]
    nb.cells.insert(cut, cell)
    nb.metadata["papermill"] = copy.deepcopy(new.metadata.get("papermill", {}))
    return nb
