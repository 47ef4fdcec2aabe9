"""The ``parquet`` format: DataFrames as plain Parquet files (DuckDB's read_parquet reads them directly).

Only DataFrames that are known to come back *exactly* (same dtypes, index, labels) take this path: a cheap
rule on labels and dtypes decides (``plan``), everything else is pickled. The content key is a
fingerprint of the data, hashed in place (numeric buffers, Arrow buffers, categorical codes), never of
the Parquet encoding, which happens only in ``write()``. The encoding options were chosen by measurement
(bench/bench_serialization_probe.py): no compression, no dictionaries except for categoricals, pages of
128 Ki rows, 1 Mi-row row groups. Reading copies the pages of numpy columns straight from the payload into
the frame's blocks, once (``_read_columns_in_place``); pyarrow reads the rest.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nbdurable.errors import StoreError
from nbdurable.serialization._core import (
    FORMAT_VERSION,
    Payload,
    Serialized,
    byte_view,
    check_version,
    corrupt,
    new_hasher,
    write_all,
)
from nbdurable.serialization._ndarray import raw_memory
from nbdurable.serialization._parquet_common import FORMAT, WRITE_OPTIONS, conversion_error
from nbdurable.serialization._parquet_pages import read_columns_in_place

META_KEY = b"nbdurable"  # our own entry in the Parquet key-value metadata (the file stays plain Parquet)
_U64 = struct.Struct("<Q")
_HASH_CHUNK = 4 << 20  # bytes copied at a time to hash a strided column


_DATETIME_UNITS = frozenset({"ms", "us", "ns"})  # Parquet has no seconds: datetime64[s] would come back [ms]
_DURATION_UNITS = frozenset({"s", "ms", "us", "ns"})  # durations are restored from the stored Arrow schema
_MASKED_DTYPES: tuple[type, ...] = (
    pd.Int8Dtype, pd.Int16Dtype, pd.Int32Dtype, pd.Int64Dtype,
    pd.UInt8Dtype, pd.UInt16Dtype, pd.UInt32Dtype, pd.UInt64Dtype,
    pd.Float32Dtype, pd.Float64Dtype, pd.BooleanDtype,
)  # fmt: skip


class ParquetSerialized(Serialized):
    """A DataFrame fingerprinted now, encoded as Parquet when written.

    ``column_keys`` (one per column, of its dtype, length and data only: not its label) and ``index_key``
    (None for a RangeIndex) let a big frame be stored column by column (``frame_parts``); ``part_sizes``
    gives each of those keys' bytes in memory."""

    __slots__ = ("_frame", "_plan", "column_keys", "index_key", "part_sizes")

    def __init__(self, frame: pd.DataFrame, plan: dict[str, Any], *, column_keys: tuple[str, ...] = (),
                 index_key: str | None = None, part_sizes: dict[str, int] | None = None, **fields: Any) -> None:
        super().__init__(**fields)
        self._frame = frame
        self._plan = plan
        self.column_keys = column_keys
        self.index_key = index_key
        self.part_sizes = part_sizes or {}

    @property
    def frame(self) -> pd.DataFrame:
        """The frame as fingerprinted (a snapshot's own copy): what its parts are cut from."""
        return self._frame

    @property
    def has_payload(self) -> bool:
        return True

    def write(self, f: BinaryIO) -> int:
        sink = _Sink(f)
        table = _to_arrow(self._frame, self._plan)
        options = dict(WRITE_OPTIONS, use_dictionary=self._plan["dictionary"] or False)
        with pa.PythonFile(sink, mode="w") as out:
            pq.write_table(table, out, **options)
        self.size = sink.written  # until now it was the in-memory size
        return sink.written

    def snapshot(self) -> Serialized:
        # Under pandas copy-on-write a shallow copy is a snapshot: a later change to the notebook's
        # DataFrame copies the blocks it touches. Without copy-on-write, copy the data.
        deep = not _copy_on_write()
        copy = ParquetSerialized(self._frame.copy(deep=deep), self._plan, key=self.key, format=self.format,
                                 type_name=self.type_name, size=self.size, column_keys=self.column_keys,
                                 index_key=self.index_key, part_sizes=self.part_sizes)
        copy.format_version = self.format_version
        return copy

    def to_bytes(self) -> bytes:
        out = _BytesSink()
        self.write(out)  # type: ignore[arg-type]
        return b"".join(out.parts)


def _copy_on_write() -> bool:
    """pandas >= 3 always copies on write; pandas 2 only when the option is on."""
    if int(pd.__version__.split(".")[0]) >= 3:
        return True
    return bool(pd.get_option("mode.copy_on_write") is True)


class _Sink:
    """What pa.PythonFile needs: write-all semantics (raw files write partially) and tell()."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.written = 0
        self.closed = False

    def write(self, data: Any) -> int:
        n = write_all(self._f, data)
        self.written += n
        return n

    def tell(self) -> int:
        # Offsets in the Parquet footer are relative to the start of *our* payload, wherever f was.
        return self.written

    def flush(self) -> None:
        pass  # the caller fsyncs the file

    def close(self) -> None:
        self.closed = True  # the caller owns the file


class _BytesSink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(self.parts[-1])


def _to_arrow(frame: pd.DataFrame, plan: dict[str, Any]) -> pa.Table:
    try:
        table = pa.Table.from_pandas(frame, preserve_index=None)  # RangeIndex as metadata, others as columns
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise StoreError(
            f"could not convert a DataFrame to Arrow for Parquet ({type(exc).__name__}: {exc})",
            hint="this is a bug in nbdurable's format choice; please report it. Meanwhile convert the "
            "offending column to a plain dtype.",
        ) from exc
    ours = json.dumps({"version": FORMAT_VERSION, "index_freq": plan["index_freq"]}).encode()
    return table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: ours})


# ---------------------------------------------------------------- which DataFrames go to Parquet


def plan(frame: pd.DataFrame, *, index_only: bool = False) -> dict[str, Any] | None:
    """How to store ``frame`` as Parquet, or None when it might not come back exactly (then: pickle).
    ``index_only``: a frame without columns over a non-range index (a column-wise frame's index part)."""
    if frame.attrs or not frame.flags.allows_duplicate_labels or (frame.shape[1] == 0) != index_only:
        return None
    labels = list(frame.columns)
    if isinstance(frame.columns, pd.MultiIndex) or not all(type(c) is str for c in labels):
        return None
    if len(set(labels)) != len(labels) or any(c.startswith("__index_level_") for c in labels):
        return None
    if not (frame.columns.name is None or type(frame.columns.name) is str):
        return None
    dictionary = []
    for label, dtype in zip(labels, frame.dtypes, strict=True):
        if isinstance(dtype, pd.CategoricalDtype):
            if not _string_categories(dtype):
                return None
            dictionary.append(label)  # written as the dictionary itself: categories and order survive
        elif not _plain_dtype(dtype):
            return None
    index_ok, freq = _index_plan(frame.index, set(labels))
    if not index_ok:
        return None
    return {"dictionary": dictionary, "index_freq": freq}


def _plain_dtype(dtype: Any) -> bool:
    """Dtypes measured to round-trip exactly through Arrow and Parquet (tests/test_serialization.py)."""
    if isinstance(dtype, pd.DatetimeTZDtype):
        return dtype.unit in _DATETIME_UNITS
    if isinstance(dtype, pd.StringDtype):
        return bool(dtype.storage == "pyarrow")  # python-storage strings come back as pyarrow-storage ones
    if isinstance(dtype, pd.ArrowDtype):
        return _plain_arrow_type(dtype.pyarrow_dtype)
    if isinstance(dtype, pd.api.extensions.ExtensionDtype):
        return type(dtype) in _MASKED_DTYPES  # nullable Int64, Float64, boolean...: not their subclasses
    if dtype.kind in "biu":
        return True
    if dtype.kind == "f":
        return bool(dtype.itemsize <= 8)  # no long double in Arrow
    if dtype.kind in "mM":
        unit, count = np.datetime_data(dtype)
        return bool(count == 1 and unit in (_DATETIME_UNITS if dtype.kind == "M" else _DURATION_UNITS))
    return False  # object, complex, bytes, void...


def _plain_index_dtype(dtype: Any) -> bool:
    """Fewer dtypes round-trip in an index: pyarrow turns nullable, Arrow and NA-string levels into numpy."""
    if isinstance(dtype, pd.StringDtype):
        return bool(dtype.storage == "pyarrow" and dtype.na_value is not pd.NA)  # the default "str"
    return isinstance(dtype, (np.dtype, pd.DatetimeTZDtype)) and _plain_dtype(dtype)


def _plain_arrow_type(t: pa.DataType) -> bool:
    # Not pa.string(): it comes back as pandas' StringDtype, not ArrowDtype(string). Not decimals: object.
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_date(t)
    )


def _string_categories(dtype: pd.CategoricalDtype) -> bool:
    # Parquet keeps a dictionary only for strings: other categories would come back as plain values.
    return isinstance(dtype.categories.dtype, pd.StringDtype) and dtype.categories.dtype.storage == "pyarrow"


def _index_plan(index: pd.Index, labels: set[str]) -> tuple[bool, str | None]:
    """Whether the index round-trips, and the DatetimeIndex frequency to restore (Parquet loses it)."""
    names = list(index.names)
    if not all(n is None or type(n) is str for n in names) or labels.intersection(names):
        return False, None
    named = [n for n in names if n is not None]
    if len(set(named)) != len(named):
        return False, None
    if isinstance(index, pd.RangeIndex):
        return True, None
    if isinstance(index, pd.MultiIndex):
        # A level's frequency is not restored (only a flat DatetimeIndex's is): pickle those.
        return all(_plain_index_dtype(lv.dtype) and getattr(lv, "freq", None) is None for lv in index.levels), None
    if not _plain_index_dtype(index.dtype):
        return False, None
    freq = getattr(index, "freq", None)
    if freq is None:
        return True, None
    if not isinstance(index, pd.DatetimeIndex) or len(index) == 0:
        return False, None  # TimedeltaIndex freq, or nothing to rebuild from
    try:
        same = pd.tseries.frequencies.to_offset(freq.freqstr) == freq
    except ValueError:
        same = False
    return (True, freq.freqstr) if same else (False, None)  # e.g. custom business days with holidays


# ---------------------------------------------------------------- fingerprint


def serialize_frame(frame: pd.DataFrame, frame_plan: dict[str, Any], type_name: str) -> ParquetSerialized:
    """Fingerprint the DataFrame in place: its description, then every column's and the index's key, each
    of its data (so a column keeps its key when it is renamed, moved, or its neighbours change)."""
    h = new_hasher(FORMAT)
    h.update(_describe(frame).encode())
    # Sizes are the bytes hashed (what memory_usage(deep=False) says, for less): the whole, and each part's.
    column_keys, part_sizes, size = [], {}, 0
    for label in frame.columns:  # labels are unique (plan checked)
        values = frame[label]
        hc = new_hasher("parquet-column")
        hc.update(f"{_dtype_desc(values.dtype)}:{len(values)}".encode())
        column_size = _hash_values(hc, values)
        column_keys.append(str(hc.hexdigest()))
        part_sizes[column_keys[-1]] = column_size
        size += column_size
        h.update(column_keys[-1].encode())
    index, index_key = frame.index, None
    if not isinstance(index, pd.RangeIndex):  # a RangeIndex is all in the description
        hi = new_hasher("parquet-index")
        hi.update(_describe(pd.DataFrame(index=index)).encode())
        index_size = 0
        if isinstance(index, pd.MultiIndex):
            for level, codes in zip(index.levels, index.codes, strict=True):
                index_size += _hash_values(hi, level) + _hash_ndarray(hi, np.asarray(codes))
        else:
            index_size = _hash_values(hi, index)
        index_key = str(hi.hexdigest())
        part_sizes[index_key] = index_size
        size += index_size
        h.update(index_key.encode())
    return ParquetSerialized(
        frame,
        frame_plan,
        key=h.hexdigest(),
        format=FORMAT,
        type_name=type_name,
        size=size,  # an estimate until written
        column_keys=tuple(column_keys),
        index_key=index_key,
        part_sizes=part_sizes,
    )


def _describe(frame: pd.DataFrame) -> str:
    """Everything but the data: labels, dtypes, the index's kind, name, range or frequency."""
    index = frame.index
    if isinstance(index, pd.RangeIndex):
        index_desc: list[Any] = [
            "range",
            index.start,
            index.stop,
            index.step,
            index.name,
        ]
    else:
        freq = getattr(index, "freq", None)
        index_desc = [
            type(index).__name__,
            list(index.names),
            [_dtype_desc(level.dtype) for level in getattr(index, "levels", [index])],
            freq.freqstr if freq is not None else None,
        ]
    columns = [[label, _dtype_desc(dtype)] for label, dtype in zip(frame.columns, frame.dtypes, strict=True)]
    desc = {
        "shape": list(frame.shape),
        "columns": columns,
        "labels": [str(frame.columns.dtype), frame.columns.name],
    }
    return json.dumps({**desc, "index": index_desc}, default=str)


def _dtype_desc(dtype: Any) -> str:
    if isinstance(dtype, pd.CategoricalDtype):  # str() is just "category"
        return f"category[ordered={dtype.ordered},{dtype.categories.dtype}]"
    return f"{type(dtype).__name__}:{dtype}"


def _hash_values(h: Any, values: pd.Series | pd.Index) -> int:
    """Hash a column's (or an index's) data where it lives: numpy memory, Arrow buffers, codes. Returns the
    bytes hashed."""
    dtype = values.dtype
    if isinstance(dtype, np.dtype):
        return _hash_ndarray(h, values.to_numpy())  # a view for numpy-backed data
    if isinstance(dtype, pd.CategoricalDtype):
        return _hash_ndarray(h, values.array.codes) + _hash_values(h, dtype.categories)
    if isinstance(dtype, pd.DatetimeTZDtype):
        return _hash_ndarray(h, values.array.asi8)  # the UTC int64 view; the tz is in the description
    return _hash_arrow(h, values.array.__arrow_array__())  # Arrow-backed: zero copy; masked: data + bitmap


def _hash_ndarray(h: Any, arr: np.ndarray[Any, Any]) -> int:
    h.update(_U64.pack(arr.nbytes))
    if arr.flags.c_contiguous or arr.ndim != 1:
        h.update(raw_memory(arr)[0])
        return int(arr.nbytes)
    # A strided column (a DataFrame built from a 2-D C array keeps its columns interleaved): hash it in
    # contiguous pieces, so the copy stays small; the hash is the same as over one contiguous copy.
    step = max(1, _HASH_CHUNK // max(1, arr.itemsize))
    for start in range(0, len(arr), step):
        h.update(raw_memory(np.ascontiguousarray(arr[start : start + step]))[0])
    return int(arr.nbytes)


def _hash_arrow(h: Any, arr: pa.Array | pa.ChunkedArray) -> int:
    h.update(str(arr.type).encode())
    size = 0
    for chunk in arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]:
        # A slice shares its parent's buffers: its position in them is part of the content.
        h.update(_U64.pack(chunk.offset) + _U64.pack(len(chunk)) + _U64.pack(chunk.null_count))
        for buf in chunk.buffers():
            if buf is None:
                h.update(b"-")
            else:
                h.update(_U64.pack(buf.size))
                h.update(buf)
                size += buf.size
    return size


# ---------------------------------------------------------------- reading


def deserialize_frame(payload: Payload) -> pd.DataFrame:
    """Read the Parquet payload in place (no copy of the payload) and convert it to pandas."""
    view = byte_view(payload)
    if view.nbytes < 12 or bytes(view[:4]) != b"PAR1" or bytes(view[-4:]) != b"PAR1":
        raise corrupt(
            FORMAT,
            f"not a Parquet file (no PAR1 magic at both ends of {view.nbytes} bytes; truncated?)",
        )
    try:
        parquet = pq.ParquetFile(pa.BufferReader(pa.py_buffer(view)))  # a view: no copy
        ours = json.loads((parquet.schema_arrow.metadata or {}).get(META_KEY, b"{}"))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise corrupt(FORMAT, f"unreadable Parquet footer ({exc})") from exc
    if not isinstance(ours, dict) or not isinstance(ours.get("version", 1), int):
        raise corrupt(FORMAT, f"unreadable nbdurable metadata {ours!r:.200}")
    check_version(FORMAT, ours.get("version", 1))
    frame = read_columns_in_place(parquet, view)
    if frame is None:
        frame = _read_through_arrow(parquet)
    _own_categorical_codes(frame)
    return _restore_freq(frame, ours.get("index_freq"))


def _read_through_arrow(parquet: pq.ParquetFile) -> pd.DataFrame:
    """The general path: the whole table into Arrow memory, then pyarrow's conversion to pandas."""
    try:
        table = parquet.read(use_threads=True)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise corrupt(FORMAT, f"unreadable Parquet data ({exc})") from exc
    try:
        # Not split_blocks=True: its zero-copy columns are read-only numpy views of Arrow memory, and
        # pandas then fails on `df.iloc[0, 0] = x` ("assignment destination is read-only"). Consolidating
        # copies, measured at ~0.1 s per 500 MB. self_destruct frees Arrow memory column by column.
        return table.to_pandas(self_destruct=True)
    except Exception as exc:
        raise conversion_error(exc) from exc


def _own_categorical_codes(frame: pd.DataFrame) -> None:
    """Copy categorical codes: without nulls they are read-only views of Arrow's dictionary indices, and
    `df.iloc[0, j] = "a"` would fail. Codes are small ints, the copy is cheap."""
    for label, dtype in zip(list(frame.columns), list(frame.dtypes), strict=True):
        if isinstance(dtype, pd.CategoricalDtype):
            frame[label] = frame[label].copy(deep=True)


def _restore_freq(frame: pd.DataFrame, freq: str | None) -> pd.DataFrame:
    """Parquet has no index frequency; rebuild the index from its start, length and frequency.

    An index with a frequency is by definition date_range(start, periods, freq): that is exactly what
    pandas checks when a frequency is set, and generating it is faster than checking it.
    """
    if freq is None:
        return frame
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex) or len(index) == 0:
        raise corrupt(
            FORMAT,
            f"metadata gives index frequency {freq!r} but the index is {type(index).__name__}",
        )
    frame.index = pd.date_range(start=index[0], periods=len(index), freq=freq, name=index.name, unit=index.unit)
    return frame
