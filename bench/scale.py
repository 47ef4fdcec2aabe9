"""Step commits per second on the shared store (PostgreSQL) against the local journal, same machine, same run.

A "step commit" is what a kernel appends when a step ends: one ``step_end`` record (a few variables with
their object keys and tags, stream outputs), here ~600 bytes of JSON, through the store's own
``JournalWriter`` / ``PgJournalWriter``. Two regimes, each timed back to back against the local journal:

- group commit (what a kernel does): ``append`` then ``sync_soon`` per step, one ``sync`` at the end
  (local: records in the page cache, fdatasync on the flusher thread; PostgreSQL: each record committed
  with ``synchronous_commit = off``, the server flushes its WAL within wal_writer_delay; both survive the
  writer's kill -9 when the call returns);
- synchronous: ``append(sync=True)`` per step (local: an fdatasync each; PostgreSQL: a commit waiting for
  the WAL flush each).

Medians over rounds of ``--steps`` commits each. PostgreSQL is the server at ``NBDURABLE_TEST_PG_URL`` (default
postgresql://postgres@127.0.0.1:5432/postgres); the benchmark makes a database of its own and drops it.
Afterwards every journal must read back with all its records, numbered without a gap.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.common import Figure, emit

ADMIN_URL = os.environ.get("NBDURABLE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def step_end(i: int) -> dict:
    return {"t": "step_end", "ordinal": i, "status": "completed", "duration_s": 0.0012,
            "variables": [{"name": f"v{j}", "object": secrets.token_hex(16), "format": "pickle",
                           "tag": secrets.token_hex(32), "type": "builtins.int", "size": 28} for j in range(3)],
            "outputs": [{"output_type": "stream", "name": "stdout", "text": f"step {i}\n"}]}


def commits_per_second(store, run_id: str, steps: int, sync: bool) -> float:
    records = [step_end(i) for i in range(steps)]
    writer = store.new_journal(run_id)
    start = time.perf_counter()
    for record in records:
        writer.append(record, sync=sync)
        if not sync:
            writer.sync_soon()
    writer.sync()
    elapsed = time.perf_counter() - start
    writer.close()
    got = store.read_journal(run_id)
    assert [r["seq"] for r in got] == list(range(1, steps + 1)), "records lost or numbered with a gap"
    return steps / elapsed


def main() -> None:
    import psycopg

    from nbdurable.store import Store
    from nbdurable.store.shared.pg import close_pools

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    name = f"nbdbench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urllib.parse.urlsplit(ADMIN_URL)
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["NBDURABLE_CACHE_DIR"] = tmp  # the shared store's catalog cache goes with it
            local = Store.open(Path(tmp) / "store")
            shared = _shared(url, Path(tmp) / "objects")
            figures = []
            for sync, label in ((False, "group commit"), (True, "synchronous")):
                pg_rates, local_rates = [], []
                for r in range(args.rounds):
                    steps = args.steps if not sync else max(args.steps // 5, 50)
                    local_rates.append(commits_per_second(local, f"l{int(sync)}-{r}", steps, sync))
                    pg_rates.append(commits_per_second(shared, f"p{int(sync)}-{r}", steps, sync))
                pg, base = statistics.median(pg_rates), statistics.median(local_rates)
                target = "≥ 1000/s" if not sync else "≥ 100/s"
                figures.append(Figure(
                    name=f"step commits/s, PostgreSQL ({label})", value=pg, baseline_name="local journal",
                    baseline=base, unit="/s", target=target, ok=pg >= (1000 if not sync else 100),
                    note=f"{args.rounds} rounds; per commit {1e3 / pg:.3f} ms on PostgreSQL, "
                    f"{1e3 / base:.3f} ms local"))
            emit(figures)
    finally:
        close_pools()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _shared(url: str, objects: Path):
    from nbdurable.store import open_shared

    return open_shared(url, objects=objects.as_uri())


if __name__ == "__main__":
    main()
