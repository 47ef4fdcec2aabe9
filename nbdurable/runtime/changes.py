"""Code changed under a run: the cells before a resumed run's resumption point that changed since the run
recorded them (edited, inserted, removed), and the policy a resume applies (``--on-change``).

The run's record is the sequence of its top-level steps that completed (or were restored), in the order
they ran: the cells before its resumption point. The notebook's is the sequence of its code cells (not
``%durable`` control cells). Both are compared by normalized-source hash (``cells.source_hash``) with
``difflib``: matching cells are unchanged, a replaced one is edited, an extra one inserted or removed.
Cells after the last recorded one are the notebook's future, not a change (the cell a run failed or
stopped at is its resumption point: fixing it is the usual resume, not a change under the run).

Policies: ``continue`` (the default) resumes and lets the dataflow rule decide: the changed cells and what
they reach execute, the rest is restored (``planning.plan_cells`` tells which); ``fail`` refuses the
resume before anything executes (OptionsError: exit code 2).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from nbdurable.errors import NbdurableError, OptionsError
from nbdurable.runtime.cells import classify, source_hash
from nbdurable.runtime.planning import plan_cells
from nbdurable.runtime.replay import ReplayPlan
from nbdurable.store import Store

ON_CHANGE = ("continue", "fail")
DONE = ("completed", "restored")


@dataclass(frozen=True)
class CodeChange:
    """One cell that changed under a run."""

    kind: str  # "edited" | "inserted" | "removed"
    cell: int | None  # the notebook cell's index now (0-based); None for a removed one
    step: int | None  # the recorded step's ordinal; None for an inserted cell
    was: str = ""  # the recorded code's first line
    now: str = ""  # the cell's code's first line now

    def describe(self) -> str:
        where = f"cell {self.cell + 1}" if self.cell is not None else f"the cell of step {self.step}"
        if self.kind == "edited":
            return f"{where} edited (step {self.step} ran `{self.was}`, it now reads `{self.now}`)"
        if self.kind == "inserted":
            return f"{where} inserted (`{self.now}`)"
        return f"{where} removed (`{self.was}`)"


def _first_line(source: str) -> str:
    line = next((x.strip() for x in source.splitlines() if x.strip()), "")
    return line if len(line) <= 60 else line[:57] + "..."


def recorded_cells(store: Store, run_id: str) -> list[tuple[int, str, str]]:
    """``(ordinal, source_hash, source)`` of the run's top-level steps that completed or were restored, in
    the order they ran."""
    records = store.read_journal(run_id)
    done = {r.get("ordinal") for r in records if r.get("t") == "step_end" and r.get("status") in DONE}
    return [(int(r["ordinal"]), str(r.get("source_hash")), str(r.get("source") or "")) for r in records
            if r.get("t") == "step_start" and r.get("parent") is None and r.get("ordinal") in done]


def notebook_cells(sources: list[str | None]) -> list[tuple[int, str, str]]:
    """``(index, source_hash, code)`` of the cells Run All makes steps of (not control cells)."""
    cells = []
    for index, source in enumerate(sources):
        if source is None:
            continue
        try:
            cell = classify(source.rstrip("\n"))
        except NbdurableError:
            cells.append((index, source_hash(source), source))
            continue
        if not cell.control:
            cells.append((index, cell.source_hash, cell.body))
    return cells


def code_changes(store: Store, run_id: str, sources: list[str | None]) -> list[CodeChange]:
    """The cells before ``run_id``'s resumption point that changed since it recorded them."""
    recorded, current = recorded_cells(store, run_id), notebook_cells(sources)
    matcher = difflib.SequenceMatcher(None, [h for _, h, _ in recorded], [h for _, h, _ in current], autojunk=False)
    changes: list[CodeChange] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal" or (tag == "insert" and i1 == len(recorded)):
            continue  # unchanged, or cells after the resumption point
        pairs = min(i2 - i1, j2 - j1)
        for k in range(pairs):
            (ordinal, _, was), (index, _, now) = recorded[i1 + k], current[j1 + k]
            changes.append(CodeChange("edited", index, ordinal, _first_line(was), _first_line(now)))
        for ordinal, _, was in recorded[i1 + pairs:i2]:
            changes.append(CodeChange("removed", None, ordinal, was=_first_line(was)))
        if i2 < len(recorded):  # extra cells past the last recorded one are the notebook's future
            for index, _, now in current[j1 + pairs:j2]:
                changes.append(CodeChange("inserted", index, None, now=_first_line(now)))
    return changes


def apply_policy(store: Store, run_id: str, sources: list[str | None], policy: str, *,
                 transform: Callable[[str], str] = lambda source: source) -> str | None:
    """Compare the notebook with what ``run_id`` recorded and apply ``policy``: None when nothing changed;
    the notice to show when the resume goes on (``continue``); OptionsError (nothing executed) for ``fail``."""
    if policy not in ON_CHANGE:
        raise OptionsError(f"unknown --on-change policy {policy!r}", hint=f"use one of: {', '.join(ON_CHANGE)}")
    changes = code_changes(store, run_id, sources)
    if not changes:
        return None
    listed = "; ".join(c.describe() for c in changes)
    head = f"the code changed under run {run_id} since it recorded its cells: {listed}"
    if policy == "fail":
        raise OptionsError(f"not resuming: {head} (--on-change fail); nothing was executed",
                           hint="resume with --on-change continue (the changed cells and what they reach execute), "
                           "or start a new run with --fresh")
    executes = [c.index + 1 for c in plan_cells(sources, ReplayPlan.from_run(store, run_id), transform=transform)
                if c.action == "execute"]
    what = f"cells {', '.join(map(str, executes))} execute" if executes else "no cell executes"
    return (f"{head}. Continuing (--on-change continue): the changed cells and what they reach execute, the rest "
            f"is restored ({what}; `nbdurable plan` tells why).")
