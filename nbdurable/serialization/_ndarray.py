"""The ``ndarray`` format: a small header, then the array's memory as it is (C or Fortran order).

Saving hashes and writes the array's own memory (no copy unless the array is not contiguous);
restoring returns an array that *is* a view of the payload buffer (no copy).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nbdurable.serialization._core import (
    ChunkedSerialized,
    Payload,
    byte_view,
    corrupt,
    decode_header,
    encode_header,
    new_hasher,
    writable,
)

MAGIC = b"NBDA"
FORMAT = "ndarray"
# Numbers, datetimes, fixed-size bytes/str and (structured) voids: memory that is pure data. Not object
# arrays nor numpy 2's StringDType (kind "T"): their memory holds pointers.
_RAW_KINDS = frozenset("biufcmMSUV")


def eligible(arr: np.ndarray[Any, Any]) -> bool:
    """Whether an exact ndarray can be stored as raw memory (otherwise it is pickled)."""
    dtype = arr.dtype
    return (
        dtype.kind in _RAW_KINDS
        and not dtype.hasobject
        and dtype.itemsize > 0
        and dtype.metadata is None  # dtype metadata does not survive a descr round trip
    )


def serialize_ndarray(arr: np.ndarray[Any, Any], type_name: str) -> ChunkedSerialized:
    """Hash the array in place and keep a view of its memory for ``write()``."""
    data, order = raw_memory(arr)
    header = encode_header(
        MAGIC,
        {
            "format": FORMAT,
            "version": 1,
            "dtype": np.lib.format.dtype_to_descr(arr.dtype),
            "shape": list(arr.shape),
            "order": order,
        },
    )
    h = new_hasher(FORMAT)
    h.update(header)  # dtype, shape and order are part of the content
    h.update(data)
    return ChunkedSerialized(chunks=[header, data], hashed=(0, 1), buffers=(1,), key=h.hexdigest(), format=FORMAT,
                             type_name=type_name)


def raw_memory(arr: np.ndarray[Any, Any]) -> tuple[memoryview, str]:
    """The array's bytes as a flat byte view, and the order they are in.

    memoryview(arr).cast('B') would fail for datetimes (no PEP 3118 code), empty arrays and F order, so
    the view goes through numpy: a contiguous array flattened in its own order is a view, never a copy.
    """
    if arr.flags.c_contiguous:
        flat, order = arr.reshape(-1), "C"
    elif arr.flags.f_contiguous:
        flat, order = (
            arr.T.reshape(-1),
            "F",
        )  # the transpose of an F array is C-contiguous: same memory
    else:
        flat, order = np.ascontiguousarray(arr).reshape(-1), "C"
    return flat.view(np.uint8).data, order  # .data: the memoryview of a 1-D uint8 array, format 'B'


def deserialize_ndarray(payload: Payload) -> np.ndarray[Any, Any]:
    """The array, as a view of the payload buffer (writable unless it had to be copied from bytes)."""
    meta, offset = decode_header(byte_view(payload), MAGIC, FORMAT)
    return _array_on(meta, payload, offset)


def deserialize_ndarray_parts(head: Payload, memory: memoryview) -> np.ndarray[Any, Any]:
    """The array from a payload given in parts (a sub-object delta): its header, and its memory."""
    meta, _ = decode_header(byte_view(head), MAGIC, FORMAT)
    return _array_on(meta, memory, 0)


def _array_on(meta: dict[str, Any], payload: Payload, offset: int) -> np.ndarray[Any, Any]:
    dtype = _dtype(meta.get("dtype"))
    shape, order = _shape(meta.get("shape")), meta.get("order")
    if order not in ("C", "F"):
        raise corrupt(FORMAT, f"unknown memory order {order!r} in header")
    count = math.prod(shape)
    expected = offset + count * dtype.itemsize
    size = byte_view(payload).nbytes
    if size != expected:
        raise corrupt(
            FORMAT,
            f"payload is {size} bytes but its header describes {expected} (truncated or padded)",
        )
    if count == 0:
        return np.empty(shape, dtype=dtype, order=order)
    flat = np.frombuffer(writable(payload), dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order=order)


def _dtype(descr: Any) -> np.dtype[Any]:
    try:
        return np.lib.format.descr_to_dtype(_descr_from_json(descr))
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise corrupt(FORMAT, f"unreadable dtype {descr!r:.200} in header ({exc})") from exc


def _descr_from_json(descr: Any) -> Any:
    """JSON turned numpy's descr tuples into lists; numpy wants them back as tuples."""
    if isinstance(descr, str):
        return descr
    if not isinstance(descr, list):
        raise TypeError(f"dtype description must be a string or a list, not {type(descr).__name__}")
    fields = []
    for field in descr:
        name = tuple(field[0]) if isinstance(field[0], list) else field[0]  # (title, name) pairs
        rest = (tuple(field[2]),) if len(field) > 2 else ()  # subarray shape
        fields.append((name, _descr_from_json(field[1]), *rest))
    return fields


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise corrupt(FORMAT, f"invalid shape {shape!r:.200} in header")
    return tuple(shape)
