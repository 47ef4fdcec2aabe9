"""PostgreSQL for the shared-store tests: a database of their own per test module (CREATE DATABASE with a
unique name, DROP at the end), a schema of its own per store (``search_path`` in the URL's options), and
the skip message when no server is reachable."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import urllib.parse
from collections.abc import Iterator

import pytest

ADMIN_URL = os.environ.get("NBDURABLE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SKIP = ("no PostgreSQL server reachable at {url}: start PostgreSQL: pg_ctlcluster 15 main start (or "
        "sudo service postgresql start) or set NBDURABLE_TEST_PG_URL to a server's admin URL")


def _with_db(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


def with_schema(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (``options=-csearch_path=...``)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={urllib.parse.quote('-csearch_path=' + schema)}"


@contextlib.contextmanager
def database(prefix: str = "nbdtest") -> Iterator[str]:
    """A fresh database's URL; dropped (with its connections) afterwards. Skips when no server answers."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'nbdurable[postgres]'")
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        pytest.skip(SKIP.format(url=ADMIN_URL))
    url = _with_db(ADMIN_URL, name)
    try:
        yield url
    finally:
        from nbdurable.store.shared.pg import close_pools

        close_pools()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_store_url(db_url: str) -> str:
    """A store of its own in the module's database: a new schema."""
    import psycopg

    schema = f"s_{secrets.token_hex(6)}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return with_schema(db_url, schema)


def drop_cache(url: str) -> None:
    """Remove this machine's cache directory of the store at ``url``."""
    from nbdurable.store.shared import cache_dir

    shutil.rmtree(cache_dir(url), ignore_errors=True)
