"""Headless runs: 500 trivial cells (nbdurable run vs nbclient vs papermill), and a resume after a kill.

Each engine runs the same notebook in this process (interpreter start is not counted; kernel start is,
for all three). The resume figure runs 30 cells of 1 s each; the first run dies at cell 28 (SIGKILL of
its own kernel), the second resumes it; the baseline is a kernel start-up measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from bench.common import Figure, emit, timed

META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def trivial_notebook(path: Path, n: int) -> None:
    cells = [new_code_cell(f"x{i} = {i}") for i in range(n)]
    nbformat.write(new_notebook(cells=cells, metadata=META), path)


def sleepy_notebook(path: Path, n: int, kill_at: int) -> None:
    kill = ("import os, pathlib\nif not pathlib.Path('killed').exists():\n"
            "    pathlib.Path('killed').touch()\n    os.kill(os.getpid(), 9)\n")  # fmt: skip
    cells = [new_code_cell("import time")]
    cells += [new_code_cell((kill if i == kill_at else "") + f"time.sleep(1)\nstep_{i} = {i}") for i in range(1, n + 1)]
    nbformat.write(new_notebook(cells=cells, metadata=META), path)


def run_nbclient(path: Path) -> float:
    return run_nbclient_notebook(path)[0]


def run_nbclient_notebook(path: Path) -> tuple[float, Any]:
    """Seconds of a plain nbclient run of ``path``, and the executed notebook."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    return timed(lambda: NotebookClient(nb, kernel_name="python3",
                                        resources={"metadata": {"path": str(path.parent)}}).execute()), nb


def run_papermill(path: Path) -> float:
    import papermill

    logging.getLogger("papermill").setLevel(logging.WARNING)
    return timed(lambda: papermill.execute_notebook(str(path), str(path.with_suffix(".pm.ipynb")), progress_bar=False,
                                                    cwd=str(path.parent)))


def run_nbdurable(path: Path, fresh: bool = True) -> float:
    return run_nbdurable_result(path, fresh)[0]


def run_nbdurable_result(path: Path, fresh: bool = True) -> tuple[float, Any]:
    """Seconds of an ``nbdurable run`` of ``path`` (its store beside it, its output ``<name>.out.ipynb``), and
    the runner's ``RunResult``."""
    from nbdurable.headless.params import load_notebook
    from nbdurable.headless.runner import HeadlessRunner

    results = []

    def go() -> None:
        nb = load_notebook(path, {}, None)
        result = HeadlessRunner(nb, notebook_path=path, store_path=path.parent / ".nbdurable", params={},
                                output_path=path.with_suffix(".out.ipynb"), fresh=fresh).execute()
        assert result.status in ("completed", "crashed"), result
        results.append(result)

    return timed(go), results[0]


def bench_trivial(work: Path, repeats: int, cells: int) -> list[Figure]:
    path = work / "trivial.ipynb"
    trivial_notebook(path, cells)
    ours, base, pm = [], [], []
    for _ in range(repeats):
        base.append(run_nbclient(path))
        ours.append(run_nbdurable(path))
        pm.append(run_papermill(path))
    o, b, p = statistics.median(ours), statistics.median(base), statistics.median(pm)
    return [
        Figure(f"{cells} trivial cells, nbdurable run", o, "nbclient", b, "s", "ratio <= 1.5", o <= 1.5 * b),
        Figure(f"{cells} trivial cells, nbdurable run vs papermill", o, "papermill", p, "s", "ratio <= 0.2 (5x faster)",
               o * 5 <= p),
    ]


def bench_resume(work: Path, repeats: int) -> list[Figure]:
    startup = statistics.median(run_nbclient(_empty(work)) for _ in range(repeats))
    resumes = []
    for i in range(repeats):
        d = work / f"resume{i}"
        d.mkdir()
        path = d / "sleepy.ipynb"
        sleepy_notebook(path, 30, kill_at=28)
        run_nbdurable(path)  # dies at cell 28 after 27 s
        resumes.append(run_nbdurable(path, fresh=False))
    r = statistics.median(resumes)
    return [Figure("resume 30x1s cells killed at cell 28", r, "kernel start-up + 3 s", startup + 3.0, "s",
                   "time <= start-up + 3 s", r <= startup + 3.0, f"kernel start-up alone {startup:.2f} s")]


def _empty(work: Path) -> Path:
    path = work / "empty.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("pass")], metadata=META), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", choices=["trivial", "resume"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cells", type=int, default=500)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nbd-bench-headless-"))
    os.environ.pop("NBDURABLE_STORE", None)
    try:
        emit(bench_trivial(work, args.repeats, args.cells) if args.which == "trivial"
             else bench_resume(work, args.repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
