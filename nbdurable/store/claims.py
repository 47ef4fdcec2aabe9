"""Claims: "this key starts exactly one run", recorded durably before the run starts.

A schedule's slot, a trigger's event, an idempotency key, a parent's child-run call: each names at most one
run, and the name must hold across crashes and several workers on one store. A claim is one authenticated
line (``encode_line``) in ``claims/<kind>/<digest>.claim``, written to a temporary file, fsync'ed and
*linked* into place (never replaced: of two workers claiming the same key, exactly one wins and both see
the winner's claim). It holds the key, the id of the run it starts (chosen before the run exists:
``NBDURABLE_RUN_ID``) and whatever its kind needs to start that run again.

Between the claim and the run's first journal record lies a kernel start. The process starting the run
holds the claim's *lease* (``claims/<kind>/<digest>.lease``, the same flock + heartbeat as a run's) until
the run's journal exists, so a claim is in one of three states (``claim_state``): ``started`` (the run's
journal exists: from then on it is an ordinary run, resumed like any other), ``starting`` (its lease is
held by a live process), ``orphaned`` (neither: the starter died before the run began; whoever takes the
lease next starts the same run id again — still exactly one run for the key).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import LeaseHeldError, OptionsError
from .journal import encode_line, fsync_dir, io_error, read_signed_file
from .lease import Lease, acquire_lease_file

CLAIMS_DIR = "claims"
CLAIM_SUFFIX = ".claim"
STARTED_SUFFIX = ".started"
FINISHED_SUFFIX = ".finished"
DEFAULT_QUEUE = "default"  # the queue of a claim that names none (schedules, triggers, child runs)
SLOTS_DIR = "_slots"  # concurrency slots of flow-control keys (``hold_slot``), not a kind of claim
ClaimState = Literal["started", "starting", "orphaned"]


def check_kind(kind: str) -> str:
    """``kind`` if it can name a kind of claim, else OptionsError."""
    if not kind or kind.startswith("_") or not kind.replace("-", "").replace("_", "").isalnum():
        raise OptionsError(f"claim kind {kind!r} must be letters, digits, '-' or '_'",
                           hint="use a short word such as 'slot', 'event' or 'child'")
    return kind


def claim_digest(key: str) -> str:
    """A claim key's file name (and row digest on a shared store)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]



def queue_of(claim: dict[str, Any]) -> str:
    """The queue a claim waits in (``nbdurable submit --queue``; others are in ``default``)."""
    queue = claim.get("queue")
    return queue if isinstance(queue, str) and queue else DEFAULT_QUEUE


@dataclass(frozen=True)
class TakenClaim:
    """An open claim ``take_claim`` chose to start now. ``token`` names the claim's lease the take holds
    (a shared store's), to hand to the process that starts the run (``hold_claim(..., token=)``); None on
    a directory store, where that process takes the lease itself (of two, one stands down)."""

    claim: dict[str, Any]
    token: str | None


def claim_order(claim: dict[str, Any]) -> tuple[int, float, str]:
    """The queue's order: higher priority first, then older first."""
    return -int(claim.get("priority") or 0), float(claim.get("claimed_at", 0)), str(claim["key"])


class ClaimsMixin:
    """The claims half of ``Store``."""

    path: pathlib.Path
    _claims_read: dict[str, dict[pathlib.Path, dict[str, Any]]]  # set by Store.__init__

    if TYPE_CHECKING:
        def journal_exists(self, run_id: str) -> bool: ...  # JournalsMixin

    def _claim_path(self, kind: str, key: str, suffix: str = CLAIM_SUFFIX) -> pathlib.Path:
        return self.path / CLAIMS_DIR / check_kind(kind) / (claim_digest(key) + suffix)

    def claim(self, kind: str, key: str, record: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Record durably that ``key`` (of ``kind``) starts the run ``record["run_id"]``. Returns ``(won,
        claim)``: ``won`` is True for the one caller whose claim stands; everyone gets the standing claim."""
        existing = self.read_claim(kind, key)
        if existing is not None:
            return False, existing
        claim = {**record, "kind": kind, "key": key, "claimed_at": record.get("claimed_at", time.time())}
        final = self._claim_path(kind, key)
        tmp = self.path / "tmp" / f"claim-{final.stem}-{os.getpid()}-{time.monotonic_ns()}"
        won = False
        try:
            final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(encode_line(claim))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)  # never replaces: the first claim stands
                won = True
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
            fsync_dir(final.parent)
        except OSError as exc:
            raise io_error(exc, f"recording the {kind} claim {key!r}", final) from exc
        standing = self.read_claim(kind, key)
        return won, standing if standing is not None else claim

    def read_claim(self, kind: str, key: str) -> dict[str, Any] | None:
        """The claim of ``key``, or None (none, or one that fails its tag: never used)."""
        return _read(self._claim_path(kind, key), key)

    def claims(self, kind: str) -> list[dict[str, Any]]:
        """Every valid claim of ``kind``, oldest first."""
        directory = self.path / CLAIMS_DIR / check_kind(kind)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        found = [c for name in names if name.endswith(CLAIM_SUFFIX) and (c := _read(directory / name, None))]
        return sorted(found, key=lambda c: (c.get("claimed_at", 0), c["key"]))

    def open_claims(self) -> list[dict[str, Any]]:
        """Every claim of every kind not yet marked started (``mark_started``): the engine's queue, oldest
        first."""
        return self._claims_marked(CLAIM_SUFFIX, without=STARTED_SUFFIX)

    def mark_started(self, kind: str, key: str) -> None:
        """Note that the claim's run exists (an empty marker): ``open_claims`` skips it from now on."""
        self._claim_path(kind, key, STARTED_SUFFIX).touch(mode=0o600)

    def mark_finished(self, kind: str, key: str) -> None:
        """Note that the claim's run (or the last run of its resume chain) ended or suspended (an empty
        marker): ``unfinished_claims`` skips it from now on."""
        self.mark_started(kind, key)
        self._claim_path(kind, key, FINISHED_SUFFIX).touch(mode=0o600)

    def unfinished_claims(self) -> list[dict[str, Any]]:
        """Claims whose run started and was not seen to end (``mark_finished``), oldest first: the runs a
        worker checks for a process that died mid-run."""
        return self._claims_marked(STARTED_SUFFIX, without=FINISHED_SUFFIX)

    def _claims_marked(self, marker: str, *, without: str) -> list[dict[str, Any]]:
        """The claims (of every kind) that have the file ``marker`` (``CLAIM_SUFFIX``: each claim has it) and
        not ``without``, oldest first."""
        root = self.path / CLAIMS_DIR
        # A claim file never changes once linked into place: the claims read by the last call with the same
        # markers are kept (only those, so the cache stays the size of the queue), and only new ones are read.
        before = self._claims_read.get(marker, {})
        now: dict[pathlib.Path, dict[str, Any]] = {}
        for kind in sorted(os.listdir(root)) if root.is_dir() else []:
            directory = root / kind
            if kind.startswith("_") or not directory.is_dir():
                continue
            names = set(os.listdir(directory))
            for stem in (name[: -len(marker)] for name in names if name.endswith(marker)):
                path = directory / (stem + CLAIM_SUFFIX)
                if stem + without not in names and (c := before.get(path) or _read(path, None)):
                    now[path] = c
        self._claims_read[marker] = now
        return [dict(c) for c in sorted(now.values(), key=lambda c: (c.get("claimed_at", 0), c["key"]))]

    def take_claim(self, *, now: float, queues: list[str] | None = None, exclude: set[tuple[str, str]] | None = None,
                   full_flows: set[str] | None = None, full_queues: set[str] | None = None) -> TakenClaim | None:
        """The next open claim to start now: by ``claim_order``, none before its ``not_before``, only of
        ``queues`` (None: every queue), none of ``exclude`` (kind, key), of a flow key in ``full_flows`` or of
        a queue in ``full_queues``, none another live process is starting; a claim whose run exists is
        marked started on the way. None when there is none."""
        for claim in sorted(self.open_claims(), key=claim_order):
            ident = (str(claim["kind"]), str(claim["key"]))
            queue = queue_of(claim)
            if (ident in (exclude or ()) or float(claim.get("not_before") or 0) > now
                    or (queues is not None and queue not in queues) or queue in (full_queues or ())
                    or claim.get("flow_key") in (full_flows or ())):
                continue
            state = self.claim_state(claim)
            if state == "started":
                self.mark_started(*ident)
            elif state == "orphaned":
                return TakenClaim(claim, None)
        return None

    def hold_slot(self, key: str, limit: int) -> Lease | None:
        """One of the ``limit`` concurrency slots of ``key`` (a flow-control key), held until released or
        this process ends; None when all are held by live processes. A run's process holds its slot, so at
        most ``limit`` runs of a key execute at once across every process sharing the store."""
        directory = self.path / CLAIMS_DIR / SLOTS_DIR
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for i in range(max(1, limit)):
            try:
                return acquire_lease_file(directory / f"{claim_digest(key)}.{i}.lease", f"slot {i} of {key}")
            except LeaseHeldError:
                continue
        return None

    def slots_busy(self, key: str, limit: int) -> int:
        """How many of the ``limit`` slots of ``key`` live processes hold now."""
        directory = self.path / CLAIMS_DIR / SLOTS_DIR
        busy = 0
        for i in range(max(1, limit)):
            path = directory / f"{claim_digest(key)}.{i}.lease"
            if not path.exists():
                continue
            try:
                acquire_lease_file(path, f"slot {i} of {key}").release()
            except LeaseHeldError:
                busy += 1
        return busy

    def hold_claim(self, kind: str, key: str, token: str | None = None) -> Lease | None:
        """Take the claim's lease (held until released or this process ends), or None if a live process
        holds it. The starter of the claim's run holds it until the run's journal exists. (``token``: a
        shared store's lease handed on by ``take_claim``; a directory store's take holds none.)"""
        path = self._claim_path(kind, key, ".lease")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        claim = self.read_claim(kind, key) or {}
        try:
            return acquire_lease_file(path, str(claim.get("run_id") or key))
        except LeaseHeldError:
            return None

    def claim_state(self, claim: dict[str, Any]) -> ClaimState:
        """``started`` (its run's journal exists), ``starting`` (a live process holds its lease) or
        ``orphaned`` (its starter died before the run began: start it again under the same run id)."""
        run_id = claim.get("run_id")
        if isinstance(run_id, str) and self.journal_exists(run_id):
            return "started"
        lease = self.hold_claim(str(claim["kind"]), str(claim["key"]))
        if lease is None:
            return "started" if isinstance(run_id, str) and self.journal_exists(run_id) else "starting"
        lease.release()
        return "started" if isinstance(run_id, str) and self.journal_exists(run_id) else "orphaned"


def _read(path: pathlib.Path, key: str | None) -> dict[str, Any] | None:
    claim = read_signed_file(path)
    if claim is None or not isinstance(claim.get("key"), str):
        return None
    return claim if key is None or claim["key"] == key else None


__all__ = ["CLAIMS_DIR", "DEFAULT_QUEUE", "ClaimState", "ClaimsMixin", "TakenClaim", "check_kind", "claim_digest",
           "claim_order", "queue_of"]
