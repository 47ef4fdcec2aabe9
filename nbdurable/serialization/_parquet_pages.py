"""The fast path of Parquet restores: numpy columns copied once, straight from the mapped payload.

Kept apart from ``_parquet.py`` (which owns the format): this module only reads what nbdurable's own
writer produces (PLAIN, uncompressed pages) and hands anything else back to pyarrow's general path.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nbdurable.serialization._core import corrupt
from nbdurable.serialization._parquet_common import FORMAT, conversion_error

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


def read_columns_in_place(parquet: pq.ParquetFile, view: memoryview) -> pd.DataFrame | None:
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
        raise conversion_error(exc) from exc
    del table
    return _swap_in_blocks(frame, blocks, by_dtype, columns)


_Copy = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], "np.ndarray[Any, Any] | None"]  # dest, values, valid


def _page_copies(
    view: memoryview,
    metadata: pq.FileMetaData,
    layout: pq.ParquetSchema,
    j: int,
    stored: np.dtype[Any],
    dest: np.ndarray[Any, Any],
) -> list[_Copy]:
    """Where each data page of column ``j`` goes in ``dest``: (rows of dest, the page's values, validity).
    Raises _Fallback for anything but PLAIN, uncompressed data pages, and for what does not add up."""
    try:
        return _find_pages(view, metadata, layout.column(j).max_definition_level == 1, j, stored, dest)
    except (LookupError, ValueError, TypeError, pa.ArrowException) as exc:  # read past the end, bad sizes...
        raise _Fallback from exc


def _find_pages(
    view: memoryview,
    metadata: pq.FileMetaData,
    optional: bool,  # else required: the pages have no definition levels
    j: int,
    stored: np.dtype[Any],
    dest: np.ndarray[Any, Any],
) -> list[_Copy]:
    copies: list[_Copy] = []
    start = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        chunk = group.column(j)
        if chunk.compression != "UNCOMPRESSED" or chunk.dictionary_page_offset is not None or chunk.file_path:
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
    metadata, layout = parquet.metadata, parquet.schema  # taken before pyarrow reads in another thread
    nbytes = sum(dest.nbytes for dest in columns.values())
    threads = _COPY_THREADS if nbytes >= _THREADED_BYTES else 1
    if threads == 1:
        for j, dest in columns.items():
            _do_copies(_page_copies(view, metadata, layout, j, stored[j], dest))
        return parquet.read(columns=others, use_threads=True) if others else pa.table({})
    with ThreadPoolExecutor(max_workers=threads + 1, thread_name_prefix="nbdurable-parquet") as pool:
        reading = pool.submit(parquet.read, columns=others, use_threads=True) if others else None
        copying = []
        try:
            for j, dest in columns.items():
                copies = _page_copies(view, metadata, layout, j, stored[j], dest)
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
