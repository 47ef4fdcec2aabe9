"""The engine's queue: claims decided, runs not yet started, started in priority order within the limits.

Every run the engine starts was first *claimed* (``store/claims.py``): a schedule's slot, a trigger's
event, a parent's child-run call. The claim is the durable decision "this key starts exactly one run, with
this notebook, these parameters, this origin"; the open claims are therefore the queue, and it survives
any crash. ``Dispatcher.tick`` starts open claims through the ``Launcher``:

- in order of ``priority`` (higher first), then claim time; none before its ``not_before`` time (debounce,
  delayed rate-limited events) on the process's clock;
- at most ``max_concurrent`` runs of this dispatcher at once (its own processes);
- at most ``flow_limit`` runs per ``flow_key`` across every process sharing the store: the started run
  holds one of the key's slots (``Store.hold_slot``) for its life and exits without running if none is
  free, leaving its claim open (so a limit is never exceeded, even by two dispatchers racing);
- a claim another live process is starting is left alone; one whose starter died before its run began is
  started again under the same run id (one this dispatcher started that died so is retried with an
  exponential backoff, logged); one whose run exists is marked started and leaves the queue;
- a claim whose key's slots are all held by this dispatcher's own runs is not started (it would only exit
  for want of a slot, and a lower-priority claim could take the slot first).

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

Log = Callable[..., None]  # log(event, **fields): one structured line
MAX_RETRY_DELAY = 300.0  # a claim whose process keeps dying before its run begins is retried at most this rarely


def launch_spec(store: Store, claim: dict[str, Any], *, env: dict[str, str] | None = None,
                log_dir: str | None = None, suspend_after: float | None = None) -> LaunchSpec:
    """The run a claim starts."""
    key, limit = claim.get("flow_key"), claim.get("flow_limit")
    origin = {**(claim.get("origin") or {}), "claim": [claim["kind"], claim["key"]]}
    if isinstance(key, str) and isinstance(limit, int):
        origin.update(flow_key=key, flow_limit=limit)  # a resume of the run holds a slot of the same key
    return LaunchSpec(
        store.location, str(claim["notebook"]), params=dict(claim.get("params") or {}), origin=origin,
        run_id=str(claim["run_id"]), claim=(str(claim["kind"]), str(claim["key"])),
        slot=(key, limit) if isinstance(key, str) and isinstance(limit, int) else None,
        output_path=claim.get("output_path"), cwd=claim.get("cwd"), suspend_after=suspend_after, env=dict(env or {}),
        log_path=f"{log_dir}/{claim['run_id']}.log" if log_dir else None,
    )  # fmt: skip


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
    _failures: dict[tuple[str, str], int] = field(default_factory=dict)  # starts that died before their run began
    _retry_at: dict[tuple[str, str], float] = field(default_factory=dict)

    def tick(self) -> int:
        """One pass over the queue; returns how many runs it started."""
        self.reap()
        count = 0
        now = clock().now()
        for claim in sorted(self.store.open_claims(), key=lambda c: (-int(c.get("priority") or 0),
                                                                      c.get("claimed_at", 0), c["key"])):
            ident = (str(claim["kind"]), str(claim["key"]))
            if ident in self.running:
                continue
            state = self.store.claim_state(claim)
            if state == "started":
                self.store.mark_started(*ident)
                continue
            if state == "starting" or float(claim.get("not_before") or 0) > now or self._retry_at.get(ident, 0) > now:
                continue
            if self._own_slots_full(claim):  # its key's slots are all this dispatcher's: the next one waits here
                continue
            if len(self.running) >= self.max_concurrent:
                break
            spec = launch_spec(self.store, claim, env=self.env, log_dir=self.log_dir, suspend_after=self.suspend_after)
            self.running[ident] = self.launcher.start(spec)
            self.started += 1
            count += 1
            self.log("run_started", run_id=spec.run_id, claim=f"{ident[0]}:{ident[1]}", notebook=spec.notebook,
                     priority=int(claim.get("priority") or 0), flow_key=claim.get("flow_key"),
                     recovered=state == "orphaned" and bool(claim.get("claimed_at", now) < now - 5))
        return count

    def _own_slots_full(self, claim: dict[str, Any]) -> bool:
        key, limit = claim.get("flow_key"), claim.get("flow_limit")
        if not isinstance(key, str) or not isinstance(limit, int):
            return False
        mine = sum(1 for launched in self.running.values() if launched.spec.slot and launched.spec.slot[0] == key)
        return mine >= limit

    def reap(self) -> list[Launched]:
        """Forget the processes that ended (logging how); returns them."""
        ended = [(ident, launched) for ident, launched in self.running.items() if not launched.alive]
        for ident, launched in ended:
            del self.running[ident]
            code = launched.exitcode
            if code in (EXIT_CLAIM_HELD, EXIT_NO_SLOT):
                self.log("run_deferred", run_id=launched.spec.run_id, claim=f"{ident[0]}:{ident[1]}",
                         why="another process is starting it" if code == EXIT_CLAIM_HELD
                         else f"all {launched.spec.slot[1] if launched.spec.slot else 0} slots of its key are busy")
                continue
            if self.store.journal_exists(str(launched.spec.run_id)):
                self.store.mark_started(*ident)
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
