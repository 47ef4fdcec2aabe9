"""PostgreSQL plumbing of the shared store: URLs (and their redaction), one connection pool per process and
URL, and the versioned schema migrations.

Credentials come only from the URL or libpq's environment (``PGPASSWORD``, ``~/.pgpass``); everything this
package shows (errors, ``repr``, logs) names a store by ``redact(url)``, never with its password.

Migrations are numbered and applied in order, each in its own transaction, under a transaction-level
advisory lock, and recorded in ``schema_migrations``: any number of processes opening a new database at
once apply each migration exactly once. A change of schema is a further entry of ``MIGRATIONS`` (never an
edit of an applied one): append ``(N, "what", SQL)``. Migration 2 holds the orchestration engine's tables
(claims and the run queue, schedules, triggers, queue settings).
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
from typing import Any

from ...errors import StoreError, StoreFormatError

URL_SCHEMES = ("postgresql://", "postgres://")
_MIGRATION_LOCK = 0x6E62647572  # "nbdur": the advisory lock id taken while migrating
_PASSWORD_RE = re.compile(r"(?i)(password\s*=\s*)('[^']*'|\S+)")

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "journals, events, cancel requests, leases, store settings", """
        CREATE TABLE nbd_settings (key text PRIMARY KEY, value text NOT NULL);
        CREATE TABLE nbd_journals (
            run_id text PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now());
        -- one row per journal record: the JSON body (sealed if the store is encrypted) and its HMAC-SHA256
        -- tag, as a journal line holds them. The primary key proves that no record is committed twice.
        CREATE TABLE nbd_records (
            run_id text NOT NULL REFERENCES nbd_journals (run_id) ON DELETE CASCADE,
            seq bigint NOT NULL,
            body bytea NOT NULL,
            tag text NOT NULL,
            xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
            PRIMARY KEY (run_id, seq));
        CREATE INDEX nbd_records_xid ON nbd_records (xid);
        CREATE TABLE nbd_events (
            id text PRIMARY KEY,
            body bytea NOT NULL,
            tag text NOT NULL,
            xid xid8 NOT NULL DEFAULT pg_current_xact_id());
        CREATE TABLE nbd_cancels (
            run_id text PRIMARY KEY,
            body bytea NOT NULL,
            tag text NOT NULL);
        CREATE TABLE nbd_leases (
            run_id text PRIMARY KEY,
            token text NOT NULL,
            pid integer NOT NULL,
            host text NOT NULL,
            boot_id text NOT NULL,  -- the holder's process table: kernel boot id and pid namespace
            acquired double precision NOT NULL,
            heartbeat double precision NOT NULL,
            expires_at timestamptz NOT NULL);
        -- what `nbdurable check --repair` set aside (journal rows after a damaged one, damaged events): a
        -- repair never deletes data
        CREATE TABLE nbd_aside (
            kind text NOT NULL,
            ident text NOT NULL,
            seq bigint,
            body bytea NOT NULL,
            tag text NOT NULL,
            set_aside_at timestamptz NOT NULL DEFAULT now());
    """),
    (2, "claims and the run queue, schedules, triggers, queue settings and their cursors", """
        -- one row per claim (pg_claims.py): the authenticated line a claim file holds under its key (the
        -- first claim of a key stands); the plain columns are copies for the queue's order and filters, and
        -- its state (the marker files of a directory store)
        CREATE TABLE nbd_claims (
            kind text NOT NULL,
            key text NOT NULL,
            digest text NOT NULL,
            run_id text,
            body bytea NOT NULL,
            tag text NOT NULL,
            claimed_at double precision NOT NULL,
            priority integer NOT NULL DEFAULT 0,
            not_before double precision NOT NULL DEFAULT 0,
            queue text NOT NULL DEFAULT 'default',
            flow_digest text,
            started boolean NOT NULL DEFAULT false,
            finished boolean NOT NULL DEFAULT false,
            PRIMARY KEY (kind, key));
        CREATE INDEX nbd_claims_queue ON nbd_claims (priority DESC, claimed_at, key) WHERE NOT started;
        CREATE INDEX nbd_claims_unfinished ON nbd_claims (claimed_at, key) WHERE started AND NOT finished;
        CREATE TABLE nbd_schedules (name text PRIMARY KEY, body bytea NOT NULL, tag text NOT NULL);
        CREATE TABLE nbd_schedule_cursors (name text PRIMARY KEY, body bytea NOT NULL, tag text NOT NULL);
        CREATE TABLE nbd_triggers (name text PRIMARY KEY, body bytea NOT NULL, tag text NOT NULL);
        CREATE TABLE nbd_trigger_cursors (name text PRIMARY KEY, body bytea NOT NULL, tag text NOT NULL);
        CREATE TABLE nbd_queues (name text PRIMARY KEY, body bytea NOT NULL, tag text NOT NULL);
    """),
]


def is_store_url(location: object) -> bool:
    """True if ``location`` names a shared store (a ``postgresql://`` URL) rather than a directory."""
    return isinstance(location, str) and location.lower().startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the netloc and in a ``password=`` parameter)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "postgresql://***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostport}"
    query = "&".join(
        f"{k}=***" if k.lower() == "password" else (f"{k}={v}" if v else k)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, url: str) -> str:
    """``text`` (an error message from psycopg or libpq) without the password of ``url``."""
    password = urllib.parse.urlsplit(url).password
    if password:
        text = text.replace(password, "***").replace(urllib.parse.unquote(password), "***")
    return _PASSWORD_RE.sub(r"\1***", text)


def database_error(exc: BaseException, url: str, doing: str) -> StoreError:
    """A StoreError for a psycopg error raised while ``doing``, naming the store without its password."""
    return StoreError(
        f"PostgreSQL error while {doing} on {redact(url)}: {scrub(str(exc).strip(), url)}",
        hint="check that the server is up and the URL (NBDURABLE_STORE / --store) is right; credentials come "
        "from the URL or PGPASSWORD / ~/.pgpass",
    )


_pools: dict[str, tuple[int, Any]] = {}
_pools_lock = threading.Lock()


def pool(url: str) -> Any:
    """This process's connection pool for ``url`` (psycopg_pool), opened and migrated on first use."""
    with _pools_lock:
        entry = _pools.get(url)
        if entry is not None and entry[0] == os.getpid():
            return entry[1]
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise StoreError("a PostgreSQL store needs psycopg 3 and psycopg-pool",
                             hint="pip install 'nbdurable[postgres]'") from exc
        timeout = float(os.environ.get("NBDURABLE_PG_CONNECT_TIMEOUT", "10"))
        try:  # once directly: a wrong URL fails at once with libpq's reason (a pool would retry until its timeout)
            psycopg.connect(url, connect_timeout=max(int(timeout), 1)).close()
        except psycopg.Error as exc:
            raise _connect_error(url, exc) from None
        size = int(os.environ.get("NBDURABLE_PG_POOL_SIZE", "4"))
        new = ConnectionPool(url, min_size=1, max_size=max(size, 1), open=False, name="nbdurable",
                             kwargs={"autocommit": True, "application_name": "nbdurable"})
        try:
            new.open(wait=True, timeout=timeout)
        except Exception as exc:  # PoolTimeout hides the cause: connect once to report it
            new.close()
            raise _connect_error(url, exc) from None
        _pools[url] = (os.getpid(), new)
    try:
        migrate(new, url)
    except BaseException:
        with _pools_lock:
            _pools.pop(url, None)
        new.close()
        raise
    return new


def _connect_error(url: str, exc: BaseException) -> StoreError:
    return StoreError(f"cannot connect to the PostgreSQL store {redact(url)}: {scrub(str(exc).strip(), url)}",
                      hint="start the server (e.g. pg_ctlcluster 15 main start) or fix NBDURABLE_STORE / --store")


def close_pools() -> None:
    """Close every pool of this process (tests; a forked child's inherited pools are dropped, not closed)."""
    with _pools_lock:
        entries = list(_pools.values())
        _pools.clear()
    for pid, p in entries:
        if pid == os.getpid():
            p.close()


def applied_migrations(conn: Any) -> list[int]:
    """The versions recorded in ``schema_migrations`` (empty for a new database)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            return []
        cur.execute("SELECT version FROM schema_migrations ORDER BY version")
        return [int(v) for (v,) in cur.fetchall()]


def migrate(p: Any, url: str) -> list[int]:
    """Apply the migrations this database lacks (each in a transaction under the advisory lock);
    returns the versions applied. A database migrated by a newer nbdurable is refused."""
    known = max(v for v, _, _ in MIGRATIONS)
    done: list[int] = []
    with p.connection() as conn:
        present = applied_migrations(conn)
        if present and max(present) > known:
            raise StoreFormatError(
                f"the store {redact(url)} was migrated by a newer nbdurable (schema {max(present)}; this one "
                f"knows {known})", hint="upgrade with pip install -U nbdurable")
        if set(present) >= {v for v, _, _ in MIGRATIONS}:
            return done
        for version, what, sql in MIGRATIONS:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
                cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                            "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
                cur.execute("SELECT 1 FROM schema_migrations WHERE version = %s", [version])
                if cur.fetchone():
                    continue
                cur.execute(sql)
                cur.execute("INSERT INTO schema_migrations (version, description) VALUES (%s, %s)", [version, what])
                done.append(version)
    return done


__all__ = ["MIGRATIONS", "URL_SCHEMES", "close_pools", "database_error", "is_store_url", "migrate", "pool",
           "redact", "scrub"]
