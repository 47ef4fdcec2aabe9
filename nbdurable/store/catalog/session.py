"""Attach/lock sessions: how an operation gets the catalog file, and gives it back.

No process keeps the database open: while one process has it open read-write no other process can open
it at all. Every operation attaches it, works and detaches it. Opening a DuckDB instance costs ~12 ms, so
each process keeps one in-memory instance and ATTACHes the file to it per operation (~1.5 ms); DETACH
closes the file (checkpointing it) and releases DuckDB's lock. nbdurable processes queue on a flock
(``catalog.lock``); DuckDB's own lock is retried with backoff and jitter (other programs).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import random
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import duckdb

from ...errors import CatalogLockedError, StoreError
from ..crypto import encryption_key
from ..lease import process_lock, waiting_file_lock
from .schema import ensure_schema, reset_schema

CATALOG_FILE = "catalog.duckdb"
LOCK_FILE = "catalog.lock"  # queue of the nbdurable processes that want the catalog
LOCK_TIMEOUT_S = 30.0
_LOCK_RE = re.compile(r"Could not set lock|Conflicting lock", re.IGNORECASE)

# One in-memory DuckDB instance per process (a new instance costs ~12 ms; attaching a file to it ~1.5 ms).
_instance: list[tuple[int, duckdb.DuckDBPyConnection]] = []
_instance_lock = threading.Lock()
_aliases = itertools.count(1)  # attached names are global to the instance: one per session


def _duckdb() -> duckdb.DuckDBPyConnection:
    with _instance_lock:
        if not _instance or _instance[0][0] != os.getpid():
            # A forked child cannot use its parent's instance (its threads did not survive the fork).
            _instance[:] = [(os.getpid(), duckdb.connect(":memory:"))]
        return _instance[0][1]


def _drop_duckdb(base: duckdb.DuckDBPyConnection) -> None:
    """Close the process's instance (and every file attached to it); the next session makes another.
    A last resort (see ``_detach``): a session of another catalog in another thread fails with it."""
    with _instance_lock:
        if _instance and _instance[0][1] is base:
            _instance.clear()
    with contextlib.suppress(duckdb.Error):
        base.close()


class SessionMixin:
    """The session half of ``Catalog``: attaching its file for one operation."""

    path: pathlib.Path
    lock_timeout: float

    @contextlib.contextmanager
    def _session(self, *, reset: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Attach, yield, detach. Our processes queue on a flock first; DuckDB's own lock is then retried
        only against other programs (a user's duckdb shell on catalog.duckdb)."""
        deadline = time.monotonic() + self.lock_timeout
        # Threads of one process share one DuckDB instance (two ingests would conflict): they queue here.
        thread_lock = process_lock(str(self.path))
        if not thread_lock.acquire(timeout=self.lock_timeout):
            raise _locked_error(self.path, "another thread of this process", self.lock_timeout)
        try:
            with waiting_file_lock(self.path.with_name(LOCK_FILE), self.lock_timeout) as queued:
                if not queued:
                    raise _locked_error(self.path, _lock_holder(self.path.with_name(LOCK_FILE)), self.lock_timeout)
                base, con, alias = self._connect(deadline, reset=reset)
                try:
                    if reset:
                        reset_schema(con)
                    else:
                        ensure_schema(con)
                    yield con
                finally:
                    _detach(base, con, alias)  # before the flock is released: the next process must find DuckDB free
        finally:
            thread_lock.release()

    def _connect(self, deadline: float, *,
                 reset: bool = False) -> tuple[duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection, str]:
        """Attach the database, retrying on its lock with exponential backoff (from 5 ms) and jitter."""
        delay = 0.005
        # An encrypted store keeps no plaintext on disk: its catalog lives in memory, per query.
        target = ":memory:" if encryption_key() is not None else str(self.path)
        while True:
            base = _duckdb()
            con = base.cursor()
            alias = f"nbd_catalog_{next(_aliases)}"
            try:
                con.execute(f"ATTACH {quote_literal(target)} AS {alias}")
            except duckdb.Error as exc:
                con.close()
                if not _LOCK_RE.search(str(exc)):
                    if reset:  # unreadable (damaged, or from an incompatible DuckDB): derived data, start over
                        self._delete_files()
                        reset = False
                        continue
                    raise StoreError(
                        f"the catalog {self.path} cannot be opened: {exc}",
                        hint=f"it is derived from the journals: delete {self.path} (or call Catalog.rebuild()) "
                        "and it is rebuilt",
                    ) from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pid = re.search(r"PID (\d+)", str(exc))
                    raise _locked_error(self.path, f"process {pid.group(1)}" if pid else "another program",
                                        self.lock_timeout) from exc
                # Jitter so that waiting processes do not retry in lockstep.
                time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
                delay = min(delay * 2, 0.25)
                continue
            try:
                con.execute(f"USE {alias}")
            except BaseException:
                _detach(base, con, alias)
                raise
            return base, con, alias

    def _delete_files(self) -> None:
        for suffix in ("", ".wal"):
            with contextlib.suppress(FileNotFoundError):
                self.path.with_name(self.path.name + suffix).unlink()


def quote_literal(text: str) -> str:
    """``text`` as an SQL string literal (single-quoted, quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def _detach(base: duckdb.DuckDBPyConnection, con: duckdb.DuckDBPyConnection, alias: str) -> None:
    """Detach the catalog (closing its file); if that fails (a transaction left open by a query), roll
    back and retry, and as a last resort close the whole instance: the file must never stay open."""
    try:
        for attempt in range(2):
            try:
                con.execute("USE memory")
                con.execute(f"DETACH {alias}")
                return
            except duckdb.Error:
                if attempt:
                    raise
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
    except duckdb.Error:
        with contextlib.suppress(duckdb.Error):
            con.close()
        _drop_duckdb(base)
    finally:
        with contextlib.suppress(duckdb.Error):
            con.close()


def _locked_error(path: Any, who: str, timeout: float) -> CatalogLockedError:
    return CatalogLockedError(
        f"the catalog {path} stayed locked by {who} for {timeout:.0f} s",
        hint=f"nbdurable holds the catalog only briefly, so retry; if it persists, check what {who} is doing "
        "(a long SQL query, or a program keeping catalog.duckdb open)",
    )


def _lock_holder(lock_file: pathlib.Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        if pid := int(lock_file.read_bytes()[:32].strip() or b"0"):
            return f"process {pid}"
    return "another nbdurable process"
