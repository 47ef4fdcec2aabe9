"""The catalog's schema: its tables (column lists, keys, DDL), the schema version and the ``meta`` table,
and the reset that drops and recreates them all (the data is derived from the journals).

Imports nothing else of the catalog package: every other module of it builds on this one.
"""

from __future__ import annotations

import duckdb

from ...errors import StoreFormatError

SCHEMA_VERSION = 5  # 3: events, consumed; ingest_state.final_offset; 4: interrupted vs cancelled,
# runs.cancel_*, runs.time_skipped, runs.forked_from, forked_at_cell; 5: runs.origin, schedule, trigger, parent_run
TABLES = ("runs", "steps", "variables", "attempts", "events", "consumed", "objects", "outputs")  # documented

# The SQL column types (``bulk`` maps each to its Arrow type); one-letter aliases keep the lists below short.
VARCHAR, BIGINT, DOUBLE, TIMESTAMP, BOOLEAN = "VARCHAR", "BIGINT", "DOUBLE", "TIMESTAMP", "BOOLEAN"
_V, _I, _F, _T, _B = VARCHAR, BIGINT, DOUBLE, TIMESTAMP, BOOLEAN
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "runs": [
        ("run_id", _V), ("notebook", _V), ("notebook_path", _V), ("kind", _V), ("params", _V), ("status", _V),
        ("started_at", _T), ("ended_at", _T), ("pid", _I), ("host", _V), ("resumed_from", _V), ("root_run", _V),
        ("superseded_by", _V), ("steps_total", _I), ("steps_executed", _I), ("steps_restored", _I),
        ("steps_failed", _I), ("time_saved_s", _F), ("duration_s", _F), ("wake_at", _T), ("waiting_for", _V),
        ("cancelled_by", _V), ("cancel_reason", _V), ("cancel_requested_at", _T),
        ("time_skipped", _B),
        ("forked_from", _V), ("forked_at_cell", _I),
        ("origin", _V), ("schedule", _V), ("trigger", _V), ("parent_run", _V),
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
    "objects": [
        ("object", _V), ("format", _V), ("size_bytes", _I), ("inline", _B), ("first_run", _V), ("first_ordinal", _I),
    ],
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
    # again while byte_offset = final_offset and it is not reopened (see the docstring of ``ingest``).
    "ingest_state": [("run_id", _V), ("byte_offset", _I), ("last_seq", _I), ("final_offset", _I), ("reopened", _B)],
}
_KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id",), "steps": ("run_id", "ordinal"), "variables": ("run_id", "ordinal", "name"),
    "objects": ("object",), "outputs": ("run_id", "ordinal", "idx"), "attempts": ("run_id", "ordinal", "attempt"),
    "events": ("id",), "consumed": ("run_id", "ordinal", "event_id"), "ingest_state": ("run_id",),
}
STEP_END_COLUMNS = (
    "status", "started_at", "ended_at", "duration_s", "restored_from_run", "restored_from_ordinal",
    "error_ename", "error_evalue", "error_traceback",
)
QUERY_HINT = (f"check the SQL; tables: {', '.join(TABLES)} (and ingest_state, meta); "
              "help(nbdurable.sql) lists their columns")


def ddl(table: str) -> list[str]:
    """The statements that create ``table`` (and its run_id index)."""
    cols = ", ".join(f"{name} {sqltype}" for name, sqltype in COLUMNS[table])
    statements = [f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({', '.join(_KEYS[table])}))"]
    if _KEYS[table][0] == "run_id" and len(_KEYS[table]) > 1:
        # DuckDB scans an index only for a single-column one: without it, one run's rows are a full scan
        # (run ids share their first 8 bytes, all that string zone maps keep). 3x faster one-run queries.
        statements.append(f"CREATE INDEX IF NOT EXISTS {table}_run_id ON {table} (run_id)")
    return statements


def get_meta(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    rows = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()
    return str(rows[0][0]) if rows else None


def set_meta(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
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
            hint="upgrade with pip install -U nbdurable, or rebuild the catalog for this version with "
            "Catalog.rebuild()",
        )
    reset_schema(con)


def reset_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Drop and recreate every table (one transaction): the catalog is then empty, ready for a full ingest."""
    con.begin()
    try:
        for table in ("meta", *COLUMNS):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        for table in COLUMNS:
            for statement in ddl(table):
                con.execute(statement)
        con.execute("INSERT INTO meta VALUES ('schema_version', ?), ('created_by', 'nbdurable')", [str(SCHEMA_VERSION)])
        con.commit()
    except BaseException:
        con.rollback()
        raise
