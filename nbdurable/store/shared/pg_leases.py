"""Leases in PostgreSQL: one row per driven run in ``nbd_leases`` (holder token, pid, host, heartbeat,
expiry by the server's clock).

A holder's heartbeat thread pushes ``expires_at`` forward every ``timeout / 3`` seconds; a lease whose
expiry has passed belongs to a dead holder and is taken over by the next ``acquire_lease`` (one
``INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at < now()``: of two takers, one wins). On the
holder's own host a dead pid is known at once, as flock knows it for a local store: its lease is taken
over without waiting for the expiry ("this host": the same kernel boot and pid namespace, since host names
repeat across machines and containers share a kernel). The timeout is ``NBDURABLE_LEASE_TIMEOUT`` seconds (default 30).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ...errors import LeaseHeldError, StoreError
from ..journal import check_run_id, is_run_id

DEFAULT_TIMEOUT_S = 30.0
HOLDER_KEYS = ("pid", "host", "acquired", "heartbeat")
_held: dict[tuple[str, str], str] = {}  # (url, run_id) -> token of a lease held by this process
_held_lock = threading.Lock()


def lease_timeout() -> float:
    """Seconds after the last heartbeat when a lease counts as dead (``NBDURABLE_LEASE_TIMEOUT``)."""
    try:
        return max(float(os.environ.get("NBDURABLE_LEASE_TIMEOUT", DEFAULT_TIMEOUT_S)), 1.0)
    except ValueError:
        return DEFAULT_TIMEOUT_S


def boot_id() -> str:
    """Where a pid means this process table: the kernel's boot id and this pid namespace (Linux), so that
    containers of one machine, or machines of one host name, never judge each other's pids; elsewhere the
    host name."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{f.read().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return socket.gethostname()


_BOOT = boot_id()


def _pid_dead_here(pid: int, boot: str) -> bool:
    """True if ``pid`` is of this process table (``boot_id``) and no longer exists (a zombie counts as dead)."""
    if boot != _BOOT or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _held_error(run_id: str, row: tuple[Any, ...] | None) -> LeaseHeldError:
    pid, host, acquired = (row[1], row[2], row[3]) if row else ("?", "?", None)
    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(acquired)) if isinstance(acquired, float)
            else "an unknown time")
    return LeaseHeldError(
        f"run {run_id} is being driven by another live process (pid {pid} on {host}, since {when})",
        hint=f"wait for that process to finish, or stop it (pid {pid} on {host}); a run whose process has died "
        f"is taken over automatically (at once on its host, after {lease_timeout():g} s elsewhere)")


class PgLease:
    """The right to drive one run, as a row; released by ``release()``, leaving a ``with`` block, or
    expiry after its holder dies."""

    def __init__(self, store: Any, run_id: str, token: str, info: dict[str, Any]) -> None:
        self.run_id = run_id
        self.path = run_id
        self.info = info
        self._store = store
        self._token = token
        self._stop = threading.Event()
        interval = lease_timeout() / 3
        self._thread = threading.Thread(target=_heartbeat, args=(store, run_id, token, self._stop, interval, info),
                                        name=f"nbdurable-lease-{run_id}", daemon=True)
        self._thread.start()
        with _held_lock:
            _held[(store.url, run_id)] = token

    @property
    def held(self) -> bool:
        return not self._stop.is_set()

    def release(self) -> None:
        """Give the lease up (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        with _held_lock:
            if _held.get((self._store.url, self.run_id)) == self._token:
                del _held[(self._store.url, self.run_id)]
        try:
            self._store._query("DELETE FROM nbd_leases WHERE run_id = %s AND token = %s", [self.run_id, self._token],
                               f"releasing the lease of run {self.run_id}")
        except StoreError:
            pass  # the server is gone: the lease expires by itself

    def __enter__(self) -> PgLease:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<PgLease run={self.run_id} pid={self.info.get('pid')} {'held' if self.held else 'released'}>"


def _heartbeat(store: Any, run_id: str, token: str, stop: threading.Event, interval: float,
               info: dict[str, Any]) -> None:
    while not stop.wait(interval):
        now = time.time()
        try:
            store._query("UPDATE nbd_leases SET heartbeat = %s, expires_at = now() + make_interval(secs => %s) "
                         "WHERE run_id = %s AND token = %s", [now, lease_timeout(), run_id, token], "heartbeat")
            info["heartbeat"] = now
        except StoreError:
            pass  # a missed heartbeat: the next one may succeed before the expiry


os.register_at_fork(after_in_child=_held.clear)


class PgLeasesMixin:
    """The lease half of ``SharedStore``."""

    url: str

    if TYPE_CHECKING:
        def _query(self, sql: str, params: Any = None, doing: str = "") -> list[tuple[Any, ...]]: ...

    def _lease_row(self, run_id: str) -> tuple[Any, ...] | None:
        rows = self._query("SELECT token, pid, host, acquired, heartbeat, expires_at > now(), boot_id FROM nbd_leases "
                           "WHERE run_id = %s", [run_id], f"reading the lease of run {run_id}")
        return rows[0] if rows else None

    def acquire_lease(self, run_id: str) -> PgLease:
        """Take the run's lease; LeaseHeldError if a live process (this one included) holds it."""
        check_run_id(run_id)
        lease = self.acquire_row_lease(run_id)
        if lease is None:
            raise _held_error(run_id, self._lease_row(run_id))
        return lease

    def acquire_row_lease(self, ident: str) -> PgLease | None:
        """Take the lease named ``ident`` (a run id, or a claim's or a concurrency slot's name:
        ``pg_claims.py``); None if a live process holds it. The same row, expiry and heartbeat for all."""
        row = self._lease_row(ident)
        if row is not None and row[5] and _pid_dead_here(row[1], row[6]):
            # Its holder died on this host: expire it now (only if it is still that holder's).
            self._query("UPDATE nbd_leases SET expires_at = now() - interval '1 second' WHERE run_id = %s "
                        "AND token = %s", [ident, row[0]], f"taking over the lease {ident}")
        token = secrets.token_hex(16)
        now = time.time()
        info = {"pid": os.getpid(), "host": socket.gethostname(), "acquired": now, "heartbeat": now, "run_id": ident}
        won = self._query(
            "INSERT INTO nbd_leases AS l (run_id, token, pid, host, boot_id, acquired, heartbeat, expires_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s)) "
            "ON CONFLICT (run_id) DO UPDATE SET token = excluded.token, pid = excluded.pid, host = excluded.host, "
            "boot_id = excluded.boot_id, acquired = excluded.acquired, heartbeat = excluded.heartbeat, "
            "expires_at = excluded.expires_at WHERE l.expires_at < now() RETURNING token",
            [ident, token, info["pid"], info["host"], _BOOT, now, now, lease_timeout()],
            f"taking the lease {ident}")
        return PgLease(self, ident, token, info) if won else None

    def adopt_row_lease(self, ident: str, token: str) -> PgLease | None:
        """Take over the lease ``ident`` that another process took with ``token`` and handed to this one (a
        worker's take of a claim, handed to the process that starts its run): this process becomes its
        holder and heartbeats it. None if the lease expired or was taken by someone else meanwhile."""
        now = time.time()
        info = {"pid": os.getpid(), "host": socket.gethostname(), "acquired": now, "heartbeat": now, "run_id": ident}
        won = self._query(
            "UPDATE nbd_leases SET pid = %s, host = %s, boot_id = %s, heartbeat = %s, "
            "expires_at = now() + make_interval(secs => %s) WHERE run_id = %s AND token = %s AND expires_at > now() "
            "RETURNING token", [info["pid"], info["host"], _BOOT, now, lease_timeout(), ident, token],
            f"taking over the lease {ident}")
        return PgLease(self, ident, token, info) if won else None

    def is_live(self, run_id: str) -> bool:
        """True if a live process holds the run's lease (unexpired, and its pid alive if on this host)."""
        if not is_run_id(run_id):
            return False
        row = self._lease_row(run_id)
        return row is not None and bool(row[5]) and not _pid_dead_here(row[1], row[6])

    def lease_holder(self, run_id: str) -> dict[str, Any] | None:
        """``{"pid", "host", "acquired", "heartbeat"}`` of the live holder of the run's lease, else None."""
        row = self._lease_row(run_id) if is_run_id(run_id) else None
        if row is None or not row[5] or _pid_dead_here(row[1], row[6]):
            return None
        return dict(zip(HOLDER_KEYS, row[1:5], strict=True))

    def _check_not_driven_elsewhere(self, run_id: str) -> None:
        """LeaseHeldError if a live process other than this one holds the run's lease."""
        row = self._lease_row(run_id)
        if row is None or not row[5] or _pid_dead_here(row[1], row[6]):
            return
        with _held_lock:
            mine = _held.get((self.url, run_id)) == row[0]
        if not mine:
            raise _held_error(run_id, row)


__all__ = ["DEFAULT_TIMEOUT_S", "PgLease", "PgLeasesMixin", "lease_timeout"]
