"""Checkout and fork (issue 16): ``%durable checkout`` of a 10 MB and a 1 GB state, and the time a fork from
cell 30 of a 40-cell notebook takes to reach its first executed cell.

Checkout: a real IPython shell with the extension records a notebook whose cells build the state (a DataFrame,
float arrays, an alias, small Python objects) and one cell more; then ``Durable.checkout(run, cell=N)`` (what
``%durable checkout`` calls) makes the namespace the state after cell N, again and again (median; the forked
run it leaves starts with the next cell, so its creation is not in the figure). Big arrays are mapped lazily,
so a second figure adds the first access of every variable (one byte of every page).
Baselines measured in the same run, on the same state: ``dill.load_session`` in a fresh process (the loaded
objects are in memory at once: the same number serves both figures' baseline) and, when a Python with kishu
is given (``--kishu-python``, or NBDURABLE_BENCH_KISHU_PYTHON; ``pip install kishu`` in a venv made with
``--system-site-packages``), Kishu's checkout of the same cells' commit in a plain IPython shell (its test mode:
no frontend), with its incremental restore off so that it loads the whole state as our checkout does.

Fork: ``HeadlessRunner`` of the fork (``nbdurable fork RUN --from-cell 30``) from its start to the moment the
first cell is sent, against the same runner's fresh run of a one-cell notebook (a kernel's start with the
extension): target fork ≤ that + 0.5 s.

Modes: (no mode) the figures; ``--dill dump|load SIZE PATH`` and ``--kishu SIZE REPEATS`` are the children.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, Figure, emit, median_of

SIZES = {"10MB": 10, "1GB": 1000}  # megabytes of state
TARGETS = {"10MB": 0.05, "1GB": 1.0}  # seconds, checkout p50 (issue 16)
LATER = "later = [0] * 10"  # the cell after the state: the checkout removes what it binds


def state_cells(megabytes: int) -> list[str]:
    """Cells that build a state of about ``megabytes`` MB: 40 % a DataFrame, 60 % float arrays of at most
    120 MB each, an alias, a dict and a list of strings."""
    rows = int(megabytes * 0.4 * 1e6 / 40)  # 5 eight-byte columns
    floats = int(megabytes * 0.6 * 1e6 / 8)
    parts = max(1, -(-floats // 15_000_000))
    cells = ["import numpy as np\nimport pandas as pd\nrng = np.random.default_rng(0)",
             f"frame = pd.DataFrame({{c: rng.random({rows}) for c in 'abcd'}})\nframe['i'] = np.arange({rows})"]
    cells += [f"arr{k} = rng.random({floats // parts})" for k in range(parts)]
    cells.append("first = arr0\nconfig = {'alpha': 0.1, 'names': ['x', 'y'], 'n': 3}\n"
                 "labels = [f'label-{i}' for i in range(1000)]")
    return cells


def touch_all(namespace: dict[str, Any]) -> None:
    """One byte of every 4 KiB page of every array and DataFrame column: a lazily mapped state fully read."""
    import numpy as np
    import pandas as pd

    for value in list(namespace.values()):
        arrays = ([value] if isinstance(value, np.ndarray) else
                  [value[c].to_numpy() for c in value.columns] if isinstance(value, pd.DataFrame) else [])
        for arr in arrays:
            flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
            int(flat[::4096].sum())


def bench_checkout(label: str, repeats: int, workdir: Path, kishu_python: str | None) -> list[Figure]:
    os.environ["NBDURABLE_STORE"] = str(workdir / "store")
    os.environ["NBDURABLE_NOTEBOOK"] = f"checkout-{label}"
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbdurable")
    ext = shell.user_ns["__nbdurable__"]
    cells = state_cells(SIZES[label])
    for cell in [*cells, LATER]:
        assert shell.run_cell(cell).success, cell
    run_id = ext.run.run_id
    ext.close()
    size = sum(ext.store_obj.object_size(k) for k in ext.store_obj.object_keys())

    def checkout(touch: bool) -> float:
        start = time.perf_counter()
        ext.checkout(run_id, len(cells))
        if touch:
            touch_all(shell.user_ns)
        seconds = time.perf_counter() - start
        assert "later" not in shell.user_ns and shell.user_ns["first"] is shell.user_ns["arr0"]
        ext.close()
        gc.collect()
        return seconds

    lazy = median_of(lambda: checkout(False), repeats)
    touched = median_of(lambda: checkout(True), repeats)
    InteractiveShell.clear_instance()
    shell.user_ns.clear()
    gc.collect()
    path = workdir / "session.dill"
    # dill is a dev dependency; a Python with kishu has it too (kishu depends on it)
    python = sys.executable if importlib.util.find_spec("dill") else kishu_python
    if python is None:
        raise RuntimeError("dill is not installed: pip install dill (a dev dependency), or give --kishu-python")
    child(["--dill", "dump", label, str(path)], python=python)
    dill = median_of(lambda: float(child(["--dill", "load", label, str(path)], python=python)), repeats)
    note = f"{size / 1e6:.0f} MB of objects, {len(cells)} cells; warm page cache on both sides"
    target = TARGETS[label]
    figures = [
        Figure(f"checkout {label} state p50", lazy, "dill.load_session", dill, "s", f"<= {target:g} s",
               lazy <= target, note + "; arrays mapped lazily"),
        Figure(f"checkout {label} + first access of all", touched, "dill.load_session", dill, "s",
               "report", True, "every page of every array and column read once"),
    ]
    if kishu_python:
        kishu = float(child(["--kishu", label, str(repeats)], python=kishu_python, cwd=workdir))
        figures.append(Figure(f"checkout {label} state p50 vs Kishu", lazy, "kishu checkout", kishu, "s",
                              f"<= {target:g} s", lazy <= target, "Kishu 0.3 in a plain IPython shell (test mode), "
                              "incremental restore off: the whole state loaded, as ours"))
    return figures


def child(args: list[str], *, python: str | None = None, cwd: Path | None = None) -> str:
    """Run a child mode of this module in a fresh process; its last stdout line."""
    out = subprocess.run([python or sys.executable, "-m", "bench.control_checkout", *args], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(cwd or os.environ.get("HOME", ""))},
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bench.control_checkout {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def dill_child(mode: str, label: str, path: str) -> None:
    """``dill.dump_session`` of the state built in ``__main__`` / ``dill.load_session`` of it, timed."""
    import dill

    import __main__

    if mode == "dump":
        for cell in state_cells(SIZES[label]):
            exec(cell, __main__.__dict__)
        dill.dump_session(path)
        return
    import numpy  # noqa: F401 - imported before the clock starts, as in the checkout's process
    import pandas  # noqa: F401

    start = time.perf_counter()
    dill.load_session(path)
    print(time.perf_counter() - start)


def kishu_child(label: str, repeats: int) -> None:
    """Kishu's checkout of the state's commit, from the commit of the cell after it (median seconds)."""
    os.environ["ENV_KISHU_TEST_MODE"] = "1"
    import nbformat
    from IPython.core.interactiveshell import InteractiveShell
    from kishu.jupyterint import KishuForJupyter
    from kishu.notebook_id import NotebookId
    from kishu.storage.config import Config

    Config.set("PLANNER", "incremental_store", False)
    path = Path(tempfile.mkdtemp(prefix="kishu-bench-")) / "state.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in state_cells(1)]), path)
    shell = InteractiveShell.instance()
    kishu = KishuForJupyter(NotebookId(key=f"bench-{label}", path=path, kernel_id="bench"), ip=shell)
    kishu.install_kishu_hooks()
    for cell in state_cells(SIZES[label]):
        assert shell.run_cell(cell).success, cell
    commit = kishu._kishu_branch.get_head().commit_id
    shell.run_cell(LATER)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        kishu.checkout(commit, skip_notebook=True)
        times.append(time.perf_counter() - start)
        assert "later" not in shell.user_ns and shell.user_ns["first"] is shell.user_ns["arr0"]
        shell.run_cell(LATER)
    print(statistics.median(times))


def bench_fork(repeats: int, workdir: Path) -> list[Figure]:
    """Fork from cell 30 of a 40-cell notebook: time to the first executed cell, against a fresh one-cell run's."""
    import nbformat

    from nbdurable.headless.fork import prepare_fork
    from nbdurable.headless.runner import HeadlessRunner
    from nbdurable.store import Store

    os.environ.pop("NBDURABLE_STORE", None)
    os.environ.pop("NBDURABLE_NOTEBOOK", None)
    spec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = ["import numpy as np", *[f"v{i} = np.arange(50_000) * {i}" for i in range(2, 41)]]
    big = workdir / "forty.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                            metadata={"kernelspec": spec}), big)
    one = workdir / "one.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")],
                                            metadata={"kernelspec": spec}), one)
    store_path = workdir / "fork-store"

    def first_cell(nb: Any, path: Path, fork: tuple[str, int] | None, fresh: bool) -> float:
        started: list[float] = []
        runner = HeadlessRunner(nb, notebook_path=path, store_path=store_path, params={}, output_path=None,
                                fresh=fresh, fork=fork, on_cell_start=lambda i: started.append(time.perf_counter()))
        start = time.perf_counter()
        result = runner.execute()
        assert result.status == "completed", result.error
        return started[0] - start

    source = HeadlessRunner(nbformat.read(big, as_version=4), notebook_path=big, store_path=store_path, params={},
                            output_path=None).execute().run_id
    assert source is not None

    def fork() -> float:
        plan = prepare_fork(Store.open(store_path), source, 30)
        return first_cell(plan.nb, big, (plan.source, plan.restored_cells), False)

    forked = median_of(fork, repeats)
    fresh = median_of(lambda: first_cell(nbformat.read(one, as_version=4), one, None, True), repeats)
    return [Figure("fork from cell 30 of 40: first executed cell", forked, "kernel start (1-cell run)", fresh, "s",
                   "<= kernel start + 0.5 s", forked <= fresh + 0.5, "29 cells checked out in one request")]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.control_checkout", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=list(SIZES))
    parser.add_argument("--kishu-python", default=os.environ.get("NBDURABLE_BENCH_KISHU_PYTHON") or None)
    parser.add_argument("--dill", nargs=3, metavar=("MODE", "SIZE", "PATH"))
    parser.add_argument("--kishu", nargs=2, metavar=("SIZE", "REPEATS"))
    args = parser.parse_args()
    if args.dill:
        dill_child(*args.dill)
        return
    if args.kishu:
        kishu_child(args.kishu[0], int(args.kishu[1]))
        return
    figures: list[Figure] = []
    for label in args.sizes:
        workdir = Path(tempfile.mkdtemp(prefix=f"nbd-bench-checkout-{label}-"))
        try:
            figures += bench_checkout(label, args.repeats, workdir, args.kishu_python)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(prefix="nbd-bench-fork-"))
    try:
        figures += bench_fork(max(1, min(args.repeats, 3)), workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    emit(figures)


if __name__ == "__main__":
    main()
