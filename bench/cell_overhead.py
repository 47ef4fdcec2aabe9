"""Per-cell overhead of the extension: a trivial cell with and without nbdurable, in one IPython shell.

Blocks of cells alternate between the plain shell and the shell with the extension loaded, so both see
the same machine noise; the figure is the difference of the medians. With ``--big`` the namespace first
receives ~2 GB of arrays and DataFrames that the measured cells never touch: the cost must not grow.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import tempfile
import time

from bench.common import Figure, emit


def measure(shell, code: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        shell.run_cell(code, store_history=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big", action="store_true", help="hold ~2 GB of untouched data in the namespace")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--cells", type=int, default=300)
    args = parser.parse_args()
    store = tempfile.mkdtemp(prefix="nbd-bench-store-")
    os.environ["NBDURABLE_STORE"] = store
    os.environ["NBDURABLE_NOTEBOOK"] = "bench-cell-overhead"
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        shell.run_cell("%load_ext nbdurable")
        if args.big:
            shell.run_cell(
                "import numpy as np, pandas as pd\n"
                "big_a = np.ones((8192, 16384))\n"  # 1 GiB
                "big_b = np.arange(64 * 2**20, dtype='float64')\n"  # 512 MiB
                "big_df = pd.DataFrame({c: np.arange(2**23, dtype='float64') for c in 'abcdefgh'})"  # 512 MiB
            )
        shell.run_cell("%unload_ext nbdurable")
    plain: list[float] = []
    durable: list[float] = []
    for _ in range(args.rounds):
        plain += measure(shell, "x = 1", args.cells)
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            shell.run_cell("%load_ext nbdurable")
            durable += measure(shell, "x = 1", args.cells)
            shell.run_cell("%unload_ext nbdurable")
    shutil.rmtree(store, ignore_errors=True)  # with --big, 1.6 GB
    p, d = statistics.median(plain) * 1e3, statistics.median(durable) * 1e3
    added = d - p
    limit = 2.0 if args.big else 1.0
    label = "per-cell overhead, 2 GB untouched in namespace" if args.big else "per-cell overhead, trivial cell"
    emit([Figure(label, d, "plain IPython", p, "ms", f"added <= {limit:g} ms", added <= limit,
                 f"added {added:.3f} ms")])


if __name__ == "__main__":
    main()
