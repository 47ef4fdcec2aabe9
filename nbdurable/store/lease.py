"""Leases: one writer per run (``leases/<run_id>.lease``).

A lease is an exclusive ``flock`` on the lease file, held for as long as the ``Lease`` object lives. When
the holder dies, the kernel drops the lock: that is how a dead holder is detected on this host, without
pid-reuse problems. The file also holds ``{pid, host, acquired, heartbeat}``; a daemon thread refreshes the
heartbeat so that other hosts sharing the store (where flock cannot be trusted) can judge liveness by age.

flock locks belong to an open file description, so a second acquire in the same process conflicts too.
A forked child shares the description: it closes its copy at fork (never unlocks, which would release
the parent's lock), so a long-lived child cannot keep a dead parent's run looking alive.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from ..errors import LeaseHeldError, StoreError
from .journal import check_run_id, io_error, is_run_id

HEARTBEAT_INTERVAL_S = 10.0
STALE_AFTER_S = 60.0  # a lease from another host whose heartbeat is older than this is dead
_RECORD_WIDTH = 512  # the file content is padded to a fixed width so a rewrite never leaves stale bytes
HOLDER_KEYS = ("pid", "host", "acquired", "heartbeat")

_held: dict[str, weakref.ref[Lease]] = {}  # lease file path -> live Lease of this process
_held_lock = threading.RLock()  # reentrant: a Lease.__del__ run by the GC inside a locked block releases
_process_locks: dict[str, threading.Lock] = {}


def _host() -> str:
    return socket.gethostname()


def _write_info(fd: int, info: dict[str, Any]) -> None:
    data = json.dumps(info, separators=(",", ":")).encode()
    # One pwrite of a fixed-width record: a reader sees the old or the new content, never a mix.
    os.pwrite(fd, data.ljust(_RECORD_WIDTH), 0)


def _read_info_fd(fd: int) -> dict[str, Any] | None:
    try:
        info = json.loads(os.pread(fd, 4096, 0).strip() or b"null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _read_info(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return _read_info_fd(fd)
    finally:
        os.close(fd)


def _fresh(info: dict[str, Any]) -> bool:
    heartbeat = info.get("heartbeat")
    return isinstance(heartbeat, (int, float)) and time.time() - heartbeat < STALE_AFTER_S


def _foreign(info: dict[str, Any] | None) -> bool:
    """True if the lease file was written on another host (flock tells nothing there)."""
    return info is not None and info.get("host") not in (None, _host())


def _heartbeat(fd: int, info: dict[str, Any], stop: threading.Event, interval: float) -> None:
    # A plain function, not a method: the thread must not keep the Lease alive (its __del__ releases it).
    while not stop.wait(interval):
        info["heartbeat"] = time.time()
        try:
            _write_info(fd, info)
        except OSError:
            pass  # a missed heartbeat only matters to other hosts, and the next one may succeed


class Lease:
    """The right to drive one run. Released by ``release()``, by leaving a ``with`` block, or by process death."""

    def __init__(self, run_id: str, path: pathlib.Path, fd: int, info: dict[str, Any]) -> None:
        self.run_id = run_id
        self.path = path
        self.info = info
        self._fd = fd
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_heartbeat, args=(fd, info, self._stop, HEARTBEAT_INTERVAL_S), name=f"nbdurable-lease-{run_id}",
            daemon=True
        )
        self._thread.start()
        with _held_lock:
            _held[str(path)] = weakref.ref(self)

    @property
    def held(self) -> bool:
        """True until released."""
        return self._fd >= 0

    def release(self) -> None:
        """Give the lease up (idempotent)."""
        if self._fd < 0:
            return
        self._stop.set()
        if self._thread is not threading.current_thread():
            # The heartbeat thread writes to the fd: it must be done before the fd number can be reused.
            self._thread.join(timeout=5.0)
        fd, self._fd = self._fd, -1
        with _held_lock:
            if (ref := _held.get(str(self.path))) is not None and ref() in (self, None):
                del _held[str(self.path)]
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _forget_in_child(self) -> None:
        """In a forked child: drop our copy of the descriptor without unlocking the parent's lock."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<Lease run={self.run_id} pid={self.info.get('pid')} {'held' if self.held else 'released'}>"


def _after_fork_in_child() -> None:
    # The child has only this thread: locks held by other threads of the parent would never be released.
    global _held_lock
    _held_lock = threading.RLock()
    _process_locks.clear()
    leases = [lease for ref in list(_held.values()) if (lease := ref()) is not None]
    _held.clear()
    for lease in leases:
        lease._forget_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def process_lock(name: str) -> threading.Lock:
    """One threading.Lock per ``name`` in this process (fresh in a forked child)."""
    with _held_lock:
        return _process_locks.setdefault(name, threading.Lock())


def held_in_this_process(path: pathlib.Path) -> bool:
    """True if this process holds the lease at ``path`` through a live Lease object."""
    with _held_lock:
        ref = _held.get(str(path))
    lease = ref() if ref is not None else None
    return lease is not None and lease.held


def _held_error(run_id: str, info: dict[str, Any] | None) -> LeaseHeldError:
    info = info or {}
    pid, host = info.get("pid", "?"), info.get("host", "?")
    since = info.get("acquired")
    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float))
            else "an unknown time")
    return LeaseHeldError(
        f"run {run_id} is being driven by another live process (pid {pid} on {host}, since {when})",
        hint=f"wait for that process to finish, or stop it (pid {pid} on {host}); "
        "a run whose process has died is taken over automatically",
    )


def acquire_lease_file(path: pathlib.Path, run_id: str) -> Lease:
    """Take the lease kept in ``path`` (a run's, or a claim's: ``store/claims.py``) for this process's life;
    LeaseHeldError if a live process (this one included) holds it. ``run_id`` names it in errors."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open the lease file {path}: {exc.strerror}",
                         hint="check the store directory's permissions") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = _read_info_fd(fd)
        os.close(fd)
        raise _held_error(run_id, info) from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(
            f"the file system of {path} does not support file locks ({exc.strerror})",
            hint="put the store on a local disk (NBDURABLE_STORE)",
        ) from exc
    previous = _read_info_fd(fd)
    if _foreign(previous) and _fresh(previous or {}):
        # flock does not reach across hosts: a fresh heartbeat from another host means it is alive.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise _held_error(run_id, previous)
    now = time.time()
    info = {"pid": os.getpid(), "host": _host(), "acquired": now, "heartbeat": now, "run_id": run_id}
    _write_info(fd, info)
    return Lease(run_id, path, fd, info)


class LeasesMixin:
    """The lease half of ``Store``."""

    path: pathlib.Path

    def _lease_path(self, run_id: str) -> pathlib.Path:
        return self.path / "leases" / (check_run_id(run_id) + ".lease")

    def acquire_lease(self, run_id: str) -> Lease:
        """Take the run's lease; LeaseHeldError if a live process (this one included) holds it."""
        return acquire_lease_file(self._lease_path(run_id), run_id)

    def is_live(self, run_id: str) -> bool:
        """True if a live process holds the run's lease (on another host: its heartbeat is fresh)."""
        if not is_run_id(run_id):
            return False
        path = self._lease_path(run_id)
        info = _read_info(path)
        if _foreign(info):
            return _fresh(info or {})
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing this description drops only its own shared lock, never the holder's
        return False

    def lease_holder(self, run_id: str) -> dict[str, Any] | None:
        """``{"pid", "host", "acquired", "heartbeat"}`` of the live holder of the run's lease, else None."""
        if not self.is_live(run_id):
            return None
        info = _read_info(self._lease_path(run_id)) or {}
        # Between the holder's flock and its first write the file may still hold older content.
        return {key: info.get(key) for key in HOLDER_KEYS}

    def _check_not_driven_elsewhere(self, run_id: str) -> None:
        """LeaseHeldError if a live process other than this one holds the run's lease."""
        if self.is_live(run_id) and not held_in_this_process(self._lease_path(run_id)):
            raise _held_error(run_id, _read_info(self._lease_path(run_id)))


@contextmanager
def waiting_file_lock(path: pathlib.Path, timeout: float) -> Iterator[bool]:
    """Hold an exclusive flock on ``path``, waiting up to ``timeout`` seconds; yields False on timeout.

    Used to queue the processes that want the DuckDB catalog: DuckDB's own lock fails at once, and
    processes polling it with backoff starve behind one that reopens it in a loop. A blocked flock is
    woken by the kernel as soon as the lock is free. flock cannot time out, so a contended wait runs in
    a helper thread; if we stop waiting, that thread drops the lock as soon as it gets it.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # a read-only store, a permission problem: say so, not a raw OSError
        raise io_error(exc, f"opening the lock file {path.name}", path) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not _wait_flock(fd, timeout):
            yield False
            return
    except BaseException:
        os.close(fd)
        raise
    try:
        os.pwrite(fd, str(os.getpid()).encode().ljust(16), 0)  # who holds it, for error messages
        yield True
    finally:
        os.close(fd)  # closing the only descriptor of this open file releases the lock


def _wait_flock(fd: int, timeout: float) -> bool:
    """Block on flock(fd) in a helper thread for up to ``timeout`` s. False: not acquired (fd then closed)."""
    done, guard = threading.Event(), threading.Lock()
    state = {"locked": False, "abandoned": False}

    def wait() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state["locked"] = True
        except OSError:
            pass
        with guard:
            if state["abandoned"]:
                os.close(fd)  # the caller gave up: let the next waiter have it
            done.set()

    threading.Thread(target=wait, name="nbdurable-catalog-lock", daemon=True).start()
    done.wait(timeout)
    with guard:
        if not done.is_set():
            state["abandoned"] = True  # the thread closes fd when flock returns
            return False
    if not state["locked"]:
        os.close(fd)
    return state["locked"]
