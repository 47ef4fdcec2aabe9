"""The catalog at scale: a store of 10,000 runs x 50 steps, queried the way the history explorer does.

The store is written into a temp directory (never the repo tree, nothing cached between bench runs)
with the real ``Store.new_journal`` / ``JournalWriter`` and the ``records`` builders, by 2 processes.
Its generation is not a figure. Then, back to back:

- full ingest: ``Catalog.ingest()`` on a fresh catalog (records/s in the note), against reading the
  same journals and JSON-parsing their lines (the least any ingest must do);
- no-op ingest: ``Catalog.ingest()`` when nothing changed (the freshness check every query pays),
  against ``SELECT 1`` on an open in-memory DuckDB (what a query costs with no freshness check); and
  the same just after ``journals/`` changed (a run was created: all 10,000 names are listed again);
- run list: ``nbd.history(notebook=..., status=..., limit=100)``, the explorer's table, including the
  freshness check, against the same SQL on an in-memory DuckDB copy of the tables (connection open);
- one run: ``nbd.sql`` of one run's steps with their variables and attempts (what the run graph needs),
  against the same SQL on the in-memory copy.

Figures are medians over repeats (queries vary the notebook, status and run between repeats).
Target: the queries at most 50 ms at the median, freshness check included.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Figure, emit

RUNS = 10_000
STEPS = 50
NOTEBOOKS = 20
T0 = 1_700_000_000.0  # runs start one every 10 minutes from here
TARGET_MS = 50.0
_FINALS = ["completed"] * 16 + ["failed"] * 2 + ["suspended", "cancelled"]


def run_id_of(i: int) -> str:
    return f"20231114-{i:06d}-bench"


def _write_runs(args: tuple[str, int, int, int]) -> int:
    """Write the journals of runs ``start..stop`` (one worker process); returns the records written."""
    from nbdurable.store import Store, records

    root, start, stop, steps = args
    store = Store.open(root)
    written = 0
    for i in range(start, stop):
        run_id = run_id_of(i)
        t = T0 + i * 600.0
        notebook = f"nb{i % NOTEBOOKS:02d}"
        with store.new_journal(run_id) as w:
            w.append({**records.run_record(run_id, notebook=notebook,
                                           notebook_path=f"/work/{notebook}.ipynb", kind="headless",
                                           params={"week": i % 52, "region": ("eu", "us", "apac")[i % 3]},
                                           environment={"pid": 1000 + i, "host": "bench"}), "ts": t})
            for ordinal in range(1, steps + 1):
                start_t = t + ordinal * 2.0
                w.append({**records.step_start_record(ordinal,
                                                      source=f"x{ordinal} = compute({ordinal})\nprint(x{ordinal})",
                                                      source_hash=f"{ordinal:016x}"), "ts": start_t})
                if ordinal == 5:  # one step per run retried once: the attempts table has rows too
                    w.append({**records.attempt_record(ordinal, 1, started_at=start_t, ended_at=start_t + 0.5,
                                                       error={"ename": "TimeoutError", "evalue": "slow"},
                                                       next_delay=1.0), "ts": start_t + 0.5})
                    w.append({**records.attempt_record(ordinal, 2, started_at=start_t + 1.5, ended_at=start_t + 1.9,
                                                       error=None, next_delay=None), "ts": start_t + 1.9})
                w.append({**records.step_end_record(
                    ordinal, status="completed", started_at=start_t, ended_at=start_t + 1.9, duration=1.9,
                    variables=[{"name": f"x{ordinal}", "op": "set", "object": f"{i:016x}{ordinal:016x}",
                                "format": "pickle", "format_version": 1, "type": "builtins.int", "size": 28,
                                "instance": f"{run_id}:{ordinal}:0", "inline": "gASVAwAAAAAAAABLKi4="}],
                    outputs=[{"output_type": "stream", "name": "stdout",
                              "text": f"{ordinal}\n"}]), "ts": start_t + 1.9})
            final = _FINALS[(i // NOTEBOOKS) % len(_FINALS)]  # every notebook has runs of every status
            w.append({**records.run_end_record(final, wake_at=t + 86400.0 if final == "suspended" else None),
                      "ts": t + steps * 2.0 + 2})
            written += w.seq
    return written


def build_store(root: Path, runs: int, steps: int, workers: int = 2) -> int:
    """Write ``runs`` journals into the store at ``root`` with ``workers`` processes; returns the record count."""
    from nbdurable.store import Store

    Store.open(root)
    chunks = [(str(root), runs * k // workers, runs * (k + 1) // workers, steps) for k in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return sum(pool.map(_write_runs, chunks))


def _read_and_parse(root: Path) -> int:
    """Baseline for ingest: read every journal and JSON-parse its lines (no authentication, no rows)."""
    n = 0
    for path in (root / "journals").iterdir():
        data = path.read_bytes()
        bodies = [line[: line.rfind(b"\t")] for line in data.split(b"\n") if line]
        n += len(json.loads(b"[" + b",".join(bodies) + b"]"))
    return n


def _ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--ingest-repeats", type=int, default=3)
    args = parser.parse_args()

    import duckdb

    import nbdurable as nbd
    from nbdurable.store import Store
    from nbdurable.store.catalog import COLUMNS, ddl

    tmp = Path(tempfile.mkdtemp(prefix="nbd-bench-catalog-"))
    try:
        root = tmp / "store"
        t = time.perf_counter()
        records_written = build_store(root, args.runs, args.steps)
        generation = time.perf_counter() - t
        store = Store.open(root)
        catalog = store.catalog()

        # -- full ingest, against read + parse ---------------------------------------------------
        ingest_s, parse_s = [], []
        for _ in range(args.ingest_repeats):
            catalog._delete_files()
            t = time.perf_counter()
            ingested = catalog.ingest()
            ingest_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            parsed = _read_and_parse(root)
            parse_s.append(time.perf_counter() - t)
        if ingested != records_written or parsed != records_written:
            raise SystemExit(f"ingested {ingested} / parsed {parsed} records, wrote {records_written}")

        # -- the in-memory copy: pure DuckDB, same tables and indexes, connection open ------------------
        mem = duckdb.connect(":memory:")
        mem.execute(f"ATTACH '{catalog.path}' AS src (READ_ONLY)")
        for table in COLUMNS:
            for statement in ddl(table):
                mem.execute(statement)
            mem.execute(f"INSERT INTO {table} SELECT * FROM src.{table}")
        mem.execute("DETACH src")

        noop_s, noop_base, listed_s = [], [], []
        list_s, list_base = [], []
        one_s, one_base = [], []
        counts = mem.execute("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM steps), "
                             "(SELECT count(*) FROM attempts)").fetchall()[0]
        for k in range(args.repeats):
            t = time.perf_counter()
            catalog.ingest()
            noop_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            mem.execute("SELECT 1").fetchall()
            noop_base.append(time.perf_counter() - t)
            os.utime(root / "journals")  # as a new journal would: listed again (and its mtime is not trusted yet)
            t = time.perf_counter()
            catalog.ingest()
            listed_s.append(time.perf_counter() - t)
            catalog.ingest()
            old = time.time_ns() - 60 * 10**9
            os.utime(root / "journals", ns=(old, old))  # quiet again, as it was before
            catalog.ingest()

            notebook, status = f"nb{k % NOTEBOOKS:02d}", ("completed", "failed")[k % 2]
            t = time.perf_counter()
            runs = nbd.history(notebook=notebook, status=status, limit=100, store=store)
            list_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            base = mem.execute(LIST_SQL, [notebook, notebook, status]).df()
            list_base.append(time.perf_counter() - t)
            if len(runs) != len(base) or not len(runs) or list(runs.run_id) != list(base.run_id):
                raise SystemExit(f"history returned {len(runs)} runs, the in-memory copy {len(base)}")

            run_id = run_id_of((k * 7919) % args.runs)
            t = time.perf_counter()
            one = nbd.sql(ONE_RUN_SQL, [run_id], store=store)
            one_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            one_ref = mem.execute(ONE_RUN_SQL, [run_id]).df()
            one_base.append(time.perf_counter() - t)
            if len(one) != args.steps or len(one_ref) != args.steps or len(one.variables[0]) != 1:
                raise SystemExit(f"one-run query returned {len(one)} steps, expected {args.steps}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ingest, parse = statistics.median(ingest_s), statistics.median(parse_s)
    size = f"{args.runs:,} runs x {args.steps} steps ({records_written:,} records; {counts[0]:,} runs, " \
           f"{counts[1]:,} steps, {counts[2]:,} attempts in the catalog)"
    noop, listed, lst, one_ms = _ms(noop_s), _ms(listed_s), _ms(list_s), _ms(one_s)
    emit([
        Figure("catalog full ingest", ingest, "read + JSON-parse journals", parse, "s", "report", True,
               f"{records_written / ingest:,.0f} records/s; {size}; generation {generation:.1f} s (not a figure); "
               f"median of {args.ingest_repeats}"),
        Figure("catalog no-op ingest (freshness check)", noop, "open in-memory DuckDB SELECT 1", _ms(noop_base), "ms",
               f"<= {TARGET_MS:.0f} ms", noop <= TARGET_MS,
               f"median of {args.repeats}; attach + detach the catalog file, one stat of journals/ and events/, "
               "no listing"),
        Figure("catalog no-op ingest, journals/ just changed", listed, "open in-memory DuckDB SELECT 1", _ms(noop_base),
               "ms", f"<= {TARGET_MS:.0f} ms", listed <= TARGET_MS,
               f"median of {args.repeats}; lists {args.runs:,} journal names, joins them with ingest_state, "
               "stats none (all finished)"),
        Figure("run list: nbd.history(notebook, status, limit=100)", lst, "same SQL, in-memory DuckDB", _ms(list_base),
               "ms", f"<= {TARGET_MS:.0f} ms", lst <= TARGET_MS, f"median of {args.repeats}; freshness check included"),
        Figure("one run: steps + variables + attempts (nbd.sql)", one_ms, "same SQL, in-memory DuckDB", _ms(one_base),
               "ms", f"<= {TARGET_MS:.0f} ms", one_ms <= TARGET_MS,
               f"median of {args.repeats}; freshness check included"),
    ])


LIST_SQL = """SELECT * FROM runs WHERE (notebook = ? OR notebook_path = ?) AND status = ?
ORDER BY started_at DESC NULLS LAST, run_id DESC LIMIT 100"""

# What a run graph needs of one run: its steps, each with its variables and attempts.
ONE_RUN_SQL = """
WITH v AS (SELECT ordinal, list(struct_pack(name := name, op := op, type := type, size_bytes := size_bytes,
                                            format := format)
                                ORDER BY name) AS variables
           FROM variables WHERE run_id = $1 GROUP BY ordinal),
     a AS (SELECT ordinal, list(struct_pack(attempt := attempt, started_at := started_at, ended_at := ended_at,
                                            error_ename := error_ename, next_delay_s := next_delay_s)
                                ORDER BY attempt) AS attempts
           FROM attempts WHERE run_id = $1 GROUP BY ordinal)
SELECT s.*, coalesce(v.variables, []) AS variables, coalesce(a.attempts, []) AS attempts
FROM steps s LEFT JOIN v ON v.ordinal = s.ordinal LEFT JOIN a ON a.ordinal = s.ordinal
WHERE s.run_id = $1 ORDER BY s.ordinal
"""


if __name__ == "__main__":
    main()
