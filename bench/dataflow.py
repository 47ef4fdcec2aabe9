"""Restore by dataflow: what an edit costs, what recording inputs costs, how fast a plan is.

- ``edit``: a 40-cell notebook (38 cells doing ``--work`` seconds of numpy work each) runs in full in one
  IPython session; a new session (a restart) runs it again with cell 2 (a setting) edited, which 3 of the
  work cells read: only those 4 cells may execute. Figure: that Run All's time against the full run's,
  both measured from the first cell to the last in fresh processes (target ≤ 10%).
- ``inputs``: the time the extension spends recording what a cell reads (``CellInputs.begin`` + ``end``),
  for a trivial cell and for a cell reading an untouched 1 GiB array, against an empty call (targets: the
  trivial cell's whole overhead stays ≤ 0.3 ms, see ``cells``; the array reader adds ≤ 1 ms).
- ``plan``: ``nbdurable plan``'s work on a 200-cell notebook with a recorded run (reading the journal,
  the notebook file, and planning every cell), in process (target ≤ 200 ms); the command's wall time,
  Python start-up and imports included, is noted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Figure, emit

N_CELLS = 40
DEPENDENTS = (9, 21, 33)  # the work cells that read the edited setting


def edit_cells(work: float, threshold: float) -> list[str]:
    cells = ["import numpy as np\nimport time\nrng = np.random.default_rng(0)\nM = rng.random((160, 160))\n"
             "def work(seed, seconds):\n    start, out = time.perf_counter(), 0.0\n"
             "    while time.perf_counter() - start < seconds:\n"
             "        out = float(np.linalg.norm(np.linalg.matrix_power(M / 80 + seed * 1e-3, 4)))\n    return out",
             f"threshold = {threshold}"]
    for i in range(2, N_CELLS):
        reads = " * threshold" if i in DEPENDENTS else ""
        cells.append(f"r{i} = work({i}, {work}){reads}\nprint(round(r{i}, 6))")
    return cells


def _session(store: str, cells: list[str]) -> float:
    """Run ``cells`` in a fresh process's IPython shell with nbdurable; seconds from first cell to last."""
    spec = json.dumps({"store": store, "cells": cells})
    proc = subprocess.run([sys.executable, "-m", "bench.dataflow", "--session", spec], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout + proc.stderr)
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])


def run_session(spec_text: str) -> None:
    spec = json.loads(spec_text)
    os.environ["NBDURABLE_STORE"] = spec["store"]
    os.environ["NBDURABLE_NOTEBOOK"] = "bench-dataflow"
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        shell.run_cell("%load_ext nbdurable")
        start = time.perf_counter()
        for cell in spec["cells"]:
            result = shell.run_cell(cell, store_history=True)
            if not result.success:
                raise SystemExit(f"cell failed: {cell!r}\n{sink.getvalue()}")
        seconds = time.perf_counter() - start
        shell.run_cell("%unload_ext nbdurable")
    print(json.dumps({"seconds": seconds}))


def bench_edit(work: float, repeats: int) -> Figure:
    full, edited = [], []
    for _ in range(repeats):
        store = tempfile.mkdtemp(prefix="nbd-bench-dataflow-")
        full.append(_session(store, edit_cells(work, 0.5)))
        edited.append(_session(store, edit_cells(work, 0.25)))
    f, e = statistics.median(full), statistics.median(edited)
    return Figure(f"restart + Run All after editing cell 2 of {N_CELLS} (3 readers)", e, "full run", f, "s",
                  "<= 10% of the full run", e <= 0.10 * f, f"{100 * e / f:.1f}% of the full run, {work:g} s/cell")


def bench_inputs(repeats: int) -> list[Figure]:
    os.environ["NBDURABLE_STORE"] = tempfile.mkdtemp(prefix="nbd-bench-inputs-")
    os.environ["NBDURABLE_NOTEBOOK"] = "bench-inputs"
    from IPython.core.interactiveshell import InteractiveShell

    from nbdurable.capture.names import analyze_code

    shell = InteractiveShell.instance()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        shell.run_cell("%load_ext nbdurable")
        shell.run_cell("import numpy as np\nbig = np.ones((8192, 16384))\nsmall = 3")  # 1 GiB
    ext = shell.user_ns["__nbdurable__"]

    def per_call(code: str) -> float:
        names = analyze_code(code)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(200):
                ext.inputs.begin(names)
                ext.inputs.end([])
            samples.append((time.perf_counter() - start) / 200)
        return statistics.median(samples) * 1e3

    def empty() -> None:
        return None

    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(200):
            empty()
            empty()
        samples.append((time.perf_counter() - start) / 200)
    base = statistics.median(samples) * 1e3
    trivial = per_call("x = small + 1")
    big = per_call("y = big.shape[0] + small")
    return [
        Figure("recording inputs, trivial cell", trivial, "empty calls", base, "ms", "part of <= 0.3 ms/cell",
               trivial - base <= 0.3, f"{(trivial - base) * 1e3:.1f} µs"),
        Figure("recording inputs, cell reading an untouched 1 GiB array", big, "empty calls", base, "ms",
               "added <= 1 ms", big - base <= 1.0, f"{(big - base) * 1e3:.1f} µs"),
    ]


def bench_plan(repeats: int) -> list[Figure]:
    import nbformat

    from nbdurable.runtime.planning import notebook_sources, plan_cells
    from nbdurable.runtime.replay import ReplayPlan, find_resumable
    from nbdurable.store import Store

    work = Path(tempfile.mkdtemp(prefix="nbd-bench-plan-"))
    cells = ["import math\nbase = 1"] + [f"v{i} = v{i - 1} + base * {i}" if i > 1 else "v1 = base"
                                         for i in range(1, 199)] + ["print(v198)"]
    path = work / "nb200.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), path)
    store = work / "store"
    identity = str(path.resolve())
    os.environ["NBDURABLE_STORE"] = str(store)
    os.environ["NBDURABLE_NOTEBOOK"] = identity
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        shell.run_cell("%load_ext nbdurable")
        for cell in cells:
            shell.run_cell(cell, store_history=True)
        shell.run_cell("%unload_ext nbdurable")
    # the notebook with cell 100 edited: the plan must find the 100 cells after it execute
    edited = list(cells)
    edited[100] = edited[100] + " + 1"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in edited]), path)

    def plan_once() -> tuple[float, int]:
        start = time.perf_counter()
        st = Store.open(store)
        run_id, _ = find_resumable(st, identity, completed=True)
        replay = ReplayPlan.from_run(st, run_id) if run_id else ReplayPlan(None)
        replay.add_reuse(st, identity)
        planned = plan_cells(notebook_sources(path), replay)
        return time.perf_counter() - start, sum(1 for c in planned if c.action == "restore")

    samples, restored = [], 0
    for _ in range(repeats):
        seconds, restored = plan_once()
        samples.append(seconds)
    plan_ms = statistics.median(samples) * 1e3
    t0 = time.perf_counter()
    command = [sys.executable, "-c", "from nbdurable.cli import main; main()", "plan", str(path), "--reuse"]
    proc = subprocess.run([*command, "--store", str(store)], capture_output=True, text=True, cwd=work)
    cli_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    python_ms = (time.perf_counter() - t0) * 1e3
    ok = plan_ms <= 200 and restored == 100 and proc.returncode == 0
    return [Figure("nbdurable plan, 200-cell notebook (in process)", plan_ms, "python -c pass", python_ms, "ms",
                   "<= 200 ms", ok, f"{restored} restore, 100 execute; the command: {cli_ms:.0f} ms wall")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--session", help=argparse.SUPPRESS)
    parser.add_argument("what", nargs="?", choices=["edit", "inputs", "plan"])
    parser.add_argument("--work", type=float, default=1.0, help="seconds of work per cell (edit)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.session:
        run_session(args.session)
        return
    figures = {"edit": lambda: [bench_edit(args.work, args.repeats)],
               "inputs": lambda: bench_inputs(max(args.repeats, 5)),
               "plan": lambda: bench_plan(max(args.repeats, 5))}[args.what or "edit"]()
    emit(figures)


if __name__ == "__main__":
    main()
