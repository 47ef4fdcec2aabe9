"""Child runs, the runtime half: a run's result (``nbd.result``), the claim that names a child run, and what a
parent reads of its child (state, result, error). ``headless/children.py`` starts and waits (``nbd.run_notebook``).

A child run is claimed (``store/claims.py``, kind ``child``) before it starts: the claim names the run id,
chosen beforehand, and holds the launch fields the engine's dispatcher needs. Its key is the parent's root run,
the call's identity (the recording run, its cell's ordinal, the call's position in the cell) and the attempt:
``<root>/<run>:<cell>:<seq>#<attempt>``. The call's ``step_start`` (journaled before the claim) carries the key
without the attempt, so a parent killed anywhere and resumed finds the same claims: never a second child.

The child's result is a child step ``nbd.result`` of the cell that called ``nbd.result(value)``: its value is
stored like any step result (inline or an object file). The parent reads it from the newest journal of the
child's resume chain that has one, once that chain ended ``completed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nbdurable.errors import OptionsError
from nbdurable.runtime.checkpoint import ObjectLoader
from nbdurable.runtime.control import chain_head
from nbdurable.runtime.replay import journal_status
from nbdurable.runtime.session import current_step_context
from nbdurable.store import Store

CHILD_KIND = "child"  # the claims' kind
RUN_NOTEBOOK = "nbd.run_notebook"  # the step name of a child-run call
RESULT = "nbd.result"  # the step name of a run's result
ENDED = ("completed", "failed", "cancelled", "crashed", "interrupted")  # a child in one of these will not go on
_MISSING = object()


def result(value: Any) -> None:
    """Set this run's result to ``value`` (JSON or any storable value): what ``nbd.run_notebook`` returns in
    the parent run. Durable like a step; the last call of the run wins."""
    context = current_step_context()
    if context is None:
        raise OptionsError("nbd.result sets the result of a durable run, but this code is not in a durable cell",
                           hint="call it in a cell of a notebook run with the nbdurable extension loaded "
                           "(`%load_ext nbdurable`, or a run started by nbd.run_notebook / `nbdurable run`)")
    slot = context.reserve(RESULT, (), {})
    if slot.recorded is not None and slot.recorded.status != "waiting":
        context.replay(slot)
        return
    context.end(context.begin(slot), "completed", value)


def claim_key(base: str, attempt: int) -> str:
    """The claim key of attempt ``attempt`` of the child-run call ``base``."""
    return f"{base}#{attempt}"


def call_key(root_run: str, run_id: str, cell: int, seq: int) -> str:
    """The identity of a child-run call: the parent's root run, the run that made the call, its cell, its place."""
    return f"{root_run}/{run_id}:{cell}:{seq}"


@dataclass(frozen=True)
class ChildState:
    """Where a child run stands: ``pending`` (claimed, not started yet), else the status of the newest run of
    its resume chain (``current``)."""

    run_id: str
    current: str | None
    status: str

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def child_state(store: Store, run_id: str) -> ChildState:
    """The state of the child run ``run_id`` (the id its claim named), from journals and leases."""
    if not store.journal_exists(run_id):
        return ChildState(run_id, None, "pending")
    current = chain_head(store, run_id)
    return ChildState(run_id, current, journal_status(store, current)[0])


def _chain(store: Store, run_id: str) -> list[str]:
    """``run_id`` and the runs it resumes, newest first."""
    chain: list[str] = []
    current: str | None = run_id
    while current and current not in chain and store.journal_exists(current):
        chain.append(current)
        current = (store.journal_head(current) or {}).get("resumed_from")
    return chain


def child_result(store: Store, state: ChildState) -> Any:
    """The result a completed child set with ``nbd.result`` (None if it set none)."""
    for run_id in _chain(store, state.current or state.run_id):
        records = store.read_journal(run_id)
        names = {r["ordinal"]: r.get("name") for r in records if r.get("t") == "step_start"}
        ends = [r for r in records if r.get("t") == "step_end" and names.get(r.get("ordinal")) == RESULT
                and r.get("status") in ("completed", "restored") and r.get("variables")]
        if ends:
            return ObjectLoader(store, {}).load(ends[-1]["variables"][0], step_label=f"the result of run {run_id}")
    return None


def child_error(store: Store, state: ChildState) -> str:
    """Why a child run ended without completing, in one line: its status and its failing cell's error."""
    run_id = state.current or state.run_id
    records = store.read_journal(run_id) if store.journal_exists(run_id) else []
    failed = [r for r in records if r.get("t") == "step_end" and r.get("status") == "failed" and r.get("error")]
    error = failed[-1]["error"] if failed else {}
    why = f"{error.get('ename')}: {error.get('evalue')}" if error.get("ename") else ""
    end: dict[str, Any] = next((r for r in reversed(records) if r.get("t") == "run_end"), {})
    cancel = end.get("cancel") if isinstance(end.get("cancel"), dict) else None
    if state.status == "cancelled" and cancel:
        why = f"cancelled by {cancel.get('by') or 'someone'}"
        why += f": {cancel['reason']}" if cancel.get("reason") else ""
    return why or {"crashed": "its process died", "interrupted": "it was interrupted"}.get(state.status, state.status)


__all__ = ["CHILD_KIND", "ENDED", "RESULT", "RUN_NOTEBOOK", "ChildState", "call_key", "child_error", "child_result",
           "child_state", "claim_key", "result"]
