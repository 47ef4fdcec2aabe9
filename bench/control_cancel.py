"""Cancel: from the command to the run's process gone, for a cell in a Python-level loop.

A real ``nbdurable run`` process (its own interpreter and kernel) runs a notebook whose second cell loops in
Python; once the cell runs, ``cancel_run`` (the call behind ``nbdurable cancel`` and the server) is made
and the clock stops when the ``nbdurable run`` process has exited (code 4). The baseline is the same run
stopped by Ctrl-C (SIGINT to the ``nbdurable run`` process, exit 130), measured in the same run: the
fastest way a person stops a run today.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from bench.common import Figure, emit

META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
LOOP = ("import pathlib, time\npathlib.Path('started').touch()\nx = 0\nwhile True:\n    x += 1\n"
        "    if x % 100000 == 0:\n        time.sleep(0.001)")


def _start(work: Path) -> subprocess.Popen[bytes]:
    (work / "started").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBDURABLE_")}
    proc = subprocess.Popen([sys.executable, "-m", "nbdurable", "run", "nb.ipynb", "--fresh", "--no-progress"],
                            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not (work / "started").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the benchmark notebook did not start")
        time.sleep(0.01)
    return proc


def _newest_run(work: Path) -> str:
    return sorted(p.stem for p in (work / ".nbdurable" / "journals").glob("*.jsonl"))[-1]


def cancel_once(work: Path) -> float:
    from nbdurable.runtime.control import cancel_run
    from nbdurable.store import Store

    proc = _start(work)
    store = Store.open(work / ".nbdurable")
    run_id = _newest_run(work)
    start = time.perf_counter()
    cancel_run(store, run_id, reason="bench", by="bench")
    code = proc.wait(timeout=60)
    took = time.perf_counter() - start
    if code != 4:
        raise RuntimeError(f"nbdurable run exited {code}, not 4 (cancelled)")
    return took


def ctrl_c_once(work: Path) -> float:
    proc = _start(work)
    start = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbd-bench-cancel-") as tmp:
        work = Path(tmp)
        nbformat.write(new_notebook(cells=[new_code_cell("y = 1"), new_code_cell(LOOP)], metadata=META),
                       work / "nb.ipynb")
        ours, base = [], []
        for _ in range(args.repeats):
            ours.append(cancel_once(work))
            base.append(ctrl_c_once(work))
    o, b = statistics.median(ours), statistics.median(base)
    emit([Figure("cancel: command → run's process gone, p50 (Python-level cell)", o, "Ctrl-C", b, "s",
                 "<= 2 s", o <= 2.0, note=f"{args.repeats} runs; max {max(ours):.2f} s")])


if __name__ == "__main__":
    main()
