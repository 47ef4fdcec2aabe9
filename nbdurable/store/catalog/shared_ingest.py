"""Ingest from a shared store (PostgreSQL) into this machine's catalog cache file.

The catalog stays a local DuckDB file (in the shared store's cache directory): it is filled from the rows
committed since the last ingest (``changes_since``: by transaction id, so rows committed late are never
missed), merged by the same ``Batch`` as journal files, and ``ingest_state`` keeps each run's last seq (as
``byte_offset`` and ``last_seq``). Why ingest rather than read PostgreSQL through DuckDB's postgres
extension: see ARCHITECTURE.md ("The shared store").
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import duckdb

from ...errors import CorruptJournalError
from ..journal import _checked_body
from .bulk import apply_batch, insert_rows, update_consumers
from .rows import Batch, unix_us
from .schema import get_meta, set_meta

MARK_KEY = "shared_xmin"  # meta: the mark of the last ingest (reset with the catalog)


class SharedChanges(Protocol):
    """What the shared ingest uses of ``SharedStore``."""

    def changes_since(self, mark: str | None) -> tuple[list[tuple[str, int, bytes, str]],
                                                      list[tuple[str, bytes, str]], str]: ...


def _open(body: bytes, tag: str) -> dict[str, Any] | None:
    checked = _checked_body(body + b"\t" + tag.encode("ascii"))
    try:
        value = json.loads(checked.decode("utf-8")) if checked is not None else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def ingest_shared(con: duckdb.DuckDBPyConnection, store: SharedChanges) -> tuple[int, list[CorruptJournalError]]:
    """Ingest the journal and event rows committed since the last ingest; (records added, damaged journals)."""
    mark = get_meta(con, MARK_KEY)
    rows, event_rows, next_mark = store.changes_since(mark)
    by_run: dict[str, list[dict[str, Any]]] = {}
    damaged: dict[str, int] = {}
    for run_id, seq, body, tag in rows:
        if run_id in damaged:
            continue  # nothing after a record that fails its tag is used
        record = _open(body, tag)
        if record is None:
            damaged[run_id] = seq
            continue
        by_run.setdefault(run_id, []).append(record)
    known = dict(con.execute("SELECT run_id, last_seq FROM ingest_state WHERE list_contains(?::VARCHAR[], run_id)",
                             [sorted(by_run)]).fetchall()) if by_run else {}
    batch, total = Batch(), 0
    for run_id in sorted(by_run):
        records = by_run[run_id]
        last = int(records[-1].get("seq") or 0)
        total += batch.add_journal(run_id, records, last, int(known.get(run_id) or 0))
    if batch.state:
        apply_batch(con, batch)
    _ingest_event_rows(con, event_rows)
    errors = [CorruptJournalError(f"the journal of run {run_id} is damaged at record {seq}: it fails authentication",
                                  hint="run `nbdurable check`; the records before it are intact")
              for run_id, seq in sorted(damaged.items())]
    if not errors:
        set_meta(con, MARK_KEY, next_mark)
    return total, errors


def _ingest_event_rows(con: duckdb.DuckDBPyConnection, event_rows: list[tuple[str, bytes, str]]) -> None:
    if not event_rows:
        return
    ids = [i for i, _, _ in event_rows]
    known = {i for (i,) in con.execute("SELECT id FROM events WHERE list_contains(?::VARCHAR[], id)",
                                       [ids]).fetchall()}
    rows = []
    for event_id, body, tag in event_rows:
        event = _open(body, tag)
        if event_id in known or event is None or event.get("id") != event_id:
            continue  # damaged: `nbdurable check` reports it, no run receives it
        sender: dict[str, Any] = event["sender"] if isinstance(event.get("sender"), dict) else {}
        data = event.get("data")
        rows.append({"id": event_id, "name": event.get("name"),
                     "data": None if data is None else json.dumps(data, sort_keys=True),
                     "sent_at": unix_us(event.get("sent_at")), "sender_pid": sender.get("pid"),
                     "sender_host": sender.get("host"), "consumed_by_run": None, "consumed_by_ordinal": None})
    if not rows:
        return
    con.begin()
    try:
        insert_rows(con, "events", rows)
        update_consumers(con, [str(r["id"]) for r in rows])
        con.commit()
    except BaseException:
        con.rollback()
        raise


__all__ = ["MARK_KEY", "SharedChanges", "ingest_shared"]
