"""Probe: how fast nbdurable.serialization saves and restores big objects, against the disk and dill.

A scratch measurement, not the benchmark suite. For a big float64 array and a big DataFrame:

  save     serialize() (hashing), then write() to a file + fsync        -- in this (long-lived) process
  restore  read the file into a bytearray (the store's way) + deserialize() -- in a FRESH process, as on
           resume; imports are done before the clock starts. Cold: the file is first evicted from the page
           cache (posix_fadvise DONTNEED on our own file only). Warm: it is cached (a kernel that crashed
           on a machine that kept running).

Every restore ends by touching one byte per 4 KiB page of the restored data, so a lazily loaded variant
(payload ``mmap``'ed copy-on-write instead of read into a bytearray) pays for its reads like the others.
Compared in the same run on the same disk: raw
write+fsync of the object's own bytes and raw readinto of them (the baseline), dill.dump/dill.load of a
dict holding the object, our pickle path for such a dict, and for the DataFrame an Arrow IPC file.

    python bench/bench_serialization_probe.py [--array-gib 1] [--rows 10000000] [--reps 3] [--tune]

Files go to /tmp (or --dir), one at a time, deleted as soon as they are measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import dill
import numpy as np
import pandas as pd
import pyarrow as pa

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nbdurable.serialization import _ndarray, _parquet, _pickle, deserialize, serialize  # noqa: E402,F401 - after the sys.path insert

GiB = 2**30
PAGE = 4096


# ---------------------------------------------------------------- files


def write_file(path: pathlib.Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write through an unbuffered file, then fsync: what the store does for an object."""
    with open(path, "wb", buffering=0) as f:
        write(f)
        os.fsync(f.fileno())


def write_views(f: BinaryIO, views: list[memoryview]) -> None:
    for view in views:
        done = 0
        while done < view.nbytes:
            done += f.write(view[done:])


def evict(path: pathlib.Path) -> None:
    """Drop this file's pages from the page cache, so the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_file(path: pathlib.Path) -> bytearray:
    """One preallocated bytearray, filled with readinto (what the store's read_object does)."""
    size = path.stat().st_size
    data = bytearray(size)
    view = memoryview(data)
    with open(path, "rb", buffering=0) as f:
        got = 0
        while got < size:
            got += f.readinto(view[got:])
    return data


def map_file(path: pathlib.Path) -> memoryview:
    """The file mapped copy-on-write: no read, no allocation; pages load on first touch."""
    with open(path, "rb") as f:
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY))


def clock(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


# ---------------------------------------------------------------- saving (this process)


def save_raw(
    views: list[memoryview],
) -> Callable[[pathlib.Path], tuple[float, float, str]]:
    def save(path: pathlib.Path) -> tuple[float, float, str]:
        return (
            0.0,
            clock(lambda: write_file(path, lambda f: write_views(f, views)))[1],
            "",
        )

    return save


def save_ours(obj: Any) -> Callable[[pathlib.Path], tuple[float, float, str]]:
    def save(path: pathlib.Path) -> tuple[float, float, str]:
        s, t_hash = clock(lambda: serialize(obj))
        return t_hash, clock(lambda: write_file(path, s.write))[1], s.format

    return save


def save_dill(obj: Any) -> Callable[[pathlib.Path], tuple[float, float, str]]:
    def save(path: pathlib.Path) -> tuple[float, float, str]:
        def write() -> None:
            with open(path, "wb") as f:
                dill.dump({"x": obj}, f)
                f.flush()
                os.fsync(f.fileno())

        return 0.0, clock(write)[1], ""

    return save


def save_ipc(frame: pd.DataFrame) -> Callable[[pathlib.Path], tuple[float, float, str]]:
    def save(path: pathlib.Path) -> tuple[float, float, str]:
        def write() -> None:
            table = pa.Table.from_pandas(frame, preserve_index=None)
            with open(path, "wb", buffering=0) as f:
                with pa.ipc.new_file(pa.PythonFile(f, mode="w"), table.schema) as writer:
                    writer.write_table(table)
                os.fsync(f.fileno())

        return 0.0, clock(write)[1], ""

    return save


# ---------------------------------------------------------------- restoring (a fresh process)


def load_dill(path: pathlib.Path) -> Any:
    with open(path, "rb") as f:
        return dill.load(f)


RESTORERS: dict[str, Callable[[pathlib.Path, str], Any]] = {
    "raw": lambda path, fmt: read_file(path),
    "raw-mmap": lambda path, fmt: map_file(path),
    "ours": lambda path, fmt: deserialize(fmt, read_file(path)),
    "ours-mmap": lambda path, fmt: deserialize(fmt, map_file(path)),
    "dill": lambda path, fmt: load_dill(path),
    "ipc": lambda path, fmt: pa.ipc.open_file(pa.py_buffer(read_file(path))).read_all().to_pandas(self_destruct=True),
}


def touch(obj: Any) -> int:
    """Read one byte per page of every array in the result, so lazily mapped data is really loaded."""
    if isinstance(obj, dict):
        return sum(touch(v) for v in obj.values())
    if isinstance(obj, pd.DataFrame):
        return sum(touch(obj[c].to_numpy()) for c in obj.columns)
    if isinstance(obj, np.ndarray):
        flat = obj.reshape(-1).view(np.uint8)
        return int(flat[::PAGE].sum())
    if isinstance(obj, memoryview):  # a mapped file
        return int(np.frombuffer(obj, dtype=np.uint8)[::PAGE].sum())
    if isinstance(obj, (bytes, bytearray)):
        return 0  # just read into memory: resident
    return 0


def child(way: str, path: str, fmt: str) -> None:
    """Entry point of the fresh restoring process: time the restore, print JSON."""
    gc.disable()  # as in a resume: one big restore, no collection in the middle of it
    obj, t_restore = clock(lambda: RESTORERS[way](pathlib.Path(path), fmt))
    _, t_touch = clock(lambda: touch(obj))
    print(json.dumps({"restore": t_restore, "touch": t_touch}))


def restore_in_child(way: str, path: pathlib.Path, fmt: str, *, cold: bool) -> float:
    if cold:
        evict(path)
    out = subprocess.run(
        [sys.executable, __file__, "--child", way, str(path), fmt],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["restore"] + result["touch"])


# ---------------------------------------------------------------- running


class Way:
    def __init__(
        self,
        name: str,
        save: Callable[[pathlib.Path], tuple[float, float, str]],
        restorer: str,
    ) -> None:
        self.name, self.save, self.restorer = name, save, restorer


def measure_all(ways: list[Way], path: pathlib.Path, reps: int, nbytes: int) -> list[dict[str, Any]]:
    """Round-robin over the ways, ``reps`` times (a noisy shared disk then hurts them all alike)."""
    write_file(path, lambda f: f.write(bytes(64 << 20)))  # warm-up: the first write of a run is slow
    path.unlink()
    rows: dict[str, list[dict[str, float]]] = {way.name: [] for way in ways}
    for _ in range(reps):
        for way in ways:
            gc.collect()
            t_hash, t_write, fmt = way.save(path)
            size = path.stat().st_size
            cold = restore_in_child(way.restorer, path, fmt, cold=True)
            warm = restore_in_child(way.restorer, path, fmt, cold=False)
            path.unlink()
            rows[way.name].append(
                {
                    "hash": t_hash,
                    "write": t_write,
                    "save": t_hash + t_write,
                    "cold": cold,
                    "warm": warm,
                    "size": size,
                }
            )
    results = []
    for way in ways:
        result: dict[str, Any] = {k: statistics.median(r[k] for r in rows[way.name]) for k in rows[way.name][0]}
        result.update(name=way.name, nbytes=nbytes)
        results.append(result)
    return results


def report(title: str, results: list[dict[str, Any]]) -> None:
    base = results[0]
    dill_row = next(r for r in results if r["name"].startswith("dill"))
    print(f"\n### {title}\n")
    print("| way | file MB | serialize s | write+fsync s | save GB/s | save vs raw | save vs dill "
          "| restore cold s | GB/s | vs raw | vs dill | restore warm s | vs raw | vs dill |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        gb = r["nbytes"] / 1e9  # the object's bytes, whatever the file's size
        print(
            f"| {r['name']} | {r['size'] / 1e6:.0f} | {r['hash']:.3f} | {r['write']:.3f} | {gb / r['save']:.2f} "
            f"| {base['save'] / r['save']:.0%} | {dill_row['save'] / r['save']:.1f}x "
            f"| {r['cold']:.3f} | {gb / r['cold']:.2f} | {base['cold'] / r['cold']:.0%} "
            f"| {dill_row['cold'] / r['cold']:.1f}x "
            f"| {r['warm']:.3f} | {base['warm'] / r['warm']:.0%} | {dill_row['warm'] / r['warm']:.1f}x |"
        )
    sys.stdout.flush()


def column_views(frame: pd.DataFrame) -> list[memoryview]:
    return [np.ascontiguousarray(frame[c].to_numpy()).view(np.uint8).data for c in frame.columns]


def make_frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"f{i}": rng.random(rows) for i in range(4)})
    frame["n"] = np.arange(rows, dtype=np.int64)
    frame["t"] = pd.date_range("2024-01-01", periods=rows, freq="s", unit="ns")
    return frame


def run_array(args: argparse.Namespace, path: pathlib.Path) -> None:
    arr = np.random.default_rng(0).random(int(args.array_gib * GiB) // 8)
    ways = [
        Way("raw bytes (baseline)", save_raw([arr.data.cast("B")]), "raw"),
        Way("raw bytes, restored by mmap", save_raw([arr.data.cast("B")]), "raw-mmap"),
        Way("nbdurable ndarray", save_ours(arr), "ours"),
        Way("nbdurable ndarray, payload mmap'ed", save_ours(arr), "ours-mmap"),
        Way("nbdurable pickle {'x': arr}", save_ours({"x": arr}), "ours"),
        Way("dill.dump/load {'x': arr}", save_dill(arr), "dill"),
    ]
    report(
        f"float64 ndarray, {arr.nbytes / 1e9:.2f} GB",
        measure_all(ways, path, args.reps, arr.nbytes),
    )


def run_frame(args: argparse.Namespace, path: pathlib.Path) -> None:
    frame = make_frame(args.rows)
    nbytes = int(frame.memory_usage(index=False).sum())
    assert serialize(frame).format == "parquet"
    ways = [
        Way("raw bytes (baseline)", save_raw(column_views(frame)), "raw"),
        Way("raw bytes, restored by mmap", save_raw(column_views(frame)), "raw-mmap"),
        Way("nbdurable parquet", save_ours(frame), "ours"),
        Way("nbdurable parquet, payload mmap'ed", save_ours(frame), "ours-mmap"),
        Way("nbdurable pickle {'x': df}", save_ours({"x": frame}), "ours"),
        Way("Arrow IPC file (alternative)", save_ipc(frame), "ipc"),
        Way("dill.dump/load {'x': df}", save_dill(frame), "dill"),
    ]
    title = f"DataFrame {args.rows:,} rows x (4 float64, int64, datetime64[ns]), {nbytes / 1e9:.2f} GB"
    report(title, measure_all(ways, path, args.reps, nbytes))


def with_options(save: Callable[[pathlib.Path], tuple[float, float, str]], options: dict[str, Any]) -> Any:
    """A save that runs with other Parquet write options (the module reads WRITE_OPTIONS at write time)."""

    def patched(path: pathlib.Path) -> tuple[float, float, str]:
        kept = dict(_parquet.WRITE_OPTIONS)
        _parquet.WRITE_OPTIONS.clear()
        _parquet.WRITE_OPTIONS.update(options)
        try:
            return save(path)
        finally:
            _parquet.WRITE_OPTIONS.clear()
            _parquet.WRITE_OPTIONS.update(kept)

    return patched


def run_tune(args: argparse.Namespace, path: pathlib.Path) -> None:
    """Parquet write options against each other."""
    frame = make_frame(args.rows)
    nbytes = int(frame.memory_usage(index=False).sum())
    chosen = dict(_parquet.WRITE_OPTIONS)
    defaults = {"write_statistics": True, "row_group_size": None, "max_rows_per_page": None, "write_batch_size": None,
                "data_page_size": None}  # fmt: skip
    variants: dict[str, dict[str, Any]] = {
        "chosen": {},
        "pyarrow defaults (snappy, statistics, 20 Ki rows/page)": {
            "compression": "snappy",
            **defaults,
        },
        "no compression, otherwise defaults": defaults,
        "chosen + statistics": {"write_statistics": True},
        "chosen, 1 row group": {"row_group_size": args.rows},
        "chosen, 1 Mi rows/page": {
            "max_rows_per_page": 1 << 20,
            "write_batch_size": 1 << 20,
            "data_page_size": 1 << 30,
        },
        "chosen, data page v2": {"data_page_version": "2.0"},
    }
    ways = [Way("raw bytes (baseline)", save_raw(column_views(frame)), "raw")]
    for name, change in variants.items():
        options = {k: v for k, v in {**chosen, **change}.items() if v is not None}
        ways.append(Way(name, with_options(save_ours(frame), options), "ours"))
    ways.append(Way("dill.dump/load {'x': df}", save_dill(frame), "dill"))
    report(
        "Parquet write options (same DataFrame)",
        measure_all(ways, path, args.reps, nbytes),
    )


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--array-gib", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", default="/tmp")
    parser.add_argument("--only", choices=["array", "frame"], default=None)
    parser.add_argument("--tune", action="store_true", help="compare Parquet write options instead")
    args = parser.parse_args()
    path = pathlib.Path(args.dir) / f"nbdurable-probe-{os.getpid()}.bin"
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, pandas {pd.__version__}, "
          f"pyarrow {pa.__version__}, dill {dill.__version__}, {os.cpu_count()} CPUs; medians of {args.reps}; "
          f"file {path}")  # fmt: skip
    try:
        if args.tune:
            run_tune(args, path)
            return
        if args.only in (None, "array"):
            run_array(args, path)
        if args.only in (None, "frame"):
            run_frame(args, path)
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
