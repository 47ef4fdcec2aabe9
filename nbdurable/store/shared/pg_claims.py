"""Claims, the run queue and concurrency slots in PostgreSQL: ``store/claims.py``'s interface and rules on rows.

A claim is one row of ``nbd_claims``: the authenticated line a claim file holds (body and HMAC-SHA256 tag)
under the primary key ``(kind, key)``, inserted with ``ON CONFLICT DO NOTHING``, so of two workers
claiming one key exactly one wins and both read the winner's claim. A row failing its tag is never used.
Beside the line, plain columns copied from it serve the queue's ordering and filters (``priority``,
``claimed_at``, ``not_before``, ``queue``, a digest of the flow key) and its state (``started``,
``finished``: the marker files of a directory store); an edited column can reorder the queue, never change
what a claim starts (only the authenticated body is launched).

A claim's lease and a flow key's slots are rows of ``nbd_leases`` (``pg_leases.py``: heartbeat, expiry by
the server's clock, a dead pid on this host taken over at once), named ``claim:<kind>:<digest>`` and
``slot:<digest>.<i>``.

``take_claim`` is the queue's one atomic statement: the next open claim (priority, then age) that no live
process is starting, selected ``FOR UPDATE SKIP LOCKED`` and its lease taken in the same statement, so any
number of workers on any machines take distinct claims without waiting on each other. It and the queue's
markers commit without waiting for the WAL flush (``_query_lazy``): lost in a server crash they cost a
take again, never a second run (the claim and the run's journal decide that, and they are durable). The worker hands
the lease to the process that starts the run (``hold_claim(..., token=)``), which heartbeats it until the
run ends; a worker killed in between leaves a lease that expires, and the claim is taken again.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import warnings
from typing import TYPE_CHECKING, Any

from ...errors import StoreError
from ..claims import ClaimState, TakenClaim, check_kind, claim_digest, queue_of
from ..journal import encode_line
from .pg_events import open_line_row
from .pg_journal import split_line
from .pg_leases import _BOOT, PgLease, lease_timeout

_TAKE_ATTEMPTS = 20  # a take that lost a race for its claim's lease tries the next claim, this many times


def _flow_digest(key: Any) -> str | None:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:40] if isinstance(key, str) else None


def _claim_ident(kind: str, key: str) -> str:
    return f"claim:{kind}:{claim_digest(key)}"


class PgClaimsMixin:
    """Claims, the queue and slots of ``SharedStore``."""

    url: str

    if TYPE_CHECKING:
        def _query(self, sql: str, params: Any = None, doing: str = "") -> list[tuple[Any, ...]]: ...
        def _query_lazy(self, sql: str, params: Any = None, doing: str = "") -> list[tuple[Any, ...]]: ...
        def journal_exists(self, run_id: str) -> bool: ...
        def acquire_row_lease(self, ident: str) -> PgLease | None: ...
        def adopt_row_lease(self, ident: str, token: str) -> PgLease | None: ...

    def claim(self, kind: str, key: str, record: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Record durably that ``key`` (of ``kind``) starts the run ``record["run_id"]``. Returns ``(won,
        claim)``: ``won`` is True for the one caller whose claim stands; everyone gets the standing claim."""
        return self._insert_claim(kind, key, record, decided=False)

    def record_decision(self, kind: str, key: str, record: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """A claim that starts no run (``kind`` e.g. ``dropped``, ``rate``): first stands, as ``claim``; stored
        started and finished, so the engine never queues it."""
        return self._insert_claim(kind, key, record, decided=True)

    def _insert_claim(self, kind: str, key: str, record: dict[str, Any], *,
                      decided: bool) -> tuple[bool, dict[str, Any]]:
        check_kind(kind)
        existing = self.read_claim(kind, key)
        if existing is not None:
            return False, existing
        claim = {**record, "kind": kind, "key": key, "claimed_at": record.get("claimed_at", time.time())}
        won = self._insert_claim_row(claim, encode_line(claim), started=decided, finished=decided)
        standing = self.read_claim(kind, key)
        return won, standing if standing is not None else claim

    def _insert_claim_row(self, claim: dict[str, Any], line: bytes, *, started: bool, finished: bool) -> bool:
        """Insert the claim's row unless its key has one (``line``: its authenticated line); True if inserted."""
        kind, key = str(claim["kind"]), str(claim["key"])
        body, tag = split_line(line)
        return bool(self._query(
            "INSERT INTO nbd_claims (kind, key, digest, run_id, body, tag, claimed_at, priority, not_before, queue, "
            "flow_digest, started, finished) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            [kind, key, claim_digest(key), claim.get("run_id"), body, tag, float(claim["claimed_at"]),
             int(claim.get("priority") or 0), float(claim.get("not_before") or 0), queue_of(claim),
             _flow_digest(claim.get("flow_key")), started, finished],
            f"recording the {kind} claim {key!r}"))

    def put_claim_line(self, line: bytes, *, started: bool, finished: bool) -> bool:
        """Copy a claim's verified authenticated line (``nbdurable migrate``) with its state; True if it was
        not here. A claim already here is kept: its state only moves on (started, finished), and a different
        claim of the same key is an error (the first claim stands; two stores were mixed up)."""
        claim = open_line_row(*split_line(line))
        if claim is None or not isinstance(claim.get("kind"), str) or not isinstance(claim.get("key"), str):
            raise StoreError("a claim to copy fails its authentication tag or names no kind and key",
                             hint="run `nbdurable check` on the source store")
        kind, key = check_kind(claim["kind"]), claim["key"]
        if self._insert_claim_row(claim, line, started=started, finished=finished):
            return True
        rows = self._query("SELECT body, tag FROM nbd_claims WHERE kind = %s AND key = %s", [kind, key],
                           f"reading the {kind} claim {key!r}")
        if rows and (bytes(rows[0][0]), str(rows[0][1])) != split_line(line):
            raise StoreError(f"the target already has a different {kind} claim {key!r}",
                             hint="the target holds another store's decisions: migrate into an empty database")
        if started or finished:
            self._query("UPDATE nbd_claims SET started = started OR %s, finished = finished OR %s "
                        "WHERE kind = %s AND key = %s", [started or finished, finished, kind, key],
                        f"marking the {kind} claim {key!r}")
        return False

    def read_claim(self, kind: str, key: str) -> dict[str, Any] | None:
        """The claim of ``key``, or None (none, or one that fails its tag: never used)."""
        rows = self._query("SELECT body, tag FROM nbd_claims WHERE kind = %s AND key = %s", [check_kind(kind), key],
                           f"reading the {kind} claim {key!r}")
        return _opened(rows[0][0], rows[0][1], kind, key) if rows else None

    def claims(self, kind: str) -> list[dict[str, Any]]:
        """Every valid claim of ``kind``, oldest first."""
        rows = self._query("SELECT body, tag, kind, key FROM nbd_claims WHERE kind = %s ORDER BY claimed_at, key",
                           [check_kind(kind)], f"listing the {kind} claims")
        return [c for body, tag, k, key in rows if (c := _opened(body, tag, k, key)) is not None]

    def open_claims(self) -> list[dict[str, Any]]:
        """Every claim of every kind not yet marked started (``mark_started``): the engine's queue, oldest
        first."""
        rows = self._query("SELECT body, tag, kind, key FROM nbd_claims WHERE NOT started ORDER BY claimed_at, key",
                           None, "listing the open claims")
        return [c for body, tag, k, key in rows if (c := _opened(body, tag, k, key)) is not None]

    def unfinished_claims(self) -> list[dict[str, Any]]:
        """Claims whose run started and was not seen to end (``mark_finished``), oldest first: the runs a
        worker checks for a process that died mid-run."""
        rows = self._query("SELECT body, tag, kind, key FROM nbd_claims WHERE started AND NOT finished "
                           "ORDER BY claimed_at, key", None, "listing the unfinished claims")
        return [c for body, tag, k, key in rows if (c := _opened(body, tag, k, key)) is not None]

    def mark_started(self, kind: str, key: str) -> None:
        """Note that the claim's run exists: ``open_claims`` and ``take_claim`` skip it from now on."""
        self._query_lazy("UPDATE nbd_claims SET started = true WHERE kind = %s AND key = %s AND NOT started",
                         [kind, key], f"marking the {kind} claim {key!r} started")

    def mark_finished(self, kind: str, key: str) -> None:
        """Note that the claim's run (or the last run of its resume chain) ended or suspended."""
        self._query_lazy("UPDATE nbd_claims SET started = true, finished = true WHERE kind = %s AND key = %s",
                         [kind, key], f"marking the {kind} claim {key!r} finished")

    def hold_claim(self, kind: str, key: str, token: str | None = None) -> PgLease | None:
        """Take the claim's lease (held until released or this process ends: then it expires), or None if a
        live process holds it. With ``token``: take over the lease a worker's ``take_claim`` took."""
        ident = _claim_ident(check_kind(kind), key)
        return self.adopt_row_lease(ident, token) if token else self.acquire_row_lease(ident)

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

    def take_claim(self, *, now: float, queues: list[str] | None = None, exclude: set[tuple[str, str]] | None = None,
                   full_flows: set[str] | None = None, full_queues: set[str] | None = None) -> TakenClaim | None:
        """The next open claim to start (``store/claims.py``: same rules), its lease taken for the caller to
        hand on: one ``SELECT ... FOR UPDATE SKIP LOCKED`` and the lease's insert in one statement."""
        skip = {f"{kind}:{claim_digest(key)}" for kind, key in exclude or ()}
        flows = sorted(d for k in full_flows or () if (d := _flow_digest(k)))
        for _ in range(_TAKE_ATTEMPTS):
            row = self._take(now, queues, sorted(skip), flows, sorted(full_queues or ()))
            if row is None:
                return None
            kind, key, body, tag, token = row
            if token is None:  # another worker took this claim's lease a moment ago: the next one
                skip.add(f"{kind}:{claim_digest(key)}")
                continue
            claim = _opened(body, tag, kind, key)
            run_id = claim.get("run_id") if claim else None
            if claim is None or (isinstance(run_id, str) and self.journal_exists(run_id)):
                self._release_token(_claim_ident(kind, key), token)
                skip.add(f"{kind}:{claim_digest(key)}")
                if claim is not None:
                    self.mark_started(kind, key)
                else:
                    warnings.warn(f"nbdurable: skipping the {kind} claim {key!r}: it fails its authentication tag",
                                  stacklevel=2)
                continue
            return TakenClaim(claim, token)
        return None

    def _take(self, now: float, queues: list[str] | None, skip: list[str], flows: list[str],
              full_queues: list[str]) -> tuple[str, str, bytes, str, str | None] | None:
        token = os.urandom(16).hex()
        wall = time.time()
        rows = self._query_lazy(
            """WITH next AS (
                   SELECT c.kind, c.key, c.body, c.tag, 'claim:' || c.kind || ':' || c.digest AS ident
                   FROM nbd_claims c
                   WHERE NOT c.started AND c.not_before <= %(now)s
                     AND (%(queues)s::text[] IS NULL OR c.queue = ANY(%(queues)s::text[]))
                     AND NOT (c.queue = ANY(%(full_queues)s::text[]))
                     AND (c.flow_digest IS NULL OR NOT (c.flow_digest = ANY(%(flows)s::text[])))
                     AND NOT (c.kind || ':' || c.digest = ANY(%(skip)s::text[]))
                     AND NOT EXISTS (SELECT 1 FROM nbd_leases l
                                     WHERE l.run_id = 'claim:' || c.kind || ':' || c.digest AND l.expires_at > now())
                   ORDER BY c.priority DESC, c.claimed_at, c.key
                   LIMIT 1
                   FOR UPDATE OF c SKIP LOCKED),
               taken AS (
                   INSERT INTO nbd_leases AS l (run_id, token, pid, host, boot_id, acquired, heartbeat, expires_at)
                   SELECT ident, %(token)s, %(pid)s, %(host)s, %(boot)s, %(wall)s, %(wall)s,
                          now() + make_interval(secs => %(timeout)s) FROM next
                   ON CONFLICT (run_id) DO UPDATE SET token = excluded.token, pid = excluded.pid,
                       host = excluded.host, boot_id = excluded.boot_id, acquired = excluded.acquired,
                       heartbeat = excluded.heartbeat, expires_at = excluded.expires_at
                   WHERE l.expires_at < now()
                   RETURNING run_id, token)
               SELECT next.kind, next.key, next.body, next.tag, taken.token
               FROM next LEFT JOIN taken ON taken.run_id = next.ident""",
            {"now": now, "queues": queues, "full_queues": full_queues, "flows": flows, "skip": skip, "token": token,
             "pid": os.getpid(), "host": socket.gethostname(), "boot": _BOOT, "wall": wall,
             "timeout": lease_timeout()},
            "taking the next queued run")
        if not rows:
            return None
        kind, key, body, tag, won = rows[0]
        return str(kind), str(key), bytes(body), str(tag), won

    def _release_token(self, ident: str, token: str) -> None:
        self._query_lazy("DELETE FROM nbd_leases WHERE run_id = %s AND token = %s", [ident, token],
                         f"releasing {ident}")

    def hold_slot(self, key: str, limit: int) -> PgLease | None:
        """One of the ``limit`` concurrency slots of ``key`` (a flow-control key or a queue), held until
        released or this process ends; None when all are held by live processes."""
        digest = _flow_digest(key)
        for i in range(max(1, limit)):
            lease = self.acquire_row_lease(f"slot:{digest}.{i}")
            if lease is not None:
                return lease
        return None

    def slots_busy(self, key: str, limit: int) -> int:
        """How many of the ``limit`` slots of ``key`` live processes hold now."""
        idents = [f"slot:{_flow_digest(key)}.{i}" for i in range(max(1, limit))]
        rows = self._query("SELECT count(*) FROM nbd_leases WHERE run_id = ANY(%s) AND expires_at > now()", [idents],
                           f"counting the busy slots of {key!r}")
        return int(rows[0][0])


def _opened(body: bytes, tag: str, kind: str, key: str) -> dict[str, Any] | None:
    claim = open_line_row(bytes(body), str(tag))
    if claim is None or claim.get("key") != key or claim.get("kind") != kind:
        return None
    return claim


__all__ = ["PgClaimsMixin"]
