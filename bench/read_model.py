"""The shared store's analytical read model, chosen by measurement: ingest PostgreSQL's rows into a local
DuckDB catalog (what nbdurable does) or read PostgreSQL through DuckDB's ``postgres`` extension per query.

The same question both ways, on the same shared store (``--runs`` runs of ``--steps`` steps): "the 50 most
recent runs with their notebook and status" (what ``nbd.history()`` and ``nbdurable runs`` ask).

- ingest: ``Catalog.query`` on the local cache file, including its freshness check (one PostgreSQL query
  for rows committed since the last ingest), after one first ingest (timed separately);
- read-through: DuckDB ATTACHes the database (``TYPE postgres``) and derives the answer from the journal rows
  on every query (``json_extract`` of each ``run`` / ``run_end`` body). It cannot check the records' HMAC
  tags (DuckDB has no HMAC, and the key would have to be handed to SQL): it would read records that
  fail authentication, which the security rules forbid. It needs DuckDB's postgres extension, which this
  machine cannot download; point ``NBDURABLE_DUCKDB_PG_EXT`` at a directory holding a DuckDB with it
  (``pip install --target DIR duckdb==1.4.4 duckdb-ext-postgres``): that half runs there in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.common import Figure, emit

ADMIN_URL = os.environ.get("NBDURABLE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
QUERY = ("SELECT run_id, notebook, status FROM runs ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT 50")
READ_THROUGH = """
WITH heads AS (
  SELECT run_id, json_extract_string(decode(body), '$.notebook') AS notebook,
         json_extract(decode(body), '$.ts')::DOUBLE AS ts
  FROM pg.public.nbd_records WHERE json_extract_string(decode(body), '$.t') = 'run'),
ends AS (
  SELECT run_id, json_extract_string(decode(body), '$.status') AS status
  FROM pg.public.nbd_records WHERE json_extract_string(decode(body), '$.t') = 'run_end')
SELECT h.run_id, h.notebook, coalesce(e.status, 'running') AS status
FROM heads h LEFT JOIN ends e USING (run_id) ORDER BY h.ts DESC, h.run_id DESC LIMIT 50
"""
CHILD = """
import glob, json, statistics, sys, time, duckdb
ext = glob.glob(sys.argv[1] + '/duckdb_ext/**/postgres_scanner.duckdb_extension', recursive=True)[0]
con = duckdb.connect(config={'allow_unsigned_extensions': True})
con.execute(f"LOAD '{ext}'")
con.execute(f"ATTACH '{sys.argv[2]}' AS pg (TYPE postgres, READ_ONLY)")
query = sys.argv[3]
rows = con.execute(query).fetchall()
times = []
for _ in range(int(sys.argv[4])):
    t = time.perf_counter(); con.execute(query).fetchall(); times.append(time.perf_counter() - t)
print(json.dumps({"median": statistics.median(times), "rows": len(rows), "first": rows[0][0]}))
"""


def populate(store, runs: int, steps: int) -> None:
    for r in range(runs):
        with store.new_journal(f"r{r:05d}") as w:
            w.append({"t": "run", "notebook": f"nb{r % 7}.ipynb", "params": {"i": r}, "kind": "headless"})
            for s in range(steps):
                w.append({"t": "step_start", "ordinal": s, "source_hash": secrets.token_hex(8)})
                w.append({"t": "step_end", "ordinal": s, "status": "completed", "duration_s": 0.01,
                          "variables": [{"name": "x", "object": secrets.token_hex(16), "format": "pickle",
                                         "tag": secrets.token_hex(32), "size": 100}]})
            w.append({"t": "run_end", "status": "completed"})
            w.sync()


def main() -> None:
    import psycopg

    from nbdurable.store import open_shared
    from nbdurable.store.shared.pg import close_pools

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    name = f"nbdbench_rm_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urllib.parse.urlsplit(ADMIN_URL)
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["NBDURABLE_CACHE_DIR"] = tmp
            store = open_shared(url, objects=(Path(tmp) / "objects").as_uri())
            populate(store, args.runs, args.steps)
            records = args.runs * (2 + 2 * args.steps)
            catalog = store.catalog()
            start = time.perf_counter()
            catalog.ingest()
            first_ingest = time.perf_counter() - start
            answer = catalog.query(QUERY)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                catalog.query(QUERY)
                times.append(time.perf_counter() - t)
            ingest_query = statistics.median(times)
            figures = []
            ext_dir = os.environ.get("NBDURABLE_DUCKDB_PG_EXT")
            note = (f"{args.runs} runs, {records} records; first ingest {first_ingest:.2f} s "
                    f"({records / first_ingest:.0f} records/s), then incremental")
            if ext_dir:
                dsn = f"dbname={name} host={parts.hostname} port={parts.port or 5432} user={parts.username}"
                child = subprocess.run([sys.executable, "-c", CHILD, ext_dir, dsn, READ_THROUGH, str(args.repeats)],
                                       env={**os.environ, "PYTHONPATH": ext_dir}, capture_output=True, text=True,
                                       timeout=600, cwd=tmp)
                if child.returncode != 0:
                    raise RuntimeError(child.stderr)
                through = json.loads(child.stdout)
                assert through["rows"] == len(answer) and through["first"] == answer.run_id[0], (through, answer)
                figures.append(Figure(name="history query, shared store (ingested local catalog)",
                                      value=ingest_query * 1e3, baseline_name="read-through (DuckDB postgres ext.)",
                                      baseline=through["median"] * 1e3, unit="ms", target="< read-through",
                                      ok=ingest_query < through["median"], note=note))
            else:
                figures.append(Figure(name="history query, shared store (ingested local catalog)",
                                      value=ingest_query * 1e3, baseline_name="first ingest",
                                      baseline=first_ingest * 1e3,
                                      unit="ms", target="< 50 ms", ok=ingest_query < 0.05,
                                      note=note + "; read-through not measured: set NBDURABLE_DUCKDB_PG_EXT"))
            emit(figures)
    finally:
        close_pools()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
