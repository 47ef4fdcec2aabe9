"""Compensation (sagas): undoing the completed steps of a run that failed for good.

``@nbd.step(compensate=undo)`` / ``nbd.run_step(..., compensate=undo)`` registers, when the call completes,
``undo(result, *args, **kwargs)`` (``steps.py``: the step's ``step_end`` carries ``undo`` and the call's
arguments as its ``compensation`` variable). ``run_compensations`` runs the compensations of a run's
completed steps that have not run yet, newest step first, each one an explicit step itself:

- named ``compensate:<step name>``, a child of the cell that runs them (``nbd.compensate()`` in a cell, the
  failing cell of a headless run) or of a top-level step ``nbd.compensate`` (``compensate_run`` between
  cells, e.g. for a cancel), with ``options.compensates`` = ``[run_id, ordinal]`` of the step it undoes;
  journaled and shown in the run graph like any step;
- retried by its own policy: ``undo``'s own when ``undo`` is an ``@nbd.step`` function, else
  ``COMPENSATION_POLICY``; one that still fails is recorded failed, the others run anyway, and
  ``CompensationError`` lists the failures at the end;
- exactly once across crashes: which steps a run must undo, and which compensations completed, are read
  from the journals of the run and of the runs it resumed (a step replayed in a resumed run counts once: its
  origin's). A compensation that was running when the process died runs again (its step never ended).

The run journals a ``compensating`` record first. A run that compensated and ended is finished for good:
neither ``nbdurable run`` nor a session resumes it (``replay.find_resumable``; the next run starts fresh).
A run killed mid-compensation is resumed as usual; its first cell that would execute finishes the
compensations instead (``Durable.transform``) and fails with ``CompensationError``, so the run ends.

When: a headless run whose cell fails (retries exhausted, ``NonRetryableError``, any error) runs them
before it ends (not a cell interrupted by a timeout or Ctrl-C: that run stays resumable); an interactive
cell's error does not (the user fixes the cell and runs it again; call ``nbd.compensate()`` to undo); a
cancel calls ``compensate_run`` (the hook for ``nbdurable cancel``; in a kernel, ``Durable.compensate``).
Compensations are taken from the run's chain only, never from runs offered by reuse.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from nbdurable.capture.namespace import Change
from nbdurable.errors import CompensationError, NbdurableError
from nbdurable.runtime.checkpoint import ObjectLoader
from nbdurable.runtime.policy import RetryPolicy
from nbdurable.runtime.run import DurableRun
from nbdurable.runtime.session import current_step_context
from nbdurable.runtime.steps import (
    COMPENSATION_VAR,
    Attempts,
    _run,
    live_compensations,
    outside_compensations,
)
from nbdurable.serialization import serialize
from nbdurable.store import Store
from nbdurable.store.records import VarRef

PREFIX = "compensate:"  # a compensation step's name: PREFIX + the name of the step it undoes
COMPENSATION_POLICY = RetryPolicy(max_attempts=3, initial_interval=1.0)  # for an undo that is not an @nbd.step


@dataclass(frozen=True)
class Pending:
    """A completed step whose compensation has not completed."""

    origin: tuple[str, int]  # (run id, ordinal) where the step executed
    step: str  # its name
    compensation: VarRef  # the journaled (undo, args, kwargs)
    result: VarRef | None  # its result


def chain(store: Store, run_id: str) -> list[str]:
    """``run_id`` and the runs it resumed, transitively, oldest first."""
    runs: list[str] = []
    current: str | None = run_id
    while current and current not in runs and store.journal_exists(current):
        runs.append(current)
        current = (store.journal_head(current) or {}).get("resumed_from")
    return runs[::-1]


def pending(store: Store, run_id: str) -> list[Pending]:
    """The compensations the run ``run_id`` still owes, in the order to run them (newest step first)."""
    owed: dict[tuple[str, int], Pending] = {}
    done: set[tuple[str, int]] = set()
    for rid in chain(store, run_id):
        records = store.read_journal(rid)
        starts = {r["ordinal"]: r for r in records if r.get("t") == "step_start"}
        for r in records:
            if r.get("t") != "step_end" or r.get("status") != "completed" or r.get("ordinal") not in starts:
                continue
            start = starts[r["ordinal"]]
            undoes = (start.get("options") or {}).get("compensates")
            if isinstance(undoes, list) and len(undoes) == 2:
                done.add((str(undoes[0]), int(undoes[1])))
            refs = {v.get("name"): v for v in r.get("variables") or []}
            if start.get("parent") is not None and COMPENSATION_VAR in refs:
                origin = (rid, int(r["ordinal"]))
                owed[origin] = Pending(origin, str(start.get("name")), refs[COMPENSATION_VAR], refs.get("result"))
    return [p for p in reversed(owed.values()) if p.origin not in done]


def compensating(store: Store, run_id: str) -> bool:
    """Whether the run or a run it resumed began compensating."""
    return any(r.get("t") == "compensating" for rid in chain(store, run_id) for r in store.read_journal(rid))


def run_compensations(run: DurableRun, loader: ObjectLoader, *, parent: int, reason: str) -> int:
    """Run the compensations ``run`` owes as child steps of step ``parent`` (see the module docstring);
    returns how many ran. Raises CompensationError if any failed for good."""
    run.wait_durable()  # the steps completed so far are on disk: ``pending`` reads them back
    owed = pending(run.store, run.run_id)
    if not owed:
        return 0
    run.note_compensating(reason)
    print(f"↩ nbdurable: {reason}: running {len(owed)} compensation(s), newest step first", file=sys.stderr)
    failures: list[str] = []
    for item in owed:
        try:
            _compensate_one(run, loader, item, parent)
        except Exception as exc:
            failures.append(f"`{PREFIX}{item.step}` (step {item.origin[1]} of run {item.origin[0]}): "
                            f"{type(exc).__name__}: {exc}")
    if failures:
        raise CompensationError(
            f"{len(failures)} of {len(owed)} compensation(s) failed for good: " + "; ".join(failures),
            hint="undo those steps' effects by hand; the other compensations ran (see the run's steps with "
            "`nbdurable show RUN_ID`).",
        )
    return len(owed)


def _compensate_one(run: DurableRun, loader: ObjectLoader, item: Pending, parent: int) -> None:
    live = live_compensations.get(item.origin)
    label = f"step `{item.step}`"
    if live is not None:
        undo, args, kwargs, result = live
    else:
        undo, args, kwargs = loader.load(item.compensation, step_label=label)
        result = loader.load(item.result, step_label=label) if item.result else None
    policy = COMPENSATION_POLICY
    marked = getattr(undo, "nbdurable_step", None)
    if marked is not None:  # an @nbd.step function: its own policy, and its function (no nested step)
        policy, undo = marked[1] or policy, getattr(undo, "__wrapped__", undo)
    child = run.begin_step(source="", source_hash=str(item.compensation.get("object") or ""),
                           name=PREFIX + item.step, parent=parent,
                           options={"compensates": list(item.origin), "step": item.step})

    def finish(status: str, value: Any) -> None:
        name = "error" if status == "failed" else "result"
        run.end_child(child, status, changes=[Change(name, "set", serialize(value), f"{child.ordinal}:{name}")])

    attempts = Attempts(policy, lambda n, s, e, d: run.record_attempt(child, n, s, e, d), finish)
    _run(undo, (result, *args), kwargs, attempts)
    live_compensations.pop(item.origin, None)  # done: its result need not stay in memory


def compensate_run(run: DurableRun, loader: ObjectLoader, *, reason: str) -> int:
    """The hook a cancel calls: run the compensations ``run`` owes, inside the executing cell when there is
    one, else under a top-level step ``nbd.compensate`` of their own (none when nothing is owed); returns how
    many ran."""
    context = current_step_context()
    if context is not None and context.run is run:
        return run_compensations(run, loader, parent=context.cell.ordinal, reason=reason)
    run.wait_durable()
    if not pending(run.store, run.run_id):
        return 0  # nothing owed: no step either
    step = run.begin_step(source="", source_hash="nbd.compensate", name="nbd.compensate",
                          options={"reason": reason})
    try:
        count = run_compensations(run, loader, parent=step.ordinal, reason=reason)
    except BaseException as exc:
        run.end_step(step, status="failed", error={"ename": type(exc).__name__, "evalue": str(exc)})
        raise
    run.end_step(step, status="completed")
    return count


def compensate(reason: str = "nbd.compensate()") -> int:
    """Run the compensations of the completed steps of this run that have not run yet, newest first, each
    a durable step (see the module docstring); returns how many ran. Outside a durable cell: those of the
    steps this process ran outside durable cells (not durable). CompensationError if any failed for good."""
    context = current_step_context()
    if context is None:
        return _compensate_outside()
    return run_compensations(context.run, context.loader, parent=context.cell.ordinal, reason=reason)


def _compensate_outside() -> int:
    count, failures = 0, []
    while outside_compensations:
        name, undo, args, kwargs, result = outside_compensations.pop()
        try:
            undo(result, *args, **kwargs)
            count += 1
        except Exception as exc:
            failures.append(f"`{PREFIX}{name}`: {type(exc).__name__}: {exc}")
    if failures:
        raise CompensationError(f"{len(failures)} compensation(s) failed: " + "; ".join(failures),
                                hint="undo those steps' effects by hand")
    return count


def compensate_after_failure(run: DurableRun | None, loader: ObjectLoader, parent: int, error: BaseException) -> int:
    """A headless run's cell (step ``parent``) failed with ``error``: run the compensations the run owes
    before it ends. A compensation failure is reported, never raised: the cell's error stays the run's."""
    if run is None or run.status != "running":
        return 0
    try:
        return run_compensations(run, loader, parent=parent, reason=f"the run failed ({type(error).__name__}: {error})")
    except NbdurableError as exc:
        print(f"nbdurable: {exc}", file=sys.stderr)
        return 0
