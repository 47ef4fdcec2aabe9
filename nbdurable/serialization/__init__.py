"""Turning variables into content-keyed payloads and back: the only place that knows object formats.

``serialize(obj)`` picks a format and hashes the object (cheaply: big buffers are hashed in place); the
key it returns is both the content address and the mutation fingerprint. ``Serialized.write(f)``
produces the payload; ``deserialize(format, payload)`` brings the object back, in a new process.

Formats (``Serialized.format``):

``module``        a module imported by name (restored by importing it again); no payload.
``ndarray``       a numpy array of plain data: header + the raw memory, restored as a view of the payload.
``parquet``       a pandas DataFrame that round-trips exactly: a plain Parquet file (DuckDB reads it).
``pickle``        everything else: cloudpickle, protocol 5, big buffers out-of-band.
``unrestorable``  what cannot be pickled (generators, connections, locks, open files): the reason only.

This is the only module of nbdurable that imports cloudpickle and pyarrow; numpy and pandas are imported
only when an array or a DataFrame is met. It never touches files: the store does.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

from nbdurable.errors import RestoreError
from nbdurable.serialization._core import (
    FORMAT_VERSION,
    FORMATS,
    Serialized,
    check_version,
    corrupt,
    piece_key,
    text_key,
    unknown_format,
)

_PANDAS_MODULES = ("pandas", "pandas.core.frame")  # pandas 3 says "pandas", pandas 2 the defining module

__all__ = ["FORMATS", "FORMAT_VERSION", "Serialized", "assemble_frame", "deserialize", "deserialize_parts",
           "frame_parts", "piece_key", "serialize", "ship", "unship"]


def serialize(obj: object, *, namespace: dict[str, Any] | None = None,
              shared: dict[int, tuple[str, str]] | None = None) -> Serialized:
    """Choose a format for ``obj``, hash it and return the ``Serialized`` (payload made by ``write()``).

    ``namespace`` is the notebook's globals: functions whose ``__globals__`` is that dict are saved
    without their globals and rebuilt on the restored namespace. Never raises for objects that cannot be
    pickled: they come back as format ``"unrestorable"`` with the reason.

    ``shared`` maps other variables' objects (by identity) to their (instance, content key): inside a pickled
    object they are references (``Serialized.refs``), and an array viewing one of them pickles as that view.
    """
    cls = type(obj)
    type_name = f"{cls.__module__}.{cls.__qualname__}"
    if isinstance(obj, types.ModuleType):
        return _serialize_module(obj, type_name)
    # Compare names before importing: numpy and pandas are loaded only if the object is one of theirs.
    if cls.__module__ == "numpy" and cls.__qualname__ == "ndarray":
        from nbdurable.serialization import _ndarray

        if shared and _views_shared(obj, shared):  # a view of another variable's array: pickled as that view
            return _serialize_pickle(obj, type_name, namespace, shared)
        if _ndarray.eligible(obj):  # type: ignore[arg-type]
            return _ndarray.serialize_ndarray(obj, type_name)  # type: ignore[arg-type]
    elif cls.__qualname__ == "DataFrame" and cls.__module__ in _PANDAS_MODULES:
        serialized = _serialize_frame(obj, type_name)
        if serialized is not None:
            return serialized
    return _serialize_pickle(obj, type_name, namespace, shared)


def ship(obj: object) -> bytes:
    """``obj`` as bytes for another process of this program (``nbd.map`` on a process pool): cloudpickle, so
    functions and classes defined in a notebook travel by value. Not stored: no header, no versions."""
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=5)
    return data


def unship(data: bytes) -> Any:
    """The object ``ship`` turned into ``data``."""
    import pickle

    return pickle.loads(data)


def _views_shared(arr: Any, shared: dict[int, tuple[str, str]]) -> bool:
    base = arr.base
    while base is not None and type(base).__name__ == "ndarray":
        if id(base) in shared:
            return True
        base = base.base
    return False


def deserialize(
    format: str,  # noqa: A002 - public parameter, named like the record's field (`format_version` next to it)
    payload: bytes | bytearray | memoryview | None,
    *,
    format_version: int = 1,
    module: str | None = None,
    namespace: dict[str, Any] | None = None,
    resolve: Callable[[int], object] | None = None,
) -> object:
    """Bring back an object from its format and payload (``resolve(i)``: the object of the i-th variable a
    pickle references, see ``serialize``'s ``shared``).

    Pass the payload as a ``bytearray`` (what the store reads) or any writable buffer, e.g. a memoryview
    of a file mapped with ``mmap.ACCESS_COPY``: arrays and big buffers are then restored as views of it,
    without a copy, and writable. A read-only payload (``bytes``) is copied once.
    ``namespace`` becomes the globals of the notebook functions restored (pass the namespace being
    restored into). Raises StoreFormatError (unknown or newer format), CorruptObjectError (damaged
    payload) or RestoreError (cannot be restored here: missing package, unrestorable object).
    """
    if format not in FORMATS:
        raise unknown_format(format)
    check_version(format, format_version)
    if format == "module":
        return _import_module(module)
    if format == "unrestorable":
        raise RestoreError(
            "this object could not be saved when it was recorded (it cannot be pickled), so it cannot be restored",
            hint="re-run the cell that created it.",
        )
    if payload is None:
        raise corrupt(format, "no payload given")
    if format == "ndarray":
        from nbdurable.serialization._ndarray import deserialize_ndarray

        return deserialize_ndarray(payload)
    if format == "parquet":
        from nbdurable.serialization._parquet import deserialize_frame

        return deserialize_frame(payload)
    from nbdurable.serialization._pickle import deserialize_pickle

    return deserialize_pickle(payload, namespace, resolve)


def deserialize_parts(
    format: str,  # noqa: A002 - as in deserialize
    head: bytes | bytearray | memoryview,
    buffers: list[memoryview],
    *,
    format_version: int = 1,
    namespace: dict[str, Any] | None = None,
    resolve: Callable[[int], object] | None = None,
) -> object:
    """Bring back an object whose payload was stored in parts (``runtime/deltas.py``): its head (header and
    pickle bytes) and its buffers (an array's memory, a pickle's out-of-band buffers), each assembled and
    writable. Raises as ``deserialize`` does."""
    if format not in ("ndarray", "pickle"):
        raise unknown_format(format)
    check_version(format, format_version)
    if format == "ndarray":
        from nbdurable.serialization._ndarray import deserialize_ndarray_parts

        if len(buffers) != 1:
            raise corrupt(format, f"an array has one buffer, this delta has {len(buffers)}")
        return deserialize_ndarray_parts(head, buffers[0])
    from nbdurable.serialization._pickle import deserialize_pickle_parts

    return deserialize_pickle_parts(head, buffers, namespace, resolve)


def frame_parts(serialized: Serialized, stored: Callable[[str], bool] = lambda key: False) -> Any:
    """A big DataFrame's columns and index as Serialized parts of their own (``_frame_parts.FrameParts``;
    none is made for a key that ``stored`` says is stored already), or None for anything else (or a frame
    whose parts would not round-trip alone)."""
    if serialized.format != "parquet" or not hasattr(serialized, "column_keys"):
        return None
    from nbdurable.serialization._frame_parts import FrameParts

    return FrameParts.of(serialized.frame, serialized.column_keys, serialized.index_key,  # type: ignore[attr-defined]
                         stored)


def assemble_frame(manifest: dict[str, Any], index: Any, columns: list[Any]) -> Any:
    """A DataFrame stored column by column, from its manifest and its deserialized parts (``_frame_parts``)."""
    from nbdurable.serialization._frame_parts import assemble

    return assemble(manifest, index, columns)


def _serialize_module(obj: types.ModuleType, type_name: str) -> Serialized:
    name = obj.__name__
    if sys.modules.get(name) is not obj:
        return _unrestorable(
            obj,
            type_name,
            f"module {name!r} was created at run time, not imported: it cannot be imported back",
        )
    return Serialized(
        key=text_key("module", f"module:{name}"),
        format="module",
        type_name=type_name,
        module=name,
        origin=getattr(obj, "__file__", None),
    )


def _serialize_frame(obj: object, type_name: str) -> Serialized | None:
    """Parquet when the DataFrame is known to round-trip exactly, else None (then it is pickled)."""
    import pandas as pd

    from nbdurable.serialization import _parquet

    if type(obj) is not pd.DataFrame:  # a subclass would come back as a plain DataFrame
        return None
    try:
        frame_plan = _parquet.plan(obj)
        if frame_plan is None:
            return None
        return _parquet.serialize_frame(obj, frame_plan, type_name)
    except Exception:  # an odd DataFrame the rule did not foresee: pickle is always right
        return None


def _serialize_pickle(obj: object, type_name: str, namespace: dict[str, Any] | None,
                      shared: dict[int, tuple[str, str]] | None = None) -> Serialized:
    from nbdurable.serialization._pickle import serialize_pickle

    try:
        return serialize_pickle(obj, type_name, namespace, shared)
    except Exception as exc:  # whatever pickling raises means "cannot be saved"
        return _unrestorable(obj, type_name, f"{type(exc).__name__}: {exc}")


def _unrestorable(obj: object, type_name: str, reason: str) -> Serialized:
    return Serialized.unrestorable(obj, reason)


def _import_module(name: str | None) -> types.ModuleType:
    if not name:
        raise corrupt("module", "no module name recorded")
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        raise RestoreError(
            f"cannot import module {name!r}: {exc}",
            hint=f"install the package that provides it (e.g. pip install {top}) and resume again.",
        ) from exc
