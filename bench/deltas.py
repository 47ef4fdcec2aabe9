"""Sub-object deltas: what a checkpoint writes when a big object changed only in part.

``python -m bench.deltas workloads``: the three checkpointing workloads of Chipmink (VLDB 2026), as
notebooks in ``bench/notebooks/`` (a 1M-row frame changed in 12 cells, one change each; the same frame
read by 20 cells; 12 cells each creating a 1 MB array), each run headless by nbdurable (``--fresh``, in
this process, kernel start counted) and by plain nbclient back to back, in alternating order, and once by
nbclient with ``dill.dump_session`` after every cell (dill sessions). Figures: the store's size (every file in
it) against Chipmink's published total at its precision (whole MB), with dill's total as the measured
baseline; nbdurable's time against nbclient's, judged by the median of the paired ratios (every run starts
after ``os.sync()``: the gigabytes dill and Kishu write would otherwise still be going to disk under the next
runs, and only nbdurable's side waits for its own fsyncs); the note adds the same ratio for the cells alone
(kernel start and shutdown left out: from the first cell's start to the last one's end by the kernel's clock,
for nbdurable to its ``run_end`` record, written once every background commit is durable);
with a Python that has kishu (``--kishu-python`` or NBDURABLE_BENCH_KISHU_PYTHON), Kishu's store on the same
cells in a plain IPython shell (its test mode) and its time against that shell without it.

``python -m bench.deltas objects``: in one IPython shell with nbdurable loaded, a 1 GiB ndarray gets 1% of
its elements changed in one contiguous slice, and a 64 MB fitted scikit-learn estimator (k-nearest
neighbours keep their training data) gets two scalar parameters changed. The figure is the bytes the
checkpoint of the changing cell adds to the store, against the object's whole size (what was written
before deltas); the cell's time is in the note, with the time of the same cell without nbdurable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import Figure, emit

WAIT = "from nbdurable.runtime.session import active_session\nactive_session().wait_durable()"


def stored(store: Path) -> int:
    return sum(f.stat().st_size for f in (store / "objects").rglob("*") if f.is_file())


def run(shell, code: str) -> float:
    start = time.perf_counter()
    result = shell.run_cell(code)
    result.raise_error()
    return time.perf_counter() - start


WORKLOADS = {
    "ndarray": ("import numpy as np\na = np.arange(2**30 // 8, dtype='float64')",
                "a[40_000_000:40_000_000 + len(a) // 100] *= -1.0"),  # 1% of the elements, one unaligned slice
    "estimator": ("import numpy as np\nfrom sklearn.neighbors import KNeighborsRegressor\n"
                  "rng = np.random.default_rng(0)\nX, y = rng.random((8192, 1024)), rng.random(8192)\n"
                  "model = KNeighborsRegressor(algorithm='brute').fit(X, y)\ndel X, y",  # keeps 64 MiB of data
                  "model.set_params(n_neighbors=7, leaf_size=10)"),
}


@contextlib.contextmanager
def _removed(path: Path) -> Iterator[None]:
    """Remove ``path`` afterwards, and have the disk write back what it wrote (over a gigabyte here): the
    writeback would otherwise go on under the next benchmark and slow its every fsync."""
    import shutil

    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.sync()


def objects() -> list[Figure]:
    store = Path(tempfile.mkdtemp(prefix="nbd-bench-deltas-"))
    os.environ["NBDURABLE_STORE"] = str(store)
    os.environ["NBDURABLE_NOTEBOOK"] = "bench-deltas"
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    plain, written, durable = {}, {}, {}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            _removed(store):
        for name, (setup, change) in WORKLOADS.items():  # the same cells without nbdurable, first
            run(shell, setup)
            plain[name] = run(shell, change)
            run(shell, "%reset -f")
        shell.run_cell("%load_ext nbdurable")
        for name, (setup, change) in WORKLOADS.items():
            run(shell, setup)
            run(shell, WAIT)
            before = stored(store)
            start = time.perf_counter()
            run(shell, change)
            run(shell, WAIT)
            durable[name] = time.perf_counter() - start
            written[name] = stored(store) - before
            run(shell, "%reset -f")
    notes = {n: f"{written[n]} bytes; cell until durable {durable[n]:.3f} s, without nbdurable {plain[n]:.3f} s"
             for n in WORKLOADS}
    gib, model = 2**30, 8192 * 1024 * 8
    return [
        Figure("delta: 1 GiB ndarray, 1% slice changed (bytes written)", written["ndarray"] / 2**20,
               "whole array", gib / 2**20, "MiB", "ratio <= 0.02", 0 < written["ndarray"] <= 0.02 * gib,
               notes["ndarray"]),
        Figure("delta: 64 MiB estimator, 2 scalars changed (bytes written)", written["estimator"] / 2**10,
               "whole estimator", model / 2**10, "KiB", "<= 1024 KiB", 0 < written["estimator"] <= 2**20,
               notes["estimator"]),
    ]


NOTEBOOKS = Path(__file__).parent / "notebooks"
# workload: (Chipmink's published store size in MB, the time ratio target)
TARGETS = {"update_by_column": (182.0, 1.2), "read_only": (109.0, 1.1), "append": (12.0, 1.1)}


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def dill_sessions(path: Path, work: Path) -> tuple[float, int]:
    """nbclient with ``dill.dump_session`` after every code cell: (seconds, bytes of all the sessions)."""
    import nbformat
    from nbformat.v4 import new_code_cell

    from bench.headless import run_nbclient

    nb = nbformat.read(path, as_version=4)
    sessions = work / "dill"
    sessions.mkdir()
    cells = []
    for i, cell in enumerate(nb.cells):
        cells.append(cell)
        if cell.cell_type == "code":
            cells.append(new_code_cell(f"import dill as _dill\n_dill.dump_session({str(sessions / f'{i}.pkl')!r})"))
    nb.cells = cells
    with_dill = work / f"dill-{path.name}"
    nbformat.write(nb, with_dill)
    return run_nbclient(with_dill), tree_bytes(sessions)


def kishu_child(name: str) -> None:
    """In a Python with kishu: the workload's cells in a plain IPython shell, without and then with Kishu's
    per-cell checkpointing (its test mode, as bench/control_checkout.py runs it); prints JSON: seconds of
    each and the bytes Kishu stored."""
    import json
    import shutil

    import nbformat

    work = Path(tempfile.mkdtemp(prefix=f"kishu-{name}-"))
    os.environ["ENV_KISHU_TEST_MODE"] = "1"
    os.environ["KISHU_PATH_ROOT"] = str(work)
    from IPython.core.interactiveshell import InteractiveShell
    from kishu.jupyterint import KishuForJupyter
    from kishu.notebook_id import NotebookId

    path = work / f"{name}.ipynb"
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.write(nb, path)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    shell = InteractiveShell.instance()
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        for cell in cells:
            shell.run_cell(cell).raise_error()
        plain = time.perf_counter() - start
        shell.run_cell("%reset -f")
        kishu = KishuForJupyter(NotebookId(key=f"bench-{name}", path=path, kernel_id="bench"), ip=shell)
        kishu.install_kishu_hooks()
        start = time.perf_counter()
        for cell in cells:
            shell.run_cell(cell).raise_error()
        seconds = time.perf_counter() - start
    stored = sum(f.stat().st_size for f in work.rglob("*") if f.is_file() and f != path)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"plain": plain, "kishu": seconds, "bytes": stored}))


def kishu_figures(name: str, python: str, ours_size: float) -> list[Figure]:
    """Kishu's store size and time on a workload, beside ours (a child process in the Python with kishu)."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([python, "-m", "bench.deltas", "kishu-child", "--workload", name], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent, timeout=1800)
    if proc.returncode != 0:
        print(f"kishu on {name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return []
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    size = got["bytes"] / 1e6
    return [Figure(f"{name}: store size vs Kishu", ours_size, "Kishu", size, "MB", "report only", True,
                   f"Kishu's per-cell checkpoints in a plain IPython shell took {got['kishu'] / got['plain']:.2f}x "
                   f"the plain shell's {got['plain']:.2f} s")]


def _execution_seconds(cells: list[Any], end: float | None = None) -> float:
    """From the first code cell's start to the last one's end, by the kernel's clock (the timestamps nbclient
    records in each cell's metadata); ``end`` instead of the last cell's end when given."""
    from datetime import datetime

    def at(cell: Any, event: str) -> float:
        return datetime.fromisoformat(cell.metadata["execution"][event]).timestamp()

    code = [c for c in cells if c.cell_type == "code"]
    return (end if end is not None else at(code[-1], "iopub.status.idle")) - at(code[0], "iopub.status.busy")


def run_plain(path: Path) -> tuple[float, float]:
    """Plain nbclient: (seconds, seconds of execution: ``_execution_seconds``)."""
    from bench.headless import run_nbclient_notebook

    seconds, nb = run_nbclient_notebook(path)
    return seconds, _execution_seconds(nb.cells)


def run_ours(path: Path) -> tuple[float, float]:
    """``nbdurable run --fresh``: (seconds, seconds of execution until the run is durable: its ``run_end``
    record, written once every background commit is)."""
    import nbformat

    from nbdurable.store import Store

    from bench.headless import run_nbdurable_result

    seconds, result = run_nbdurable_result(path)
    journal = Store.open(path.parent / ".nbdurable", create=False).read_journal(result.run_id)
    end = next(r["ts"] for r in reversed(journal) if r.get("t") == "run_end")
    return seconds, _execution_seconds(nbformat.read(path.with_suffix(".out.ipynb"), as_version=4).cells, end)


def workloads(repeats: int, kishu_python: str | None = None) -> list[Figure]:
    import shutil
    import statistics

    os.sync()  # start on a quiet disk: writeback left by whatever ran before slows only the side that fsyncs
    figures = []
    for name, (published, ratio_target) in TARGETS.items():
        plain, ours, sizes, objects_bytes = [], [], [], []
        dill_seconds, dill_bytes = 0.0, 0
        for repeat in range(repeats):
            work = Path(tempfile.mkdtemp(prefix=f"nbd-bench-{name}-"))
            path = work / f"{name}.ipynb"
            shutil.copy(NOTEBOOKS / f"{name}.ipynb", path)
            sides = [(plain, run_plain), (ours, run_ours)]
            for times, run in sides[:: -1 if repeat % 2 else 1]:  # alternating: neither always on the warmer machine
                os.sync()  # no writeback left by the run before (dill's GB, Kishu's store) under this one
                times.append(run(path))
            sizes.append(tree_bytes(path.parent / ".nbdurable"))
            objects_bytes.append(tree_bytes(path.parent / ".nbdurable" / "objects"))
            if repeat == 0:  # once: its size does not vary and its time is only a note
                dill_seconds, dill_bytes = dill_sessions(path, work)
            shutil.rmtree(work, ignore_errors=True)
        size, dill_size = statistics.median(sizes) / 1e6, dill_bytes / 1e6
        objects = statistics.median(objects_bytes)
        o, p = statistics.median(t for t, _ in ours), statistics.median(t for t, _ in plain)
        ratios = [a / b for (a, _), (b, _) in zip(ours, plain, strict=True)]
        paired = statistics.median(ratios)
        executing = statistics.median(a / b for (_, a), (_, b) in zip(ours, plain, strict=True))
        figures += [  # Chipmink published whole MB: the store size is compared at that precision
            Figure(f"{name}: store size", size, "dill sessions", dill_size, "MB",
                   f"<= {published:g} MB (Chipmink)", round(size) <= published,
                   f"dill sessions {dill_seconds:.2f} s; the objects {objects / 1e6:.3f} MB"),
            Figure(f"{name}: run time", o, "nbclient", p, "s", f"ratio <= {ratio_target:g}", paired <= ratio_target,
                   f"median of the {repeats} paired ratios {paired:.3f} (each run beside its nbclient run, in "
                   f"alternating order), from {min(ratios):.2f} to {max(ratios):.2f}; the cells alone (first "
                   f"start to last end, ours until durable; kernel start and shutdown left out) {executing:.3f}"),
        ]
        if kishu_python:
            figures += kishu_figures(name, kishu_python, size)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["objects", "workloads", "kishu-child"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--workload", choices=list(TARGETS))
    parser.add_argument("--kishu-python", default=os.environ.get("NBDURABLE_BENCH_KISHU_PYTHON") or None,
                        help="a Python with kishu installed (a venv made with --system-site-packages)")
    args = parser.parse_args()
    if args.what == "kishu-child":
        kishu_child(args.workload)
    else:
        emit(objects() if args.what == "objects" else workloads(args.repeats, args.kishu_python))


if __name__ == "__main__":
    main()
