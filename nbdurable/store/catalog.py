"""The DuckDB catalog (``catalog.duckdb``): run history for SQL, derived from the journals and events.

No process keeps the database open: while one process has it open read-write no other process can open
it at all. Every operation attaches it, works and detaches it. Opening a DuckDB instance costs ~12 ms, so
each process keeps one in-memory instance and ATTACHes the file to it per operation (~1.5 ms); DETACH
closes the file (checkpointing it) and releases DuckDB's lock. nbdurable processes queue on a flock
(``catalog.lock``); DuckDB's own lock is retried with backoff and jitter (other programs).
Ingestion is incremental (from each journal's last byte offset) and idempotent (rows keyed by run,
ordinal...; records by seq); a batch of journals' new records and their ``ingest_state`` commit in one
transaction. Rows are built in Python and inserted as Arrow tables. Timestamps are naive UTC.

Freshness costs little even for 10,000 runs: a journal that ended with ``run_end`` is finished (nothing
in nbdurable appends to it again, except through ``Store.append_journal``, which first leaves the marker
``journals/<run>.reopened``), so only unfinished, new and reopened journals are stat'ed; and the
``journals/`` and ``events/`` directories are listed only when their mtime changed (an mtime is trusted
only once it is 2 s old, so that a file created in the same clock tick as a listing is not missed).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import operator
import os
import pathlib
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from ..errors import CatalogLockedError, CorruptJournalError, OptionsError, RunNotFoundError, StoreError, StoreFormatError
from .crypto import encryption_key
from .journal import JOURNAL_SUFFIX, is_run_id, read_records
from .lease import process_lock, waiting_file_lock
from .records import RUN_STATUSES, error_with_traceback

if TYPE_CHECKING:
    import pandas

    from . import Store

SCHEMA_VERSION = 3  # 3: events, consumed; ingest_state.final_offset
CATALOG_FILE = "catalog.duckdb"
LOCK_FILE = "catalog.lock"  # queue of the nbdurable processes that want the catalog
LOCK_TIMEOUT_S = 30.0
BATCH_RECORDS = 200_000  # records per ingest transaction: bounds memory on a first ingest of a big store
REOPENED_SUFFIX = ".reopened"  # journals/<run>.reopened: Store.append_journal reopened a journal
MTIME_TRUST_NS = 2_000_000_000  # a directory's mtime is trusted as "unchanged" once it is this old
TABLES = ("runs", "steps", "variables", "attempts", "events", "consumed", "objects", "outputs")  # documented

_V, _I, _F, _T, _B = "VARCHAR", "BIGINT", "DOUBLE", "TIMESTAMP", "BOOLEAN"
_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "runs": [
        ("run_id", _V), ("notebook", _V), ("notebook_path", _V), ("kind", _V), ("params", _V), ("status", _V),
        ("started_at", _T), ("ended_at", _T), ("pid", _I), ("host", _V), ("resumed_from", _V), ("root_run", _V),
        ("superseded_by", _V), ("steps_total", _I), ("steps_executed", _I), ("steps_restored", _I),
        ("steps_failed", _I), ("time_saved_s", _F), ("duration_s", _F), ("wake_at", _T), ("waiting_for", _V),
    ],
    "steps": [
        ("run_id", _V), ("ordinal", _I), ("name", _V), ("parent", _I), ("source", _V), ("source_hash", _V),
        ("status", _V), ("started_at", _T), ("ended_at", _T), ("duration_s", _F), ("always", _B), ("no_state", _B),
        ("restored_from_run", _V), ("restored_from_ordinal", _I), ("error_ename", _V), ("error_evalue", _V),
        ("error_traceback", _V),
    ],
    "variables": [
        ("run_id", _V), ("ordinal", _I), ("name", _V), ("op", _V), ("object", _V), ("format", _V), ("type", _V),
        ("size_bytes", _I), ("instance", _V), ("reason", _V),
    ],
    "objects": [("object", _V), ("format", _V), ("size_bytes", _I), ("inline", _B), ("first_run", _V), ("first_ordinal", _I)],
    "outputs": [
        ("run_id", _V), ("ordinal", _I), ("idx", _I), ("output_type", _V), ("name", _V), ("mime_types", "VARCHAR[]"),
        ("text", _V), ("data", _V),
    ],
    "attempts": [
        ("run_id", _V), ("ordinal", _I), ("attempt", _I), ("started_at", _T), ("ended_at", _T), ("error_ename", _V),
        ("error_evalue", _V), ("next_delay_s", _F),
    ],
    "events": [
        ("id", _V), ("name", _V), ("data", _V), ("sent_at", _T), ("sender_pid", _I), ("sender_host", _V),
        ("consumed_by_run", _V), ("consumed_by_ordinal", _I),
    ],
    "consumed": [("run_id", _V), ("ordinal", _I), ("event_id", _V), ("name", _V), ("consumed_at", _T)],
    # final_offset: where the journal ended when its run_end was ingested; the journal is not stat'ed
    # again while byte_offset = final_offset and it is not reopened (see the module docstring).
    "ingest_state": [("run_id", _V), ("byte_offset", _I), ("last_seq", _I), ("final_offset", _I), ("reopened", _B)],
}
_KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id",), "steps": ("run_id", "ordinal"), "variables": ("run_id", "ordinal", "name"),
    "objects": ("object",), "outputs": ("run_id", "ordinal", "idx"), "attempts": ("run_id", "ordinal", "attempt"),
    "events": ("id",), "consumed": ("run_id", "ordinal", "event_id"), "ingest_state": ("run_id",),
}
_ARROW = {_V: pa.string(), _I: pa.int64(), _F: pa.float64(), _T: pa.timestamp("us"), _B: pa.bool_(), "VARCHAR[]": pa.list_(pa.string())}
_STEP_END_COLUMNS = (
    "status", "started_at", "ended_at", "duration_s", "restored_from_run", "restored_from_ordinal",
    "error_ename", "error_evalue", "error_traceback",
)
_LOCK_RE = re.compile(r"Could not set lock|Conflicting lock", re.IGNORECASE)

def _ddl(table: str) -> list[str]:
    cols = ", ".join(f"{name} {sqltype}" for name, sqltype in _COLUMNS[table])
    statements = [f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({', '.join(_KEYS[table])}))"]
    if _KEYS[table][0] == "run_id" and len(_KEYS[table]) > 1:
        # DuckDB scans an index only for a single-column one: without it, one run's rows are a full scan
        # (run ids share their first 8 bytes, all that string zone maps keep). 3x faster one-run queries.
        statements.append(f"CREATE INDEX IF NOT EXISTS {table}_run_id ON {table} (run_id)")
    return statements


def _us(ts: Any) -> int | None:
    """Unix seconds -> integer microseconds (Arrow timestamp[us], naive UTC)."""
    return int(ts * 1_000_000) if isinstance(ts, (int, float)) else None


def _text(value: Any) -> str | None:
    """nbformat multiline strings may be lists of lines."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------------------------------
# Turning records into rows


class _Batch:
    """Rows from the new records of several journals, merged in Python, applied in one transaction."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}  # runs whose `run` record is in this batch: full rows
        self.run_updates: dict[str, dict[str, Any]] = {}  # other runs touched by this batch
        self.steps: dict[tuple[str, int], dict[str, Any]] = {}
        self.variables: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        self.outputs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.objects: dict[str, dict[str, Any]] = {}
        self.attempts: dict[tuple[str, int, int], dict[str, Any]] = {}
        self.consumed: dict[tuple[str, int, str], dict[str, Any]] = {}
        self.state: dict[str, tuple[int, int, int | None, bool]] = {}  # run -> (byte_offset, last_seq, final_offset, reopened)
        self.count = 0

    def add_journal(self, run_id: str, records: list[dict[str, Any]], end_offset: int, last_seq: int,
                    final_offset: int | None = None, reopened: bool = False) -> int:
        """Merge a journal's new records (those with seq > last_seq); returns how many were new.

        The journal is finished (``final_offset`` set) once its ``run_end`` is ingested, unless reopened."""
        new = 0
        ended = final_offset is not None
        for record in records:
            seq = record.get("seq")
            if isinstance(seq, int) and seq <= last_seq:
                continue  # already ingested: idempotence is keyed by (run, seq)
            new += 1
            if isinstance(seq, int):
                last_seq = seq
            kind = record.get("t")
            ended = ended or kind == "run_end"
            handler = _HANDLERS.get(kind)  # type: ignore[arg-type]
            if handler is not None:  # unknown record types (from newer writers) are skipped, not fatal
                handler(self, run_id, record)
        if new and run_id not in self.runs:
            self._run_update(run_id)  # so that a run marked crashed and still writing goes back to running
        self.state[run_id] = (end_offset, last_seq, end_offset if ended and not reopened else None, reopened)
        self.count += new
        return new

    def _run_update(self, run_id: str) -> dict[str, Any]:
        if run_id in self.runs:
            return self.runs[run_id]
        return self.run_updates.setdefault(
            run_id, {"run_id": run_id, "status": None, "ended_at": None, "superseded_by": None, "wake_at": None, "waiting_for": None}
        )

    def on_run(self, run_id: str, r: dict[str, Any]) -> None:
        env = r.get("environment") or {}
        pid = env.get("pid")
        self.run_updates.pop(run_id, None)
        self.runs[run_id] = {
            "run_id": run_id, "notebook": r.get("notebook"), "notebook_path": r.get("notebook_path"),
            "kind": r.get("kind"), "params": json.dumps(r.get("params") or {}, sort_keys=True), "status": "running",
            "started_at": _us(r.get("ts")), "ended_at": None, "pid": pid if isinstance(pid, int) else None,
            "host": env.get("host"), "resumed_from": r.get("resumed_from"), "root_run": r.get("root_run") or run_id,
            "superseded_by": None, "steps_total": 0, "steps_executed": 0, "steps_restored": 0, "steps_failed": 0,
            "time_saved_s": 0.0, "duration_s": None, "wake_at": None, "waiting_for": None,
        }

    def on_run_end(self, run_id: str, r: dict[str, Any]) -> None:
        row = self._run_update(run_id)
        row["status"], row["ended_at"] = r.get("status"), _us(r.get("ts"))
        waiting = r.get("waiting_for")
        row["wake_at"], row["waiting_for"] = _us(r.get("wake_at")), json.dumps(waiting, sort_keys=True) if waiting else None

    def on_attempt(self, run_id: str, r: dict[str, Any]) -> None:
        if not isinstance(r.get("ordinal"), int) or not isinstance(r.get("attempt"), int):
            return
        error = r.get("error") or {}
        self.attempts[(run_id, r["ordinal"], r["attempt"])] = {
            "run_id": run_id, "ordinal": r["ordinal"], "attempt": r["attempt"], "started_at": _us(r.get("started_at")),
            "ended_at": _us(r.get("ended_at")), "error_ename": error.get("ename"), "error_evalue": _text(error.get("evalue")),
            "next_delay_s": r.get("next_delay"),
        }

    def on_consumed(self, run_id: str, r: dict[str, Any]) -> None:
        if not isinstance(r.get("ordinal"), int) or not isinstance(r.get("event"), str):
            return
        self.consumed[(run_id, r["ordinal"], r["event"])] = {
            "run_id": run_id, "ordinal": r["ordinal"], "event_id": r["event"], "name": r.get("name"), "consumed_at": _us(r.get("ts")),
        }

    def on_superseded(self, run_id: str, r: dict[str, Any]) -> None:
        self._run_update(run_id)["superseded_by"] = r.get("by")

    def on_step_start(self, run_id: str, r: dict[str, Any]) -> None:
        if not isinstance(r.get("ordinal"), int):
            return  # malformed: nothing to key it by
        key = (run_id, r["ordinal"])
        options = r.get("options") or {}
        # A (re)started step replaces whatever an earlier attempt left: full row, no variables/outputs yet.
        self.steps[key] = {
            "run_id": run_id, "ordinal": key[1], "name": r.get("name"), "parent": r.get("parent"),
            "source": r.get("source"), "source_hash": r.get("source_hash"), "status": "running",
            "started_at": _us(r.get("ts")), "always": bool(options.get("always", False)),
            "no_state": bool(options.get("no_state", False)), "_full": True,
            **dict.fromkeys(_STEP_END_COLUMNS[2:]),
        }
        self.variables[key] = {}
        self.outputs[key] = []

    def on_step_end(self, run_id: str, r: dict[str, Any]) -> None:
        if not isinstance(r.get("ordinal"), int):
            return
        key = (run_id, r["ordinal"])
        row = self.steps.setdefault(key, {"run_id": run_id, "ordinal": key[1], "_full": False})
        error = error_with_traceback(r.get("error"), r.get("outputs")) or {}
        origin = r.get("restored_from") or {}
        row.update(
            status=r.get("status"), started_at=_us(r.get("started_at")), ended_at=_us(r.get("ended_at")),
            duration_s=r.get("duration"), error_ename=error.get("ename"), error_evalue=_text(error.get("evalue")),
            error_traceback="\n".join(map(str, tb)) if isinstance(tb := error.get("traceback"), list) else _text(tb),
            restored_from_run=origin.get("run_id") or origin.get("run"), restored_from_ordinal=origin.get("ordinal"),
        )
        self.variables[key] = {v["name"]: self._variable(key, v) for v in r.get("variables") or [] if isinstance(v, dict) and v.get("name")}
        self.outputs[key] = [self._output(key, i, o) for i, o in enumerate(r.get("outputs") or []) if isinstance(o, dict)]

    def _variable(self, key: tuple[str, int], v: dict[str, Any]) -> dict[str, Any]:
        if v.get("object"):
            self._object(v["object"], v.get("format"), v.get("size"), v.get("inline") is not None, key)
        return {
            "run_id": key[0], "ordinal": key[1], "name": v["name"], "op": v.get("op"), "object": v.get("object"),
            "format": v.get("format"), "type": v.get("type"), "size_bytes": v.get("size"),
            "instance": v.get("instance"), "reason": v.get("reason"),
        }

    def _output(self, key: tuple[str, int], idx: int, o: dict[str, Any]) -> dict[str, Any]:
        kind = o.get("output_type")
        data = o.get("data") if isinstance(o.get("data"), dict) else None
        name = o.get("name") if kind == "stream" else o.get("ename") if kind == "error" else None
        text = _text(o.get("text")) if kind == "stream" else _text(o.get("evalue")) if kind == "error" else None
        if data is not None:
            text = _text(data.get("text/plain"))
        if kind == "object" and o.get("object"):
            self._object(o["object"], o.get("format"), o.get("size"), False, key)
            data = {"object": o["object"]}
        return {
            "run_id": key[0], "ordinal": key[1], "idx": idx, "output_type": kind, "name": name,
            "mime_types": list(data) if data is not None and kind != "object" else None, "text": text,
            "data": json.dumps(data) if data is not None else None,
        }

    def _object(self, obj: str, fmt: Any, size: Any, inline: bool, key: tuple[str, int]) -> None:
        row = self.objects.get(obj)
        if row is None:
            self.objects[obj] = {"object": obj, "format": fmt, "size_bytes": size, "inline": inline, "first_run": key[0], "first_ordinal": key[1]}
            return
        # Order-independent merge (same rule as the SQL upsert), so incremental ingest equals a rebuild.
        row["inline"] = row["inline"] and inline
        row["format"] = row["format"] if row["format"] is not None else fmt
        row["size_bytes"] = row["size_bytes"] if row["size_bytes"] is not None else size
        if (key[0], key[1]) < (row["first_run"], row["first_ordinal"]):
            row["first_run"], row["first_ordinal"] = key


_HANDLERS = {
    "run": _Batch.on_run, "run_end": _Batch.on_run_end, "superseded": _Batch.on_superseded,
    "step_start": _Batch.on_step_start, "step_end": _Batch.on_step_end, "attempt": _Batch.on_attempt,
    "consumed": _Batch.on_consumed,
}


# ----------------------------------------------------------------------------------------------------
# Applying rows


def _arrow(table: str, rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> pa.Table:
    spec = [(name, sqltype) for name, sqltype in _COLUMNS[table] if columns is None or name in columns]
    values: list[Sequence[Any]] | None
    try:
        # itemgetter + zip transpose in C: several times faster than one comprehension per column.
        values = list(zip(*map(operator.itemgetter(*(name for name, _ in spec)), rows))) if len(spec) > 1 else None
    except KeyError:
        values = None
    if values is None or len(values) != len(spec):
        values = [[row.get(name) for row in rows] for name, _ in spec]
    return pa.table({name: _column(list(col), sqltype) for (name, sqltype), col in zip(spec, values)})


def _column(values: list[Any], sqltype: str) -> pa.Array:
    try:
        return pa.array(values, type=_ARROW[sqltype])
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        # A record with an odd value (a string pid, a float size...) must not make the catalog unbuildable.
        return pa.array([_coerce(v, sqltype) for v in values], type=_ARROW[sqltype])


def _coerce(value: Any, sqltype: str) -> Any:
    if value is None:
        return None
    if sqltype == _V:
        return value if isinstance(value, str) else json.dumps(value, default=str)
    if sqltype in (_I, _T):
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 2**62 else None
    if sqltype == _F:
        return float(value) if isinstance(value, (int, float)) else None
    if sqltype == _B:
        return bool(value)
    return [str(v) for v in value] if isinstance(value, list) else None


def _run_sql(con: duckdb.DuckDBPyConnection, sql: str, **tables: pa.Table) -> None:
    """Run ``sql`` with Arrow tables registered under the given names (zero-copy scans)."""
    for name, tbl in tables.items():
        con.register(name, tbl)
    try:
        con.execute(sql)
    finally:
        for name in tables:
            con.unregister(name)


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows, replacing those with the same primary key (re-ingesting is idempotent)."""
    if rows:
        cols = ", ".join(name for name, _ in _COLUMNS[table])
        _run_sql(con, f"INSERT OR REPLACE INTO {table} ({cols}) SELECT {cols} FROM _rows", _rows=_arrow(table, rows))


def _apply(con: duckdb.DuckDBPyConnection, batch: _Batch) -> None:
    """Apply a batch in one transaction."""
    con.begin()
    try:
        _apply_steps(con, batch)
        _insert(con, "runs", list(batch.runs.values()))
        if batch.run_updates:
            upd = _arrow("runs", list(batch.run_updates.values()), ("run_id", "status", "ended_at", "superseded_by", "wake_at", "waiting_for"))
            _run_sql(con, """
                UPDATE runs SET
                  status = CASE WHEN u.status IS NOT NULL THEN u.status
                                WHEN runs.status = 'crashed' AND runs.ended_at IS NULL THEN 'running'
                                ELSE runs.status END,
                  ended_at = coalesce(u.ended_at, runs.ended_at),
                  superseded_by = coalesce(u.superseded_by, runs.superseded_by),
                  wake_at = CASE WHEN u.status IS NOT NULL THEN u.wake_at ELSE runs.wake_at END,
                  waiting_for = CASE WHEN u.status IS NOT NULL THEN u.waiting_for ELSE runs.waiting_for END
                FROM _u u WHERE runs.run_id = u.run_id""", _u=upd)
        if batch.objects:
            cols = ", ".join(name for name, _ in _COLUMNS["objects"])
            _run_sql(con, f"""
                INSERT INTO objects ({cols}) SELECT {cols} FROM _o ON CONFLICT (object) DO UPDATE SET
                  format = coalesce(objects.format, excluded.format),
                  size_bytes = coalesce(objects.size_bytes, excluded.size_bytes),
                  inline = objects.inline AND excluded.inline,
                  first_run = CASE WHEN (excluded.first_run, excluded.first_ordinal) < (objects.first_run, objects.first_ordinal)
                                   THEN excluded.first_run ELSE objects.first_run END,
                  first_ordinal = CASE WHEN (excluded.first_run, excluded.first_ordinal) < (objects.first_run, objects.first_ordinal)
                                   THEN excluded.first_ordinal ELSE objects.first_ordinal END""",
                     _o=_arrow("objects", list(batch.objects.values())))
        _insert(con, "attempts", list(batch.attempts.values()))
        _insert(con, "consumed", list(batch.consumed.values()))
        _update_consumers(con, sorted({k[2] for k in batch.consumed}))
        _insert(con, "ingest_state", [{"run_id": r, "byte_offset": o, "last_seq": s, "final_offset": f, "reopened": x}
                                      for r, (o, s, f, x) in batch.state.items()])
        _aggregate(con, sorted({*batch.runs, *batch.run_updates, *(k[0] for k in batch.steps)}))
        con.commit()
    except BaseException:
        con.rollback()
        raise


def _apply_steps(con: duckdb.DuckDBPyConnection, batch: _Batch) -> None:
    if not batch.steps:
        return
    keys = pa.table({"run_id": pa.array([k[0] for k in batch.steps], pa.string()), "ordinal": pa.array([k[1] for k in batch.steps], pa.int64())})
    for table in ("variables", "outputs"):  # a step's latest step_end replaces its variables and outputs
        _run_sql(con, f"DELETE FROM {table} USING _k WHERE {table}.run_id = _k.run_id AND {table}.ordinal = _k.ordinal", _k=keys)
    _insert(con, "steps", [row for row in batch.steps.values() if row["_full"]])
    ends = [row for row in batch.steps.values() if not row["_full"]]
    if ends:  # step_end without its step_start in this batch: update only what step_end knows
        cols = ("run_id", "ordinal", *_STEP_END_COLUMNS)
        sets = ", ".join(f"{c} = excluded.{c}" for c in _STEP_END_COLUMNS)
        _run_sql(con, f"INSERT INTO steps ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _e ON CONFLICT (run_id, ordinal) DO UPDATE SET {sets}",
                 _e=_arrow("steps", ends, cols))
    _insert(con, "variables", [v for step in batch.variables.values() for v in step.values()])
    _insert(con, "outputs", [o for step in batch.outputs.values() for o in step])


def _update_consumers(con: duckdb.DuckDBPyConnection, event_ids: list[str]) -> None:
    """Set events.consumed_by_* of these events: their first consumer (by time, then run, ordinal), so
    the result does not depend on the order journals and events were ingested in."""
    if not event_ids:
        return
    _run_sql(con, """
        UPDATE events SET consumed_by_run = c.run_id, consumed_by_ordinal = c.ordinal
        FROM (SELECT DISTINCT ON (event_id) event_id, run_id, ordinal FROM consumed
              WHERE event_id IN (SELECT id FROM _e) ORDER BY event_id, consumed_at NULLS LAST, run_id, ordinal) c
        WHERE events.id = c.event_id""", _e=pa.table({"id": pa.array(event_ids, pa.string())}))


def _aggregate(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> None:
    """Recompute the aggregate columns of the given runs from their steps."""
    if not run_ids:
        return
    _run_sql(con, """
        UPDATE runs SET steps_total = a.total, steps_executed = a.executed, steps_restored = a.restored,
          steps_failed = a.failed, time_saved_s = a.saved,
          duration_s = epoch(coalesce(runs.ended_at, a.last_end) - runs.started_at)
        FROM (
          SELECT t.run_id,
            count(s.ordinal) FILTER (WHERE s.parent IS NULL) AS total,
            count(s.ordinal) FILTER (WHERE s.parent IS NULL AND s.status = 'completed') AS executed,
            count(s.ordinal) FILTER (WHERE s.parent IS NULL AND s.status = 'restored') AS restored,
            count(s.ordinal) FILTER (WHERE s.parent IS NULL AND s.status = 'failed') AS failed,
            coalesce(sum(greatest(0, s.duration_s - epoch(s.ended_at - s.started_at))) FILTER (WHERE s.status = 'restored'), 0) AS saved,
            max(s.ended_at) AS last_end
          FROM _t t LEFT JOIN steps s ON s.run_id = t.run_id GROUP BY t.run_id
        ) a WHERE runs.run_id = a.run_id""", _t=pa.table({"run_id": pa.array(run_ids, pa.string())}))


# ----------------------------------------------------------------------------------------------------
# The catalog


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


class Catalog:
    """Run history in DuckDB. Each call attaches the database, works and detaches it."""

    def __init__(self, store: Store, *, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        self.store = store
        self.path = store.path / CATALOG_FILE
        self.lock_timeout = lock_timeout

    def ingest(self) -> int:
        """Bring the catalog up to date from all journals and events, incrementally; returns the number
        of journal records ingested."""
        with self._session() as con:
            return self._ingest(con)

    def rebuild(self) -> int:
        """Rebuild the catalog from scratch from the journals; returns the number of records ingested."""
        with self._session(reset=True) as con:
            return self._ingest(con)

    def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None, *, ingest: bool = True) -> pandas.DataFrame:
        """Run SQL on the catalog (after ingesting new records unless ``ingest=False``); the full result."""
        with self._session() as con:
            if ingest:
                self._ingest(con)
            return self._fetch(con, sql, params)

    def query_many(self, queries: Sequence[tuple[str, list[Any] | dict[str, Any] | None]], *, ingest: bool = True) -> list[pandas.DataFrame]:
        """Several queries in one session (one freshness check, one consistent state); their results."""
        with self._session() as con:
            if ingest:
                self._ingest(con)
            return [self._fetch(con, sql, params) for sql, params in queries]

    @contextlib.contextmanager
    def connection(self, *, ingest: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """The catalog's connection for the duration of the ``with`` block (ingested first unless
        ``ingest=False``). Other processes wait for it meanwhile: keep the block short, never keep the
        connection. Its default database is the catalog; errors are raw ``duckdb.Error``."""
        with self._session() as con:
            if ingest:
                self._ingest(con)
            yield con

    def runs(self, *, notebook: str | None = None, status: str | None = None, limit: int = 50) -> pandas.DataFrame:
        """Runs, newest first; optionally of one notebook (name or path) and/or with one status."""
        if status is not None and status not in RUN_STATUSES:
            raise OptionsError(f"unknown run status {status!r}", hint=f"use one of: {', '.join(RUN_STATUSES)}")
        if not isinstance(limit, int) or limit < 1:
            raise OptionsError(f"limit must be a positive integer, not {limit!r}", hint="for example limit=50")
        where, params = [], []
        if notebook is not None:
            where.append("(notebook = ? OR notebook_path = ?)")
            params += [notebook, notebook]
        if status is not None:
            where.append("status = ?")
            params.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return self.query(f"SELECT * FROM runs {clause} ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT ?", [*params, limit])

    def steps(self, run_id: str) -> pandas.DataFrame:
        """The steps of one run, by ordinal; RunNotFoundError if the catalog knows no such run."""
        with self._session() as con:
            self._ingest(con)
            if not con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]:
                raise RunNotFoundError(f"no run {run_id!r} in the store {self.store.path}", hint="`nbdurable runs` lists the run ids of this store")
            return self._fetch(con, "SELECT * FROM steps WHERE run_id = ? ORDER BY ordinal", [run_id])

    # -- connection -------------------------------------------------------------------------------

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
                        _reset(con)
                    else:
                        _ensure_schema(con)
                    yield con
                finally:
                    _detach(base, con, alias)  # before the flock is released: the next process must find DuckDB free
        finally:
            thread_lock.release()

    def _connect(self, deadline: float, *, reset: bool = False) -> tuple[duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection, str]:
        """Attach the database, retrying on its lock with exponential backoff (from 5 ms) and jitter."""
        delay = 0.005
        # An encrypted store keeps no plaintext on disk: its catalog lives in memory, per query.
        target = ":memory:" if encryption_key() is not None else str(self.path)
        while True:
            base = _duckdb()
            con = base.cursor()
            alias = f"nbd_catalog_{next(_aliases)}"
            try:
                con.execute(f"ATTACH {_quote(target)} AS {alias}")
            except duckdb.Error as exc:
                con.close()
                if not _LOCK_RE.search(str(exc)):
                    if reset:  # unreadable (damaged, or from an incompatible DuckDB): derived data, start over
                        self._delete_files()
                        reset = False
                        continue
                    raise StoreError(
                        f"the catalog {self.path} cannot be opened: {exc}",
                        hint=f"it is derived from the journals: delete {self.path} (or call Catalog.rebuild()) and it is rebuilt",
                    ) from exc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pid = re.search(r"PID (\d+)", str(exc))
                    raise _locked_error(self.path, f"process {pid.group(1)}" if pid else "another program", self.lock_timeout) from exc
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

    def _fetch(self, con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | dict[str, Any] | None) -> pandas.DataFrame:
        try:
            # .df() reads the whole (lazy) result: an unread result would block the next query.
            return con.execute(sql, params or []).df()
        except duckdb.Error as exc:
            raise StoreError(f"catalog query failed: {exc}", hint=QUERY_HINT) from exc

    # -- ingestion --------------------------------------------------------------------------------

    def _ingest(self, con: duckdb.DuckDBPyConnection) -> int:
        """Ingest new records of all journals, and new events; then mark runs whose process died as crashed."""
        with _gc_paused():
            total, errors = self._ingest_journals(con)
            self._ingest_events(con)  # after the journals: a reset there empties the events table too
        self._mark_crashed(con)
        if errors:
            raise errors[0]
        return total

    def _ingest_journals(self, con: duckdb.DuckDBPyConnection) -> tuple[int, list[CorruptJournalError]]:
        directory = self.store.path / "journals"
        recorded = _get_meta(con, "journals_mtime_ns")
        plan = self._unchanged_journals(con, directory, recorded)
        if plan is None:
            plan = self._listed_journals(con, directory)
        candidates, trusted_mtime = plan
        total, errors, batch = 0, list[CorruptJournalError](), _Batch()
        # By run id (time-ordered ids): each run's rows stay together, and batches are deterministic.
        for run_id, offset, last_seq, final_offset, was_reopened, reopened, size, known in sorted(candidates, key=operator.itemgetter(0)):
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
                _apply(con, batch)
                batch = _Batch()
        if batch.state:
            _apply(con, batch)
        if trusted_mtime is not None and not errors and recorded != trusted_mtime:
            _set_meta(con, "journals_mtime_ns", trusted_mtime)
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

    def _listed_journals(self, con: duckdb.DuckDBPyConnection, directory: pathlib.Path) -> tuple[list[_Candidate], str | None]:
        """List ``journals/``: the new, unfinished and reopened journals with their sizes, and the
        directory's mtime if it is old enough to be trusted next time. Resets the catalog if a journal
        vanished or shrank (rows cannot be taken back one by one)."""
        mtime = _mtime_ns(directory)  # before listing: a file added meanwhile changes it again
        names = os.listdir(directory)
        ids = [n[: -len(JOURNAL_SUFFIX)] for n in names if n.endswith(JOURNAL_SUFFIX)]
        marked = {n[: -len(REOPENED_SUFFIX)] for n in names if n.endswith(REOPENED_SUFFIX)}
        listed = pa.table({"run_id": pa.array(ids, pa.string()),
                           "reopened": pa.array([i in marked for i in ids] if marked else [False] * len(ids), pa.bool_())})
        con.register("_listed", listed)
        try:
            rows = con.execute("""
                SELECT coalesce(n.run_id, s.run_id), n.run_id IS NOT NULL, s.run_id IS NOT NULL, s.byte_offset, s.last_seq,
                       s.final_offset, coalesce(s.reopened, false), coalesce(n.reopened, false)
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
            _reset(con)
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
        if mtime is None or _get_meta(con, "events_mtime_ns") == mtime:
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
                "id": event_id, "name": event.get("name"), "data": None if data is None else json.dumps(data, sort_keys=True),
                "sent_at": _us(event.get("sent_at")), "sender_pid": sender.get("pid"), "sender_host": sender.get("host"),
                "consumed_by_run": None, "consumed_by_ordinal": None,
            })
        gone = sorted(known - ids)
        trusted = time.time_ns() - int(mtime) > MTIME_TRUST_NS
        if not rows and not gone and not trusted:
            return 0
        con.begin()
        try:
            _insert(con, "events", rows)
            if gone:
                _run_sql(con, "DELETE FROM events WHERE id IN (SELECT id FROM _g)", _g=pa.table({"id": pa.array(gone, pa.string())}))
            _update_consumers(con, [str(r["id"]) for r in rows])
            if trusted:
                _set_meta(con, "events_mtime_ns", mtime)
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
QUERY_HINT = f"check the SQL; tables: {', '.join(TABLES)} (and ingest_state, meta); help(nbdurable.sql) lists their columns"


def _mtime_ns(directory: pathlib.Path) -> str | None:
    """A directory's mtime (ns, as text: how meta stores it), or None if it is missing."""
    try:
        return str(os.stat(directory).st_mtime_ns)
    except FileNotFoundError:
        return None


def _get_meta(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    rows = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()
    return str(rows[0][0]) if rows else None


def _set_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])


def _quote(text: str) -> str:
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


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables if missing; recreate them for an older schema (the data is derived)."""
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    except duckdb.CatalogException:
        row = []
    version = int(row[0][0]) if row and str(row[0][0]).isdigit() else 0
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise StoreFormatError(
            f"the catalog was written by a newer nbdurable (catalog schema {row[0][0]})",
            hint="upgrade with pip install -U nbdurable, or rebuild the catalog for this version with Catalog.rebuild()",
        )
    _reset(con)


def _reset(con: duckdb.DuckDBPyConnection) -> None:
    """Drop and recreate every table (one transaction): the catalog is then empty, ready for a full ingest."""
    con.begin()
    try:
        for table in ("meta", *_COLUMNS):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        for table in _COLUMNS:
            for statement in _ddl(table):
                con.execute(statement)
        con.execute("INSERT INTO meta VALUES ('schema_version', ?), ('created_by', 'nbdurable')", [str(SCHEMA_VERSION)])
        con.commit()
    except BaseException:
        con.rollback()
        raise
