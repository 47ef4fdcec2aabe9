"""Per-call cost of explicit durable steps: 1,000 trivial ``@nbd.step`` calls in one cell, against a
plain call and against DBOS Transact doing the same in the same process.

Every round times, back to back so all three see the same machine noise:

- plain: ``for i in range(1000): f(i)`` in an IPython shell, ``f`` undecorated;
- nbdurable: the same loop over an ``@nbd.step`` function in the shell with ``%load_ext nbdurable``
  (a new run per round, opened by an untimed warm-up cell), timed until ``wait_durable`` returns so
  the journal's grouped fdatasync is counted;
- DBOS: a ``@DBOS.workflow()`` calling a trivial ``@DBOS.step()`` 1,000 times, launched once on a
  SQLite system database in a temp dir (its default: one synchronous transaction per step).

Per-call figures are medians over rounds divided by 1,000; the overhead subtracts the plain call.
The two do not promise the same thing per call: DBOS commits (and fsyncs) each step before the next
begins, while an nbdurable step's records are in the page cache when the call returns (a killed kernel
loses nothing) and fdatasync'ed by the journal's group-commit flusher (a power cut may lose the last few
milliseconds of calls, which then run again on resume). Both are measured until everything is on disk.
Afterwards the journals must show every nbdurable call executed (one attempt record each, nothing
restored), and DBOS must list 1,000 steps for each timed workflow.
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

from dbos import DBOS, SetWorkflowID

from bench.common import Figure, emit

CALLS = 1000


@DBOS.step()
def dbos_step(i: int) -> int:
    return i + 1


@DBOS.workflow()
def dbos_workflow(n: int) -> None:
    for i in range(n):
        dbos_step(i)


def timed_cell(shell, code: str) -> float:
    """Seconds a cell takes, until its journal (if any) is on disk."""
    start = time.perf_counter()
    shell.run_cell(code)
    handle = shell.user_ns.get("__nbdurable__")
    if handle is not None:
        handle.run.wait_durable()
    return time.perf_counter() - start


def journal_counts(store: Path) -> tuple[int, int, int]:
    """Explicit step calls begun, attempts made, and steps restored, over all journals of ``store``."""
    from nbdurable.store.journal import read_records

    children = attempts = restored = 0
    for path in (store / "journals").glob("*.jsonl"):
        for record in read_records(path)[0]:
            children += record["t"] == "step_start" and record.get("parent") is not None
            attempts += record["t"] == "attempt"
            restored += record["t"] == "step_end" and record["status"] == "restored"
    return children, attempts, restored


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="nbd-bench-store-"))
    os.environ["NBDURABLE_STORE"] = str(store)
    os.environ["NBDURABLE_NOTEBOOK"] = "bench-steps"
    dbos_db = Path(tempfile.mkdtemp(prefix="nbd-bench-dbos-")) / "dbos.sqlite"
    DBOS(config={"name": "nbd-bench-steps", "system_database_url": f"sqlite:///{dbos_db}", "log_level": "WARNING"})
    DBOS.launch()
    dbos_workflow(CALLS)  # warm-up
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell("import nbdurable as nbd\ndef f(i):\n    return i + 1\n@nbd.step\ndef g(i):\n    return i + 1")
    loop = f"for i in range({CALLS}): {{}}(i)"
    plain: list[float] = []
    durable: list[float] = []
    dbos: list[float] = []
    sink = io.StringIO()
    for r in range(args.rounds):
        plain.append(timed_cell(shell, loop.format("f")))
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            shell.run_cell("%load_ext nbdurable")
            shell.run_cell("g(-1)")  # opens the run and its journal
            durable.append(timed_cell(shell, loop.format("g")))
            shell.run_cell("%unload_ext nbdurable")
        start = time.perf_counter()
        with SetWorkflowID(f"bench-steps-{r}"):
            dbos_workflow(CALLS)
        dbos.append(time.perf_counter() - start)
    dbos_steps = {len(DBOS.list_workflow_steps(f"bench-steps-{r}", load_output=False)) for r in range(args.rounds)}
    DBOS.destroy()
    expected = args.rounds * (CALLS + 1)
    counts = journal_counts(store)
    if counts != (expected, expected, 0) or dbos_steps != {CALLS}:
        raise SystemExit(f"not all step calls executed: nbdurable (begun, attempts, restored) = {counts}, "
                         f"expected ({expected}, {expected}, 0); DBOS steps per workflow {dbos_steps}")
    p, d, b = (statistics.median(t) * 1e3 / CALLS for t in (plain, durable, dbos))
    overhead = d - p
    emit([
        Figure("step call overhead (nbdurable, per call)", overhead, "plain call", p, "ms", "<= 1 ms", overhead <= 1.0,
               f"absolute {d:.3f} ms per call, journal durable included; {args.rounds} rounds of {CALLS} calls"),
        Figure("step call (nbdurable vs DBOS, per call)", d, "DBOS Transact (SQLite)", b, "ms", "<= DBOS", d <= b,
               f"DBOS overhead {b - p:.3f} ms per call"),
    ])


if __name__ == "__main__":
    main()
