"""Journals in PostgreSQL: one row per record in ``nbd_records`` (run_id, seq, body, tag), the same
authenticated body and HMAC-SHA256 tag a journal line holds (``journal.encode_line``).

A writer owns one connection with ``synchronous_commit = off``: an append is committed (visible to every
process, and it survives the writer's ``kill -9``) when ``append`` returns, and reaches the server's disk
a moment later: the local journal's group commit (page cache now, fdatasync on a flusher thread). An
``append(sync=True)`` and ``sync()`` wait for the WAL flush. The primary key (run_id, seq) refuses a
record committed twice. A row that fails its tag is never parsed: reading its journal raises
``CorruptJournalError`` (``nbdurable check`` reports it, ``--repair`` keeps the records before it).
"""

from __future__ import annotations

import json
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ...errors import CorruptJournalError, RunNotFoundError, StoreError
from ..auth import TAG_HEX_LEN
from ..journal import _checked_body, check_run_id, encode_line, is_run_id
from .pg import database_error, pool, redact

if TYPE_CHECKING:
    import psycopg


def split_line(line: bytes) -> tuple[bytes, str]:
    """A journal line (``encode_line``) -> its body and tag, as the table keeps them."""
    return line[: -TAG_HEX_LEN - 2], line[-TAG_HEX_LEN - 1 : -1].decode("ascii")


def open_row(run_id: str, seq: int, body: bytes, tag: str) -> dict[str, Any]:
    """The record of a row, once its tag authenticates it; CorruptJournalError otherwise."""
    checked = _checked_body(bytes(body) + b"\t" + tag.encode("ascii"))
    record: Any = None
    if checked is not None:
        try:
            record = json.loads(checked.decode("utf-8"))
        except (ValueError, RecursionError):
            record = None
    if not isinstance(record, dict):
        why = ("fails authentication (damaged, tampered with, or written under another key)" if checked is None
               else "authenticated but the content is not a JSON object")
        err = CorruptJournalError(
            f"the journal of run {run_id} is damaged at record {seq}: {why}",
            hint=f"run `nbdurable check` to inspect and repair it; the records before {seq} are intact")
        err.path = run_id  # type: ignore[attr-defined]
        err.line = seq  # type: ignore[attr-defined]
        raise err
    return record


class PgJournalWriter:
    """Appends records to one run's journal rows (the interface of ``journal.JournalWriter``)."""

    def __init__(self, run_id: str, url: str, *, last_seq: int) -> None:
        import psycopg

        self.run_id = run_id
        self.path = run_id  # what errors name (a local writer names its file)
        self._url = url
        self._seq = last_seq
        self._lock = threading.Lock()
        try:
            self._conn: psycopg.Connection[Any] | None = psycopg.connect(url, autocommit=True,
                                                                         application_name="nbdurable-journal")
            self._conn.execute("SET synchronous_commit = off")
        except psycopg.Error as exc:
            raise database_error(exc, url, f"opening the journal of run {run_id}") from None
        self._unsynced = False

    @property
    def seq(self) -> int:
        """The sequence number of the last record appended (0 for an empty journal)."""
        return self._seq

    def append(self, record: dict[str, Any], *, sync: bool = False) -> int:
        """Append ``record``; set its ``seq`` (and ``ts`` if absent); wait for the WAL flush if ``sync``."""
        import psycopg

        with self._lock:
            conn = self._open()
            seq = self._seq + 1
            had_ts = "ts" in record
            record["seq"] = seq
            if not had_ts:
                record["ts"] = time.time()
            try:
                body, tag = split_line(encode_line(record))
            except (TypeError, ValueError):
                del record["seq"]
                if not had_ts:
                    del record["ts"]
                raise
            try:
                if sync:
                    with conn.transaction():
                        conn.execute("SET LOCAL synchronous_commit = on")
                        conn.execute("INSERT INTO nbd_records (run_id, seq, body, tag) VALUES (%s, %s, %s, %s)",
                                     [self.run_id, seq, body, tag])
                else:
                    conn.execute("INSERT INTO nbd_records (run_id, seq, body, tag) VALUES (%s, %s, %s, %s)",
                                 [self.run_id, seq, body, tag])
            except psycopg.errors.UniqueViolation:
                raise StoreError(
                    f"record {seq} of run {self.run_id} was already committed by another writer",
                    hint="two processes drive this run: only the lease holder may append") from None
            except psycopg.Error as exc:
                raise database_error(exc, self._url, f"appending to the journal of run {self.run_id}") from None
            self._unsynced = not sync
            self._seq = seq
            return seq

    def _open(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise StoreError(f"the journal writer of run {self.run_id} is closed",
                             hint="reopen it with Store.append_journal(run_id)")
        return self._conn

    def sync_soon(self) -> None:
        """Nothing to do: the server flushes asynchronously committed records within its wal_writer_delay."""

    def sync(self) -> None:
        """Wait until every record appended so far is flushed to the server's WAL."""
        import psycopg

        with self._lock:
            if self._conn is None or not self._unsynced:
                return
            try:
                with self._conn.transaction():
                    self._conn.execute("SET LOCAL synchronous_commit = on")
                    self._conn.execute("SELECT pg_current_xact_id()")  # an xid: the commit waits for the flush
            except psycopg.Error as exc:
                raise database_error(exc, self._url, f"syncing the journal of run {self.run_id}") from None
            self._unsynced = False

    def close(self) -> None:
        """Close the writer's connection (idempotent)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> PgJournalWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PgJournalWriter run={self.run_id} seq={self._seq}{' closed' if self.closed else ''}>"


class PgJournalsMixin:
    """The journal half of ``SharedStore``."""

    url: str

    if TYPE_CHECKING:
        def _check_not_driven_elsewhere(self, run_id: str) -> None: ...

        def _query(self, sql: str, params: Any = None, doing: str = "") -> list[tuple[Any, ...]]: ...

    def _no_run(self, run_id: str) -> RunNotFoundError:
        return RunNotFoundError(f"no run {run_id!r} in the store {redact(self.url)}",
                                hint="`nbdurable runs` lists the run ids of this store")

    def journal_exists(self, run_id: str) -> bool:
        """True if the run has a journal in this store."""
        return is_run_id(run_id) and bool(
            self._query("SELECT 1 FROM nbd_journals WHERE run_id = %s", [run_id], "looking a run up"))

    def journal_sizes(self, run_ids: list[str]) -> dict[str, int]:
        """A mark per run that grows with its journal (its last record's seq); runs without a journal left out."""
        rows = self._query("SELECT j.run_id, coalesce(max(r.seq), 0) FROM nbd_journals j LEFT JOIN nbd_records r "
                           "ON r.run_id = j.run_id WHERE j.run_id = ANY(%s) GROUP BY j.run_id", [list(run_ids)],
                           "reading the journals' lengths")
        return {str(run_id): int(seq) for run_id, seq in rows}

    def change_marks(self) -> tuple[str, str]:
        """Two cheap marks: the first changes when a journal gains a record (a new run, a reopened one, or any
        step), the second when an event arrives (the newest record's transaction, the newest event id)."""
        rows = self._query("SELECT coalesce((SELECT xid::text FROM nbd_records ORDER BY xid DESC LIMIT 1), ''), "
                           "coalesce((SELECT id FROM nbd_events ORDER BY id DESC LIMIT 1), '')", None,
                           "polling the store for changes")
        return str(rows[0][0]), str(rows[0][1])

    def _existing_journal(self, run_id: str) -> str:
        if not self.journal_exists(run_id):
            raise self._no_run(run_id)
        return run_id

    def new_journal(self, run_id: str) -> PgJournalWriter:
        """Create the journal of a new run (an existing one raises StoreError)."""
        check_run_id(run_id)
        rows = self._query("INSERT INTO nbd_journals (run_id) VALUES (%s) ON CONFLICT DO NOTHING RETURNING run_id",
                           [run_id], f"creating the journal of run {run_id}")
        if not rows:
            raise StoreError(f"a journal for run {run_id} already exists in {redact(self.url)}",
                             hint="start the run with a new run id, or use Store.append_journal to add to it")
        return PgJournalWriter(run_id, self.url, last_seq=0)

    def append_journal(self, run_id: str) -> PgJournalWriter:
        """Reopen an existing journal to append, continuing the seq numbering."""
        self._existing_journal(run_id)
        self._check_not_driven_elsewhere(run_id)
        rows = self._query("SELECT coalesce(max(seq), 0) FROM nbd_records WHERE run_id = %s", [run_id],
                           f"reopening the journal of run {run_id}")
        return PgJournalWriter(run_id, self.url, last_seq=int(rows[0][0]))

    def read_journal(self, run_id: str) -> list[dict[str, Any]]:
        """All records of a run's journal, each authenticated (CorruptJournalError at the first that is not)."""
        rows = self._query("SELECT seq, body, tag FROM nbd_records WHERE run_id = %s ORDER BY seq", [run_id],
                           f"reading the journal of run {run_id}") if is_run_id(run_id) else []
        if not rows:
            self._existing_journal(run_id)
        return [open_row(run_id, seq, body, tag) for seq, body, tag in rows]

    def journal_rows(self, run_id: str) -> list[tuple[int, bytes, str]]:
        """The raw rows (seq, body, tag) of a run's journal, unchecked (maintenance and migration)."""
        return [(int(s), bytes(b), t) for s, b, t in self._query(
            "SELECT seq, body, tag FROM nbd_records WHERE run_id = %s ORDER BY seq", [run_id], "reading a journal")]

    def journal_head(self, run_id: str) -> dict[str, Any] | None:
        """The first record of a run's journal, or None if it has none (or it fails its tag)."""
        self._existing_journal(run_id)
        rows = self._query("SELECT seq, body, tag FROM nbd_records WHERE run_id = %s ORDER BY seq LIMIT 1",
                           [run_id], f"reading the journal of run {run_id}")
        if not rows:
            return None
        try:
            return open_row(run_id, *rows[0])
        except CorruptJournalError:
            return None

    def run_ids(self) -> list[str]:
        """The ids of all runs with a journal, sorted ascending."""
        return [r for (r,) in self._query("SELECT run_id FROM nbd_journals ORDER BY run_id", None, "listing runs")]

    def changes_since(self, mark: str | None) -> tuple[list[tuple[str, int, bytes, str]],
                                                      list[tuple[str, bytes, str]], str]:
        """Journal rows (run_id, seq, body, tag) and event rows (id, body, tag) committed since ``mark`` (all of
        them for None), and the next mark: the oldest transaction still running when they were read
        (``pg_snapshot_xmin``). A row whose transaction commits later has an xid at or above it, so it is in
        the next call's answer; rows read twice are skipped by the catalog (by run and seq, by event id)."""
        import psycopg

        low = mark or "0"
        try:
            with pool(self.url).connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                (next_mark,) = cur.fetchone() or ("0",)
                cur.execute("SELECT run_id, seq, body, tag FROM nbd_records WHERE xid >= %s::xid8 "
                            "ORDER BY run_id, seq", [low])
                records = [(r, int(q), bytes(b), t) for r, q, b, t in cur.fetchall()]
                cur.execute("SELECT id, body, tag FROM nbd_events WHERE xid >= %s::xid8 ORDER BY id", [low])
                events = [(i, bytes(b), t) for i, b, t in cur.fetchall()]
        except psycopg.Error as exc:
            raise database_error(exc, self.url, "reading new records for the catalog") from None
        return records, events, str(next_mark)

    def salvage_journal(self, run_id: str, bad_seq: int) -> int:
        """Move the rows of ``run_id`` from ``bad_seq`` on into ``nbd_aside`` (one transaction); how many."""
        import psycopg

        try:
            with pool(self.url).connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.execute("INSERT INTO nbd_aside (kind, ident, seq, body, tag) SELECT 'journal', run_id, seq, body, "
                            "tag FROM nbd_records WHERE run_id = %s AND seq >= %s", [run_id, bad_seq])
                cur.execute("DELETE FROM nbd_records WHERE run_id = %s AND seq >= %s", [run_id, bad_seq])
                return int(cur.rowcount)
        except psycopg.Error as exc:
            raise database_error(exc, self.url, f"salvaging the journal of run {run_id}") from None

    def set_aside_event(self, event_id: str) -> None:
        """Move a damaged event row into ``nbd_aside``."""
        self._query("WITH gone AS (DELETE FROM nbd_events WHERE id = %s RETURNING id, body, tag) "
                    "INSERT INTO nbd_aside (kind, ident, body, tag) SELECT 'event', id, body, tag FROM gone",
                    [event_id], f"setting event {event_id} aside")

    def aside_bodies(self) -> list[bytes]:
        """The bodies of every row set aside (gc keeps the objects they name)."""
        return [bytes(b) for (b,) in self._query("SELECT body FROM nbd_aside", None, "reading rows set aside")]

    def setting(self, key: str) -> str | None:
        """A store-wide setting (``nbd_settings``), or None."""
        rows = self._query("SELECT value FROM nbd_settings WHERE key = %s", [key], "reading a setting")
        return str(rows[0][0]) if rows else None

    def set_setting(self, key: str, value: str) -> None:
        self._query("INSERT INTO nbd_settings VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [key, value], "writing a setting")

    def delete_journal(self, run_id: str) -> None:
        """Delete a run's journal, its records and lease (gc --prune-runs)."""
        self._query("DELETE FROM nbd_journals WHERE run_id = %s", [run_id], f"deleting the journal of run {run_id}")
        self._query("DELETE FROM nbd_leases WHERE run_id = %s", [run_id], f"deleting the lease of run {run_id}")


__all__ = ["PgJournalWriter", "PgJournalsMixin", "open_row", "split_line"]
