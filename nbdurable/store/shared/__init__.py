"""The shared store: journals, events, cancel requests and leases in PostgreSQL, objects on any fsspec URL.

``Store.open("postgresql://...")`` returns a ``SharedStore`` (``NBDURABLE_STORE``, ``--store``,
``c.Durable.store`` all take the URL). It has ``Store``'s interface (a virtual subclass): every method the
runtime, the runners and the CLI call behaves as on a directory (same records, same tags, same errors).
By concept:

- ``pg``: URLs and their redaction, the connection pool, versioned migrations;
- ``pg_journal``: journals as rows, the writer;
- ``pg_leases``: leases as rows with heartbeat and expiry;
- ``pg_events``: events and cancel requests as rows;
- ``pg_claims``: claims, the run queue (``take_claim``: ``FOR UPDATE SKIP LOCKED``) and concurrency slots;
- ``pg_definitions``: schedules, triggers, queue settings and their cursors as rows;
- ``fsspec_objects``: content-addressed objects on any fsspec file system;
- ``maintenance``: check / repair / gc of a shared store; ``migrate``: a directory store copied in.

The objects' URL is recorded in the database when the store is created (``NBDURABLE_OBJECTS``, required
then); later openers use it unless ``NBDURABLE_OBJECTS`` overrides it (the same bucket mounted elsewhere).
``path`` is this machine's cache directory for the store: the DuckDB catalog (ingested from PostgreSQL),
temporary files, downloaded Parquet objects. The password of the URL is never shown: ``display``.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import urllib.parse
from typing import Any

from ...errors import StoreError, StoreFormatError
from ..crypto import encryption_key
from .fsspec_objects import FsspecObjectsMixin, object_filesystem
from .pg import database_error, is_store_url, pool, redact
from .pg_claims import PgClaimsMixin
from .pg_definitions import PgDefinitionsMixin
from .pg_events import PgEventsMixin
from .pg_journal import PgJournalsMixin
from .pg_leases import PgLeasesMixin

ENV_OBJECTS = "NBDURABLE_OBJECTS"
FORMAT_VERSION = 2  # as a directory store's: journal lines and objects authenticated


def cache_dir(url: str) -> pathlib.Path:
    """This machine's cache directory of the store at ``url`` (keyed by the URL without its password):
    ``$NBDURABLE_CACHE_DIR`` or ``$XDG_CACHE_HOME/nbdurable`` or ``~/.cache/nbdurable``."""
    parts = urllib.parse.urlsplit(url)
    ident = redact(url)  # server, port, database, user, options (a search_path): never the password
    base = os.environ.get("NBDURABLE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nbdurable")
    name = (parts.path.strip("/") or "postgres").replace("/", "_")[:40]
    return pathlib.Path(base) / "shared" / f"{name}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


class _Query:
    url: str

    def _query(self, sql: str, params: Any = None, doing: str = "") -> list[tuple[Any, ...]]:
        """Run one statement on a pooled connection (autocommit); its rows (empty if it returns none)."""
        import psycopg

        try:
            with pool(self.url).connection() as conn, conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            raise database_error(exc, self.url, doing or "querying the store") from None

    def _query_lazy(self, sql: str, params: Any = None, doing: str = "") -> list[tuple[Any, ...]]:
        """``_query`` committed without waiting for the WAL flush (``synchronous_commit = off``): visible to
        every process at once, durable a moment later. Only for writes whose loss in a server crash costs
        work, never a decision (a claim's lease taken, a queue marker: taken or marked again)."""
        import psycopg

        try:
            with pool(self.url).connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.execute("SET LOCAL synchronous_commit = off")
                cur.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            raise database_error(exc, self.url, doing or "querying the store") from None

    def _many(self, sql: str, rows: list[list[Any]], doing: str) -> None:
        """Run one statement for each of ``rows``, all in one transaction (one commit, one WAL flush)."""
        import psycopg

        try:
            with pool(self.url).connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)
        except psycopg.Error as exc:
            raise database_error(exc, self.url, doing) from None


class SharedStore(_Query, PgJournalsMixin, PgLeasesMixin, PgEventsMixin, PgClaimsMixin, PgDefinitionsMixin,
                  FsspecObjectsMixin):
    """A store in PostgreSQL with objects on fsspec. Open it with ``Store.open(url)``; a virtual subclass of
    ``Store`` (``Store.__subclasshook__``)."""

    FORMAT_VERSION = FORMAT_VERSION
    shared_store = True  # ``Store.__subclasshook__``: isinstance(shared, Store) holds

    def __init__(self, url: str, objects_url: str) -> None:
        """Use ``Store.open(url)`` (or ``SharedStore.open``): it connects, migrates and checks the settings."""
        self.url = url
        self.objects_url = objects_url
        self._fs, self._root = object_filesystem(objects_url)
        self.path = cache_dir(url)
        for sub in ("tmp", "objects"):
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)

    @classmethod
    def open(cls, url: str, *, create: bool = True, objects: str | None = None) -> SharedStore:
        """Open the shared store at ``url``; with ``create=True`` make it (``objects`` or
        ``$NBDURABLE_OBJECTS`` then names where its objects go)."""
        if not is_store_url(url):
            raise StoreFormatError(f"not a PostgreSQL URL: {redact(url)}",
                                   hint="use postgresql://user@host:port/database")
        probe = _Query()
        probe.url = url
        pool(url)  # connects and migrates
        settings = dict(probe._query("SELECT key, value FROM nbd_settings", None, "reading the store settings"))
        wanted = objects or os.environ.get(ENV_OBJECTS) or None
        if "format" not in settings:
            if not create:
                raise StoreFormatError(f"no nbdurable store at {redact(url)}",
                                       hint="check the URL; open it with create=True to make one")
            if wanted is None:
                raise StoreFormatError(
                    f"a new shared store at {redact(url)} needs a place for its objects",
                    hint=f"set {ENV_OBJECTS} to an fsspec URL (file:///shared/dir, s3://bucket/prefix...)")
            values = {"objects": wanted, "created_by": "nbdurable"}
            if encryption_key() is not None:
                values["encrypted"] = "1"
            values["format"] = str(FORMAT_VERSION)  # last: a store is complete once it has a format
            for key, value in values.items():
                probe._query("INSERT INTO nbd_settings VALUES (%s, %s) ON CONFLICT DO NOTHING", [key, value],
                             "creating the store")
            settings = dict(probe._query("SELECT key, value FROM nbd_settings", None, "reading the store"))
        if int(settings["format"]) > FORMAT_VERSION:
            raise StoreFormatError(f"the store {redact(url)} was written by a newer nbdurable",
                                   hint="upgrade with pip install -U nbdurable")
        if settings.get("encrypted") and encryption_key() is None:
            raise StoreFormatError(f"the store {redact(url)} is encrypted and no key is set",
                                   hint="set NBDURABLE_ENCRYPTION_KEY (or NBDURABLE_ENCRYPTION_KEY_FILE)")
        store = cls(url, wanted or settings["objects"])
        store._sweep_tmp()
        return store

    @property
    def location(self) -> str:
        """The URL (with its credentials: for child processes' environment, never to show)."""
        return self.url

    @property
    def display(self) -> str:
        """The URL without its password."""
        return redact(self.url)

    @property
    def local_dirs(self) -> list[str]:
        """The local directories this store writes: its cache, and the objects' root when it is local."""
        from .fsspec_objects import _is_local

        return [str(self.path), *([self._root] if _is_local(self._fs) else [])]

    def journal_path(self, run_id: str) -> pathlib.Path:
        raise StoreError(f"a shared store keeps run {run_id}'s journal as rows, not a file",
                         hint="use Store.read_journal / journal_rows")

    def catalog(self) -> Any:
        """The DuckDB catalog of this store, in the local cache directory, ingested from PostgreSQL."""
        from ..catalog import Catalog

        return Catalog(self)

    def __repr__(self) -> str:
        return f"<SharedStore {redact(self.url)} objects={redact(self.objects_url)}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SharedStore) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)


__all__ = ["ENV_OBJECTS", "SharedStore", "cache_dir", "is_store_url", "redact"]
