"""The freshness rules of ingest: which journals and event files may have new records, from which byte
offset, and when nothing needs to be looked at; then runs whose process died are marked crashed.

Ingestion is incremental (from each journal's last byte offset) and idempotent (rows keyed by run,
ordinal...; records by seq); a batch of journals' new records and their ``ingest_state`` commit in one
transaction.

Freshness costs little even for 10,000 runs: a journal that ended with ``run_end`` is finished (nothing
in nbdurable appends to it again, except through ``Store.append_journal``, which first leaves the marker
``journals/<run>.reopened``), so only unfinished, new and reopened journals are stat'ed; and the
``journals/`` and ``events/`` directories are listed only when their mtime changed (an mtime is trusted
only once it is 2 s old, so that a file created in the same clock tick as a listing is not missed).
"""

from __future__ import annotations

import contextlib
import gc
import json
import operator
import os
import pathlib
import time
from collections.abc import Iterator
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from ...errors import CorruptJournalError
from ..journal import JOURNAL_SUFFIX, is_run_id, read_records
from .bulk import apply_batch, insert_rows, run_sql, update_consumers
from .rows import Batch, unix_us
from .schema import get_meta, reset_schema, set_meta
from .shared_ingest import ingest_shared

BATCH_RECORDS = 200_000  # records per ingest transaction: bounds memory on a first ingest of a big store
REOPENED_SUFFIX = ".reopened"  # journals/<run>.reopened: Store.append_journal reopened a journal
MTIME_TRUST_NS = 2_000_000_000  # a directory's mtime is trusted as "unchanged" once it is this old


class CatalogStore(Protocol):
    """What the catalog uses of ``Store``: typed structurally, so that the catalog never imports
    ``nbdurable.store`` (whose ``Store.catalog()`` imports the catalog)."""

    @property
    def path(self) -> pathlib.Path: ...

    def event_ids(self) -> list[str]: ...

    def read_event(self, event_id: str) -> dict[str, Any] | None: ...

    def is_live(self, run_id: str) -> bool: ...


class IngestMixin:
    """The ingest half of ``Catalog``: bringing an attached catalog up to date with the store."""

    store: CatalogStore

    def _ingest(self, con: duckdb.DuckDBPyConnection) -> int:
        """Ingest new records of all journals, and new events; then mark runs whose process died as crashed."""
        with _gc_paused():
            if hasattr(self.store, "changes_since"):  # a shared store (PostgreSQL): rows, not files
                total, errors = ingest_shared(con, self.store)  # type: ignore[arg-type]
            else:
                total, errors = self._ingest_journals(con)
                self._ingest_events(con)  # after the journals: a reset there empties the events table too
        self._mark_crashed(con)
        if errors:
            raise errors[0]
        return total

    def _ingest_journals(self, con: duckdb.DuckDBPyConnection) -> tuple[int, list[CorruptJournalError]]:
        directory = self.store.path / "journals"
        recorded = get_meta(con, "journals_mtime_ns")
        plan = self._unchanged_journals(con, directory, recorded)
        if plan is None:
            plan = self._listed_journals(con, directory)
        candidates, trusted_mtime = plan
        total, errors, batch = 0, list[CorruptJournalError](), Batch()
        # By run id (time-ordered ids): each run's rows stay together, and batches are deterministic.
        for run_id, offset, last_seq, final_offset, was_reopened, reopened, size, known in sorted(
                candidates, key=operator.itemgetter(0)):
            reopened = reopened or was_reopened
            final = None if reopened else final_offset
            if size != offset:
                try:
                    records, end, _torn = read_records(directory / (run_id + JOURNAL_SUFFIX), offset)
                except CorruptJournalError as exc:
                    errors.append(exc)  # ingest every other journal, then report
                    continue
                except FileNotFoundError:
                    continue  # deleted since listed: the next ingest lists again (the directory changed)
                if end != offset:
                    total += batch.add_journal(run_id, records, end, last_seq, final, reopened)
            if run_id not in batch.state and (not known or (final, reopened) != (final_offset, was_reopened)):
                # Every listed journal gets a state row (even empty): an unchanged directory is then not listed.
                batch.state[run_id] = (offset, last_seq, final, reopened)
            if batch.count >= BATCH_RECORDS:
                apply_batch(con, batch)
                batch = Batch()
        if batch.state:
            apply_batch(con, batch)
        if trusted_mtime is not None and not errors and recorded != trusted_mtime:
            set_meta(con, "journals_mtime_ns", trusted_mtime)
        return total, errors

    def _unchanged_journals(self, con: duckdb.DuckDBPyConnection, directory: pathlib.Path,
                            recorded: str | None) -> tuple[list[_Candidate], str | None] | None:
        """If ``journals/`` is as it was at the last trusted listing: the journals that may have grown
        (unfinished or reopened), with their sizes. None if the directory must be listed again."""
        mtime = _mtime_ns(directory)
        if mtime is None or recorded != mtime:
            return None
        rows = con.execute("SELECT run_id, byte_offset, last_seq, final_offset, reopened FROM ingest_state "
                           "WHERE reopened OR final_offset IS DISTINCT FROM byte_offset").fetchall()
        candidates = []
        for run_id, offset, last_seq, final_offset, reopened in rows:
            try:
                size = os.stat(directory / (run_id + JOURNAL_SUFFIX)).st_size
            except FileNotFoundError:
                return None  # deleted (the directory's mtime lags?): list and reset
            if size < offset:
                return None  # shrank: the listing path resets
            candidates.append((run_id, offset, last_seq, final_offset, bool(reopened), False, size, True))
        return candidates, None

    def _listed_journals(self, con: duckdb.DuckDBPyConnection,
                         directory: pathlib.Path) -> tuple[list[_Candidate], str | None]:
        """List ``journals/``: the new, unfinished and reopened journals with their sizes, and the
        directory's mtime if it is old enough to be trusted next time. Resets the catalog if a journal
        vanished or shrank (rows cannot be taken back one by one)."""
        mtime = _mtime_ns(directory)  # before listing: a file added meanwhile changes it again
        names = os.listdir(directory)
        ids = [n[: -len(JOURNAL_SUFFIX)] for n in names if n.endswith(JOURNAL_SUFFIX)]
        marked = {n[: -len(REOPENED_SUFFIX)] for n in names if n.endswith(REOPENED_SUFFIX)}
        listed = pa.table({"run_id": pa.array(ids, pa.string()),
                           "reopened": pa.array([i in marked for i in ids] if marked else [False] * len(ids),
                                                pa.bool_())})
        con.register("_listed", listed)
        try:
            rows = con.execute("""
                SELECT coalesce(n.run_id, s.run_id), n.run_id IS NOT NULL, s.run_id IS NOT NULL, s.byte_offset,
                       s.last_seq, s.final_offset, coalesce(s.reopened, false), coalesce(n.reopened, false)
                FROM _listed n FULL JOIN ingest_state s ON n.run_id = s.run_id
                WHERE n.run_id IS NULL OR s.run_id IS NULL OR n.reopened OR s.reopened
                   OR s.final_offset IS DISTINCT FROM s.byte_offset""").fetchall()
        finally:
            con.unregister("_listed")
        candidates: list[_Candidate] = []
        reset = False
        for run_id, is_listed, known, offset, last_seq, final_offset, was_reopened, reopened in rows:
            if not is_listed:
                reset = True  # a journal vanished
                break
            if not known and not is_run_id(run_id):
                continue
            try:
                size = os.stat(directory / (run_id + JOURNAL_SUFFIX)).st_size
            except FileNotFoundError:
                continue  # deleted since listed
            if known and size < offset:
                reset = True  # a journal shrank (replaced)
                break
            candidates.append((run_id, offset or 0, last_seq or 0, final_offset, was_reopened, reopened, size, known))
        if reset:
            reset_schema(con)
            candidates = []
            for run_id in ids:
                if is_run_id(run_id):
                    with contextlib.suppress(FileNotFoundError):
                        size = os.stat(directory / (run_id + JOURNAL_SUFFIX)).st_size
                        candidates.append((run_id, 0, 0, None, False, run_id in marked, size, False))
        trusted = mtime if mtime is not None and time.time_ns() - int(mtime) > MTIME_TRUST_NS else None
        return candidates, trusted

    def _ingest_events(self, con: duckdb.DuckDBPyConnection) -> int:
        """Ingest the event files not ingested yet (listing ``events/`` only if it changed); drop the
        rows of deleted ones. Returns how many were added."""
        directory = self.store.path / "events"
        mtime = _mtime_ns(directory)
        if mtime is None or get_meta(con, "events_mtime_ns") == mtime:
            return 0
        ids = set(self.store.event_ids())
        known = {i for (i,) in con.execute("SELECT id FROM events").fetchall()}
        rows: list[dict[str, Any]] = []
        for event_id in sorted(ids - known):
            event = self.store.read_event(event_id)
            if event is None:
                continue  # damaged: `nbdurable check` reports it, no run receives it
            sender: dict[str, Any] = event["sender"] if isinstance(event.get("sender"), dict) else {}
            data = event.get("data")
            rows.append({
                "id": event_id, "name": event.get("name"),
                "data": None if data is None else json.dumps(data, sort_keys=True),
                "sent_at": unix_us(event.get("sent_at")), "sender_pid": sender.get("pid"),
                "sender_host": sender.get("host"), "consumed_by_run": None, "consumed_by_ordinal": None,
            })
        gone = sorted(known - ids)
        trusted = time.time_ns() - int(mtime) > MTIME_TRUST_NS
        if not rows and not gone and not trusted:
            return 0
        con.begin()
        try:
            insert_rows(con, "events", rows)
            if gone:
                run_sql(con, "DELETE FROM events WHERE id IN (SELECT id FROM _g)",
                        _g=pa.table({"id": pa.array(gone, pa.string())}))
            update_consumers(con, [str(r["id"]) for r in rows])
            if trusted:
                set_meta(con, "events_mtime_ns", mtime)
            con.commit()
        except BaseException:
            con.rollback()
            raise
        return len(rows)

    def _mark_crashed(self, con: duckdb.DuckDBPyConnection) -> None:
        running = [r for (r,) in con.execute("SELECT run_id FROM runs WHERE status = 'running'").fetchall()]
        dead = [r for r in running if not self.store.is_live(r)]
        if dead:
            con.execute("UPDATE runs SET status = 'crashed' WHERE list_contains(?::VARCHAR[], run_id)", [dead])


# (run_id, byte_offset, last_seq, final_offset, was reopened, reopened now, size, known to the catalog)
_Candidate = tuple[str, int, int, int | None, bool, bool, int, bool]


def _mtime_ns(directory: pathlib.Path) -> str | None:
    """A directory's mtime (ns, as text: how meta stores it), or None if it is missing."""
    try:
        return str(os.stat(directory).st_mtime_ns)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: ingesting creates ~10 dicts per record, and the generational collector,
    rescanning them all again and again, doubled the ingest time (measured). They hold no cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
