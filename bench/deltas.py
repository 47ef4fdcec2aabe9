"""Sub-object deltas: what a checkpoint writes when a big object changed only in part.

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
from pathlib import Path

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


def objects() -> list[Figure]:
    store = Path(tempfile.mkdtemp(prefix="nbd-bench-deltas-"))
    os.environ["NBDURABLE_STORE"] = str(store)
    os.environ["NBDURABLE_NOTEBOOK"] = "bench-deltas"
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    plain, written, durable = {}, {}, {}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["objects"])
    args = parser.parse_args()
    if args.what == "objects":
        emit(objects())


if __name__ == "__main__":
    main()
