"""Checkout and fork: the state a run had after one of its cells, as the recorded executions to fold.

A run's journal is self-contained (a restored step is a copy of its origin's references), so the state
after cell N of a run is the fold of the state deltas of the run's first N top-level steps, in order, across
its resume chain without reading the other journals. Cells are numbered as ``nbdurable show`` numbers them:
cell N is the run's N-th top-level step. A step that never ended (its kernel died under it) changed nothing
durable and is skipped; a failed or interrupted cell's recorded delta is folded like any other (the state
after it is what it left).

Who uses this: ``%durable checkout`` (``kernel_ext/checkout.py``, which applies the fold in the live
kernel), the headless fork (``nbdurable fork``/``rerun``: the kernel checks out the cells before the one
it executes first) and ``load_state`` (the variables without a kernel, for a server or a script).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nbdurable.errors import OptionsError, RunNotFoundError
from nbdurable.runtime.checkpoint import ObjectLoader
from nbdurable.runtime.replay import PlannedStep, _planned
from nbdurable.store import Store


def resolve_run(store: Store, run_id: str) -> str:
    """``run_id``, or the one run of ``store`` whose id starts with it (the one wording for every caller)."""
    if run_id and store.journal_exists(run_id):
        return run_id
    matches = [r for r in store.run_ids() if r.startswith(run_id)] if run_id else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunNotFoundError(f"no run {run_id!r} in store {store.display}",
                               hint="`nbdurable runs` lists run ids (a unique prefix of one is enough)")
    shown = ", ".join(matches[:5]) + (" …" if len(matches) > 5 else "")
    raise OptionsError(f"{len(matches)} runs of store {store.display} start with {run_id!r}: {shown}",
                       hint="give more of the run id")


@dataclass
class CheckoutTarget:
    """The state of ``run_id`` after its cell ``cell``: the recorded executions to fold, oldest first."""

    run_id: str
    cell: int  # 0: before the first cell (an empty state)
    cells_total: int  # how many cells the run began
    steps: list[PlannedStep] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # cells up to ``cell`` that never ended (nothing to fold)
    head: dict[str, Any] = field(default_factory=dict)  # the run's `run` record

    def needed(self) -> list[set[str]]:
        """For each step, the names whose value it sets that must be loaded: not those a later step of the fold
        sets again or deletes (their intermediate values are never seen) — unless a later step's cell must run
        again (an unrestorable value), which then reads the state as it was."""
        out: list[set[str]] = []
        later: set[str] = set()
        reexecuted_later = False
        for planned in reversed(self.steps):
            names = {str(r["name"]) for r in planned.variables if r.get("op") == "set"}
            out.append(names if reexecuted_later else names - later)
            later |= {str(r["name"]) for r in planned.variables}
            reexecuted_later = reexecuted_later or planned.execution_reason() is not None
        return list(reversed(out))


def top_level_steps(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """A journal's cells in the order they began: (step_start, its step_end or None)."""
    ends = {r["ordinal"]: r for r in records if r.get("t") == "step_end" and r.get("parent") is None}
    return [(r, ends.get(r["ordinal"])) for r in records if r.get("t") == "step_start" and r.get("parent") is None]


def checkout_target(store: Store, run_id: str, *, cell: int | None = None, step: str | None = None) -> CheckoutTarget:
    """What checking out ``run_id`` (a unique prefix is enough) after ``cell`` (default: its last cell), or
    after its last cell named ``step`` (``%%durable --name``), folds. Raises OptionsError for a cell the run
    does not have, naming the ones it has."""
    run_id = resolve_run(store, run_id)
    records = store.read_journal(run_id)
    head = next((r for r in records if r.get("t") == "run"), {})
    cells = top_level_steps(records)
    if cell is not None and step is not None:
        raise OptionsError("give a cell or a step to check out, not both", hint="e.g. `--cell 3` or `--step load`")
    if step is not None:
        at = [i + 1 for i, (start, _) in enumerate(cells) if start.get("name") == step]
        if not at:
            names = sorted({str(s.get("name")) for s, _ in cells if s.get("name")})
            raise OptionsError(f"run {run_id} has no cell named {step!r}",
                               hint=f"its named cells: {', '.join(names)}" if names else
                               "it has no named cells (`%%durable --name NAME`); give `--cell N` instead")
        cell = at[-1]
    if cell is None:
        cell = len(cells)
    if not 0 <= cell <= len(cells):
        raise OptionsError(f"run {run_id} has {len(cells)} cell(s): there is no cell {cell}",
                           hint=f"give a cell from 1 to {len(cells)} (`nbdurable show {run_id}` numbers them)")
    target = CheckoutTarget(run_id, cell, len(cells), head=head)
    for number, (start, end) in enumerate(cells[:cell], start=1):
        if end is None:
            target.skipped.append(f"cell {number} never ended in run {run_id} (its process died): nothing of it "
                                  "is in the state")
            continue
        target.steps.append(_planned(run_id, start, end))
    return target


def load_state(store: Store, run_id: str, *, cell: int | None = None, step: str | None = None) -> dict[str, Any]:
    """The variables of ``run_id`` after ``cell`` (or the named ``step``), loaded outside any kernel: aliases
    stay aliases, big arrays are mapped lazily; interpreter state (imports aside) is not applied and values
    that were not stored are missing (``%durable checkout`` re-executes their cells; here they are left out)."""
    target = checkout_target(store, run_id, cell=cell, step=step)
    namespace: dict[str, Any] = {}
    loader = ObjectLoader(store, namespace)
    for planned, needed in zip(target.steps, target.needed(), strict=True):
        for ref in planned.variables:
            name = str(ref["name"])
            if name.startswith("%"):
                continue
            if ref.get("op") == "del":
                namespace.pop(name, None)
            elif name in needed and not ref.get("inert") and ref.get("format") != "unrestorable":
                namespace[name] = loader.load(ref, step_label=planned.label)
            else:
                namespace.pop(name, None)  # rebound later, or not stored
    return namespace
