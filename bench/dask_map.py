"""``nbd.map`` on Dask: the cost each item adds to a raw ``client.map`` of the same function (target ≤ 5 ms).

A ``LocalCluster`` of two worker processes (one thread each) and one IPython shell; every round times,
back to back so both see the same machine noise:

- raw: ``client.gather(client.map(f, range(N), pure=False))`` in the shell, ``f`` defined in it (so
  Dask pickles it by value, as it would a notebook's function);
- nbdurable: ``nbd.map(f, range(N), executor=client)`` in the shell with ``%load_ext nbdurable`` (a new run
  per round, opened by an untimed warm-up cell), timed until ``wait_durable`` returns, so the journal's
  grouped fdatasync of every call's records is counted.

Added cost per item = the median over rounds of (nbdurable − raw) / N, each round's pair timed back to
back. Afterwards the journals must show every call
begun, executed once (one attempt) and committed, nothing restored.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Figure, emit


def timed_cell(shell, code: str) -> float:
    """Seconds a cell takes, until its journal (if any) is on disk."""
    start = time.perf_counter()
    result = shell.run_cell(code)
    if not result.success:
        raise SystemExit(f"the benchmark cell failed: {result.error_in_exec or result.error_before_exec}")
    handle = shell.user_ns.get("__nbdurable__")
    if handle is not None:
        handle.run.wait_durable()
    return time.perf_counter() - start


def journal_counts(store: Path) -> tuple[int, int, int]:
    """Explicit calls named ``f`` begun, their attempts, and their commits (status completed), over all journals."""
    from nbdurable.store.journal import read_records

    begun = attempts = committed = 0
    for path in (store / "journals").glob("*.jsonl"):
        records = read_records(path)[0]
        mine = {r["ordinal"] for r in records if r["t"] == "step_start" and r.get("name") == "f"}
        begun += len(mine)
        attempts += sum(r["t"] == "attempt" and r["ordinal"] in mine for r in records)
        committed += sum(r["t"] == "step_end" and r["ordinal"] in mine and r["status"] == "completed"
                         for r in records)
    return begun, attempts, committed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--items", type=int, default=500)
    args = parser.parse_args()
    from distributed import Client, LocalCluster
    from IPython.core.interactiveshell import InteractiveShell

    store = Path(tempfile.mkdtemp(prefix="nbd-bench-dask-"))
    os.environ["NBDURABLE_STORE"] = str(store)
    os.environ["NBDURABLE_NOTEBOOK"] = "bench-dask"
    sink = io.StringIO()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        shell = InteractiveShell.instance()
        shell.user_ns["client"] = client
        shell.run_cell("import nbdurable as nbd\ndef f(i):\n    return i * i")
        raw_cell = f"out = client.gather(client.map(f, range({args.items}), pure=False))"
        durable_cell = f"out = nbd.map(f, range({args.items}), executor=client)"
        timed_cell(shell, raw_cell)  # warm-up: workers import, connections open
        raw: list[float] = []
        durable: list[float] = []
        for _ in range(args.rounds):
            raw.append(timed_cell(shell, raw_cell))
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                shell.run_cell("%load_ext nbdurable")
                shell.run_cell("warm = 1")  # opens the run and its journal
                durable.append(timed_cell(shell, durable_cell))
                shell.run_cell("%unload_ext nbdurable")
            if shell.user_ns["out"] != [i * i for i in range(args.items)]:
                raise SystemExit("nbd.map returned wrong results")
    expected = args.rounds * args.items
    counts = journal_counts(store)
    if counts != (expected, expected, expected):
        raise SystemExit(f"not every call was journaled once: (begun, attempts, committed) = {counts}, "
                         f"expected {expected} each")
    r, d = (statistics.median(t) * 1e3 / args.items for t in (raw, durable))
    # paired by round (both ran back to back): the median difference is steadier than a difference of medians
    added = statistics.median(b - a for a, b in zip(raw, durable, strict=True)) * 1e3 / args.items
    emit([
        Figure("nbd.map on Dask: added cost per item", added, "raw client.map, per item", r, "ms", "<= 5 ms",
               added <= 5.0, f"nbd.map {d:.3f} ms per item, journal durable included; LocalCluster of 2 worker "
               f"processes; {args.rounds} rounds of {args.items} items"),
    ])


if __name__ == "__main__":
    main()
