"""Bulk loading through Arrow: rows become Arrow tables (their columns typed from ``schema.COLUMNS``, odd
values coerced rather than fatal) that DuckDB scans without copying; ``apply_batch`` applies a ``rows.Batch``
in one transaction (upserts, step replacements, the runs' aggregate columns, events' first consumers).

The catalog uses pyarrow only as DuckDB's bulk-insert vehicle.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from .rows import CANCEL_COLUMNS, Batch
from .schema import BIGINT, BOOLEAN, COLUMNS, DOUBLE, STEP_END_COLUMNS, TIMESTAMP, VARCHAR

_ARROW = {
    VARCHAR: pa.string(), BIGINT: pa.int64(), DOUBLE: pa.float64(), TIMESTAMP: pa.timestamp("us"), BOOLEAN: pa.bool_(),
    "VARCHAR[]": pa.list_(pa.string()),
}


def _arrow(table: str, rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> pa.Table:
    spec = [(name, sqltype) for name, sqltype in COLUMNS[table] if columns is None or name in columns]
    values: list[Sequence[Any]] | None
    try:
        # itemgetter + zip transpose in C: several times faster than one comprehension per column.
        values = (list(zip(*map(operator.itemgetter(*(name for name, _ in spec)), rows), strict=False))
                  if len(spec) > 1 else None)
    except KeyError:
        values = None
    if values is None or len(values) != len(spec):
        values = [[row.get(name) for row in rows] for name, _ in spec]
    return pa.table({name: _column(list(col), sqltype) for (name, sqltype), col in zip(spec, values, strict=True)})


def _column(values: list[Any], sqltype: str) -> pa.Array:
    try:
        return pa.array(values, type=_ARROW[sqltype])
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        # A record with an odd value (a string pid, a float size...) must not make the catalog unbuildable.
        return pa.array([_coerce(v, sqltype) for v in values], type=_ARROW[sqltype])


def _coerce(value: Any, sqltype: str) -> Any:
    if value is None:
        return None
    if sqltype == VARCHAR:
        return value if isinstance(value, str) else json.dumps(value, default=str)
    if sqltype in (BIGINT, TIMESTAMP):
        return (int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 2**62
                else None)
    if sqltype == DOUBLE:
        return float(value) if isinstance(value, (int, float)) else None
    if sqltype == BOOLEAN:
        return bool(value)
    return [str(v) for v in value] if isinstance(value, list) else None


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, **tables: pa.Table) -> None:
    """Run ``sql`` with Arrow tables registered under the given names (zero-copy scans)."""
    for name, tbl in tables.items():
        con.register(name, tbl)
    try:
        con.execute(sql)
    finally:
        for name in tables:
            con.unregister(name)


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows, replacing those with the same primary key (re-ingesting is idempotent)."""
    if rows:
        cols = ", ".join(name for name, _ in COLUMNS[table])
        run_sql(con, f"INSERT OR REPLACE INTO {table} ({cols}) SELECT {cols} FROM _rows", _rows=_arrow(table, rows))


def apply_batch(con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
    """Apply a batch in one transaction."""
    con.begin()
    try:
        _apply_steps(con, batch)
        insert_rows(con, "runs", list(batch.runs.values()))
        if batch.run_updates:
            upd = _arrow("runs", list(batch.run_updates.values()),
                         ("run_id", "status", "ended_at", "superseded_by", "wake_at", "waiting_for", *CANCEL_COLUMNS,
                          "time_skipped"))
            run_sql(con, """
                UPDATE runs SET
                  status = CASE WHEN u.status IS NOT NULL THEN u.status
                                WHEN runs.status = 'crashed' AND runs.ended_at IS NULL THEN 'running'
                                ELSE runs.status END,
                  ended_at = coalesce(u.ended_at, runs.ended_at),
                  superseded_by = coalesce(u.superseded_by, runs.superseded_by),
                  wake_at = CASE WHEN u.status IS NOT NULL THEN u.wake_at ELSE runs.wake_at END,
                  waiting_for = CASE WHEN u.status IS NOT NULL THEN u.waiting_for ELSE runs.waiting_for END,
                  cancelled_by = CASE WHEN u.status IS NOT NULL THEN u.cancelled_by ELSE runs.cancelled_by END,
                  cancel_reason = CASE WHEN u.status IS NOT NULL THEN u.cancel_reason ELSE runs.cancel_reason END,
                  cancel_requested_at = CASE WHEN u.status IS NOT NULL THEN u.cancel_requested_at
                                             ELSE runs.cancel_requested_at END,
                  time_skipped = coalesce(u.time_skipped, runs.time_skipped)
                FROM _u u WHERE runs.run_id = u.run_id""", _u=upd)
        if batch.objects:
            cols = ", ".join(name for name, _ in COLUMNS["objects"])
            run_sql(con, f"""
                INSERT INTO objects ({cols}) SELECT {cols} FROM _o ON CONFLICT (object) DO UPDATE SET
                  format = coalesce(objects.format, excluded.format),
                  size_bytes = coalesce(objects.size_bytes, excluded.size_bytes),
                  inline = objects.inline AND excluded.inline,
                  first_run = CASE WHEN (excluded.first_run, excluded.first_ordinal)
                                        < (objects.first_run, objects.first_ordinal)
                                   THEN excluded.first_run ELSE objects.first_run END,
                  first_ordinal = CASE WHEN (excluded.first_run, excluded.first_ordinal)
                                            < (objects.first_run, objects.first_ordinal)
                                   THEN excluded.first_ordinal ELSE objects.first_ordinal END""",
                     _o=_arrow("objects", list(batch.objects.values())))
        insert_rows(con, "attempts", list(batch.attempts.values()))
        insert_rows(con, "consumed", list(batch.consumed.values()))
        update_consumers(con, sorted({k[2] for k in batch.consumed}))
        insert_rows(con, "ingest_state", [{"run_id": r, "byte_offset": o, "last_seq": s, "final_offset": f,
                                           "reopened": x} for r, (o, s, f, x) in batch.state.items()])
        _aggregate(con, sorted({*batch.runs, *batch.run_updates, *(k[0] for k in batch.steps)}))
        con.commit()
    except BaseException:
        con.rollback()
        raise


def _apply_steps(con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
    if not batch.steps:
        return
    keys = pa.table({"run_id": pa.array([k[0] for k in batch.steps], pa.string()),
                     "ordinal": pa.array([k[1] for k in batch.steps], pa.int64())})
    for table in ("variables", "outputs"):  # a step's latest step_end replaces its variables and outputs
        run_sql(con, f"DELETE FROM {table} USING _k WHERE {table}.run_id = _k.run_id AND {table}.ordinal = _k.ordinal",
                _k=keys)
    insert_rows(con, "steps", [row for row in batch.steps.values() if row["_full"]])
    ends = [row for row in batch.steps.values() if not row["_full"]]
    if ends:  # step_end without its step_start in this batch: update only what step_end knows
        cols = ("run_id", "ordinal", *STEP_END_COLUMNS)
        sets = ", ".join(f"{c} = excluded.{c}" for c in STEP_END_COLUMNS)
        run_sql(con, f"INSERT INTO steps ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _e "
                     f"ON CONFLICT (run_id, ordinal) DO UPDATE SET {sets}",
                 _e=_arrow("steps", ends, cols))
    insert_rows(con, "variables", [v for step in batch.variables.values() for v in step.values()])
    insert_rows(con, "outputs", [o for step in batch.outputs.values() for o in step])


def update_consumers(con: duckdb.DuckDBPyConnection, event_ids: list[str]) -> None:
    """Set events.consumed_by_* of these events: their first consumer (by time, then run, ordinal), so
    the result does not depend on the order journals and events were ingested in."""
    if not event_ids:
        return
    run_sql(con, """
        UPDATE events SET consumed_by_run = c.run_id, consumed_by_ordinal = c.ordinal
        FROM (SELECT DISTINCT ON (event_id) event_id, run_id, ordinal FROM consumed
              WHERE event_id IN (SELECT id FROM _e) ORDER BY event_id, consumed_at NULLS LAST, run_id, ordinal) c
        WHERE events.id = c.event_id""", _e=pa.table({"id": pa.array(event_ids, pa.string())}))


def _aggregate(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> None:
    """Recompute the aggregate columns of the given runs from their steps."""
    if not run_ids:
        return
    run_sql(con, """
        UPDATE runs SET steps_total = a.total, steps_executed = a.executed, steps_restored = a.restored,
          steps_failed = a.failed, time_saved_s = a.saved,
          duration_s = epoch(coalesce(runs.ended_at, a.last_end) - runs.started_at)
        FROM (
          SELECT t.run_id,
            count(s.ordinal) FILTER (WHERE s.parent IS NULL) AS total,
            count(s.ordinal) FILTER (WHERE s.parent IS NULL AND s.status = 'completed') AS executed,
            count(s.ordinal) FILTER (WHERE s.parent IS NULL AND s.status = 'restored') AS restored,
            count(s.ordinal) FILTER (WHERE s.parent IS NULL AND s.status = 'failed') AS failed,
            coalesce(sum(greatest(0, s.duration_s - epoch(s.ended_at - s.started_at)))
                     FILTER (WHERE s.status = 'restored'), 0) AS saved,
            max(s.ended_at) AS last_end
          FROM _t t LEFT JOIN steps s ON s.run_id = t.run_id GROUP BY t.run_id
        ) a WHERE runs.run_id = a.run_id""", _t=pa.table({"run_id": pa.array(run_ids, pa.string())}))
