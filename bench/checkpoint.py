"""Checkpoint and restore bandwidth of big objects, through nbdurable's real path.

Checkpoint = a step of a real ``DurableRun`` whose delta holds the object: ``end_step`` returns once the
object is hashed and snapshotted (what the cell waits for), and ``wait_durable`` once the object file is
written, fsync'ed and renamed and the commit record is on disk (what the disk baseline is compared to).
Restore = ``ObjectLoader.load`` (read the file into one buffer; rebuild the object as views of it).
Baselines in the same run, on the same bytes: raw write + fsync and raw readinto of the array's memory,
and ``dill.dump_session`` / ``dill.load_session`` of a namespace holding the object (fresh processes).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Figure, emit, median_of, timed


def make_object(kind: str) -> object:
    """A 1 GiB float64 ndarray, or a 10M-row DataFrame (4 float64, 1 int64, 1 datetime64 columns)."""
    import numpy as np

    if kind == "ndarray":
        return np.random.default_rng(0).random(2**27)
    import pandas as pd

    n = 10_000_000
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "a": rng.random(n), "b": rng.random(n), "c": rng.random(n), "d": rng.random(n),
            "i": np.arange(n, dtype="int64"),
            "t": pd.date_range("2020-01-01", periods=n, freq="s"),
        }
    )  # fmt: skip


def raw_buffers(obj: object) -> list[memoryview]:
    """The object's memory, as the raw baseline writes and reads it."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return [memoryview(obj).cast("B")]
    columns = [np.ascontiguousarray(obj[c].to_numpy()) for c in obj.columns]  # type: ignore[attr-defined]
    return [memoryview(col.view("uint8")).cast("B") for col in columns]


def touch_every_page(obj: object) -> None:
    """Read one byte of every 4 KiB page, so a lazily mapped object is fully brought into memory."""
    import numpy as np

    arrays = [obj] if isinstance(obj, np.ndarray) else [obj[c].to_numpy() for c in obj.columns]  # type: ignore[attr-defined]
    for arr in arrays:
        flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        int(flat[::4096].sum())


def raw_write(path: Path, buffers: list[memoryview]) -> float:
    def write() -> None:
        with open(path, "wb", buffering=0) as f:
            for buf in buffers:
                view = buf
                while view:
                    view = view[f.write(view):]
            os.fsync(f.fileno())

    return timed(write)


def raw_read(path: Path) -> float:
    def read() -> None:
        size = path.stat().st_size
        data = bytearray(size)
        with open(path, "rb", buffering=0) as f:
            view = memoryview(data)
            while view:
                view = view[f.readinto(view):]

    return timed(read)


def dill_time(mode: str, kind: str, path: Path) -> float:
    out = subprocess.run([sys.executable, "-m", "bench._dill_session", mode, kind, str(path)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench(kind: str, repeats: int, workdir: Path) -> list[Figure]:
    from nbdurable.capture.namespace import Change
    from nbdurable.runtime.checkpoint import ObjectLoader
    from nbdurable.runtime.run import DurableRun
    from nbdurable.serialization import serialize
    from nbdurable.store import Store

    obj = make_object(kind)
    store = Store.open(workdir / "store")
    state: dict[str, object] = {}
    blocked: list[float] = []

    def checkpoint() -> float:
        for key in list(store.object_keys()):
            store.delete_object(key)
        run = DurableRun(store, notebook="bench")
        start = time.perf_counter()
        step = run.begin_step(source="x = big()", source_hash="0" * 32)
        run.end_step(step, status="completed", changes=[Change("x", "set", serialize(obj), "i1")])  # noqa: F821 - `del obj` comes after the runs
        blocked.append(time.perf_counter() - start)
        run.wait_durable()
        durable = time.perf_counter() - start
        run.finish("completed")
        state["refs"] = [r for r in store.read_journal(run.run_id) if r["t"] == "step_end"][0]["variables"]
        return durable

    def restore(materialize: bool) -> float:
        namespace: dict[str, object] = {}

        def load() -> None:
            restored = ObjectLoader(store, namespace).load(state["refs"][0], step_label="bench")  # type: ignore[index]
            if materialize:
                touch_every_page(restored)

        seconds = timed(load)
        gc.collect()
        return seconds

    ours_save = median_of(checkpoint, repeats)
    ours_blocked = statistics.median(blocked)
    ours_load = median_of(lambda: restore(True), repeats)
    ours_lazy = median_of(lambda: restore(False), repeats)
    raw_path = workdir / "raw.bin"
    buffers = raw_buffers(obj)
    raw_save = median_of(lambda: raw_write(raw_path, buffers), repeats)  # noqa: F821 - `del buffers` comes after the runs
    raw_load = median_of(lambda: raw_read(raw_path), repeats)
    del buffers
    raw_path.unlink()
    fmt = state["refs"][0]["format"]  # type: ignore[index]
    size_gb = sum(store.object_size(k) for k in store.object_keys()) / 1e9
    del obj
    gc.collect()
    dill_path = workdir / "session.dill"
    dill_save = median_of(lambda: dill_time("dump", kind, dill_path), repeats)
    dill_load = median_of(lambda: dill_time("load", kind, dill_path), repeats)
    dill_path.unlink()
    label = "1 GiB ndarray" if kind == "ndarray" else "10M-row DataFrame"
    note = f"{size_gb:.2f} GB as {fmt}"
    return [
        Figure(f"checkpoint {label} (until durable)", ours_save, "raw write+fsync", raw_save, "s",
               "time <= 2x raw (>=50% bw)", ours_save <= 2 * raw_save, note),
        Figure(f"checkpoint {label} (cell blocked) vs dill", ours_blocked, "dill.dump_session", dill_save, "s",
               "ratio <= 0.333 (3x faster)", ours_blocked * 3 <= dill_save,
               "the object file is written in the background"),
        Figure(f"restore {label} (every page read)", ours_load, "raw read", raw_load, "s", "time <= 2x raw (>=50% bw)",
               ours_load <= 2 * raw_load,
               f"usable after {ours_lazy * 1e3:.1f} ms: big objects are mapped, read on access"),
        Figure(f"restore {label} vs dill", ours_load, "dill.load_session", dill_load, "s", "ratio <= 0.333 (3x faster)",
               ours_load * 3 <= dill_load),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["ndarray", "frame"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nbd-bench-ckpt-", dir=os.environ.get("NBD_BENCH_TMP")))
    try:
        emit(bench(args.kind, args.repeats, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
