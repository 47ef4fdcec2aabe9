"""The worker: resumes suspended headless runs when they are due.

A run suspended on ``nbd.sleep`` is due once its wake-up time passed; one suspended on
``nbd.wait_for_event`` once a matching event it has not consumed arrived, or its wait timed out; one
suspended on ``nbd.run_notebook`` once its child runs ended. The
catalog lists the suspended runs nobody resumed yet; the run's final journal record says what it waits
for. Before resuming a run the worker takes that run's lease (a suspended run's lease is free), so two
workers never resume the same run: the second finds it held, and by the time it is free again a run
that resumes it exists. The resume itself is ``nbdurable resume``: the same notebook, parameters,
output path and working directory, in a new kernel, restoring what the suspended run completed. A
cancelled run (``runtime/control.py``) is never resumed, even one cancelled after the catalog listed it.

Due times are read on the process's clock (``runtime/clock.py``). A worker on the time-skipping clock
(``NBDURABLE_TIME_SKIP=1``) that finds no run due skips its clock to the nearest wake-up time or event
timeout of the suspended runs, as a test server skips to its next timer; the runs it resumes inherit the
setting, so their waits skip too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdurable.errors import LeaseHeldError, OptionsError
from nbdurable.runtime.children import child_state
from nbdurable.runtime.clock import clock
from nbdurable.runtime.control import was_cancelled
from nbdurable.runtime.replay import chain_scope
from nbdurable.runtime.waits import find_event
from nbdurable.store import Store


@dataclass(frozen=True)
class DueRun:
    """A suspended run that is due, and why."""

    run_id: str
    reason: str


def suspended_runs(store: Store) -> list[str]:
    """Suspended runs that no later run resumed, oldest first."""
    table = store.catalog().query(
        "SELECT run_id FROM runs r WHERE status = 'suspended' "
        "AND NOT EXISTS (SELECT 1 FROM runs s WHERE s.resumed_from = r.run_id) ORDER BY run_id"
    )
    return [str(r) for r in table["run_id"]]


def why_due(store: Store, run_id: str, now: float) -> str | None:
    """Why the suspended run ``run_id`` is due now, or None if it still waits."""
    end = store.read_journal(run_id)[-1]
    waiting = end.get("waiting_for")
    if waiting and waiting.get("child"):  # nbd.run_notebook: due once every child it waits for ended
        states = [child_state(store, str(c)) for c in waiting.get("children") or [waiting["child"]]]
        if not all(s.ended for s in states):
            return None
        return "its child run" + (f" {states[0].run_id} ended {states[0].status}" if len(states) == 1
                                  else f"s ended ({', '.join(s.run_id + ' ' + s.status for s in states)})")
    if waiting:
        after, consumed = chain_scope(store, run_id)
        event = find_event(store, str(waiting.get("name")), waiting.get("match"), after=after, consumed=consumed)
        if event is not None:
            return f"event {event['name']!r} arrived ({event['id']})"
        timeout_at = waiting.get("timeout_at")
        return "its wait for an event timed out" if timeout_at is not None and timeout_at <= now else None
    wake_at = end.get("wake_at")
    return "its timer is due" if wake_at is None or wake_at <= now else None


def due_runs(store: Store) -> list[DueRun]:
    """The suspended runs that are due now (on the process's clock; a time-skipping clock with none due
    skips to the nearest deadline first)."""
    runs = suspended_runs(store)
    due = [DueRun(run_id, reason) for run_id in runs if (reason := why_due(store, run_id, clock().now()))]
    if not due and runs and clock().skipping:
        nearest = min((d for run_id in runs if (d := next_deadline(store, run_id)) is not None), default=None)
        if nearest is not None:
            clock().sleep_until(nearest)
            due = [DueRun(run_id, reason) for run_id in runs if (reason := why_due(store, run_id, clock().now()))]
    return due


def next_deadline(store: Store, run_id: str) -> float | None:
    """When the suspended run ``run_id`` is due by time (its wake-up time, or its event wait's timeout)."""
    end = store.read_journal(run_id)[-1]
    waiting = end.get("waiting_for")
    if waiting and waiting.get("child"):
        return None  # a child run ends when it ends
    when = waiting.get("timeout_at") if waiting else end.get("wake_at")
    return float(when) if isinstance(when, (int, float)) else None


def _resumed_by_another(store: Store, run_id: str) -> bool:
    """True if a run resuming ``run_id`` exists (read from journal heads: fresher than the catalog)."""
    return any((store.journal_head(other) or {}).get("resumed_from") == run_id
               for other in store.run_ids() if other > run_id)


class Worker:
    """Resumes due suspended runs of one store, one at a time."""

    def __init__(self, store: Store, *, log: Callable[[str], None], suspend_after: float | None = None,
                 on_change: str = "continue") -> None:
        self.store, self.log, self.suspend_after, self.on_change = store, log, suspend_after, on_change
        self.resumed = 0
        self._skipped: set[str] = set()  # runs that cannot be resumed (no notebook file): logged once

    def work(self, *, once: bool, poll: float, max_runs: int | None) -> int:
        """Resume due runs until stopped (``once``: one pass); returns how many runs it resumed."""
        self.log(f"worker started on store {self.store.path}"
                 + (" (one pass)" if once else f" (polling every {poll:g} s)"))
        while True:
            for due in due_runs(self.store):
                if max_runs is not None and self.resumed >= max_runs:
                    break
                self.resume(due)
            if once or (max_runs is not None and self.resumed >= max_runs):
                return self.resumed
            time.sleep(poll)

    def resume(self, due: DueRun) -> bool:
        """Claim the run's lease and resume it; False if another worker has it or it cannot run."""
        if due.run_id in self._skipped:
            return False
        try:
            lease = self.store.acquire_lease(due.run_id)
        except LeaseHeldError:
            self.log(f"run {due.run_id}: another worker is resuming it")
            return False
        with lease:
            if _resumed_by_another(self.store, due.run_id):
                return False
            if was_cancelled(self.store, due.run_id):  # cancelled since the catalog listed it: never resumed
                self.log(f"run {due.run_id}: cancelled, not resuming it")
                self._skipped.add(due.run_id)
                return False
            head = self.store.read_journal(due.run_id)[0]
            notebook = head.get("notebook_path")
            if not notebook or not Path(notebook).is_file():
                self.log(f"run {due.run_id}: cannot resume it: its notebook {notebook or '(unnamed)'} is gone")
                self._skipped.add(due.run_id)
                return False
            self.log(f"run {due.run_id}: resuming {notebook} ({due.reason})")
            try:
                result = self._run(due.run_id, Path(notebook), head)
            except OptionsError as exc:  # a secret parameter the worker's environment does not hold; changed code
                self.log(f"run {due.run_id}: cannot resume it: {exc}")  # under --on-change fail (listed)
                self._skipped.add(due.run_id)
                return False
        self.resumed += 1
        outcome = result.status + (f": {result.describe_suspension()}" if result.status == "suspended" else "")
        outcome += f": {result.error}" if result.error and result.status != "suspended" else ""
        self.log(f"run {due.run_id}: resumed as run {result.run_id}: {outcome} "
                 f"({result.executed} executed, {result.restored} restored, {result.seconds:.1f} s)")
        return True

    def _run(self, run_id: str, notebook: Path, head: dict[str, Any]) -> Any:
        from nbdurable.headless.params import load_notebook, secrets_from_environment
        from nbdurable.headless.runner import HeadlessRunner

        params = secrets_from_environment(head.get("params") or {}, run_id)
        output = head.get("output_path")
        cwd = (head.get("environment") or {}).get("cwd")
        runner = HeadlessRunner(
            load_notebook(notebook, params, None), notebook_path=notebook, store_path=self.store.path, params=params,
            output_path=Path(output) if output else None, cwd=Path(cwd) if cwd and Path(cwd).is_dir() else None,
            resume_run=run_id, suspend_after=self.suspend_after, on_change=self.on_change,
            notify=lambda text: self.log(f"run {run_id}: {text}"),
        )  # fmt: skip
        return runner.execute()
