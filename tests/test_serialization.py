"""Round trips, keys and errors of nbdurable.serialization (no mocks: real files, real subprocesses)."""

from __future__ import annotations

import collections
import io
import json
import math
import mmap
import os
import pathlib
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import types
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nbdurable.errors import CorruptObjectError, RestoreError, StoreFormatError
from nbdurable.serialization import FORMAT_VERSION, Serialized, deserialize, serialize

REPO = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers


def payload_of(s: Serialized) -> bytearray:
    """The payload via write() to a BytesIO, checked against to_bytes() and the announced size."""
    out = io.BytesIO()
    n = s.write(out)
    data = out.getvalue()
    assert n == len(data) == s.size
    assert data == s.to_bytes()
    return bytearray(data)


def restore(fmt: str, payload: Any, **kwargs: Any) -> Any:
    """deserialize(), typed Any for the tests' convenience."""
    return deserialize(fmt, payload, **kwargs)


def roundtrip(
    obj: Any,
    *,
    namespace: dict[str, Any] | None = None,
    restore_into: dict[str, Any] | None = None,
) -> Any:
    s = serialize(obj, namespace=namespace)
    assert re.fullmatch(r"[0-9a-f]{32}", s.key)
    assert s.format_version == FORMAT_VERSION
    return deserialize(
        s.format,
        payload_of(s),
        format_version=s.format_version,
        module=s.module,
        namespace=restore_into,
    )


def base_buffer(arr: np.ndarray[Any, Any]) -> object:
    """The object at the end of an array's base chain (a memoryview is followed to what it views)."""
    base: object = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def backed_by(arr: np.ndarray[Any, Any], payload: bytearray) -> bool:
    return bool(np.shares_memory(arr, np.frombuffer(payload, dtype=np.uint8)))


def notebook(source: str) -> dict[str, Any]:
    """A namespace like IPython's user namespace, with ``source`` executed in it."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(textwrap.dedent(source), ns)  # running notebook code is the point
    return ns


class ShortWriteFile(io.RawIOBase):
    """A raw file that, like write(2) past 2 GiB, writes at most ``limit`` bytes per call."""

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        chunk = memoryview(b).cast("B")[: self.limit]
        self.data += chunk
        return len(chunk)


# ---------------------------------------------------------------- plain Python objects


@pytest.mark.parametrize(
    "obj",
    [
        0,
        -7,
        2**100,
        1.5,
        -0.0,
        math.inf,
        "héllo ✓",
        "",
        b"\x00bytes\xff",
        None,
        True,
        False,
        3 + 4j,
    ],
    ids=repr,
)
def test_scalars_round_trip(obj: Any) -> None:
    s = serialize(obj)
    assert s.format == "pickle" and s.has_payload
    back = roundtrip(obj)
    assert back == obj and type(back) is type(obj)


def test_nan_round_trips() -> None:
    assert math.isnan(roundtrip(math.nan))


def test_nested_containers_and_sets_round_trip() -> None:
    obj = {
        "list": [1, [2, [3, (4, 5)]], {"k": None}],
        "set": {1, 2, 3},
        "frozen": frozenset({"a", "b"}),
        "ordered": collections.OrderedDict(b=1, a=2),
        "counter": collections.Counter("hello"),
        (1, "tuple key"): b"bytes",
    }
    assert roundtrip(obj) == obj


def test_shared_references_stay_shared_within_one_object() -> None:
    inner = [1, 2]
    back = roundtrip({"a": inner, "b": inner})
    assert back["a"] is back["b"]


# ---------------------------------------------------------------- ndarray


ARRAYS = {
    "C 2-D": np.arange(12.0).reshape(3, 4),
    "F 2-D": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
    "non-contiguous": np.arange(40.0).reshape(5, 8)[::2, 1::3],
    "0-d": np.array(3.25),
    "empty": np.empty((0, 3)),
    "structured": np.array(
        [(1, (2.5, b"ab"), [1, 2]), (3, (4.5, b"cd"), [3, 4])],
        dtype=np.dtype(
            [("i", "<i4"), ("s", [("f", "<f8"), ("b", "S2")]), ("v", "<i2", (2,))],
            align=True,
        ),
    ),
    "bool": np.array([[True, False], [False, True]]),
    "datetime64": np.array(["2024-01-01T10:00", "2024-02-29T23:59"], dtype="datetime64[ns]"),
    "timedelta64": np.array([1, -2], dtype="timedelta64[ms]"),
    "complex": np.array([1 + 2j, 3 - 4j]),
    "unicode": np.array(["ab", "cdé"]),
    "bytes": np.array([b"x", b"yz"]),
    "big-endian": np.arange(5, dtype=">i4"),
    "float16 3-D": np.ones((2, 3, 4), dtype=np.float16),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_ndarray_round_trips_as_a_view_of_the_payload(name: str) -> None:
    arr = ARRAYS[name]
    s = serialize(arr)
    assert s.format == "ndarray" and s.type_name == "numpy.ndarray"
    payload = payload_of(s)
    back = restore("ndarray", payload)
    assert type(back) is np.ndarray
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert back.flags.writeable
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        assert back.flags.f_contiguous  # memory order preserved, not transposed into a copy
    if arr.size:
        assert backed_by(back, payload)
        assert (memoryview(payload).nbytes - arr.nbytes) % 64 == 0  # data starts 64-byte aligned


def test_ndarray_data_is_64_byte_aligned_in_the_payload() -> None:
    s = serialize(np.arange(3.0))
    payload = payload_of(s)
    assert payload[:4] == b"NBDA"
    assert payload[len(payload) - 24 :] == np.arange(3.0).tobytes()
    assert (len(payload) - 24) % 64 == 0


def test_big_ndarray_restores_zero_copy_from_a_real_file(
    tmp_path: pathlib.Path,
) -> None:
    arr = np.arange(100 * 2**20 // 8, dtype=np.float64)  # 100 MiB
    s = serialize(arr)
    path = tmp_path / "obj"
    with open(path, "wb", buffering=0) as f:
        assert s.write(f) == s.size
    assert os.path.getsize(path) == s.size
    payload = bytearray(path.read_bytes())
    back = restore("ndarray", payload)
    assert base_buffer(back) is payload  # the array *is* the payload's memory
    assert np.array_equal(back, arr)
    back[0] = -1.0  # writable, and writes go to the payload
    assert np.frombuffer(payload, dtype=np.float64)[-len(arr)] == -1.0


@pytest.mark.parametrize(
    "obj",
    [
        np.arange(100_000.0),
        {"a": np.arange(100_000.0)},
        pd.DataFrame({"a": np.arange(100_000.0)}),
    ],
    ids=["ndarray", "pickle", "parquet"],
)
def test_payload_can_be_a_copy_on_write_mmap(tmp_path: pathlib.Path, obj: Any) -> None:
    """A store may map object files instead of reading them: restoring is then lazy and copy-free."""
    s = serialize(obj)
    path = tmp_path / "obj"
    with open(path, "wb", buffering=0) as f:
        s.write(f)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    back = restore(s.format, memoryview(mapped))
    arr = back if isinstance(back, np.ndarray) else back["a"] if isinstance(back, dict) else back["a"].to_numpy()
    np.testing.assert_array_equal(arr, np.arange(100_000.0))
    if s.format != "parquet":
        assert arr.flags.writeable and np.shares_memory(arr, np.frombuffer(mapped, dtype=np.uint8))
        arr[0] = 42.0  # copy-on-write: the file is untouched
    assert path.read_bytes() == s.to_bytes()


def test_read_only_payload_gives_writable_arrays() -> None:
    arr = np.arange(10)
    back = restore("ndarray", bytes(payload_of(serialize(arr))))
    assert back.flags.writeable
    np.testing.assert_array_equal(back, arr)


with warnings.catch_warnings():
    warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix is discouraged, still used
    MATRIX = np.matrix([[1, 2], [3, 4]])


@pytest.mark.parametrize(
    "arr",
    [
        MATRIX,
        np.ma.masked_array([1, 2, 3], mask=[False, True, False]),
        np.array([1, "a", None], dtype=object),
        np.array(["x", "yz"], dtype=np.dtypes.StringDType()),
    ],
    ids=["matrix", "masked", "object", "StringDType"],
)
def test_ndarray_subclasses_and_pointer_dtypes_are_pickled(arr: Any) -> None:
    s = serialize(arr)
    assert s.format == "pickle"
    back = restore(s.format, payload_of(s))
    assert type(back) is type(arr)
    np.testing.assert_array_equal(back, arr)
    if isinstance(arr, np.ma.MaskedArray):
        np.testing.assert_array_equal(back.mask, arr.mask)


def test_pickled_big_buffers_are_out_of_band_and_restored_zero_copy() -> None:
    obj = {
        "a": np.arange(2**20, dtype=np.float64),
        "b": np.ones((512, 512), dtype=np.float32),
        "tiny": np.arange(3),
    }
    s = serialize(obj)
    assert s.format == "pickle"
    payload = payload_of(s)
    header = json.loads(payload[8 : 8 + int.from_bytes(payload[4:8], "little")])
    assert header["protocol"] == 5 and sorted(header["buffers"]) == [
        512 * 512 * 4,
        2**20 * 8,
    ]
    back = restore("pickle", payload)
    for name in ("a", "b"):
        np.testing.assert_array_equal(back[name], obj[name])
        assert backed_by(back[name], payload)
        assert back[name].flags.writeable
    np.testing.assert_array_equal(back["tiny"], obj["tiny"])


def test_pickle_from_read_only_payload_gives_writable_arrays() -> None:
    obj = {"a": np.arange(100_000)}
    back = restore("pickle", bytes(payload_of(serialize(obj))))
    assert back["a"].flags.writeable


# ---------------------------------------------------------------- DataFrames

N = 7
PARQUET_FRAMES = {
    "int float bool": pd.DataFrame({"i": np.arange(N), "f": np.linspace(0, 1, N), "b": np.arange(N) % 2 == 0}),
    "small ints and float32": pd.DataFrame({"u8": np.arange(N, dtype=np.uint8), "f4": np.ones(N, np.float32)}),
    "str with missing": pd.DataFrame({"s": ["a", None, "ccc", "", "é", "f", "g"]}),
    "string[pyarrow] with NA": pd.DataFrame(
        {"s": pd.array(["a", None, "c", "d", "e", "f", "g"], dtype="string[pyarrow]")}
    ),
    "datetime and timedelta": pd.DataFrame(
        {
            "ns": pd.date_range("2024-01-01", periods=N, freq="h", unit="ns"),
            "us": pd.date_range("2024-01-01", periods=N, freq="D", unit="us"),
            "tz": pd.date_range("2024-03-30", periods=N, freq="12h", tz="Europe/Paris"),
            "td": pd.to_timedelta(np.arange(N), unit="s"),
        }
    ),
    "category": pd.DataFrame(
        {
            "c": pd.Categorical(
                ["b", "a", None, "b", "c", "a", "b"],
                categories=["c", "b", "a", "unused"],
                ordered=True,
            )
        }
    ),
    "nullable": pd.DataFrame(
        {
            "I": pd.array([1, None, 3, 4, 5, 6, 7], dtype="Int64"),
            "F": pd.array([1.5, None, 3, 4, 5, 6, 7], dtype="Float64"),
            "B": pd.array([True, None, False, True, True, False, None], dtype="boolean"),
        }
    ),
    "arrow int": pd.DataFrame({"a": pd.array([1, None, 3, 4, 5, 6, 7], dtype="int64[pyarrow]")}),
    "range index with step and name": pd.DataFrame(
        {"a": np.arange(N)}, index=pd.RangeIndex(10, 10 + 3 * N, 3, name="r")
    ),
    "named str index": pd.DataFrame({"a": np.arange(N)}, index=pd.Index(list("abcdefg"), name="key")),
    "unsorted int index": pd.DataFrame({"a": np.arange(N)}, index=[5, 3, 1, 2, 0, 9, 9]),
    "DatetimeIndex with freq": pd.DataFrame(
        {"a": np.arange(N)},
        index=pd.date_range("2024-01-01", periods=N, freq="D", name="day"),
    ),
    "tz DatetimeIndex with freq": pd.DataFrame(
        {"a": np.arange(N)},
        index=pd.date_range("2024-03-30", periods=N, freq="6h", tz="Europe/Paris"),
    ),
    "DatetimeIndex no freq": pd.DataFrame(
        {"a": np.arange(N)},
        index=pd.DatetimeIndex([f"2024-01-0{d}" for d in (3, 1, 2, 5, 4, 7, 6)]),
    ),
    "MultiIndex": pd.DataFrame(
        {"a": np.arange(N)},
        index=pd.MultiIndex.from_arrays([list("aabbccd"), np.arange(N) % 2], names=["x", "y"]),
    ),
    "columns name": pd.DataFrame({"a": np.arange(N), "b": np.arange(N)}).rename_axis(columns="fields"),
    "no rows": pd.DataFrame({"a": np.arange(0), "s": pd.Series([], dtype="str")}),
    "NaN and signed zero": pd.DataFrame({"f": [1.0, np.nan, -0.0, np.inf, -np.inf, 2.0, 3.0]}),
    "NaT": pd.DataFrame(
        {
            "t": pd.to_datetime(
                [
                    "2024-01-01",
                    None,
                    "2024-01-03",
                    None,
                    "2024-01-05",
                    "2024-01-06",
                    "2024-01-07",
                ]
            ),
            "d": pd.to_timedelta([1, None, 3, 4, 5, 6, 7], unit="h"),
        }
    ),
    "float16 and ms units": pd.DataFrame(
        {
            "h": np.arange(N, dtype=np.float16),
            "ms": np.arange(N).astype("datetime64[ms]"),
            "tz_ms": pd.date_range("2024", periods=N, tz="Asia/Tokyo", unit="ms"),
            "td_s": np.arange(N).astype("timedelta64[s]"),
        }
    ),
    "arrow types": pd.DataFrame(
        {
            "ls": pd.array(
                ["a", None, "c", "d", "e", "f", "g"],
                dtype=pd.ArrowDtype(pa.large_string()),
            ),
            "ts": pd.array([1, None, 3, 4, 5, 6, 7], dtype=pd.ArrowDtype(pa.timestamp("s"))),
            "date": pd.array([1, None, 3, 4, 5, 6, 7], dtype=pd.ArrowDtype(pa.date32())),
            "bool": pd.array([True, None, False, True, True, False, True], dtype="bool[pyarrow]"),
            "bin": pd.array(
                [b"x", None, b"", b"yy", b"z", b"w", b"v"],
                dtype=pd.ArrowDtype(pa.binary()),
            ),
            "f32": pd.array([1.5, None, 3, 4, 5, 6, 7], dtype="float32[pyarrow]"),
        }
    ),
    "many categories": pd.DataFrame(
        {
            "c": pd.Categorical.from_codes(
                np.arange(50_000)[::-1] % 40_000,
                categories=[f"cat{i:06d}" for i in range(50_000)][::-1],
            )
        }
    ),
    "timedelta and uint8 index levels": pd.DataFrame(
        {"a": np.arange(N)},
        index=pd.MultiIndex.from_arrays([pd.to_timedelta(np.arange(N), unit="s"), np.arange(N, dtype=np.uint8)]),
    ),
    "MultiIndex with datetime level": pd.DataFrame(
        {"a": np.arange(N)},
        index=pd.MultiIndex.from_arrays(
            [
                pd.DatetimeIndex(pd.date_range("2024", periods=N, tz="UTC"), freq=None),
                list("abcabca"),
            ],
            names=["when", None],
        ),
    ),
}


@pytest.mark.parametrize("name", list(PARQUET_FRAMES))
def test_dataframes_round_trip_exactly_as_parquet(name: str) -> None:
    df = PARQUET_FRAMES[name]
    s = serialize(df)
    assert s.format == "parquet" and s.type_name == "pandas.DataFrame"
    payload = payload_of(s)
    back = restore("parquet", payload)
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    if isinstance(df.index, pd.DatetimeIndex):
        assert back.index.freq == df.index.freq
    if len(back):
        for j in range(back.shape[1]):  # the restored frame is an ordinary, mutable one
            back.iloc[0, j] = back.iloc[1, j]


def test_parquet_payload_is_a_plain_parquet_file_duckdb_reads(
    tmp_path: pathlib.Path,
) -> None:
    df = pd.DataFrame(
        {"x": np.arange(1000), "s": [f"v{i}" for i in range(1000)]},
        index=pd.RangeIndex(1000, name="i"),
    )
    s = serialize(df)
    path = tmp_path / "obj.parquet"
    with open(path, "wb", buffering=0) as f:
        written = s.write(f)
    assert written == s.size == os.path.getsize(path)  # size is exact once written
    data = path.read_bytes()
    assert data[:4] == data[-4:] == b"PAR1"
    assert pq.read_table(pa.BufferReader(data)).num_rows == 1000
    duckdb = pytest.importorskip("duckdb")
    assert duckdb.sql(f"select count(*), sum(x), max(s) from read_parquet('{path}')").fetchall() == [
        (1000, 499500, "v999")
    ]


def test_big_dataframe_survives_short_writes() -> None:
    df = pd.DataFrame({"a": np.arange(300_000), "b": np.random.default_rng(1).random(300_000)})
    s = serialize(df)
    f = ShortWriteFile(limit=100_003)
    n = s.write(f)  # type: ignore[arg-type]
    assert n == len(f.data)
    pd.testing.assert_frame_equal(restore("parquet", f.data), df, check_exact=True)


def _numeric_frame(n: int) -> pd.DataFrame:
    """Every numpy dtype the Parquet reader copies in place, with NaN and NaT, next to other columns."""
    rng = np.random.default_rng(7)
    f = rng.random(n)
    f[rng.random(n) < 0.05] = np.nan
    f[: n // 5] = np.nan  # whole pages of nulls, and pages without any
    t = pd.Series(pd.date_range("2020", periods=n, freq="ms", unit="ns"))
    t[rng.random(n) < 0.3] = pd.NaT
    return pd.DataFrame(
        {
            "f": f,
            "g": rng.random(n),
            "f32": rng.random(n).astype("float32"),
            "i8": rng.integers(-128, 127, n).astype("int8"),
            "u16": rng.integers(0, 65535, n).astype("uint16"),
            "u32": rng.integers(0, 2**32 - 1, n, dtype="uint64").astype("uint32"),
            "u64": rng.integers(0, 2**64 - 1, n, dtype="uint64"),
            "i": np.arange(n),
            "t": t,
            "ms": np.arange(n).astype("datetime64[ms]"),
            "td": np.arange(n).astype("timedelta64[s]"),
            "s": pd.array(np.where(rng.random(n) < 0.1, None, "abc"), dtype="str"),
            "b": rng.random(n) < 0.5,
            "c": pd.Categorical(rng.choice(["x", "y"], n)),
            "tz": pd.date_range("2020", periods=n, freq="s", tz="UTC"),
        },
        index=pd.Index(rng.integers(0, 1000, n), name="k"),
    )


def _assert_mutable(back: pd.DataFrame) -> None:
    """The restored frame is an ordinary one: every column writable, in place and by assignment."""
    for j in range(back.shape[1]):
        back.iloc[0, j] = back.iloc[-1, j]
    back["g"] += 1
    back.loc[back.index[:3], "f"] = 5.0
    back.loc[back.index[1], "t"] = pd.Timestamp("2000-01-01")
    assert (back["f"].iloc[:3] == 5.0).all() and back["t"].iloc[1] == pd.Timestamp("2000-01-01")


@pytest.mark.slow
def test_big_dataframe_restores_exactly_and_writable_from_a_mapped_file(tmp_path: pathlib.Path) -> None:
    """Several row groups and pages, restored from a copy-on-write mapping as the store gives it."""
    df = _numeric_frame(1_100_000)
    s = serialize(df)
    assert s.format == "parquet"
    path = tmp_path / "obj"
    with open(path, "wb", buffering=0) as f:
        s.write(f)
    assert pq.ParquetFile(path).metadata.num_row_groups > 1
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    back = restore("parquet", memoryview(mapped))
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    pd.testing.assert_frame_equal(back, pq.read_table(path).to_pandas(), check_exact=True)
    _assert_mutable(back)
    assert not back.equals(df)
    assert path.read_bytes() == s.to_bytes()  # the file is untouched


@pytest.mark.parametrize(
    "options",
    [
        {"data_page_version": "2.0"},
        {"data_page_version": "2.0", "required": True},
        {"required": True},
        {"compression": "snappy"},
        {"use_dictionary": True},
        {
            "row_group_size": 10_000,
            "data_page_size": 1000,
            "write_statistics": True,
            "write_page_checksum": True,
            "write_page_index": True,
        },
    ],
    ids=["page v2", "page v2 required", "required", "snappy", "dictionary", "small pages, statistics, checksums"],
)
def test_parquet_written_with_other_options_restores_exactly(options: dict[str, Any]) -> None:
    """The reader copies PLAIN pages itself; files laid out otherwise still come back exactly."""
    df = _numeric_frame(50_000)
    table = pq.read_table(pa.BufferReader(serialize(df).to_bytes()))  # our schema and metadata
    options = dict(options)
    if options.pop("required", False):
        fields = [field.with_nullable(field.name in ("f", "t", "s")) for field in table.schema]
        table = pa.Table.from_arrays(table.columns, schema=pa.schema(fields, metadata=table.schema.metadata))
    out = io.BytesIO()
    pq.write_table(table, out, store_schema=True, **{"compression": "none", "use_dictionary": ["c"], **options})
    back = restore("parquet", bytearray(out.getvalue()))
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    _assert_mutable(back)


def test_parquet_int_column_with_nulls_converts_like_pyarrow() -> None:
    """Not a file we write (numpy ints have no nulls): the result is pyarrow's own conversion."""
    df = pd.DataFrame({"i": np.arange(1000), "f": np.arange(1000.0)})
    table = pq.read_table(pa.BufferReader(serialize(df).to_bytes()))
    ints = pa.array([None if k % 3 == 0 else k for k in range(1000)], pa.int64())
    table = pa.Table.from_arrays([ints, table.column("f")], schema=table.schema)
    out = io.BytesIO()
    pq.write_table(table, out, compression="none", use_dictionary=False, store_schema=True)
    back = restore("parquet", bytearray(out.getvalue()))
    pd.testing.assert_frame_equal(back, table.to_pandas(), check_exact=True)
    assert back["i"].dtype == np.float64


def test_damaged_parquet_page_headers_are_corrupt_or_read() -> None:
    """Bytes changed in page headers: CorruptObjectError, or a frame - never another exception."""
    n = 300_000
    df = pd.DataFrame({"f": np.where(np.arange(n) % 7 == 0, np.nan, 1.5), "i": np.arange(n)})
    data = serialize(df).to_bytes()
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    starts = [meta.row_group(g).column(j).data_page_offset for g in range(meta.num_row_groups) for j in range(2)]
    outcomes = collections.Counter()
    for k in range(200):
        damaged = bytearray(data)
        damaged[starts[k % len(starts)] + (k * 7) % 40] ^= 1 + (k * 37) % 255
        try:
            outcomes["equal" if restore("parquet", damaged).equals(df) else "read"] += 1
        except CorruptObjectError:
            outcomes["corrupt"] += 1
    assert outcomes["corrupt"] > 0


class FrameSubclass(pd.DataFrame):  # type: ignore[misc]
    @property
    def _constructor(self) -> type[FrameSubclass]:
        return FrameSubclass


def _with_attrs() -> pd.DataFrame:
    df = pd.DataFrame({"a": [1, 2]})
    df.attrs["source"] = "api"
    return df


PICKLED_FRAMES: dict[str, Callable[[], pd.DataFrame]] = {
    "object column": lambda: pd.DataFrame({"o": pd.Series([1, "a", None], dtype=object)}),
    "int labels": lambda: pd.DataFrame({0: [1, 2], 1: [3, 4]}),
    "duplicate labels": lambda: pd.DataFrame([[1, 2]], columns=["a", "a"]),
    "attrs": _with_attrs,
    "subclass": lambda: FrameSubclass({"a": [1, 2]}),
    "datetime64[s]": lambda: pd.DataFrame({"t": np.array([0, 1], dtype="datetime64[s]")}),
    "int categories": lambda: pd.DataFrame({"c": pd.Categorical([3, 1, 3], categories=[3, 2, 1])}),
    "python strings": lambda: pd.DataFrame({"s": pd.array(["a", None], dtype="string[python]")}),
    "index named like a column": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.Index([5, 6], name="a")),
    "custom business day freq": lambda: pd.DataFrame(
        {"a": [1, 2]},
        index=pd.date_range(
            "2024-01-01",
            periods=2,
            freq=pd.offsets.CustomBusinessDay(holidays=["2024-01-02"]),
        ),
    ),
    "no columns": lambda: pd.DataFrame(index=range(3)),
    "complex": lambda: pd.DataFrame({"z": [1 + 1j, 2]}),
    "period": lambda: pd.DataFrame({"p": pd.period_range("2024-01", periods=2, freq="M")}),
    "MultiIndex columns": lambda: pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("a", "x"), ("a", "y")])),
    "arrow string": lambda: pd.DataFrame({"s": pd.array(["a", None], dtype=pd.ArrowDtype(pa.string()))}),
    "arrow decimal": lambda: pd.DataFrame({"d": pd.array([None, None], dtype=pd.ArrowDtype(pa.decimal128(10, 2)))}),
    "arrow list": lambda: pd.DataFrame({"l": pd.array([[1], None], dtype=pd.ArrowDtype(pa.list_(pa.int64())))}),
    "TimedeltaIndex with freq": lambda: pd.DataFrame(
        {"a": [1, 2]}, index=pd.timedelta_range("1D", periods=2, freq="h")
    ),
    "categorical index": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.CategoricalIndex(["x", "y"])),
    "MultiIndex level with freq": lambda: pd.DataFrame(
        {"a": [1, 2]},
        index=pd.MultiIndex.from_arrays([pd.date_range("2024", periods=2, freq="D"), ["x", "y"]]),
    ),
    "nullable index": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.Index(pd.array([3, None], dtype="Int64"))),
    "NA-string index": lambda: pd.DataFrame(
        {"a": [1, 2]}, index=pd.Index(pd.array(["x", None], dtype="string[pyarrow]"))
    ),
    "arrow index level": lambda: pd.DataFrame(
        {"a": [1, 2]},
        index=pd.MultiIndex.from_arrays([pd.array([1, 2], dtype="int64[pyarrow]"), ["x", "y"]]),
    ),
}


@pytest.mark.parametrize("name", list(PICKLED_FRAMES))
def test_dataframes_that_might_not_round_trip_are_pickled(name: str) -> None:
    df = PICKLED_FRAMES[name]()
    s = serialize(df)
    assert s.format == "pickle"
    back = restore("pickle", payload_of(s))
    assert type(back) is type(df)
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert back.attrs == df.attrs


# ---------------------------------------------------------------- notebook functions and classes


def test_notebook_function_is_rebuilt_on_the_restore_namespace() -> None:
    ns = notebook(
        """
        counter = 0
        def bump(step: int = 1, *, twice: bool = False) -> int:
            "Add step to the global counter."
            global counter
            counter += step * (2 if twice else 1)
            return counter
        bump.tag = "mine"
        """
    )
    s = serialize(ns["bump"], namespace=ns)
    assert s.format == "pickle"
    new: dict[str, Any] = {"__name__": "__main__", "counter": 10}
    bump = restore("pickle", payload_of(s), namespace=new)
    assert bump.__globals__ is new
    assert bump() == 11 and bump(2, twice=True) == 15
    assert new["counter"] == 15 and ns["counter"] == 0
    assert bump.__name__ == bump.__qualname__ == "bump"
    assert bump.__doc__ == "Add step to the global counter."
    assert bump.__defaults__ == (1,) and bump.__kwdefaults__ == {"twice": False}
    # Strings: exec() inherits this module's `from __future__ import annotations`.
    assert bump.__annotations__ == {"step": "int", "twice": "bool", "return": "int"}
    assert bump.tag == "mine" and bump.__module__ == "__main__"


def test_notebook_function_sees_later_definitions_in_the_namespace() -> None:
    ns = notebook(
        """
        def helper(x): return x + 1
        def main(x): return helper(x) * 2
        """
    )
    new = notebook("def helper(x): return x + 100")
    main = roundtrip(ns["main"], namespace=ns, restore_into=new)
    assert main(1) == 202


def test_lambda_is_rebuilt_on_the_restore_namespace() -> None:
    ns = notebook("factor = 2\nscale = lambda x: x * factor")
    scale = roundtrip(ns["scale"], namespace=ns, restore_into={"factor": 5})
    assert scale(3) == 15 and scale.__name__ == "<lambda>"


def test_closures_keep_their_cells() -> None:
    ns = notebook(
        """
        offset = 10
        def make_adder(n):
            def add(x):
                return x + n + offset
            return add
        add3 = make_adder(3)

        def make_fact():
            def fact(k):
                return 1 if k <= 1 else k * fact(k - 1)
            return fact
        fact = make_fact()

        def make_early():
            def early():
                return later
            grab = early
            return grab
            later = 1  # never reached: the cell stays empty
        early = make_early()
        """
    )
    new = {"offset": 100}
    add3 = roundtrip(ns["add3"], namespace=ns, restore_into=new)
    assert add3(1) == 104 and add3.__globals__ is new
    fact = roundtrip(ns["fact"], namespace=ns, restore_into=new)
    assert fact(5) == 120 and fact.__closure__[0].cell_contents is fact
    early = roundtrip(ns["early"], namespace=ns, restore_into=new)
    with pytest.raises(NameError):
        early()


def test_functions_of_other_modules_keep_their_own_globals() -> None:
    back = roundtrip(os.path.join, namespace={})
    assert back is os.path.join


def test_notebook_class_and_instance_restore_together() -> None:
    ns = notebook(
        """
        unit = "m"
        class Point:
            def __init__(self, x, y):
                self.x, self.y = x, y
            def describe(self):
                return f"{self.x},{self.y} {unit}"
            @property
            def norm1(self):
                return abs(self.x) + abs(self.y)
        p = Point(1, -2)
        """
    )
    new = {"__name__": "__main__", "unit": "km"}
    cls = roundtrip(ns["Point"], namespace=ns, restore_into=new)
    p = roundtrip(ns["p"], namespace=ns, restore_into=new)
    assert isinstance(p, cls)
    assert (p.x, p.y, p.norm1) == (1, -2, 3)


def test_instance_with_slots_round_trips() -> None:
    ns = notebook(
        """
        class Pair:
            __slots__ = ("a", "b")
            def __init__(self, a, b):
                self.a, self.b = a, b
        pair = Pair([1], {"k": 2})
        """
    )
    pair = roundtrip(ns["pair"], namespace=ns, restore_into={})
    assert (pair.a, pair.b) == ([1], {"k": 2})
    assert not hasattr(pair, "__dict__")


def test_function_and_instance_restore_in_another_process(
    tmp_path: pathlib.Path,
) -> None:
    """Saved by a fresh interpreter, restored here: nothing of the notebook exists in this process."""
    path = tmp_path / "payload"
    script = textwrap.dedent(
        f"""
        import textwrap
        from nbdurable.serialization import serialize
        ns = {{"__name__": "__main__"}}
        exec(textwrap.dedent('''
            import math
            total = 0
            class Account:
                def __init__(self, owner, balance):
                    self.owner, self.balance = owner, balance
                def deposit(self, amount):
                    global total
                    self.balance += amount
                    total += amount
                    return math.floor(self.balance)
            def open_account(owner):
                return Account(owner, 0.5)
            acct = open_account("ada")
        '''), ns)
        s = serialize({{"open": ns["open_account"], "acct": ns["acct"], "cls": ns["Account"]}}, namespace=ns)
        assert s.format == "pickle", s
        with open({str(path)!r}, "wb", buffering=0) as f:
            s.write(f)
        """
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    # What the restorer does: the notebook's other variables (the module, the total) are restored too.
    new: dict[str, Any] = {"__name__": "__main__", "total": 100, "math": math}
    restored = restore("pickle", bytearray(path.read_bytes()), namespace=new)
    acct, cls, open_account = restored["acct"], restored["cls"], restored["open"]
    assert isinstance(acct, cls) and acct.owner == "ada"
    assert acct.deposit(2) == 2 and new["total"] == 102  # the method mutates *this* namespace
    assert open_account.__globals__ is new
    new["Account"] = cls  # restored from its own variable, like `math` above
    assert isinstance(open_account("bob"), cls)


# ---------------------------------------------------------------- modules


@pytest.mark.parametrize("module, name", [(np, "numpy"), (os.path, os.path.__name__), (json, "json")])
def test_modules_are_restored_by_import(module: types.ModuleType, name: str) -> None:
    s = serialize(module)
    assert (s.format, s.module, s.has_payload, s.size) == ("module", name, False, 0)
    assert s.to_bytes() == b""
    assert restore("module", None, module=s.module) is module


def test_dynamic_module_is_unrestorable() -> None:
    mod = types.ModuleType("made_up_at_run_time")
    s = serialize(mod)
    assert s.format == "unrestorable" and "created at run time" in (s.reason or "")


def test_missing_module_says_what_to_install() -> None:
    with pytest.raises(RestoreError, match="nbdurable_no_such_module") as info:
        restore("module", None, module="nbdurable_no_such_module.sub")
    assert "pip install nbdurable_no_such_module" in (info.value.hint or "")


def test_plain_objects_do_not_import_numpy_or_pandas() -> None:
    code = (
        "import sys\n"
        "from nbdurable.serialization import serialize, deserialize\n"
        "s = serialize({'a': [1, 2.5, 'x']})\n"
        "assert deserialize(s.format, bytearray(s.to_bytes())) == {'a': [1, 2.5, 'x']}\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- unrestorable


def _generator() -> Any:
    yield 1


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda tmp: _generator(), "generator"),
        (lambda tmp: sqlite3.connect(":memory:"), "sqlite3.Connection"),
        (lambda tmp: threading.Lock(), "lock"),
        (lambda tmp: open(tmp / "w.txt", "w"), "open file"),  # closed by the test
        (lambda tmp: open(tmp / "w.txt", "rb"), "open file"),
        (lambda tmp: {"nested": [_generator()]}, "generator"),
    ],
    ids=["generator", "sqlite3", "lock", "file-w", "file-rb", "nested"],
)
def test_unpicklable_objects_are_unrestorable_with_a_reason(tmp_path: pathlib.Path, make: Any, reason: str) -> None:
    (tmp_path / "w.txt").write_text("content")
    obj = make(tmp_path)
    try:
        s = serialize(obj)
        assert s.format == "unrestorable" and not s.has_payload and s.size == 0
        assert reason in (s.reason or ""), s.reason
        assert serialize(obj).key == s.key  # stable while the object lives
        assert serialize(make(tmp_path)).key != s.key  # another object of the same type
        with pytest.raises(RestoreError) as info:
            restore("unrestorable", None)
        assert info.value.hint
    finally:
        if hasattr(obj, "close"):
            obj.close()


# ---------------------------------------------------------------- keys


def _df() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "f": np.arange(5.0),
            "s": ["a", "b", None, "d", "e"],
            "I": pd.array([1, None, 3, 4, 5], dtype="Int64"),
            "c": pd.Categorical(list("xyxyz")),
            "tz": pd.date_range("2024", periods=5, tz="UTC"),
        },
        index=pd.Index([10, 11, 12, 13, 14], name="k"),
    )


def test_equal_content_gives_equal_keys() -> None:
    for make in (
        lambda: {"a": [1, 2, {3}]},
        lambda: np.arange(1000.0).reshape(10, 100),
        _df,
    ):
        assert serialize(make()).key == serialize(make()).key


def _set_index_name(df: pd.DataFrame) -> None:
    df.index.name = "other"


def _set_label(df: pd.DataFrame) -> None:
    df.columns = ["g", *df.columns[1:]]


# In-place changes to the same object (what the fingerprint exists for), and rebindings of parts of it.
MUTATIONS: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    "dict in place": (lambda: {"a": [1]}, lambda o: o["a"].append(2)),
    "array element": (lambda: np.zeros(1000), lambda o: o.__setitem__(999, 1.0)),
    "F-order array element": (
        lambda: np.zeros((30, 40), order="F"),
        lambda o: o.__setitem__((29, 0), 1.0),
    ),
    "array in a dict": (
        lambda: {"a": np.zeros(100_000)},
        lambda o: o["a"].__setitem__(5, 1.0),
    ),
    "df float cell": (_df, lambda o: o.loc.__setitem__((14, "f"), 4.5)),
    "df str cell": (_df, lambda o: o.loc.__setitem__((14, "s"), "E")),
    "df Int64 to NA": (_df, lambda o: o.loc.__setitem__((10, "I"), pd.NA)),
    "df category value": (_df, lambda o: o.loc.__setitem__((10, "c"), "z")),
    "df tz value": (
        _df,
        lambda o: o.loc.__setitem__((12, "tz"), pd.Timestamp("2000", tz="UTC")),
    ),
    "df index value": (
        _df,
        lambda o: setattr(o, "index", pd.Index([10, 11, 12, 13, 15], name="k")),
    ),
    "df index name": (_df, _set_index_name),
    "df column label": (_df, _set_label),
    "df dtype": (_df, lambda o: o.__setitem__("f", o["f"].astype("float32"))),
    "df category order": (
        _df,
        lambda o: o.__setitem__("c", o["c"].cat.reorder_categories(["z", "y", "x"])),
    ),
    "df new column": (_df, lambda o: o.__setitem__("new", 1)),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_mutated_content_gives_a_different_key(name: str) -> None:
    make, mutate = MUTATIONS[name]
    obj = make()
    before = serialize(obj).key
    mutate(obj)
    assert serialize(obj).key != before


def test_equal_values_in_different_formats_have_different_keys() -> None:
    values = [
        np.arange(3),
        [0, 1, 2],
        pd.DataFrame({"a": np.arange(3)}),
        pd.DataFrame({"a": pd.Series([0, 1, 2], dtype=object)}),
    ]
    keys = {serialize(v).key for v in values}
    assert len(keys) == len(values)
    assert serialize(np).key != serialize(np.arange(0)).key


def test_dataframe_key_is_the_same_for_interleaved_and_separate_columns() -> None:
    data = np.random.default_rng(0).random((100_000, 3))
    interleaved = pd.DataFrame(data, columns=["a", "b", "c"], copy=False)  # columns: strided views of `data`
    separate = pd.DataFrame({name: data[:, i].copy() for i, name in enumerate("abc")})
    key = serialize(interleaved).key
    assert key == serialize(separate).key
    interleaved.iloc[99_999, 1] = -1.0
    assert serialize(interleaved).key != key


def test_same_bytes_different_layout_different_keys() -> None:
    a = np.arange(6.0)
    assert serialize(a).key != serialize(a.reshape(2, 3)).key != serialize(a.reshape(2, 3).T).key


# ---------------------------------------------------------------- errors


def _patch_header_version(payload: bytearray) -> bytearray:
    return bytearray(bytes(payload).replace(b'"version":1', b'"version":2', 1))


@pytest.mark.parametrize("obj", [{"a": 1}, np.arange(3)], ids=["pickle", "ndarray"])
def test_newer_versions_are_refused(obj: Any) -> None:
    s = serialize(obj)
    payload = payload_of(s)
    with pytest.raises(StoreFormatError, match="newer nbdurable") as info:
        restore(s.format, payload, format_version=FORMAT_VERSION + 1)
    assert "upgrade" in (info.value.hint or "")
    with pytest.raises(StoreFormatError, match="newer nbdurable"):
        restore(s.format, _patch_header_version(payload))


def test_newer_parquet_metadata_is_refused() -> None:
    table = pa.table({"a": [1]}).replace_schema_metadata({b"nbdurable": b'{"version": 99}'})
    out = io.BytesIO()
    pq.write_table(table, out)
    with pytest.raises(StoreFormatError, match="newer nbdurable"):
        restore("parquet", bytearray(out.getvalue()))


def test_unknown_format_is_refused() -> None:
    with pytest.raises(StoreFormatError, match="unknown object format 'zarr'"):
        restore("zarr", b"")


@pytest.mark.parametrize(
    "obj",
    [{"a": np.arange(10_000)}, np.arange(10), pd.DataFrame({"a": [1, 2]})],
    ids=["pickle", "ndarray", "parquet"],
)
def test_truncated_payloads_are_corrupt(obj: Any) -> None:
    s = serialize(obj)
    payload = payload_of(s)
    for cut in (3, 20, len(payload) // 2, len(payload) - 1):
        with pytest.raises(CorruptObjectError) as info:
            restore(s.format, payload[:cut])
        assert info.value.hint


@pytest.mark.parametrize("fmt", ["pickle", "ndarray", "parquet"])
def test_bad_magic_is_corrupt(fmt: str) -> None:
    obj = {
        "pickle": {"a": 1},
        "ndarray": np.arange(3),
        "parquet": pd.DataFrame({"a": [1]}),
    }[fmt]
    payload = payload_of(serialize(obj))
    payload[:4] = b"XXXX"
    with pytest.raises(CorruptObjectError, match="magic"):
        restore(fmt, payload)


def test_damaged_pickle_bytes_are_corrupt() -> None:
    payload = payload_of(serialize({"a": "x" * 100}))
    start = (8 + int.from_bytes(payload[4:8], "little") + 63) // 64 * 64
    payload[start + 2 : start + 40] = b"\xff" * 38
    with pytest.raises((CorruptObjectError, RestoreError)):
        restore("pickle", payload)


def test_missing_payload_is_corrupt() -> None:
    with pytest.raises(CorruptObjectError):
        restore("pickle", None)


def test_errors_survive_pickling_with_their_hint() -> None:
    try:
        restore("zarr", b"")
    except StoreFormatError as exc:
        back = roundtrip(exc)
        assert type(back) is StoreFormatError and back.hint == exc.hint


def test_short_writes_are_completed() -> None:
    arr = np.arange(50_000.0)
    s = serialize({"a": arr, "b": arr.copy()})
    f = ShortWriteFile(limit=4097)
    assert s.write(f) == s.size == len(f.data)  # type: ignore[arg-type]
    np.testing.assert_array_equal(restore("pickle", f.data)["b"], arr)


@pytest.mark.parametrize("name", list(PARQUET_FRAMES))
def test_dataframes_round_trip_exactly_column_by_column(name: str) -> None:
    """Big frames are stored as one Parquet object per column (and per non-range index): the same corpus
    comes back exactly from its parts, and each part's key is of its data only."""
    from nbdurable.serialization import assemble_frame, frame_parts

    df = PARQUET_FRAMES[name]
    parts = frame_parts(serialize(df))
    assert parts is not None
    assert [label for label, _, _ in parts.columns] == list(df.columns)
    assert all(part.key == key for _, key, part in parts.columns)
    index = None if parts.index is None else restore("parquet", payload_of(parts.index[1]))
    columns = [restore("parquet", payload_of(part)) for _, _, part in parts.columns]
    back = assemble_frame(parts.manifest, index, columns)
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    if isinstance(df.index, pd.DatetimeIndex):
        assert back.index.freq == df.index.freq
    if len(back):
        for j in range(back.shape[1]):
            back.iloc[0, j] = back.iloc[1, j]


def test_a_frame_part_stored_already_is_not_made_again() -> None:
    from nbdurable.serialization import frame_parts

    df = pd.DataFrame({"a": np.arange(1000.0), "b": np.arange(1000)}, index=pd.Index(np.arange(1000) % 7, name="k"))
    s = serialize(df)
    first_column = s.column_keys[0]  # type: ignore[attr-defined]
    parts = frame_parts(s, lambda key: key in (first_column, s.index_key))  # type: ignore[attr-defined]
    assert [(label, key, part is None) for label, key, part in parts.columns] == \
        [("a", first_column, True), ("b", s.column_keys[1], False)]  # type: ignore[attr-defined]
    assert parts.index == (s.index_key, None)  # type: ignore[attr-defined]


def test_a_columns_key_survives_rename_reorder_and_a_changed_neighbour() -> None:
    df = pd.DataFrame({"a": np.arange(1000.0), "b": np.arange(1000), "c": [f"s{i}" for i in range(1000)]})
    keys = dict(zip(df.columns, serialize(df).column_keys, strict=True))  # type: ignore[attr-defined]
    moved = df[["c", "a"]].rename(columns={"a": "z"})
    moved["b2"] = df["b"] * 2
    moved_keys = dict(zip(moved.columns, serialize(moved).column_keys, strict=True))  # type: ignore[attr-defined]
    assert moved_keys["c"] == keys["c"] and moved_keys["z"] == keys["a"]
    assert moved_keys["b2"] != keys["b"]
    assert serialize(moved).key != serialize(df).key
