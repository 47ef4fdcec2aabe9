"""A run: one execution of a notebook, recorded step by step in its own journal.

The process that creates a ``DurableRun`` holds the run's lease until ``finish``. Each step is a
``step_start`` record and a ``step_end`` commit record, written after the step's object files are
fsync'ed, so a commit never refers to an object that is not on disk. The commit record is in the page
cache before the cell returns (a killed kernel loses nothing) and fdatasync'ed right after by the
journal's flusher (group commit); ``finish`` syncs synchronously. Steps with big payloads commit in
the background, in order (``committer.py``).
The runtime knows nothing of IPython: the kernel extension and the headless engine drive it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from nbdurable._version import __version__
from nbdurable.capture.namespace import Change
from nbdurable.errors import ChangedDuringWriteError, StoreError
from nbdurable.runtime import frames
from nbdurable.runtime.checkpoint import DEFAULT_INLINE_MAX, persist_changes, persist_outputs
from nbdurable.runtime.clock import is_skipping, now
from nbdurable.runtime.committer import ASYNC_MIN_BYTES, Committer
from nbdurable.runtime.control import pending_cancel
from nbdurable.runtime.events import EventBus, RuntimeEvent
from nbdurable.runtime.replay import PlannedStep, chain_scope
from nbdurable.runtime.session import ENV_ORIGIN, ENV_RUN_ID
from nbdurable.serialization import Serialized
from nbdurable.store import Store
from nbdurable.store.records import (
    StepStatus,
    VarRef,
    attempt_record,
    compensating_record,
    consumed_record,
    error_with_traceback,
    run_end_record,
    run_record,
    step_end_record,
    step_start_record,
    time_skip_record,
)


def _snapshots(changes: list[Change]) -> list[Change]:
    """The changes with payloads that no longer depend on memory the notebook may change next."""
    return [replace(c, serialized=c.serialized.snapshot()) if c.serialized is not None else c for c in changes]


def _variable_summary(v: Change | VarRef) -> dict[str, Any]:
    """What a run graph shows of a variable a step wrote: name, op, type, size, format."""
    if isinstance(v, Change):
        s = v.serialized
        if s is None:
            return {"name": v.name, "op": v.op, "type": None, "size_bytes": None, "format": None}
        return {"name": v.name, "op": v.op, "type": s.type_name, "size_bytes": s.size, "format": s.format}
    return {"name": v.get("name"), "op": v.get("op"), "type": v.get("type"), "size_bytes": v.get("size"),
            "format": v.get("format")}


_RUN_ID_RE = re.compile(r"\d{8}T\d{9}-[0-9a-f]{6}")


def requested_run_id(store: Store) -> str | None:
    """The run id ``$NBDURABLE_RUN_ID`` asks for (taken once per process: removed from the environment), if it
    has the form of a run id and the store has no run with it."""
    wanted = os.environ.pop(ENV_RUN_ID, "")
    if not _RUN_ID_RE.fullmatch(wanted) or store.journal_exists(wanted):
        return None
    return wanted


def new_run_id() -> str:
    """A sortable, readable run id: UTC time to the millisecond plus random bits."""
    stamp = _dt.datetime.now(_dt.timezone.utc)  # wall time, also for a time-skipped run: ids sort by creation
    return stamp.strftime("%Y%m%dT%H%M%S") + f"{stamp.microsecond // 1000:03d}-{secrets.token_hex(3)}"


@dataclass
class StepHandle:
    """A step in progress."""

    ordinal: int
    source: str
    source_hash: str
    name: str | None
    options: dict[str, Any]
    parent: int | None = None
    started_at: float = field(default_factory=now)  # on the run's clock (``clock.py``)
    t0: float = field(default_factory=time.perf_counter)


@dataclass
class RunStats:
    """What a run did so far, for `%durable status` and the CLI."""

    executed: int = 0
    restored: int = 0
    failed: int = 0
    time_saved: float = 0.0
    last_status: str | None = None


def _environment() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "nbdurable": __version__,
        "executable": sys.executable,
        "cwd": os.getcwd(),
    }


def launch_origin(store: Store, resumed_from: str | None) -> dict[str, Any] | None:
    """What started the run about to begin: a launcher's ``NBDURABLE_ORIGIN`` (JSON), else the origin of the
    run it resumes (a resume carries its chain's origin), else None (a person did)."""
    text = os.environ.get(ENV_ORIGIN)
    if text:
        try:
            origin = json.loads(text)
        except ValueError:
            origin = None
        return origin if isinstance(origin, dict) else None
    head = (store.journal_head(resumed_from) or {}) if resumed_from else {}
    return head.get("origin") if isinstance(head.get("origin"), dict) else None


class DurableRun:
    """Records one run of a notebook into a store. Not thread-safe: one executing thread drives it."""

    def __init__(
        self,
        store: Store,
        *,
        notebook: str | None,
        notebook_path: str | None = None,
        kind: Literal["interactive", "headless"] = "interactive",
        params: dict[str, Any] | None = None,
        output_path: str | None = None,
        resumed_from: str | None = None,
        root_run: str | None = None,
        events: EventBus | None = None,
        inline_max: int = DEFAULT_INLINE_MAX,
        forked_from: str | None = None,
        forked_at_cell: int | None = None,
        run_id: str | None = None,
        origin: dict[str, Any] | None = None,
    ) -> None:
        """``run_id``: an id chosen before the run started (a launcher's), else a new one; ``origin``: what
        started the run (``records.run_record``)."""
        self.store = store
        self.run_id = run_id or requested_run_id(store) or new_run_id()
        self.origin = dict(origin or {})
        self.notebook = notebook
        self.resumed_from = resumed_from
        self.forked_from, self.forked_at_cell = forked_from, forked_at_cell
        self.root_run = root_run or self.run_id
        self.events = events or EventBus()
        self.inline_max = inline_max
        self.stats = RunStats()
        self.status = "running"
        self.started_at = time.time()
        self._ordinal = 0
        self._ordinal_lock = threading.Lock()
        self._committer = Committer(self.run_id)
        self._lease = store.acquire_lease(self.run_id)
        self._journal = store.new_journal(self.run_id)
        record = run_record(
            self.run_id,
            notebook=notebook,
            notebook_path=notebook_path,
            kind=kind,
            params=params,
            output_path=output_path,
            resumed_from=resumed_from,
            root_run=root_run,
            environment=_environment(),
            time_skipped=is_skipping(),
            forked_from=forked_from,
            forked_at_cell=forked_at_cell,
            origin=self.origin,
        )
        self._time_skipped = is_skipping()
        self._journal.append(record, sync=True)
        self._wait_scope: tuple[float, set[str]] | None = None
        self.events.emit(RuntimeEvent("run_started", self.run_id, {"notebook": notebook, "resumed_from": resumed_from,
                                                                   "forked_from": forked_from,
                                                                   "forked_at_cell": forked_at_cell}))

    @property
    def steps_recorded(self) -> int:
        """How many top-level steps this run has begun."""
        return self._ordinal

    def begin_step(
        self, *, source: str, source_hash: str, name: str | None = None, options: dict[str, Any] | None = None,
        parent: int | None = None, inputs: dict[str, Any] | None = None,
    ) -> StepHandle:
        """Start the next step of the run (an explicit step inside a cell has its cell as ``parent``).
        Thread-safe: ``nbd.map`` begins steps from worker threads."""
        self._note_clock()
        with self._ordinal_lock:
            self._ordinal += 1
            step = StepHandle(self._ordinal, source, source_hash, name, dict(options or {}), parent)
            self._journal.append(
                step_start_record(step.ordinal, source=source, source_hash=source_hash, name=name, options=step.options,
                                  parent=parent, inputs=inputs)
            )
        if self.events.active:  # widgets listen: what a run graph shows of a step that begins
            self.events.emit(RuntimeEvent("step_started", self.run_id, {
                "ordinal": step.ordinal, "name": name, "parent": parent, "source": source, "source_hash": source_hash,
                "options": step.options, "started_at": step.started_at,
            }))
        return step

    def record_attempt(self, step: StepHandle, attempt: int, started_at: float, error: dict[str, Any] | None,
                       next_delay: float | None) -> None:
        """One attempt of an explicit step ended (journaled as it happens: a crash keeps it)."""
        ended_at = now()
        self._note_clock()
        self._journal.append(attempt_record(step.ordinal, attempt, started_at=started_at, ended_at=ended_at,
                                            error=error, next_delay=next_delay))
        if self.events.active:
            self.events.emit(RuntimeEvent("attempt_finished", self.run_id, {
                "ordinal": step.ordinal, "parent": step.parent, "attempt": attempt, "started_at": started_at,
                "ended_at": ended_at, "error": error, "next_delay": next_delay,
            }))

    def _note_clock(self) -> None:
        """Mark the run time-skipped (a ``time_skip`` record, once) when its clock skips time (``clock.py``):
        its journal then holds virtual times."""
        if not self._time_skipped and is_skipping():
            self._time_skipped = True
            self._journal.append(time_skip_record())

    def note_compensating(self, reason: str) -> None:
        """The run begins running compensations (``compensation.py``): journaled first, durably."""
        self._journal.append(compensating_record(reason), sync=True)

    @property
    def time_skipped(self) -> bool:
        """Whether this run recorded times of the time-skipping clock."""
        return self._time_skipped

    def wait_scope(self) -> tuple[float, set[str]]:
        """What ``wait_for_event`` may return: events sent at or after the start of the run's root run
        (the run this one resumes, transitively), except those the chain already consumed."""
        if self._wait_scope is None:
            started = float((self.store.journal_head(self.run_id) or {}).get("ts", time.time()))
            self._wait_scope = chain_scope(self.store, self.resumed_from) if self.resumed_from else (started, set())
        return self._wait_scope

    def consume(self, step: StepHandle, event: dict[str, Any]) -> None:
        """A wait step took ``event``: journaled before the step commits, so no resume takes it again."""
        self.wait_scope()[1].add(event["id"])
        self._journal.append(consumed_record(step.ordinal, event["id"], event["name"]))

    def end_child(self, step: StepHandle, status: str, refs: list[VarRef] | None = None, *,
                  changes: list[Change] | None = None) -> None:
        """Commit an explicit step: its result (or error) as a variable reference, in step order."""
        duration, ended = time.perf_counter() - step.t0, now()

        if refs is None and changes:
            changes, _ = self._for_commit(changes, self._payload_bytes(changes))

        def commit() -> None:
            values = (refs if refs is not None
                      else persist_changes(self.store, changes or [], inline_max=self.inline_max))
            self._commit(step, status, values, [], None, duration=duration, ended=ended)  # type: ignore[arg-type]

        self._committer.run(commit)
        self._emit_finished(step, status, duration, ended, refs if refs is not None else changes)

    def end_step(
        self,
        step: StepHandle,
        *,
        status: StepStatus,
        changes: Iterable[Change] = (),
        outputs: list[dict[str, Any]] | None = None,
        error: dict[str, Any] | None = None,
        read: dict[str, Any] | None = None,
    ) -> None:
        """Commit an executed step: its object files first, then its commit record (with ``read``: what the
        cell was seen to read while it ran, ``runtime/dataflow.py``).

        A step with a big payload is snapshotted and committed in the background (``committer.py``);
        ``wait_durable`` waits for it. An error of an earlier background commit is raised here."""
        changes = list(changes)
        duration, ended = time.perf_counter() - step.t0, now()
        size, written = self._payload_bytes(changes), self._new_bytes(changes)
        if status == "completed":
            self.stats.executed += 1
        else:
            self.stats.failed += 1
        self.stats.last_status = status

        def commit(changes: list[Change], background: bool) -> None:
            try:
                refs = persist_changes(self.store, changes, inline_max=self.inline_max)
            except StoreError as exc:
                # In the background, the cell that made the payload has returned: record *its* step as
                # not durable (disk full, a changed object...) rather than fail whichever cell comes next.
                if not (background or isinstance(exc, ChangedDuringWriteError)):
                    raise
                self._commit_not_durable(step, changes, outputs or [], exc, duration=duration, ended=ended)
                return
            self._commit(step, status, refs, outputs or [], error, duration=duration, ended=ended, read=read)

        if self._committer.can_defer(written, size):
            snapshots = _snapshots(changes)
            self._committer.defer(lambda: commit(snapshots, background=True))
        else:
            committed, later = self._for_commit(changes, size)
            self._committer.run(lambda: commit(committed, background=later))
        self._emit_finished(step, status, duration, ended, changes, error_with_traceback(error, outputs))

    def _stored_out(self, changes: list[Change]) -> list[Serialized]:
        """The changes' payloads stored out of the journal (bigger than ``inline_max``)."""
        return [c.serialized for c in changes if c.serialized is not None and c.serialized.has_payload
                and c.serialized.size > self.inline_max]

    def _payload_bytes(self, changes: list[Change]) -> int:
        """The bytes of the payloads stored out of the journal: what a snapshot of them may copy."""
        return sum(s.size for s in self._stored_out(changes))

    def _new_bytes(self, changes: list[Change]) -> int:
        """The bytes committing them will write: a big frame's columns that an earlier commit wrote or was
        given count for nothing (``frames.claim``: called once per commit)."""
        return sum(frames.claim(self.store, s) for s in self._stored_out(changes))

    def _for_commit(self, changes: list[Change], size: int) -> tuple[list[Change], bool]:
        """What a commit given to ``Committer.run`` now is to write, and whether it runs after the notebook
        went on. With nothing pending it runs at once, on the live payloads. Else it queues behind the
        pending commits, on snapshots of its payloads (``size`` bytes), unless they are big and too big to
        copy in the memory available: then it waits for the pending commits instead."""
        if not self._committer.busy:
            return changes, False
        if size < ASYNC_MIN_BYTES or self._committer.can_copy(size):
            return _snapshots(changes), True
        self._committer.drain()
        return changes, False

    def record_restored(self, step: StepHandle, planned: PlannedStep) -> float:
        """Commit a step restored from an earlier run; returns the time it saved."""
        restore_time = time.perf_counter() - step.t0
        ended = now()
        # The outputs are already in journal form, and the step can be restored again from its source
        # run, so it needs neither re-encoding nor an immediate flush (``finish`` syncs).
        exited = None if planned.exited is None else {"ename": "SystemExit", "evalue": planned.exited}
        self._committer.run(
            lambda: self._commit(
                step, "restored", planned.variables, planned.outputs, exited,
                duration=planned.duration, ended=ended, restored_from=planned.origin, journaled=True,
            )
        )  # fmt: skip
        saved = max(0.0, planned.duration - restore_time)
        self.stats.restored += 1
        self.stats.time_saved += saved
        self.stats.last_status = "restored"
        self._emit_finished(step, "restored", planned.duration, ended, planned.variables, restored_from=planned.origin,
                            saved=saved)
        return saved

    def _commit_not_durable(
        self, step: StepHandle, changes: list[Change], outputs: list[dict[str, Any]], exc: StoreError,
        *, duration: float, ended: float,
    ) -> None:
        """A background commit could not write a big object (it changed meanwhile, or the disk is full):
        record the step as failed with its variables unsaved, so a resume re-executes it (nothing torn is
        ever restored), and say so."""
        refs: list[VarRef] = [
            {"name": c.name, "op": "set", "format": "unrestorable", "reason": f"not saved: {exc.message}"}
            for c in changes
        ]
        error = {"ename": type(exc).__name__, "evalue": exc.message}
        self._commit(step, "failed", refs, outputs, error, duration=duration, ended=ended)
        print(f"nbdurable: step {step.ordinal} is not durable: {exc.message}; it will re-execute on resume.",
              file=sys.stderr)

    def wait_durable(self) -> None:
        """Wait until every step committed so far is on disk (background commits included)."""
        self._committer.drain()
        self._journal.sync()

    def _emit_finished(
        self, step: StepHandle, status: str, duration: float, ended: float,
        variables: Iterable[Change | VarRef] | None = None, error: dict[str, Any] | None = None, *,
        restored_from: dict[str, Any] | None = None, saved: float | None = None,
    ) -> None:
        if not self.events.active:
            return
        self.events.emit(RuntimeEvent("step_finished", self.run_id, {
            "ordinal": step.ordinal, "name": step.name, "parent": step.parent, "status": status, "duration": duration,
            "started_at": step.started_at, "ended_at": ended,
            "variables": [_variable_summary(v) for v in variables or ()],
            "error": error, "restored_from": restored_from, "time_saved": saved,
        }))

    def _commit(
        self,
        step: StepHandle,
        status: StepStatus,
        refs: list[VarRef],
        outputs: list[dict[str, Any]],
        error: dict[str, Any] | None,
        *,
        duration: float,
        ended: float,
        restored_from: dict[str, Any] | None = None,
        journaled: bool = False,
        read: dict[str, Any] | None = None,
    ) -> None:
        record = step_end_record(
            step.ordinal,
            status=status,
            started_at=step.started_at,
            ended_at=ended,
            duration=duration,
            variables=refs,
            outputs=outputs if journaled else persist_outputs(self.store, outputs),
            error=error,
            restored_from=restored_from,
            read=read,
        )
        self._journal.append(record)
        if not journaled:
            self._journal.sync_soon()

    def finish(self, status: str, *, wake_at: float | None = None, waiting_for: dict[str, Any] | None = None,
               cancel: dict[str, Any] | None = None) -> None:
        """Write the final record and release the lease. Idempotent. A ``suspended`` run says what it
        waits for (``wake_at``, or ``waiting_for`` an event); a ``cancelled`` one who cancelled it (``cancel``,
        the request). A run that did not complete and was asked to cancel (``runtime/control.py``) ends
        ``cancelled`` whatever ``status`` says."""
        if self.status != "running":
            return
        if status != "completed" and cancel is None:
            cancel = pending_cancel(self.store, self.run_id, [self.resumed_from], since=self.started_at)
        if cancel is not None and status != "completed":
            status = "cancelled"
        try:
            self._committer.close()
        finally:
            self._journal.append(run_end_record(status, wake_at=wake_at, waiting_for=waiting_for, cancel=cancel),
                                 sync=True)
        self._journal.close()
        self._lease.release()
        self.status = status
        self.events.emit(RuntimeEvent("run_finished", self.run_id, {"status": status}))

    def abandon(self) -> None:
        """Release resources without a final record (the run will read as crashed)."""
        self._committer.close()
        self._journal.close()
        self._lease.release()
        self.status = "crashed"
