"""The DuckDB catalog (``catalog.duckdb``): run history for SQL, derived from the journals and events.

``Catalog`` is its front door (``Store.catalog()``). Every operation attaches the database, works and
detaches it; rows are built in Python and inserted as Arrow tables; timestamps are naive UTC. By concept:

- ``schema``: the tables (columns, keys, DDL), the schema version, the ``meta`` table, reset;
- ``rows``: journal records -> rows (``Batch``);
- ``bulk``: applying a batch of rows through Arrow, in one transaction;
- ``session``: attaching the file per operation to a per-process DuckDB, behind lock files (``SessionMixin``);
- ``ingest``: the freshness rules: which journals and event files to read, from where (``IngestMixin``).

Imports go one way: ``schema`` <- ``rows`` <- ``bulk`` <- ``ingest``, ``schema`` <- ``session``, and this
module imports them; none imports this module, nor ``nbdurable.store`` (the store is typed as ``CatalogStore``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import duckdb

from ...errors import OptionsError, RunNotFoundError, StoreError
from ..records import RUN_STATUSES
from .ingest import BATCH_RECORDS, MTIME_TRUST_NS, REOPENED_SUFFIX, CatalogStore, IngestMixin
from .schema import COLUMNS, QUERY_HINT, SCHEMA_VERSION, TABLES, ddl
from .session import CATALOG_FILE, LOCK_FILE, LOCK_TIMEOUT_S, SessionMixin, quote_literal

if TYPE_CHECKING:
    import pandas

__all__ = [
    "BATCH_RECORDS", "CATALOG_FILE", "COLUMNS", "LOCK_FILE", "LOCK_TIMEOUT_S", "MTIME_TRUST_NS", "QUERY_HINT",
    "REOPENED_SUFFIX", "SCHEMA_VERSION", "TABLES", "Catalog", "CatalogStore", "ddl", "quote_literal",
]


class Catalog(SessionMixin, IngestMixin):
    """Run history in DuckDB. Each call attaches the database, works and detaches it."""

    def __init__(self, store: CatalogStore, *, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
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

    def query(self, sql: str, params: list[Any] | dict[str, Any] | None = None, *,
              ingest: bool = True) -> pandas.DataFrame:
        """Run SQL on the catalog (after ingesting new records unless ``ingest=False``); the full result."""
        with self._session() as con:
            if ingest:
                self._ingest(con)
            return self._fetch(con, sql, params)

    def query_many(self, queries: Sequence[tuple[str, list[Any] | dict[str, Any] | None]], *,
                   ingest: bool = True) -> list[pandas.DataFrame]:
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
        return self.query(f"SELECT * FROM runs {clause} ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT ?",
                          [*params, limit])

    def steps(self, run_id: str) -> pandas.DataFrame:
        """The steps of one run, by ordinal; RunNotFoundError if the catalog knows no such run."""
        with self._session() as con:
            self._ingest(con)
            if not con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]:
                where = getattr(self.store, "display", self.store.path)
                raise RunNotFoundError(f"no run {run_id!r} in the store {where}",
                                       hint="`nbdurable runs` lists the run ids of this store")
            return self._fetch(con, "SELECT * FROM steps WHERE run_id = ? ORDER BY ordinal", [run_id])

    def _fetch(self, con: duckdb.DuckDBPyConnection, sql: str,
               params: list[Any] | dict[str, Any] | None) -> pandas.DataFrame:
        try:
            # .df() reads the whole (lazy) result: an unread result would block the next query.
            return con.execute(sql, params or []).df()
        except duckdb.Error as exc:
            raise StoreError(f"catalog query failed: {exc}", hint=QUERY_HINT) from exc
