"""The ``parquet`` format: DataFrames as plain Parquet files (DuckDB's read_parquet reads them directly).

Only DataFrames that are known to come back *exactly* (same dtypes, index, labels) take this path: a cheap
rule on labels and dtypes decides (``plan``), everything else is pickled. The content key is a
fingerprint of the data, hashed in place (numeric buffers, Arrow buffers, categorical codes), never of
the Parquet encoding, which happens only in ``write()``. The encoding options were chosen by measurement
(bench/bench_serialization_probe.py): no compression, no dictionaries except for categoricals, pages of
128 Ki rows, 1 Mi-row row groups.
"""

from __future__ import annotations

import inspect
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nbdurable.errors import RestoreError, StoreError
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

FORMAT = "parquet"
META_KEY = b"nbdurable"  # our own entry in the Parquet key-value metadata (the file stays plain Parquet)
_U64 = struct.Struct("<Q")
_HASH_CHUNK = 4 << 20  # bytes copied at a time to hash a strided column

WRITE_OPTIONS: dict[str, Any] = {
    "compression": "none",  # this disk is faster than any codec (design.md, decision 2); snappy halved save speed
    "write_statistics": False,  # ~0.03 s per 500 MB (~5% of a save); DuckDB then just cannot skip row groups
    "row_group_size": 1 << 20,  # several row groups still let DuckDB scan a big file in parallel
    "max_rows_per_page": 1 << 17,  # encodes 2-3x faster than the 20 Ki-row default (measured)
    "write_batch_size": 1 << 17,
    "data_page_size": 8 << 20,  # caps pages of long strings; numeric pages are bounded by rows
    "dictionary_pagesize_limit": 1 << 30,  # a categorical's dictionary must never fall back to plain
    "store_schema": True,  # the Arrow schema in the footer restores tz, durations, units exactly
}

# Older pyarrow versions lack some options (max_rows_per_page is recent): drop what this one does not know.
_KNOWN = set(inspect.signature(pq.ParquetWriter.__init__).parameters) | {
    "row_group_size",
    "data_page_size",
}
WRITE_OPTIONS = {name: value for name, value in WRITE_OPTIONS.items() if name in _KNOWN}

_DATETIME_UNITS = frozenset({"ms", "us", "ns"})  # Parquet has no seconds: datetime64[s] would come back [ms]
_DURATION_UNITS = frozenset({"s", "ms", "us", "ns"})  # durations are restored from the stored Arrow schema
_MASKED_DTYPES: tuple[type, ...] = (
    pd.Int8Dtype, pd.Int16Dtype, pd.Int32Dtype, pd.Int64Dtype,
    pd.UInt8Dtype, pd.UInt16Dtype, pd.UInt32Dtype, pd.UInt64Dtype,
    pd.Float32Dtype, pd.Float64Dtype, pd.BooleanDtype,
)  # fmt: skip


class ParquetSerialized(Serialized):
    """A DataFrame fingerprinted now, encoded as Parquet when written."""

    __slots__ = ("_frame", "_plan")

    def __init__(self, frame: pd.DataFrame, plan: dict[str, Any], **fields: Any) -> None:
        super().__init__(**fields)
        self._frame = frame
        self._plan = plan

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
                                 type_name=self.type_name, size=self.size)
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


def plan(frame: pd.DataFrame) -> dict[str, Any] | None:
    """How to store ``frame`` as Parquet, or None when it might not come back exactly (then: pickle)."""
    if frame.attrs or not frame.flags.allows_duplicate_labels or frame.shape[1] == 0:
        return None
    labels = list(frame.columns)
    if isinstance(frame.columns, pd.MultiIndex) or not all(type(c) is str for c in labels):
        return None
    if len(set(labels)) != len(labels) or any(c.startswith("__index_level_") for c in labels):
        return None
    if not (frame.columns.name is None or type(frame.columns.name) is str):
        return None
    dictionary = []
    for label, dtype in zip(labels, frame.dtypes):
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
    """Fingerprint the DataFrame in place: its description, then every column's and the index's data."""
    h = new_hasher(FORMAT)
    h.update(_describe(frame).encode())
    for label in frame.columns:  # labels are unique (plan checked)
        _hash_values(h, frame[label])
    index = frame.index
    if isinstance(index, pd.MultiIndex):
        for level, codes in zip(index.levels, index.codes):
            _hash_values(h, level)
            _hash_ndarray(h, np.asarray(codes))
    elif not isinstance(index, pd.RangeIndex):  # a RangeIndex is all in the description
        _hash_values(h, index)
    return ParquetSerialized(
        frame,
        frame_plan,
        key=h.hexdigest(),
        format=FORMAT,
        type_name=type_name,
        size=int(frame.memory_usage(index=True, deep=False).sum()),  # an estimate until written
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
    columns = [[label, _dtype_desc(dtype)] for label, dtype in zip(frame.columns, frame.dtypes)]
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


def _hash_values(h: Any, values: pd.Series | pd.Index) -> None:
    """Hash a column's (or an index's) data where it lives: numpy memory, Arrow buffers, codes."""
    dtype = values.dtype
    if isinstance(dtype, np.dtype):
        _hash_ndarray(h, values.to_numpy())  # a view for numpy-backed data
    elif isinstance(dtype, pd.CategoricalDtype):
        _hash_ndarray(h, values.array.codes)
        _hash_values(h, dtype.categories)
    elif isinstance(dtype, pd.DatetimeTZDtype):
        _hash_ndarray(h, values.array.asi8)  # the UTC int64 view; the tz is in the description
    else:
        _hash_arrow(h, values.array.__arrow_array__())  # Arrow-backed: zero copy; masked: data + bitmap


def _hash_ndarray(h: Any, arr: np.ndarray[Any, Any]) -> None:
    h.update(_U64.pack(arr.nbytes))
    if arr.flags.c_contiguous or arr.ndim != 1:
        h.update(raw_memory(arr)[0])
        return
    # A strided column (a DataFrame built from a 2-D C array keeps its columns interleaved): hash it in
    # contiguous pieces, so the copy stays small; the hash is the same as over one contiguous copy.
    step = max(1, _HASH_CHUNK // max(1, arr.itemsize))
    for start in range(0, len(arr), step):
        h.update(raw_memory(np.ascontiguousarray(arr[start : start + step]))[0])


def _hash_arrow(h: Any, arr: pa.Array | pa.ChunkedArray) -> None:
    h.update(str(arr.type).encode())
    for chunk in arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]:
        # A slice shares its parent's buffers: its position in them is part of the content.
        h.update(_U64.pack(chunk.offset) + _U64.pack(len(chunk)) + _U64.pack(chunk.null_count))
        for buf in chunk.buffers():
            if buf is None:
                h.update(b"-")
            else:
                h.update(_U64.pack(buf.size))
                h.update(buf)


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
    frame = _read_columns_in_place(parquet, view)
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
        raise _conversion_error(exc) from exc


def _conversion_error(exc: Exception) -> RestoreError:
    return RestoreError(
        f"the Parquet data could not be converted to pandas ({type(exc).__name__}: {exc})",
        hint="install the pandas and pyarrow versions the run used, or re-run the cell that created it.",
    )


# The fast path, for the numpy columns of fixed width (ints, floats, naive datetimes, timedeltas).
#
# Restoring a big frame is dominated by faulting in fresh memory, not by decoding (bench/checkpoint.py;
# on a VM a fresh page costs more than copying it). The general path fills fresh memory twice: pyarrow
# decodes every column into new Arrow buffers, then pandas copies them into new 2-D blocks. Here the
# blocks are allocated first, at their final shape, and the values are copied once, straight from the
# payload (the mapped file) into them: our files are PLAIN-encoded and uncompressed (WRITE_OPTIONS), so a
# data page's values are the column's bytes, and only the page headers (Thrift) and the definition
# levels (nulls: NaN and NaT, written as Parquet nulls) need reading. Pages are copied in a few threads,
# while pyarrow decodes the other columns (strings, categoricals, nullable dtypes, index columns).
# pyarrow then builds the DataFrame - index, labels, other columns - from a table whose numpy columns
# are zero-copy views of our blocks, and those read-only views are swapped for the blocks themselves:
# the frame owns ordinary, writable, consolidated numpy memory, as after the general path.
# Anything unexpected in the file (another encoding, compression, a dictionary, a type conversion) takes
# the general path instead: pyarrow reads the whole file, exactly as before.

try:
    from pandas.api.internals import create_dataframe_from_blocks as _from_blocks  # pandas >= 3
except ImportError:  # pragma: no cover - pandas 2 takes the general path
    _from_blocks = None

_COPY_THREADS = max(1, min(4, pa.cpu_count()))  # copying is bound by memory (page faults), not CPU
_THREADED_BYTES = 16 << 20  # below this, copying in threads costs more than it saves
_TIME_UNITS = {"ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
_PLAIN, _RLE = 0, 3  # Parquet encodings
_DATA_PAGE, _DATA_PAGE_V2 = 0, 3  # Parquet page types
_MISSING = {"f": np.nan, "M": np.datetime64("NaT"), "m": np.timedelta64("NaT")}  # Parquet nulls in numpy


class _Fallback(Exception):
    """Something the fast path does not read (or a damaged file): take the general path."""


def _numpy_dtype(field: pa.Field, numpy_type: str | None) -> np.dtype[Any] | None:
    """The numpy dtype pandas gets for this column, if it is one the fast path reads; else None.

    pandas' own record of the column's dtype (``numpy_type`` in the pandas metadata) must agree, which
    leaves out nullable and Arrow-backed dtypes stored with the same Arrow types (Int64, float[pyarrow]).
    """
    t = field.type  # not bools: Arrow packs them in bits, so they cannot be zero-copy views of a block
    if pa.types.is_integer(t) or (pa.types.is_floating(t) and not pa.types.is_float16(t)):
        dtype = np.dtype(t.to_pandas_dtype())
    elif pa.types.is_timestamp(t) and t.tz is None:
        dtype = np.dtype(f"datetime64[{t.unit}]")
    elif pa.types.is_duration(t):
        dtype = np.dtype(f"timedelta64[{t.unit}]")
    else:
        return None
    return dtype if numpy_type == str(dtype) else None


def _stored_dtype(column: Any, dtype: np.dtype[Any]) -> np.dtype[Any] | None:
    """How the PLAIN values of a Parquet column hold ``dtype``'s values (little-endian), or None if they
    hold them otherwise (e.g. a timestamp in another unit): then the fast path does not read the file."""
    physical = column.physical_type
    logical = json.loads(column.logical_type.to_json())
    kind = logical.get("Type")
    if dtype.kind == "f":
        ok = physical == {4: "FLOAT", 8: "DOUBLE"}[dtype.itemsize] and kind == "None"
        return dtype.newbyteorder("<") if ok else None
    if dtype.kind in "iu":
        width = 8 if dtype.itemsize == 8 else 4  # narrower ints are stored as INT32
        if physical != f"INT{width * 8}":
            return None
        if kind == "Int":
            ok = logical.get("bitWidth") == dtype.itemsize * 8 and logical.get("isSigned") == (dtype.kind == "i")
        else:
            ok = kind == "None" and dtype.kind == "i" and dtype.itemsize == width
        return np.dtype(f"<{dtype.kind}{width}") if ok else None
    if physical != "INT64":
        return None
    if dtype.kind == "M":
        unit = np.datetime_data(dtype)[0]
        ok = kind == "Timestamp" and logical.get("timeUnit") == _TIME_UNITS.get(unit)
    else:
        ok = kind == "None"  # Parquet has no durations: Arrow stores the raw int64, its unit in the schema
    return dtype.newbyteorder("<") if ok else None


def _read_columns_in_place(parquet: pq.ParquetFile, view: memoryview) -> pd.DataFrame | None:
    """The DataFrame, its numpy columns copied straight into their final blocks; None if not applicable."""
    if _from_blocks is None:
        return None
    schema = parquet.schema_arrow
    metadata = parquet.metadata
    rows = metadata.num_rows
    names = schema.names
    if rows == 0 or metadata.num_columns != len(names) or len(set(names)) != len(names):
        return None  # nothing to gain, nested columns, or not a file of ours
    meta = schema.pandas_metadata or {}
    index_fields = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
    columns_meta = [c for c in meta.get("columns", []) if isinstance(c, dict)]
    numpy_types = {c.get("field_name"): c.get("numpy_type") for c in columns_meta}
    by_dtype: dict[np.dtype[Any], list[int]] = {}
    stored: dict[int, np.dtype[Any]] = {}
    try:
        for j, field in enumerate(schema):
            column = parquet.schema.column(j)
            dtype = None if field.name in index_fields else _numpy_dtype(field, numpy_types.get(field.name))
            if dtype is None or column.path != field.name or column.max_repetition_level != 0:
                continue
            if column.max_definition_level > 1 or (found := _stored_dtype(column, dtype)) is None:
                return None
            by_dtype.setdefault(dtype, []).append(j)
            stored[j] = found
    except (pa.ArrowException, ValueError, KeyError, TypeError):
        return None
    if not by_dtype:
        return None
    blocks = {dtype: np.empty((len(fields), rows), dtype) for dtype, fields in by_dtype.items()}
    columns = {j: blocks[dtype][r] for dtype, fields in by_dtype.items() for r, j in enumerate(fields)}
    others = [name for j, name in enumerate(names) if j not in columns]
    try:
        table = _copy_columns(view, parquet, stored, columns, others)
    except _Fallback:
        return None  # an unexpected layout, or a damaged file: the general path reads it, or says what is wrong
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise corrupt(FORMAT, f"unreadable Parquet data ({exc})") from exc
    arrays = [
        pa.Array.from_buffers(field.type, rows, [None, pa.py_buffer(columns[j])])
        if j in columns
        else table.column(field.name)
        for j, field in enumerate(schema)
    ]
    del table
    table = pa.Table.from_arrays(arrays, schema=schema)
    del arrays
    try:
        # split_blocks: no consolidation, so the numpy columns stay zero-copy views of our blocks.
        frame = table.to_pandas(split_blocks=True, self_destruct=True)
    except Exception as exc:
        raise _conversion_error(exc) from exc
    del table
    return _swap_in_blocks(frame, blocks, by_dtype, columns)


_Copy = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], "np.ndarray[Any, Any] | None"]  # dest, values, valid


def _page_copies(
    view: memoryview, parquet: pq.ParquetFile, j: int, stored: np.dtype[Any], dest: np.ndarray[Any, Any]
) -> list[_Copy]:
    """Where each data page of column ``j`` goes in ``dest``: (rows of dest, the page's values, validity).
    Raises _Fallback for anything but PLAIN, uncompressed data pages, and for what does not add up."""
    try:
        return _find_pages(view, parquet, j, stored, dest)
    except (LookupError, ValueError, TypeError, pa.ArrowException) as exc:  # read past the end, bad sizes...
        raise _Fallback from exc


def _find_pages(
    view: memoryview, parquet: pq.ParquetFile, j: int, stored: np.dtype[Any], dest: np.ndarray[Any, Any]
) -> list[_Copy]:
    copies: list[_Copy] = []
    start = 0
    metadata = parquet.metadata
    optional = parquet.schema.column(j).max_definition_level == 1  # else required: no definition levels
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        chunk = group.column(j)
        if chunk.compression != "UNCOMPRESSED" or chunk.dictionary_page_offset is not None:
            raise _Fallback
        pos = chunk.data_page_offset
        end = pos + chunk.total_compressed_size
        if not 0 <= pos <= end <= view.nbytes:
            raise _Fallback
        stop = start + group.num_rows
        while pos < end:
            header, pos = _thrift_struct(view, pos, _PAGE_HEADER)
            page_end = pos + header[3]
            if page_end > end or header[2] != header[3]:  # uncompressed: both sizes are the same
                raise _Fallback
            count, valid, values_at = _page_layout(view, header, pos, page_end, optional)
            if valid is not None and dest.dtype.kind in "iu":
                raise _Fallback  # not written by us (ints have no nulls in numpy): pyarrow makes them floats
            present = count if valid is None else int(np.count_nonzero(valid))
            if start + count > stop or values_at + present * stored.itemsize > page_end:
                raise _Fallback
            values = np.frombuffer(view, stored, present, values_at)
            copies.append((dest[start : start + count], values, valid))
            start += count
            pos = page_end
        if start != stop or pos != end:
            raise _Fallback
    if start != len(dest):
        raise _Fallback
    return copies


def _page_layout(
    view: memoryview, header: dict[int, Any], pos: int, end: int, optional: bool
) -> tuple[int, Any, int]:
    """A data page's number of values, validity (None: no nulls) and where its PLAIN values start."""
    if header.get(1) == _DATA_PAGE and 5 in header:
        page = header[5]
        if page.get(2) != _PLAIN or (optional and page.get(3) != _RLE):
            raise _Fallback
        count = page[1]
        if not optional:
            return count, None, pos
        if pos + 4 > end:
            raise _Fallback
        size = int.from_bytes(view[pos : pos + 4], "little")  # V1: the levels are prefixed by their size
        levels_end = pos + 4 + size
        if levels_end > end:
            raise _Fallback
        return count, _definition_levels(view, pos + 4, levels_end, count), levels_end
    if header.get(1) == _DATA_PAGE_V2 and 8 in header:
        page = header[8]
        count, nulls, levels, repetition = page[1], page.get(2, 0), page.get(5, 0), page.get(6, 0)
        if page.get(4) != _PLAIN or repetition or (not optional and (levels or nulls)):
            raise _Fallback
        valid = _definition_levels(view, pos, pos + levels, count) if nulls else None
        return count, valid, pos + levels
    raise _Fallback  # a dictionary or index page, or a header we do not know


def _definition_levels(view: memoryview, pos: int, end: int, count: int) -> np.ndarray[Any, Any] | None:
    """Decode ``count`` definition levels of bit width 1 (RLE / bit-packed hybrid): which values are
    present, or None when all are (the usual case, cheaply: one run of ones)."""
    runs: list[Any] = []
    seen = 0
    all_present = True
    while seen < count:
        if pos >= end:
            raise _Fallback
        header, pos = _varint(view, pos)
        if header & 1:  # bit-packed: (header >> 1) groups of 8 levels, one byte per group
            size = header >> 1
            if pos + size > end:
                raise _Fallback
            bits = np.unpackbits(np.frombuffer(view, np.uint8, size, pos), bitorder="little")[: count - seen]
            all_present = all_present and bool(bits.all())
            runs.append(bits)
            seen += len(bits)
            pos += size
        else:  # RLE: one level, repeated (header >> 1) times
            n = min(header >> 1, count - seen)
            if pos + 1 > end or view[pos] > 1 or n == 0:
                raise _Fallback
            all_present = all_present and view[pos] == 1
            runs.append((view[pos], n))
            seen += n
            pos += 1
    if all_present:
        return None
    pieces = [run if isinstance(run, np.ndarray) else np.full(run[1], run[0], np.uint8) for run in runs]
    return np.concatenate(pieces).view(bool)


def _copy_columns(
    view: memoryview,
    parquet: pq.ParquetFile,
    stored: dict[int, np.dtype[Any]],
    columns: dict[int, np.ndarray[Any, Any]],
    others: list[str],
) -> pa.Table:
    """Copy the numpy columns into place (page headers are read here while threads copy the pages of
    the columns before) and return the other columns, which pyarrow reads meanwhile."""
    nbytes = sum(dest.nbytes for dest in columns.values())
    threads = _COPY_THREADS if nbytes >= _THREADED_BYTES else 1
    if threads == 1:
        for j, dest in columns.items():
            _do_copies(_page_copies(view, parquet, j, stored[j], dest))
        return parquet.read(columns=others, use_threads=True)
    with ThreadPoolExecutor(max_workers=threads + 1, thread_name_prefix="nbdurable-parquet") as pool:
        reading = pool.submit(parquet.read, columns=others, use_threads=True) if others else None
        copying = []
        try:
            for j, dest in columns.items():
                copies = _page_copies(view, parquet, j, stored[j], dest)
                # Interleaved shares: each thread gets about the same bytes, and pages in file order.
                copying += [pool.submit(_do_copies, copies[k::threads]) for k in range(threads)]
        except _Fallback:
            for done in copying:
                done.cancel()
            raise
        for done in copying:
            done.result()
        return reading.result() if reading is not None else pa.table({})


def _do_copies(copies: list[_Copy]) -> None:
    for dest, values, valid in copies:
        if valid is None:
            np.copyto(dest, values, casting="unsafe")  # same values; narrower ints are stored as int32
        else:
            dest[valid] = values
            dest[~valid] = _MISSING[dest.dtype.kind]  # what pyarrow gives for nulls: NaN, NaT


# Parquet page headers are Thrift structs (compact protocol). Only what locates the values is kept:
# PageHeader {1: type, 2: uncompressed size, 3: compressed size, 5: DataPageHeader {1: num_values,
# 2: encoding, 3: definition level encoding, 4: repetition level encoding}, 8: DataPageHeaderV2
# {1: num_values, 2: num_nulls, 3: num_rows, 4: encoding, 5: definition levels byte length,
# 6: repetition levels byte length}}, all i32 and required; the rest is skipped. As strict as pyarrow's
# own reader on what is kept (type and presence), so that a damaged header is not taken for a good one.
_PAGE_HEADER: dict[int, Any] = {
    1: "i", 2: "i", 3: "i", 5: {1: "i", 2: "i", 3: "i", 4: "i"}, 8: {1: "i", 2: "i", 3: "i", 4: "i", 5: "i", 6: "i"}
}  # fmt: skip
_MAX_NESTING = 16


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Fallback


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _thrift_struct(
    view: memoryview, pos: int, wanted: dict[int, Any], depth: int = 0
) -> tuple[dict[int, Any], int]:
    """Read a compact-protocol struct at ``pos``: the integer fields and structs ``wanted`` names
    (field id -> "i", or the wanted fields of a nested struct), and the position after it."""
    if depth > _MAX_NESTING:
        raise _Fallback
    found: dict[int, Any] = {}
    field = 0
    while True:
        byte = view[pos]
        pos += 1
        if byte == 0:  # stop
            return found, pos
        kind = byte & 0x0F
        if byte >> 4:
            field += byte >> 4
        else:
            raw, pos = _varint(view, pos)
            field = _zigzag(raw)
        want = wanted.get(field)
        if want is None:
            pos = _thrift_skip(view, pos, kind, depth + 1)
        elif field in found:
            raise _Fallback
        elif want == "i" and kind == 5:  # i32
            raw, pos = _varint(view, pos)
            found[field] = _zigzag(raw)
        elif isinstance(want, dict) and kind == 12:  # struct
            found[field], pos = _thrift_struct(view, pos, want, depth + 1)
            if len(found[field]) != len(want):  # all the fields we keep are required ones
                raise _Fallback
        else:
            raise _Fallback  # a field of the wrong type


def _thrift_skip(view: memoryview, pos: int, kind: int, depth: int, in_list: bool = False) -> int:
    if depth > _MAX_NESTING:
        raise _Fallback
    if kind in (1, 2):  # booleans: in the field header, but one byte as list elements
        return pos + 1 if in_list else pos
    if kind == 3:  # byte
        return pos + 1
    if kind in (4, 5, 6):  # i16, i32, i64
        return _varint(view, pos)[1]
    if kind == 7:  # double
        return pos + 8
    if kind == 8:  # binary
        size, pos = _varint(view, pos)
        return pos + size
    if kind in (9, 10):  # list, set
        byte = view[pos]
        pos += 1
        size, element = byte >> 4, byte & 0x0F
        if size == 15:
            size, pos = _varint(view, pos)
        for _ in range(size):
            pos = _thrift_skip(view, pos, element, depth + 1, in_list=True)
        return pos
    if kind == 11:  # map
        size, pos = _varint(view, pos)
        if size:
            types = view[pos]
            pos += 1
            for _ in range(size):
                pos = _thrift_skip(view, pos, types >> 4, depth + 1, in_list=True)
                pos = _thrift_skip(view, pos, types & 0x0F, depth + 1, in_list=True)
        return pos
    if kind == 12:  # struct
        return _thrift_struct(view, pos, {}, depth)[1]
    raise _Fallback


def _swap_in_blocks(
    frame: pd.DataFrame,
    blocks: dict[np.dtype[Any], np.ndarray[Any, Any]],
    by_dtype: dict[np.dtype[Any], list[int]],
    columns: dict[int, np.ndarray[Any, Any]],
) -> pd.DataFrame:
    """The same frame, with our writable blocks where pyarrow's result has read-only views of them."""
    address = {columns[j].ctypes.data: j for j in columns}
    placed: dict[int, int] = {}  # field -> position in the frame
    kept: list[tuple[Any, np.ndarray[Any, Any]]] = []
    for block in frame._mgr.blocks:
        values = block.values
        backing = values if isinstance(values, np.ndarray) else getattr(values, "_ndarray", None)
        locs = block.mgr_locs.as_array
        if isinstance(backing, np.ndarray) and backing.ndim == 2 and len(locs) == 1:
            j = address.get(backing.__array_interface__["data"][0])
            if j is not None and backing.shape == (1, len(columns[j])) and backing.dtype == columns[j].dtype:
                placed[j] = int(locs[0])
                continue
        if isinstance(backing, np.ndarray) and not backing.flags.writeable:
            values = values.copy()  # another zero-copy column (float16...): make it the frame's own
        kept.append((values, locs))
    for dtype, fields in by_dtype.items():
        if all(j in placed for j in fields):
            kept.append((blocks[dtype], np.array([placed[j] for j in fields], dtype=np.intp)))
        else:  # pyarrow copied some column itself (not expected): place the others one by one
            kept.extend(
                (blocks[dtype][r : r + 1], np.array([placed[j]], dtype=np.intp))
                for r, j in enumerate(fields)
                if j in placed
            )
    return _from_blocks(kept, frame.index, frame.columns)


def _own_categorical_codes(frame: pd.DataFrame) -> None:
    """Copy categorical codes: without nulls they are read-only views of Arrow's dictionary indices, and
    `df.iloc[0, j] = "a"` would fail. Codes are small ints, the copy is cheap."""
    for label, dtype in zip(list(frame.columns), list(frame.dtypes)):
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
