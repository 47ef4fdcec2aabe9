"""Recovery: claimed runs whose process died mid-run are resumed from their last committed cell.

A run the engine starts from a claim (a queued run, a schedule's slot, a trigger's event, a child run)
executes in a process of its own, which holds the run's lease (heartbeat) while it runs. When the machine
under it dies (its worker, the run's process and its kernel killed together) nothing writes the run's end:
its journal stops mid-run and its lease expires (at once when the holder's pid is known dead on this
host, else ``NBDURABLE_LEASE_TIMEOUT`` seconds after its last heartbeat, 30 by default). The claim is
still *unfinished* (``Store.unfinished_claims``: started, never seen to end), so every worker's recovery
pass finds it, follows the run's resume chain to its newest run and, if that run has no end record and no
live holder, resumes it (``Worker.resume``: the run's lease first, then a ``nbdurable resume`` process that
restores every committed cell and executes the rest). Of several workers recovering one run, one does:
the resume process holds the resumed run's lease and stands down if a run resuming it exists.

A chain that ended (completed, failed, cancelled, suspended: ``resume_due`` takes a suspended run on) is
marked finished and never looked at again. A run recorded as crashed by its own runner (its kernel died
under a live runner: the notebook's doing) has an end record and is not resumed here. A chain resumed
``MAX_RECOVERIES`` times is given up (logged once) rather than resumed forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nbdurable.store import Store

Log = Callable[..., None]
MAX_RECOVERIES = 20


class Recovery:
    """The worker's recovery pass over one store (``tick``)."""

    def __init__(self, store: Store, log: Log, resume: Callable[[str, str], bool]) -> None:
        self.store, self.log, self.resume = store, log, resume
        self._resumed_from: dict[str, str] = {}  # run -> the run it resumes (journal heads never change)
        self._successor: dict[str, str] = {}
        self._given_up: set[str] = set()
        self._mine: dict[str, tuple[str, str]] = {}  # run this worker is resuming -> its claim

    def tick(self, capacity: Callable[[], int], *, busy: set[str]) -> int:
        """Resume each unfinished claim's crashed run (none of ``busy``: runs this worker drives or is
        resuming), within ``capacity()``; returns how many it started."""
        started = 0
        claims = self.store.unfinished_claims()
        if claims:
            self._learn_heads()
        for claim in claims:
            ident = (str(claim["kind"]), str(claim["key"]))
            run_id = claim.get("run_id")
            if not isinstance(run_id, str) or not self.store.journal_exists(run_id):
                continue
            chain = self._chain(run_id)
            tail = chain[-1]
            if tail in busy or run_id in busy or self.store.is_live(tail):
                continue
            if _ended(self.store, tail):
                self.store.mark_finished(*ident)
                continue
            if len(chain) > MAX_RECOVERIES:
                if tail not in self._given_up:
                    self._given_up.add(tail)
                    self.log("recovery_given_up", run_id=tail, claim=f"{ident[0]}:{ident[1]}",
                             why=f"its process died {len(chain)} times: resume it by hand (nbdurable resume)")
                continue
            if capacity() <= 0:
                break
            self.log("run_recovering", run_id=tail, claim=f"{ident[0]}:{ident[1]}", chain=len(chain),
                     why="its process died mid-run (no end record, its lease expired)")
            if self.resume(tail, "its process died mid-run"):
                self._mine[tail] = ident
                started += 1
        return started

    def resume_ended(self, run_id: str, exit_code: int | None) -> None:
        """The resume of ``run_id`` this worker started ended: with an exit code (not killed), its claim is
        finished whatever the status (a kernel that died under a live runner is the notebook's doing, not
        a lost machine: not resumed again and again)."""
        ident = self._mine.pop(run_id, None)
        if ident is not None and exit_code is not None and exit_code >= 0:
            self.store.mark_finished(*ident)

    def _learn_heads(self) -> None:
        """Read the heads of the runs not seen yet (each once): which run resumes which."""
        for run_id in self.store.run_ids():
            if run_id in self._resumed_from:
                continue
            head: dict[str, Any] = self.store.journal_head(run_id) or {}
            previous = head.get("resumed_from")
            self._resumed_from[run_id] = previous if isinstance(previous, str) else ""
            if isinstance(previous, str):
                self._successor.setdefault(previous, run_id)

    def _chain(self, run_id: str) -> list[str]:
        """``run_id`` and the runs resuming it, in order."""
        chain = [run_id]
        while (following := self._successor.get(chain[-1])) is not None and following not in chain:
            chain.append(following)
        return chain


def _ended(store: Store, run_id: str) -> bool:
    """True if the run's journal has its end record (whatever the status)."""
    return any(r.get("t") == "run_end" for r in store.read_journal(run_id))


__all__ = ["MAX_RECOVERIES", "Recovery"]
