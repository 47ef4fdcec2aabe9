"""The run queue on the shared store (PostgreSQL): the take of a claim, and runs through 4 workers.

``claim``: ``Store.take_claim`` from a queue of ``--claims`` open claims (the statement workers run to take
the next run: ``SELECT ... FOR UPDATE SKIP LOCKED`` and the claim's lease inserted, in one statement), each
taken claim then marked started as a worker does; p50 of one taker's takes. Baseline, same run: the same
take on a directory store (it lists the open claims and tries their leases). The note gives the p50 with 4
processes taking from one queue at once, and the queue's rate without kernels (4 takers, take + mark
started, claims per second): the ceiling the queue itself puts on the engine.

``throughput``: ``--runs`` trivial runs (a one-cell notebook) submitted to a shared store and executed by 4
``nbdurable worker`` processes (``--max-concurrent 2`` each) on this machine: runs per second from the
workers' start to the last run's end. Every run's kernel starts on this machine, so kernels bound it. The
baseline, same run: the same notebook run one after another by the launcher (no queue, no worker: what a
loop of headless runs does); the kernel start-up alone (``jupyter_client`` starting the same kernel until it
answers, median of 3) is shown separately in the note. PostgreSQL is the server at ``NBDURABLE_TEST_PG_URL``;
the benchmark makes a database of its own and drops it.
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
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from bench.common import ROOT, Figure, emit

ADMIN_URL = os.environ.get("NBDURABLE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}

_TAKER = """
import json, sys, time
from nbdurable.store import Store
store = Store.open(sys.argv[1])
times = []
begin = time.perf_counter()
while True:
    t0 = time.perf_counter()
    taken = store.take_claim(now=time.time())
    times.append(time.perf_counter() - t0)
    if taken is None:
        break
    store.mark_started(taken.claim["kind"], taken.claim["key"])
print(json.dumps({"times": times[:-1], "seconds": time.perf_counter() - begin}))
"""


def _fill(store: Any, count: int) -> None:
    from nbdurable.runtime.run import new_run_id

    for i in range(count):
        run_id = new_run_id()
        store.claim("submit", run_id, {"run_id": run_id, "notebook": "nb.ipynb", "params": {"i": i},
                                       "priority": i % 3})


def _takes(store: Any, count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        taken = store.take_claim(now=time.time())
        times.append(time.perf_counter() - t0)
        assert taken is not None, "the queue ran dry"
        store.mark_started(taken.claim["kind"], taken.claim["key"])
    return times


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "NBDURABLE_LEASE_TIMEOUT": "300"}


def claim_latency(url: str, work: Path, claims: int) -> list[Figure]:
    from nbdurable.store import Store, open_shared

    shared = open_shared(url, objects=(work / "objects").as_uri())
    local = Store.open(work / "store")
    _fill(shared, claims)
    _fill(local, claims)
    takes = min(claims // 2, 500)
    pg = statistics.median(_takes(shared, takes))
    base = statistics.median(_takes(local, takes))
    _fill(shared, claims)  # a fresh full queue for 4 takers at once
    remaining = len(shared.open_claims())
    takers = [subprocess.Popen([sys.executable, "-c", _TAKER, url], env=_env(), stdout=subprocess.PIPE, text=True)
              for _ in range(4)]
    results = [json.loads(p.communicate(timeout=600)[0]) for p in takers]
    together = statistics.median(t for r in results for t in r["times"])
    taken = sum(len(r["times"]) for r in results)
    assert taken == remaining, f"4 takers took {taken} of {remaining} claims"
    rate = taken / max(r["seconds"] for r in results)
    return [Figure("queue: claim latency p50 (SKIP LOCKED take)", pg * 1e3, "directory store's take", base * 1e3, "ms",
                   "≤ 10 ms", pg * 1e3 <= 10,
                   f"{claims} claims queued, {takes} takes; 4 takers at once: p50 {together * 1e3:.2f} ms, "
                   f"{rate:.0f} claims/s taken and marked started (the queue without kernels)")]


def _kernel_start() -> float:
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3", transport="ipc")
    start = time.perf_counter()
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    took = time.perf_counter() - start
    client.stop_channels()
    manager.shutdown_kernel(now=True)
    return took


def _serial_rate(store_url: str, nb: Path, count: int) -> float:
    """Runs per second of the same notebook started one after another by the launcher (no queue, no worker)."""
    from nbdurable.headless.launch import Launcher, LaunchSpec

    launcher = Launcher()
    launcher.warm()
    took = []
    for _ in range(count):
        start = time.perf_counter()
        launched = launcher.start(LaunchSpec(store_url, str(nb), cwd=str(nb.parent)))
        assert launched.wait(300) == 0, "a serial run failed"
        took.append(time.perf_counter() - start)
    return 1 / statistics.median(took)


def throughput(url: str, work: Path, runs: int, workers: int) -> list[Figure]:
    from nbdurable.runtime.run import new_run_id
    from nbdurable.store import open_shared

    nb = work / "nb.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")], metadata=META), nb)
    store = open_shared(url, objects=(work / "objects").as_uri())
    kernel = statistics.median(_kernel_start() for _ in range(3))
    serial = _serial_rate(url, nb, 5)
    before = len(store.run_ids())
    ids = []
    for _ in range(runs):
        run_id = new_run_id()
        store.claim("submit", run_id, {"run_id": run_id, "notebook": str(nb), "cwd": str(work)})
        ids.append(run_id)
    env = {**_env(), "NBDURABLE_STORE": url, "NBDURABLE_LEASE_TIMEOUT": "30", "NBDURABLE_PG_POOL_SIZE": "2"}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "nbdurable", "worker", "--poll", "0.2", "--max-concurrent", "2"],
                              env=env, cwd=work, stderr=subprocess.DEVNULL) for _ in range(workers)]
    try:
        while True:
            done = store._query("SELECT count(*) FROM nbd_records WHERE convert_from(body, 'UTF8')::jsonb ->> 't' "
                                "= 'run_end'", None, "counting the ended runs")[0][0]
            if done >= runs + before:
                break
            time.sleep(0.5)
        elapsed = time.perf_counter() - start
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
    ended = [r for r in ids if any(rec.get("t") == "run_end" and rec.get("status") == "completed"
                                   for rec in store.read_journal(r))]
    assert len(ended) == runs, f"{len(ended)} of {runs} runs completed"
    rate = runs / elapsed
    return [Figure(f"queue: {runs} trivial runs through {workers} workers", rate, "one run after another", serial,
                   "runs/s", "≥ one after another", rate >= serial,
                   f"{elapsed:.0f} s, {1e3 / rate:.0f} ms per run ({workers}x2 at once on {os.cpu_count()} cores); "
                   f"one after another {1e3 / serial:.0f} ms per run; kernel start-up alone {kernel:.2f} s "
                   "(median of 3)")]


def main() -> None:
    import psycopg

    from nbdurable.store.shared.pg import close_pools

    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["claim", "throughput"])
    parser.add_argument("--claims", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    name = f"nbdbench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urllib.parse.urlsplit(ADMIN_URL)
    url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["NBDURABLE_CACHE_DIR"] = tmp
            os.environ["NBDURABLE_LEASE_TIMEOUT"] = "300"  # the takes' leases stay: nobody takes a claim twice
            work = Path(tmp)
            emit(claim_latency(url, work, args.claims) if args.mode == "claim"
                 else throughput(url, work, args.runs, args.workers))
    finally:
        close_pools()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
