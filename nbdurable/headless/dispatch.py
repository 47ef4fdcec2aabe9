"""The engine's queue: claims decided, runs not yet started, started in priority order within the limits.

Every run the engine starts was first *claimed* (``store/claims.py``): a schedule's slot, a trigger's event, a
parent's child-run call, a run submitted to a queue (``nbdurable submit``). The claim is the durable decision
"this key starts exactly one run, with this notebook, these parameters, this origin"; the open claims are
therefore the queue, and it survives any crash. ``Dispatcher.tick`` starts open claims through the
``Launcher``:

- in order of ``priority`` (higher first), then claim time; none before its ``not_before`` time (debounce,
  delayed rate-limited events) on the process's clock;
- at most ``max_concurrent`` runs of this dispatcher at once (its own processes); only claims of its
  ``queues`` (``nbdurable worker --queue``; a claim names its queue, else it is in ``default``);
- at most a queue's ``concurrency`` (``nbdurable queue set``) of its runs at once across every process
  sharing the store: the run holds one of the queue's slots, as for a flow key below, and a queue whose
  slots are all busy is not taken from;
- at most ``flow_limit`` runs per ``flow_key`` across every process sharing the store: the started run
  holds one of the key's slots (``Store.hold_slot``) for its life and exits without running if none is
  free, leaving its claim open (so a limit is never exceeded, even by two dispatchers racing);
- a claim another live process is starting is left alone; one whose starter died before its run began is
  started again under the same run id (one this dispatcher started that died so is retried with an
  exponential backoff, logged); one whose run exists is marked started and leaves the queue; a run that
  ended is marked finished (one whose process died mid-run is resumed by the worker's recovery pass);
- the store chooses each claim (``Store.take_claim``: the queue's order and these filters); on a shared
  store that is one ``SELECT ... FOR UPDATE SKIP LOCKED`` taking the claim's lease, handed to the run;
- a claim whose key's slots are all held by this dispatcher's own runs is not started (it would only exit
  for want of a slot, and a lower-priority claim could take the slot first); after a run of a key stood
  down because other processes hold its slots, the key's claims wait ``NO_SLOT_PAUSE`` while the claims
  of other keys are started (no key holds up the rest of the queue).

The claim record's launch fields: ``run_id``, ``notebook``, ``params``, ``origin``, and optionally
``output_path``, ``cwd``, ``priority``, ``flow_key``, ``flow_limit``, ``not_before``. Each decision is one
structured log line (``log(event, **fields)``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nbdurable.headless.launch import EXIT_CLAIM_HELD, EXIT_NO_SLOT, Launched, Launcher, LaunchSpec
from nbdurable.runtime.clock import clock
from nbdurable.store import Store
from nbdurable.store.claims import DEFAULT_QUEUE, queue_of
from nbdurable.store.queues import queue_limits, queue_slot_key

Log = Callable[..., None]  # log(event, **fields): one structured line
MAX_RETRY_DELAY = 300.0  # a claim whose process keeps dying before its run begins is retried at most this rarely
NO_SLOT_PAUSE = 1.0  # a flow key whose slots another process holds: its claims wait this long before the next try


def launch_spec(store: Store, claim: dict[str, Any], *, env: dict[str, str] | None = None,
                log_dir: str | None = None, suspend_after: float | None = None, claim_token: str | None = None,
                queue_limits: dict[str, int] | None = None) -> LaunchSpec:
    """The run a claim starts (``claim_token``: the claim's lease ``take_claim`` took, handed to the run)."""
    key, limit = claim.get("flow_key"), claim.get("flow_limit")
    origin = {**(claim.get("origin") or {}), "claim": [claim["kind"], claim["key"]]}
    if isinstance(key, str) and isinstance(limit, int):
        origin.update(flow_key=key, flow_limit=limit)  # a resume of the run holds a slot of the same key
    queue = queue_of(claim)
    if queue != DEFAULT_QUEUE:
        origin["queue"] = queue  # a resume of the run holds a slot of its queue too
    return LaunchSpec(
        store.location, str(claim["notebook"]), params=dict(claim.get("params") or {}), origin=origin,
        run_id=str(claim["run_id"]), claim=(str(claim["kind"]), str(claim["key"])),
        slot=(key, limit) if isinstance(key, str) and isinstance(limit, int) else None,
        queue_slot=queue_slot(queue, queue_limits or {}), claim_token=claim_token,
        output_path=claim.get("output_path"), cwd=claim.get("cwd"), suspend_after=suspend_after, env=dict(env or {}),
        log_path=f"{log_dir}/{claim['run_id']}.log" if log_dir else None,
    )  # fmt: skip


def queue_slot(queue: str | None, limits: dict[str, int]) -> tuple[str, int] | None:
    """The slot key and concurrency of a bounded queue (``nbdurable queue set``), else None."""
    return (queue_slot_key(queue), limits[queue]) if queue is not None and queue in limits else None


@dataclass
class Dispatcher:
    """Starts open claims of one store within the limits; reaps the processes it started."""

    store: Store
    log: Log
    max_concurrent: int = 4
    launcher: Launcher = field(default_factory=Launcher)
    env: dict[str, str] = field(default_factory=dict)  # given to every started run (e.g. NBDURABLE_TIME_SKIP)
    log_dir: str | None = None
    suspend_after: float | None = None
    running: dict[tuple[str, str], Launched] = field(default_factory=dict)
    started: int = 0
    on_exit: Callable[[Launched], None] | None = None  # told when a started process ends
    queues: list[str] | None = None  # serve only the claims of these queues (None: every queue)
    _failures: dict[tuple[str, str], int] = field(default_factory=dict)  # starts that died before their run began
    _retry_at: dict[tuple[str, str], float] = field(default_factory=dict)
    _noted: set[tuple[str, str]] = field(default_factory=set)  # running claims already marked started
    _busy_flows: dict[str, float] = field(default_factory=dict)  # flow key -> until when others hold its slots

    def tick(self) -> int:
        """One pass over the queue; returns how many runs it started. Each claim is taken by the store's
        ``take_claim`` (on PostgreSQL one ``FOR UPDATE SKIP LOCKED`` statement), so dispatchers on any
        number of machines take distinct claims."""
        self.reap()
        self._note_started()
        count = 0
        now = clock().now()
        exclude = set(self.running) | {ident for ident, at in self._retry_at.items() if at > now}
        limits = queue_limits(self.store.queues())
        full_queues = {queue for queue, limit in limits.items()
                       if self.store.slots_busy(queue_slot_key(queue), limit) >= limit}
        self._busy_flows = {key: until for key, until in self._busy_flows.items() if until > now}
        while len(self.running) < self.max_concurrent:
            full_flows = self._own_full_flows() | set(self._busy_flows)
            taken = self.store.take_claim(now=now, queues=self.queues, exclude=exclude, full_flows=full_flows,
                                          full_queues=full_queues)
            if taken is None:
                break
            claim = taken.claim
            ident = (str(claim["kind"]), str(claim["key"]))
            exclude.add(ident)
            spec = launch_spec(self.store, claim, env=self.env, log_dir=self.log_dir, suspend_after=self.suspend_after,
                               claim_token=taken.token, queue_limits=limits)
            self.running[ident] = self.launcher.start(spec)
            self.started += 1
            count += 1
            if spec.queue_slot is not None and sum(1 for launched in self.running.values() if launched.spec.queue_slot
                                                   == spec.queue_slot) >= spec.queue_slot[1]:
                full_queues.add(queue_of(claim))
            self.log("run_started", run_id=spec.run_id, claim=f"{ident[0]}:{ident[1]}", notebook=spec.notebook,
                     priority=int(claim.get("priority") or 0), flow_key=claim.get("flow_key"), queue=queue_of(claim),
                     recovered=bool(claim.get("claimed_at", now) < now - 5))
        return count

    def _note_started(self) -> None:
        """Mark the claims of this dispatcher's running processes started as soon as their runs exist (not
        only when the process ends): if this machine dies now, the run is an unfinished claim at once, and
        another worker's recovery resumes it without waiting for the claim's lease to expire."""
        for ident, launched in self.running.items():
            if ident not in self._noted and self.store.journal_exists(str(launched.spec.run_id)):
                self.store.mark_started(*ident)
                self._noted.add(ident)

    def _own_full_flows(self) -> set[str]:
        """Flow keys whose slots are all held by this dispatcher's runs: their next claim waits here (it would
        only exit for want of a slot, and a lower-priority claim could take the slot first)."""
        counts: dict[str, int] = {}
        for launched in self.running.values():
            if launched.spec.slot:
                counts[launched.spec.slot[0]] = counts.get(launched.spec.slot[0], 0) + 1
        return {key for launched in self.running.values() if launched.spec.slot
                for key, limit in [launched.spec.slot] if counts[key] >= limit}

    def reap(self) -> list[Launched]:
        """Forget the processes that ended (logging how); returns them."""
        ended = [(ident, launched) for ident, launched in self.running.items() if not launched.alive]
        for ident, launched in ended:
            del self.running[ident]
            self._noted.discard(ident)
            code = launched.exitcode
            if code in (EXIT_CLAIM_HELD, EXIT_NO_SLOT):
                if code == EXIT_NO_SLOT and launched.spec.slot:
                    # Other processes (another worker's) hold the key's slots: its next claims wait a moment
                    # and the claims of other keys go first, instead of this key's standing down again and again.
                    self._busy_flows[launched.spec.slot[0]] = clock().now() + NO_SLOT_PAUSE
                self.log("run_deferred", run_id=launched.spec.run_id, claim=f"{ident[0]}:{ident[1]}",
                         why="another process is starting it" if code == EXIT_CLAIM_HELD
                         else f"all {launched.spec.slot[1] if launched.spec.slot else 0} slots of its key are busy")
                continue
            if self.store.journal_exists(str(launched.spec.run_id)):
                self.store.mark_started(*ident)
                if code is not None and code >= 0:  # it ended (or suspended); a killed one is the worker's to recover
                    self.store.mark_finished(*ident)
                self._failures.pop(ident, None)
            else:  # it died before its run began (an unreadable notebook, a kernel that never started): back off
                failures = self._failures[ident] = self._failures.get(ident, 0) + 1
                delay = min(2.0 ** failures, MAX_RETRY_DELAY)
                self._retry_at[ident] = clock().now() + delay
                self.log("run_failed_to_start", run_id=launched.spec.run_id, claim=f"{ident[0]}:{ident[1]}",
                         exit_code=code, attempts=failures, retry_in_s=delay, log=launched.spec.log_path)
                continue
            self.log("run_exited", run_id=launched.spec.run_id, exit_code=code,
                     seconds=round(time.time() - launched.started_at, 3))
            if self.on_exit is not None:
                self.on_exit(launched)
        return [launched for _, launched in ended]

    def drain(self, timeout: float | None = None) -> None:
        """Wait for every started process to end (tests, ``--once``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for launched in list(self.running.values()):
            launched.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self.reap()


__all__ = ["Dispatcher", "Log", "launch_spec"]
