"""The worker is the engine: each tick runs its passes (``Worker.passes``) over one store: fire the schedules' due
slots (claims, ``scheduler.py``), decide the triggers' events, resume the suspended runs that are due, resume
the claimed runs whose process died mid-run (``recovery.py``), and start the open claims (``Dispatcher.tick``).
The same passes run on a directory store and on a shared one (PostgreSQL): the store implements the same
methods, so workers on several machines share one queue. Every run it starts or resumes executes in a process
of its own (``launch.py``: its own session, so a worker killed with SIGKILL leaves it running), at most
``max_concurrent`` at once. Several workers on one store cooperate: claims start one run per key, a resume
holds the resumed run's lease. Each decision is one structured log line (``worker_log.py``).

Resuming suspended runs:

A run suspended on ``nbd.sleep`` is due once its wake-up time passed; one suspended on
``nbd.wait_for_event`` once a matching event it has not consumed arrived, or its wait timed out; one
suspended on ``nbd.run_notebook`` once its child runs ended. The
catalog lists the suspended runs nobody resumed yet; the run's final journal record says what it waits
for. Before resuming a run the worker takes that run's lease (a suspended run's lease is free), so two
workers never resume the same run: the second finds it held, and by the time it is free again a run
that resumes it exists (the started process takes that lease, and checks under it that no run resumed it).
The resume itself is ``nbdurable resume``: the same notebook, parameters, output path and working directory,
in a new kernel, restoring what the suspended run completed; a run started with a flow key (``origin``'s
``flow_key`` / ``flow_limit``) holds one of the key's slots again while it resumes. A
cancelled run (``runtime/control.py``) is never resumed, even one cancelled after the catalog listed it.

Due times are read on the process's clock (``runtime/clock.py``). An idle worker on the time-skipping clock
(``NBDURABLE_TIME_SKIP=1``: nothing due, nothing running, no claim waiting) skips its clock to the nearest
wake-up (a suspended run's wake-up time or event timeout, a schedule's next slot, a claim's ``not_before``),
as a test server skips to its next timer; the runs it starts inherit the setting, so their waits skip too.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdurable.errors import LeaseHeldError
from nbdurable.headless.dispatch import Dispatcher, Log, queue_slot
from nbdurable.headless.launch import (
    EXIT_CLAIM_HELD,
    EXIT_NO_SLOT,
    EXIT_REFUSED,
    REFUSED_PREFIX,
    Launched,
    Launcher,
    LaunchSpec,
)
from nbdurable.headless.recovery import Recovery
from nbdurable.headless.triggers import TriggerPass
from nbdurable.runtime.children import child_state
from nbdurable.runtime.clock import clock
from nbdurable.runtime.control import was_cancelled
from nbdurable.runtime.replay import chain_scope
from nbdurable.runtime.waits import find_event
from nbdurable.store import Store
from nbdurable.store.queues import queue_limits


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
    """The engine over one store: ``tick`` runs ``passes``; ``work`` ticks until stopped.

    A pass is a callable without arguments run once per tick, in order: a source of runs claims them (the
    dispatch pass starts them); a pass that knows when it will next have work appends that time to
    ``self.wakeups`` (an idle worker on the skipping clock skips to the nearest). Starting runs itself, a
    pass stays within ``self._capacity()``."""

    def __init__(self, store: Store, *, log: Log, max_concurrent: int = 4, suspend_after: float | None = None,
                 on_change: str = "continue", grace: float = 60.0, run_logs: str | None = None,
                 launcher: Launcher | None = None, queues: list[str] | None = None) -> None:
        self.store, self.log, self.suspend_after, self.on_change = store, log, suspend_after, on_change
        self.max_concurrent, self.grace = max_concurrent, grace
        self.keep_logs = run_logs is not None
        self.run_logs = run_logs or tempfile.mkdtemp(prefix="nbdurable-worker-")
        Path(self.run_logs).mkdir(parents=True, exist_ok=True)
        self.launcher = launcher or Launcher()
        self.dispatcher = Dispatcher(store, log=self._dispatch_log, max_concurrent=max_concurrent,
                                     launcher=self.launcher, log_dir=self.run_logs, suspend_after=suspend_after,
                                     on_exit=self._run_exited, queues=queues)
        self.resuming: dict[str, Launched] = {}
        self.resumed = 0  # resumes that ran (their process did not stand down)
        self.dispatch_deferred = 0  # new runs' processes that stood down (another worker had it, no free slot)
        self.max_runs: int | None = None
        self.wakeups: list[float] = []  # filled by the passes: when something is due next
        self._skipped: set[str] = set()  # runs that cannot be resumed (no notebook file, refused): logged once
        self.recovery = Recovery(store, log, lambda run_id, why: self.resume(DueRun(run_id, why)))
        self.triggers = TriggerPass(store, log)
        self.passes: list[Callable[[], object]] = [self.fire_schedules, self.triggers.tick, self.resume_due,
                                                   self.recover, self.dispatch]

    # ----- the loop ---------------------------------------------------------------------------------------

    def work(self, *, once: bool, poll: float, max_runs: int | None = None) -> int:
        """Tick until stopped (``once``: one tick, then until the runs it started ended; ``max_runs``: stop
        starting runs after that many, wait for them, return). Returns how many runs it resumed."""
        self.max_runs = max_runs
        self.log("worker_started", store=self.store.display, max_concurrent=self.max_concurrent,
                 mode="one pass" if once else f"polling every {poll:g} s")
        self.tick(skip=True)
        while not (once or self.limit_reached()):
            time.sleep(poll)
            self.tick(skip=True)
        while self.running:
            time.sleep(min(poll, 0.1))
            self.tick(skip=False)
        return self.resumed

    def tick(self, *, skip: bool = True) -> None:
        """Run every pass once; an idle worker on the skipping clock then skips to the nearest wake-up and
        runs them again."""
        self._run_passes()
        if skip and clock().skipping and self.wakeups and self._idle():
            target = min(self.wakeups)
            if target > clock().now():
                clock().sleep_until(target)
                self.log("clock_skipped", to=_iso(target))
                self._run_passes()

    def _run_passes(self) -> None:
        self.wakeups = []
        for run_pass in self.passes:
            run_pass()

    @property
    def running(self) -> int:
        """Processes this worker started that are still running."""
        return len(self.resuming) + len(self.dispatcher.running)

    @property
    def started(self) -> int:
        """Runs this worker started (new and resumed) that did not stand down."""
        return self.new_runs + self.resumed + len(self.resuming)

    @property
    def new_runs(self) -> int:
        """New runs (from claims) this worker started that did not stand down."""
        return self.dispatcher.started - self.dispatch_deferred

    def limit_reached(self) -> bool:
        return self.max_runs is not None and self.started >= self.max_runs

    def _capacity(self) -> int:
        """How many more runs may start now (``max_concurrent``, ``max_runs``)."""
        room = self.max_concurrent - self.running
        if self.max_runs is not None:
            room = min(room, self.max_runs - self.started)
        return max(0, room)

    def _idle(self) -> bool:
        """Nothing running and no claim ready to start (a claim not before a later time is a wake-up)."""
        if self.running:
            return False
        now = clock().now()
        for claim in self.store.open_claims():
            not_before = float(claim.get("not_before") or 0)
            if not_before <= now:
                return False
            self.wakeups.append(not_before)
        return True

    def close(self) -> None:
        """Remove the temporary directory of the started runs' output (not a ``run_logs`` directory); the
        runs still going keep writing to their open files."""
        if not self.keep_logs:
            shutil.rmtree(self.run_logs, ignore_errors=True)

    # ----- the passes -------------------------------------------------------------------------------------

    def fire_schedules(self) -> None:
        """Claim the schedules' due slots (``scheduler.fire_schedules``)."""
        from nbdurable.headless.scheduler import fire_schedules

        self.wakeups += fire_schedules(self.store, log=self.log, grace=self.grace)

    def dispatch(self) -> None:
        """Start open claims within what is left of ``max_concurrent`` (``Dispatcher.tick``)."""
        self.dispatcher.max_concurrent = len(self.dispatcher.running) + self._capacity()
        self.dispatcher.tick()

    def recover(self) -> None:
        """Resume the claimed runs whose process died mid-run (``recovery.py``), within the limits."""
        self._reap_resumes()
        self.recovery.tick(self._capacity, busy=set(self.resuming) | {
            str(launched.spec.run_id) for launched in self.dispatcher.running.values()})

    def resume_due(self) -> None:
        """Start a resume of each due suspended run, within the limits."""
        self._reap_resumes()
        now = clock().now()
        for run_id in suspended_runs(self.store):
            if run_id in self.resuming or run_id in self._skipped:
                continue
            reason = why_due(self.store, run_id, now)
            if reason is None:
                deadline = next_deadline(self.store, run_id)
                if deadline is not None:
                    self.wakeups.append(deadline)
                continue
            if self._capacity() <= 0:
                break
            self.resume(DueRun(run_id, reason))

    # ----- resuming a suspended run -----------------------------------------------------------------------

    def resume(self, due: DueRun) -> bool:
        """Check the run under its lease and start its resume in a process of its own (which takes the lease);
        False if another worker has it or it cannot run."""
        if due.run_id in self._skipped:
            return False
        try:
            lease = self.store.acquire_lease(due.run_id)
        except LeaseHeldError:
            self.log("resume_skipped", run_id=due.run_id, why="another worker is resuming it")
            return False
        with lease:
            if _resumed_by_another(self.store, due.run_id):
                return False
            if was_cancelled(self.store, due.run_id):  # cancelled since the catalog listed it: never resumed
                return self._skip(due.run_id, "cancelled, not resuming it")
            head = self.store.read_journal(due.run_id)[0]
            notebook = head.get("notebook_path")
            if not notebook or not Path(notebook).is_file():
                return self._skip(due.run_id, f"cannot resume it: its notebook {notebook or '(unnamed)'} is gone")
        origin = head.get("origin") or {}
        key, limit = origin.get("flow_key"), origin.get("flow_limit")
        queue = origin.get("queue") if isinstance(origin.get("queue"), str) else None
        cwd = (head.get("environment") or {}).get("cwd")
        spec = LaunchSpec(
            self.store.location, str(notebook), params=dict(head.get("params") or {}), resume_run=due.run_id,
            slot=(key, limit) if isinstance(key, str) and isinstance(limit, int) else None,
            queue_slot=queue_slot(queue, queue_limits(self.store.queues()) if queue else {}),
            output_path=head.get("output_path"), cwd=cwd, suspend_after=self.suspend_after, on_change=self.on_change,
            log_path=str(Path(self.run_logs) / f"resume-{due.run_id}-{time.monotonic_ns()}.log"),
        )  # fmt: skip
        self.log("resume_started", run_id=due.run_id, notebook=str(notebook), reason=due.reason)
        self.resuming[due.run_id] = self.launcher.start(spec)
        return True

    def _skip(self, run_id: str, why: str) -> bool:
        self.log("resume_skipped", run_id=run_id, why=why)
        self._skipped.add(run_id)
        return False

    def _reap_resumes(self) -> None:
        for run_id, launched in list(self.resuming.items()):
            if launched.alive:
                continue
            del self.resuming[run_id]
            code, output = launched.exitcode, self._read_output(launched)
            self.recovery.resume_ended(run_id, None if code in (EXIT_CLAIM_HELD, EXIT_NO_SLOT) else code)
            if code in (EXIT_CLAIM_HELD, EXIT_NO_SLOT, EXIT_REFUSED):
                if code == EXIT_REFUSED:
                    self._skip(run_id, f"cannot resume it: {output.refused}")
                else:
                    self.log("resume_skipped", run_id=run_id, why="another worker is resuming it"
                             if code == EXIT_CLAIM_HELD else "every slot of its flow key is busy: later")
                continue
            self.resumed += 1
            self.log("run_resumed", run_id=run_id, new_run=_successor(self.store, run_id), exit_code=code,
                     seconds=round(time.time() - launched.started_at, 3), **output.summary(code))

    # ----- what started processes printed -----------------------------------------------------------------

    def _read_output(self, launched: Launched) -> RunOutput:
        """The started process's output, its notices relayed to the log (the file removed unless kept)."""
        path = Path(launched.spec.log_path or "")
        try:
            text = path.read_text(encoding="utf-8", errors="replace") if launched.spec.log_path else ""
        except OSError:
            text = ""
        if text and not self.keep_logs:
            path.unlink(missing_ok=True)
        output = RunOutput.parse(text)
        run_id = launched.spec.resume_run or launched.spec.run_id
        for line in output.notices:
            self.log("run_notice", run_id=run_id, text=line)
        return output

    def _run_exited(self, launched: Launched) -> None:
        output = self._read_output(launched)
        if output.status is not None:
            self.log("run_finished", run_id=launched.spec.run_id, **output.summary(launched.exitcode))

    def _dispatch_log(self, event: str, **fields: Any) -> None:
        if event == "run_deferred":
            self.dispatch_deferred += 1
        self.log(event, **fields)


@dataclass
class RunOutput:
    """What a started run's process printed: notices, its final line (status, counts, error), a refusal."""

    notices: list[str] = field(default_factory=list)
    status: str | None = None
    executed: int = 0
    restored: int = 0
    error: str | None = None
    refused: str | None = None

    @classmethod
    def parse(cls, text: str) -> RunOutput:
        out = cls()
        for line in text.splitlines():
            if line.startswith(REFUSED_PREFIX):
                try:
                    out.refused = str(json.loads(line[len(REFUSED_PREFIX):]))
                except ValueError:
                    out.refused = line[len(REFUSED_PREFIX):]
            elif match := _SUMMARY.match(line):
                out.status, out.executed, out.restored = match["status"], int(match["executed"]), int(match["restored"])
                out.error = match["error"]
            elif line.strip():
                out.notices.append(line.removeprefix("nbdurable: "))
        return out

    def summary(self, exit_code: int | None) -> dict[str, Any]:
        """The log fields of how the run ended (from its final line, else from its exit code)."""
        status = self.status or ("killed" if exit_code is not None and exit_code < 0 else f"exit code {exit_code}")
        outcome = status + (f": {self.error}" if self.error and status != "suspended" else "")
        return {"status": status, "outcome": outcome, "executed": self.executed, "restored": self.restored}


_SUMMARY = re.compile(r"^(?P<status>[a-z]+): run (?P<run>\S+): (?P<executed>\d+) executed, (?P<restored>\d+) restored"
                      r"(?:: (?P<error>.*))?$")


def _successor(store: Store, run_id: str) -> str | None:
    """The run that resumed ``run_id``."""
    return next((other for other in store.run_ids()
                 if other > run_id and (store.journal_head(other) or {}).get("resumed_from") == run_id), None)


def _iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.timezone.utc).isoformat(timespec="seconds")
