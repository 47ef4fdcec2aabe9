"""Run history as DataFrames: ``nbd.history()`` lists runs, ``nbd.sql()`` runs SQL over the catalog.

Both read the store's DuckDB catalog (``store/catalog.py``), bringing it up to date from the journals
and events first (cheap when nothing changed). duckdb, pyarrow and pandas are imported on first use, so
``import nbdurable`` stays light.

DataFrame variables: in ``nbd.sql``, ``vars.<name>`` is the DataFrame variable ``<name>`` of one run (its
last recorded value), queried where it is stored, without loading it into the kernel. A DataFrame
stored as a Parquet object file is a view over ``read_parquet`` of that file: DuckDB reads only the
columns and row groups the query needs, outside Python. Two cases must be decoded first, in this process,
into an Arrow table (pyarrow, not pandas) and only when the query names them: a small DataFrame inlined in
the journal record (at most 32 KiB), and any object of an encrypted store (DuckDB cannot read the
ciphertext; decryption also authenticates it). A DataFrame that was pickled (dtypes that Parquet does not
hold exactly, e.g. object columns) is not queryable this way. DuckDB reads a Parquet file without
checking its authentication tag, like a restore of a big data object (``nbdurable check`` verifies
every object).
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from nbdurable.errors import OptionsError, RunNotFoundError, StoreError
from nbdurable.runtime.policy import parse_duration
from nbdurable.runtime.session import active_session, default_store
from nbdurable.store import Store
from nbdurable.store.records import RUN_STATUSES

if TYPE_CHECKING:
    import os

    import duckdb
    import pandas
    import pyarrow

DATAFRAME_TYPES = ("pandas.core.frame.DataFrame", "pandas.DataFrame")
_TIME_COLUMNS = ("started_at", "ended_at", "wake_at")
_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
_VARS_REF = re.compile(r"\bvars\s*\.\s*(?:\"((?:[^\"]|\"\")+)\"|([A-Za-z_][A-Za-z0-9_]*))", re.IGNORECASE)
_PARQUET_MAGIC = b"PAR1"
_vars_lock = threading.Lock()  # `vars` is a database name, global to the process's DuckDB instance


def history(
    notebook: str | None = None,
    status: str | None = None,
    since: Any = None,
    until: Any = None,
    params: Mapping[str, Any] | None = None,
    limit: int | None = 100,
    store: str | os.PathLike[str] | Store | None = None,
    *,
    schedule: str | None = None,
    trigger: str | None = None,
    parent_run: str | None = None,
) -> pandas.DataFrame:
    """Runs of the store, newest first, as a DataFrame (one row per run, the columns of the ``runs`` table).

    - ``notebook``: the notebook's name or path (relative paths are taken from the working directory).
    - ``status``: one of running, completed, failed, suspended, interrupted, cancelled, crashed.
    - ``since`` / ``until``: runs started at or after ``since`` and before ``until``. Each is a datetime
      (naive means local time), a date (its midnight, local time), an ISO 8601 string, or a duration
      ("7d", "12h", "90m", a timedelta) meaning that long ago.
    - ``params``: parameter values the run must have, e.g. ``{"region": "eu"}`` (compared as JSON).
    - ``limit``: at most this many runs (None: all).
    - ``store``: a path or Store; default the loaded extension's store, else $NBDURABLE_STORE, else ./.nbdurable.
    - ``schedule`` / ``trigger``: runs a schedule or a trigger of that name started (``nbdurable schedule``,
      ``nbdurable trigger``).
    - ``parent_run``: child runs (``nbd.run_notebook``) of that run, or of any run of its resume chain (the
      run's root or any run resuming it).

    Columns include what started a run: ``origin`` (a dict: schedule, trigger, parent run, claim...; None
    for a run a person started), ``schedule``, ``trigger`` and ``parent_run``.
    ``params``, ``waiting_for`` and ``origin`` come back decoded (dicts), the times as timezone-aware UTC timestamps.
    Bad arguments raise OptionsError.
    """
    where: list[str] = []
    args: list[Any] = []
    if notebook is not None:
        if not isinstance(notebook, str):
            raise OptionsError(f"notebook must be a notebook name or path, not {notebook!r}",
                               hint="e.g. notebook='report.ipynb'")
        # As recorded (a name, or the absolute path Jupyter and `nbdurable run` give), or a path relative
        # to the working directory.
        absolute = os.path.abspath(os.path.expanduser(notebook))
        where.append("(notebook IN (?, ?) OR notebook_path IN (?, ?))")
        args += [notebook, absolute, notebook, absolute]
    if status is not None:
        if status not in RUN_STATUSES:
            raise OptionsError(f"unknown run status {status!r}", hint=f"use one of: {', '.join(RUN_STATUSES)}")
        where.append("status = ?")
        args.append(status)
    for bound, op, name in ((since, ">=", "since"), (until, "<", "until")):
        if bound is not None:
            where.append(f"started_at {op} ?")
            args.append(_utc_naive(bound, name))
    for value, column in ((schedule, "schedule"), (trigger, "trigger")):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(_name(value, column))
    if parent_run is not None:
        parent = _name(parent_run, "parent_run")
        where.append("(parent_run = ? OR json_extract_string(origin, '$.parent_root') = ? OR json_extract_string("
                     "origin, '$.parent_root') = (SELECT coalesce(root_run, run_id) FROM runs WHERE run_id = ?))")
        args += [parent, parent, parent]
    if params is not None:
        if not isinstance(params, Mapping):
            raise OptionsError(f"params must be a dict of parameter values, not {params!r}",
                               hint="e.g. params={'region': 'eu'}")
        for key, value in params.items():
            if not isinstance(key, str):
                raise OptionsError(f"parameter names are strings, not {key!r}", hint="e.g. params={'region': 'eu'}")
            try:
                encoded = json.dumps(value, sort_keys=True)
            except (TypeError, ValueError) as exc:
                raise OptionsError(f"parameter {key!r}: {value!r} is not a JSON value ({exc})",
                                   hint="compare with plain values: strings, numbers, booleans, None, lists, "
                                        "dicts") from None
            # A JSON pointer (RFC 6901) names the key whatever characters it holds.
            where.append("json_extract(params, ?) = json(?)")
            args += ["/" + key.replace("~", "~0").replace("/", "~1"), encoded]
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise OptionsError(f"limit must be a non-negative integer or None, not {limit!r}", hint="for example limit=100")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    sql_text = f"SELECT * FROM runs {clause} ORDER BY started_at DESC NULLS LAST, run_id DESC"
    if limit is not None:
        sql_text += " LIMIT ?"
        args.append(limit)
    frame = default_store(store).catalog().query(sql_text, args)
    for column in ("params", "waiting_for", "origin"):
        frame[column] = [json.loads(v) if isinstance(v, str) else None for v in frame[column]]
    for column in _TIME_COLUMNS:
        frame[column] = frame[column].dt.tz_localize("UTC")
    return frame


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise OptionsError(f"{what} must be a name (a non-empty string), not {value!r}",
                           hint=f"e.g. nbd.history({what}='nightly')" if what != "parent_run"
                           else "e.g. nbd.history(parent_run=nbd.current_run_id())")
    return value


def sql(
    query: str,
    params: list[Any] | dict[str, Any] | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    *,
    run: str | None = None,
) -> pandas.DataFrame:
    """Run SQL over the store's catalog and return the result as a DataFrame.

    The catalog is brought up to date first (new journal records, new events). ``params`` fills ``?``
    (a list) or ``$name`` (a dict) placeholders.

    Tables (timestamps are naive UTC in SQL; JSON columns are text, use DuckDB's ``json_extract``)::

        runs       one row per run: run_id, notebook, notebook_path, kind, params (JSON), status, started_at,
                   ended_at, pid, host, resumed_from, root_run, superseded_by, steps_total, steps_executed,
                   steps_restored, steps_failed, time_saved_s, duration_s, wake_at, waiting_for (JSON),
                   cancelled_by, cancel_reason, cancel_requested_at (who cancelled the run, why, when),
                   time_skipped (its times are a time-skipping clock's: ``nbd.testing``), forked_from,
                   forked_at_cell (the run and cell whose state it started from: checkout, fork, rerun),
                   origin (JSON: what started the run when no person did), schedule, trigger, parent_run
        steps      one row per step: run_id, ordinal, name, parent (the cell of an explicit step), source,
                   source_hash, status, started_at, ended_at, duration_s, always, no_state, restored_from_run,
                   restored_from_ordinal, error_ename, error_evalue, error_traceback
        attempts   one row per attempt of a retried step: run_id, ordinal, attempt, started_at, ended_at,
                   error_ename, error_evalue, next_delay_s
        variables  the state changes a step recorded: run_id, ordinal, name, op (set/del), object, format,
                   type, size_bytes, instance, reason
        events     one row per sent event: id, name, data (JSON), sent_at, sender_pid, sender_host,
                   consumed_by_run, consumed_by_ordinal (its first consumer)
        consumed   every consumption of an event by a wait step: run_id, ordinal, event_id, name, consumed_at
        objects    object files and inline payloads: object, format, size_bytes, inline, first_run, first_ordinal
        outputs    the outputs a step recorded: run_id, ordinal, idx, output_type, name, mime_types, text, data

    ``vars.<name>`` is the DataFrame variable ``<name>`` of run ``run`` (default: the current run of the
    loaded extension, else the newest run of the store), queried without loading it into the kernel,
    e.g. ``nbd.sql("SELECT region, sum(amount) FROM vars.sales GROUP BY region")``.

    A failing query raises StoreError (its hint lists the tables).
    """
    if not isinstance(query, str) or not query.strip():
        raise OptionsError("sql() needs a query", hint="e.g. nbd.sql('SELECT * FROM runs LIMIT 5')")
    if params is not None and not isinstance(params, (list, tuple, dict)):
        raise OptionsError(f"params must be a list (for ? placeholders) or a dict (for $name), not {params!r}",
                           hint="e.g. nbd.sql('SELECT * FROM runs WHERE status = ?', ['failed'])")
    target = default_store(store)
    catalog = target.catalog()
    bound = list(params) if isinstance(params, tuple) else params
    if run is None and not _VARS_REF.search(query):
        return catalog.query(query, bound)
    import duckdb

    from nbdurable.store.catalog import QUERY_HINT

    with _vars_lock, catalog.connection() as con:
        run_id = _resolve_run(con, target, run)
        with _vars_schema(con):
            hint = _create_vars(con, target, run_id, {a or b for a, b in _VARS_REF.findall(query)})
            try:
                return con.execute(query, bound or []).df()
            except duckdb.Error as exc:
                raise StoreError(f"catalog query failed: {exc}", hint=f"{QUERY_HINT}; {hint}") from exc


# ---------------------------------------------------------------------------------------------------
# Times


def _utc_naive(value: Any, name: str) -> _dt.datetime:
    """A since/until bound as a naive UTC datetime (how the catalog stores times)."""
    hint = ('use a datetime, a date, an ISO 8601 string ("2024-05-01", "2024-05-01T12:00") '
            'or a duration ago ("7d", "12h")')
    if isinstance(value, _dt.datetime):
        moment = value
    elif isinstance(value, _dt.date):
        moment = _dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, _dt.timedelta):
        moment = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=parse_duration(value))
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            raise OptionsError(f"{name}={value!r} is ambiguous: a bare number is neither a date nor a duration",
                               hint=hint)
        try:
            moment = _dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            try:
                seconds = parse_duration(text)
            except OptionsError:
                raise OptionsError(f"{name}={value!r} is neither a date nor a duration", hint=hint) from None
            moment = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=seconds)
    else:
        raise OptionsError(f"{name} must be a date, a time or a duration, not {value!r}", hint=hint)
    try:
        if moment.tzinfo is None:
            moment = moment.astimezone()  # naive: local time
        return moment.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    except (OverflowError, ValueError, OSError) as exc:
        raise OptionsError(f"{name}={value!r} is out of range ({exc})", hint=hint) from None


# ---------------------------------------------------------------------------------------------------
# DataFrame variables: the `vars` schema


def _resolve_run(con: duckdb.DuckDBPyConnection, store: Store, run: str | None) -> str:
    if run is None:
        run = _current_run(store)
    if run is None:
        rows = con.execute("SELECT run_id FROM runs ORDER BY started_at DESC NULLS LAST, "
                           "run_id DESC LIMIT 1").fetchall()
        if not rows:
            raise RunNotFoundError(f"the store {store.display} has no runs: vars.<name> has no run to read",
                                   hint="run a notebook first")
        return str(rows[0][0])
    if (not isinstance(run, str)
            or not con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run]).fetchall()[0][0]):
        raise RunNotFoundError(f"no run {run!r} in the store {store.display}",
                               hint="nbd.history() lists the runs of this store")
    return run


def _current_run(store: Store) -> str | None:
    """The run of the session active in this process, if it records into ``store``: the run recording
    now, else the run it resumes."""
    current = active_session()
    if current is None or current.store != store:
        return None
    if current.run_id is not None:
        current.wait_durable()  # the previous cells' background commits: their variables are in the journal
        return current.run_id
    return current.resume_target


@contextmanager
def _vars_schema(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """An in-memory database ``vars`` for the session's views, detached afterwards."""
    import duckdb

    con.execute("DETACH DATABASE IF EXISTS vars")  # left over by a session that failed to detach it
    con.execute("ATTACH ':memory:' AS vars")
    try:
        yield
    finally:
        try:
            con.execute("DETACH vars")
        except duckdb.Error:
            # A query left a transaction open: roll it back (the catalog session ends anyway).
            con.execute("ROLLBACK")
            con.execute("DETACH vars")


def _create_vars(con: duckdb.DuckDBPyConnection, store: Store, run_id: str, named: set[str]) -> str:
    """Create ``vars.<name>`` for the run's DataFrame variables; returns a hint naming them."""
    from nbdurable.store.catalog import quote_literal

    rows = con.execute("""
        SELECT name, object, format, type FROM (
          SELECT v.name, v.op, v.object, v.format, v.type,
                 row_number() OVER (PARTITION BY v.name ORDER BY v.ordinal DESC) AS k
          FROM variables v JOIN steps s ON s.run_id = v.run_id AND s.ordinal = v.ordinal
          WHERE v.run_id = ? AND s.parent IS NULL)
        WHERE k = 1 AND op = 'set' AND type IN (SELECT unnest(?::VARCHAR[])) ORDER BY name""",
                       [run_id, list(DATAFRAME_TYPES)]).fetchall()
    frames = {str(name): (key, fmt) for name, key, fmt, _type in rows}
    queryable = sorted(name for name, (_key, fmt) in frames.items() if fmt == "parquet")
    hint = (f"DataFrame variables of run {run_id}: {', '.join(f'vars.{n}' for n in queryable)}" if queryable
            else f"run {run_id} has no DataFrame variable stored as Parquet")
    wanted = {n.replace('""', '"') for n in named}
    frame_refs = functools.cache(lambda: _frame_refs(store, run_id))  # the journal read once, if ever
    for name, (key, fmt) in frames.items():
        if fmt != "parquet":
            if name in wanted:
                raise StoreError(
                    f"vars.{name}: the DataFrame `{name}` of run {run_id} was pickled (some of its dtypes have no "
                    "exact Parquet form), so SQL cannot read it where it is stored",
                    hint="load it in the kernel and query it there, e.g. duckdb.sql('SELECT ... FROM df')",
                )
            continue
        view = f'vars."{name.replace(chr(34), chr(34) * 2)}"'
        path = store.object_path(str(key))
        if not path.is_file() and (by_column := frame_refs().get((name, str(key)))) is not None:
            con.execute(f"CREATE VIEW {view} AS {_columns_side_by_side(store, by_column)}")
        elif _is_plain_parquet(path):
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet({quote_literal(str(path))})")
        elif name in wanted:
            registered = f"__nbd_var_{name}"
            con.register(registered, _decoded_table(store, run_id, name, str(key), path))
            con.execute(f'CREATE VIEW {view} AS SELECT * FROM temp.main."{registered}"')
    return hint


def _frame_refs(store: Store, run_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(name, object key) -> the ``frame`` of each DataFrame the run stored column by column
    (``runtime/frames.py``)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for record in store.read_journal(run_id):
        for ref in record.get("variables") or [] if record.get("t") == "step_end" else []:
            if isinstance(ref, dict) and isinstance(ref.get("frame"), dict):
                found[(str(ref.get("name")), str(ref.get("object")))] = ref["frame"]
    return found


def _columns_side_by_side(store: Store, frame: dict[str, Any]) -> str:
    """SQL reading a column-wise frame's Parquet parts side by side: its index columns (a non-range index),
    then each column under its label, as ``read_parquet`` of the same frame written whole would show."""
    from nbdurable.store.catalog import quote_literal

    def part(key: str, alias: str) -> str:
        return f"read_parquet({quote_literal(str(store.object_path(key)))}) AS {alias}"

    sources, selected = [], []
    if isinstance(frame.get("index"), list):
        sources.append(part(str(frame["index"][0]), "ix"))
        selected.append("ix.*")
    for j, (label, key, _tag) in enumerate(frame["columns"]):
        sources.append(part(str(key), f"c{j}"))
        selected.append(f'c{j}.v AS "{str(label).replace(chr(34), chr(34) * 2)}"')
    return f"SELECT {', '.join(selected)} FROM {' POSITIONAL JOIN '.join(sources)}"


def _is_plain_parquet(path: Any) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == _PARQUET_MAGIC
    except FileNotFoundError:
        return False


def _decoded_table(store: Store, run_id: str, name: str, key: str, path: Any) -> pyarrow.Table:
    """An inlined or encrypted Parquet DataFrame as an Arrow table (decoded in this process)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.is_file():
        payload: Any = store.read_object(key, None)  # encrypted: decrypting authenticates it (AES-GCM)
    else:
        payload = _inline_payload(store, run_id, name, key)
    try:
        return pq.read_table(pa.BufferReader(pa.py_buffer(payload)))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StoreError(f"vars.{name}: the stored Parquet of object {key} is unreadable ({exc})",
                         hint="run `nbdurable check` on the store") from exc


def _inline_payload(store: Store, run_id: str, name: str, key: str) -> bytes:
    """The payload of a variable inlined in its step_end record (the journal line is authenticated)."""
    for record in reversed(store.read_journal(run_id)):
        if record.get("t") != "step_end":
            continue
        for ref in record.get("variables") or []:
            if isinstance(ref, dict) and ref.get("name") == name and ref.get("object") == key and ref.get("inline"):
                return base64.b64decode(str(ref["inline"]))
    raise StoreError(f"vars.{name}: object {key} of run {run_id} is neither in the store nor inlined in the journal",
                     hint="it may have been garbage-collected; run `nbdurable check`")


__all__ = ["history", "sql"]
