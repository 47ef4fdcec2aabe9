"""Cancelling runs: the one Python call behind ``nbdurable cancel``, ``%durable cancel`` and the HTTP server.

``cancel_run(store, run_id, reason=..., by=...)`` first records the request durably
(``control/<run>.cancel``, ``store/control.py``), then:

- a run no live process holds (suspended, waiting for an event, failed, interrupted, crashed) is cancelled
  where it stands: under its lease, a ``run_end`` record with status ``cancelled`` (who, when, why) is
  appended to its journal;
- the run's child runs (``nbd.run_notebook``, ``child_runs``) are cancelled with it, recursively;
- a live run is ended by the process that holds it: a headless runner watches for the request
  (``headless/cancel.py``), interrupts its kernel and kills it after a grace period; whoever finishes the
  run (``DurableRun.finish``) finishes it ``cancelled`` when a request is pending (``pending_cancel``).

``cancelled`` is terminal: ``find_resumable`` and the worker never resume such a run; ``nbdurable resume
RUN_ID --force`` can. A run that a later run resumed is cancelled through that later run (the chain's
newest: the one that is live or waiting).
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nbdurable.errors import LeaseHeldError, OptionsError
from nbdurable.runtime.replay import journal_status
from nbdurable.store import Store
from nbdurable.store.records import run_end_record, run_end_status

CANCEL_GRACE_S = 5.0  # a cancelled kernel that has not stopped this long after its interrupt is killed
ENV_CANCEL_GRACE = "NBDURABLE_CANCEL_GRACE"  # seconds, overrides CANCEL_GRACE_S (headless runners read it)
POLL_S = 0.1


def cancel_grace() -> float:
    """The grace period a runner gives an interrupted kernel (``$NBDURABLE_CANCEL_GRACE``, else 5 s)."""
    try:
        return max(0.0, float(os.environ.get(ENV_CANCEL_GRACE, "") or CANCEL_GRACE_S))
    except ValueError:
        return CANCEL_GRACE_S


def canceller() -> str:
    """Who cancels, when the caller does not say: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class CancelOutcome:
    """What ``cancel_run`` did."""

    run_id: str  # the run cancelled: the one named, or the newest run resuming it
    named: str  # the run the caller named
    status: str  # "cancelled" (its journal says so), "requested" (its live process has not ended it yet)
    request: dict[str, Any]  # {"run_id", "by", "reason", "requested_at"}
    already: bool = False  # it was cancelled before this call
    holder: dict[str, Any] | None = None  # the live process, for "requested"

    def describe(self) -> str:
        """One line for a person."""
        via = f" (the run resuming {self.named})" if self.run_id != self.named else ""
        if self.status == "cancelled":
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(self.request.get("requested_at") or 0)))
            why = f": {self.request['reason']}" if self.request.get("reason") else ""
            return (f"run {self.run_id}{via} {'was already' if self.already else 'is'} cancelled "
                    f"(by {self.request.get('by') or 'someone unknown'} at {when}{why})")
        holder = self.holder or {}
        return (f"run {self.run_id}{via}: cancel requested; its process (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}) has not ended it yet")


def child_runs(store: Store, run_id: str) -> list[str]:
    """The child runs (``nbd.run_notebook``) that a run of ``run_id``'s resume chain claimed (the runs it resumes
    and the runs resuming it), cancelled with it: those started (from their ``run`` records'
    ``origin.parent_run``) and those claimed but not started yet (from the ``child`` claims), oldest first."""
    chain: set[str] = set()
    current: str | None = chain_head(store, run_id) if store.journal_exists(run_id) else run_id
    while current and current not in chain and store.journal_exists(current):
        chain.add(current)
        current = (store.journal_head(current) or {}).get("resumed_from")
    found = {str(c["run_id"]) for c in store.claims("child")
             if (c.get("origin") or {}).get("parent_run") in chain and c.get("run_id")}
    root = min(chain, default=run_id)
    for other in store.run_ids():
        if other > root and ((store.journal_head(other) or {}).get("origin") or {}).get("parent_run") in chain:
            found.add(other)
    return sorted(found)


def chain_head(store: Store, run_id: str) -> str:
    """The newest run resuming ``run_id``, transitively (from journal heads); ``run_id`` if none does."""
    current = run_id
    later = [r for r in store.run_ids() if r > run_id]
    heads = {r: (store.journal_head(r) or {}).get("resumed_from") for r in later}
    while True:
        nxt = [r for r, resumed in heads.items() if resumed == current]
        if not nxt:
            return current
        current = max(nxt)


def cancel_run(store: Store, run_id: str, *, reason: str | None = None, by: str | None = None,
               wait: float = 0.0) -> CancelOutcome:
    """Cancel ``run_id`` (the newest run resuming it, if one does): record the request durably, end the run
    where it stands if no process holds it, else leave it to the live process; with ``wait`` > 0, wait up to
    that many seconds for the live process to end it. OptionsError for a completed run."""
    target = chain_head(store, run_id)
    status, _ = journal_status(store, target)
    if status == "completed":
        raise OptionsError(f"run {target} completed: there is nothing to cancel",
                           hint="only a run that is running, suspended, waiting, failed or interrupted can be "
                           "cancelled")
    if status == "cancelled":
        return CancelOutcome(target, run_id, "cancelled", _journal_cancel(store, target) or {}, already=True)
    request = store.request_cancel(target, by=by or canceller(), reason=reason)
    for child in child_runs(store, target):
        _cancel_child(store, child, reason=reason, by=request.get("by"))
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        if not store.is_live(target) and end_cancelled(store, target, request):
            return CancelOutcome(target, run_id, "cancelled", _journal_cancel(store, target) or request)
        newest = chain_head(store, target)  # a worker resuming it meanwhile: the new run has the request
        if newest != target and journal_status(store, newest)[0] == "cancelled":
            return CancelOutcome(newest, run_id, "cancelled", _journal_cancel(store, newest) or request)
        if journal_status(store, target)[0] == "cancelled":
            return CancelOutcome(target, run_id, "cancelled", _journal_cancel(store, target) or request)
        if time.monotonic() >= deadline:
            return CancelOutcome(target, run_id, "requested", request, holder=store.lease_holder(target))
        time.sleep(POLL_S)


def _cancel_child(store: Store, run_id: str, *, reason: str | None, by: str | None) -> None:
    """Cancel a child run with its parent: one claimed but not started yet only gets the request (its
    launcher ends it cancelled before it runs anything); one that completed stays as it is."""
    why = f"its parent run was cancelled{': ' + reason if reason else ''}"
    if not store.journal_exists(run_id):
        store.request_cancel(run_id, by=by, reason=why)
        return
    try:
        cancel_run(store, run_id, reason=why, by=by)
    except OptionsError:  # it completed
        pass


def end_cancelled(store: Store, run_id: str, request: dict[str, Any]) -> bool:
    """Under the run's lease, append ``run_end`` ``cancelled`` to a run no process holds. True once its
    journal says cancelled; False if a live process holds it (that process ends it) or it completed."""
    try:
        lease = store.acquire_lease(run_id)
    except LeaseHeldError:
        return False
    with lease:
        status, _ = journal_status(store, run_id)
        if status in ("completed", "cancelled"):
            return status == "cancelled"
        writer = store.append_journal(run_id)
        try:
            writer.append(run_end_record("cancelled", cancel=request), sync=True)
        finally:
            writer.close()
    return True


def pending_cancel(store: Store, run_id: str | None, others: Iterable[str | None] = (), *,
                   since: float = 0.0) -> dict[str, Any] | None:
    """The cancel request that ends ``run_id``: its own, or one of ``others`` (the run it resumes) made at or
    after ``since`` (an older request of a run resumed with ``--force`` is not for this run). None if none."""
    if run_id and store.cancel_requested(run_id):
        return store.cancel_request(run_id)
    for other in others:
        if other and store.cancel_requested(other):
            request = store.cancel_request(other)
            if request is not None and float(request.get("requested_at") or 0) >= since:
                return request
    return None


def was_cancelled(store: Store, run_id: str) -> bool:
    """True if ``run_id``'s journal ends cancelled, or a cancel request for it is pending (no run ever
    resumes such a run unless forced)."""
    return store.cancel_requested(run_id) or journal_status(store, run_id)[0] == "cancelled"


def _journal_cancel(store: Store, run_id: str) -> dict[str, Any] | None:
    """Who cancelled ``run_id``, when and why, from its last ``run_end``."""
    end = next((r for r in reversed(store.read_journal(run_id)) if r.get("t") == "run_end"), None)
    if end is None or run_end_status(end) != "cancelled":
        return None
    info = end.get("cancel")
    return dict(info) if isinstance(info, dict) else {}
