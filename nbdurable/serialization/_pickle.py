"""The ``pickle`` format: cloudpickle, protocol 5, big buffers out-of-band and 64-byte aligned.

Payload: header (``buffers`` lists the out-of-band buffer lengths, ``pickle`` the pickle's length), the
pickle bytes, then each buffer at a 64-byte-aligned offset. Buffers are hashed and written straight from
the objects' memory, and restored as views of the payload, so a dict of big arrays costs no copies.

Functions defined in the notebook (their ``__globals__`` *is* the namespace) are not pickled with a copy
of their globals, as cloudpickle would do: they are rebuilt on top of the namespace being restored, so
after a resume they read and write the live namespace, like the originals did.
"""

from __future__ import annotations

import contextvars
import copyreg
import functools
import io
import pickle
import platform
import re
import sys
import types
from collections.abc import Callable
from typing import Any

import cloudpickle

from nbdurable.errors import RestoreError, StoreFormatError
from nbdurable.serialization._core import (
    Chunk,
    ChunkedSerialized,
    Payload,
    byte_view,
    corrupt,
    decode_header,
    encode_header,
    new_hasher,
    pad_to,
    padding,
    writable,
)

MAGIC = b"NBDP"
FORMAT = "pickle"
PROTOCOL = 5
# Smaller buffers go in-band: padding and a header entry would cost more than the copy they save.
INBAND_MAX = 16 * 1024

# The namespace that functions defined in the notebook get as globals while a payload is being loaded.
_LOAD_NAMESPACE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "nbdurable_load_namespace", default=None
)


def serialize_pickle(obj: object, type_name: str, namespace: dict[str, Any] | None,
                     shared: dict[int, tuple[str, str]] | None = None) -> ChunkedSerialized:
    """Pickle ``obj`` (raises whatever pickling raises: the caller records it as unrestorable).

    ``shared`` maps the identity of other variables' objects to their (instance, content key): met inside
    ``obj``, such an object is pickled as a reference to that variable (``refs``), not as a copy, and an
    ndarray viewing one's memory as a view of it, so ``d = {'l': lst}``, ``w.data is arr`` and ``v = a[2:5]``
    come back sharing what they shared. The content key covers the referenced objects' keys."""
    data, buffers, refs = _dump(obj, namespace, shared or {})
    lengths = [b.nbytes for b in buffers]
    header = _header(data.nbytes, tuple(lengths))
    h = new_hasher(FORMAT)
    prefix = repr([data.nbytes, *lengths]).encode()  # where one part ends and the next begins
    if refs:
        prefix += repr([key for _instance, key in refs]).encode()
    h.update(prefix)
    chunks: list[Chunk] = [header, data]
    hashed = [1]
    offset = len(header) + data.nbytes
    h.update(data)
    for buf in buffers:
        chunks.append(padding(offset))
        offset += pad_to(offset) + buf.nbytes
        hashed.append(len(chunks))
        chunks.append(buf)
        h.update(buf)
    result = ChunkedSerialized(
        chunks=chunks, hash_prefix=prefix, hashed=hashed, buffers=hashed[1:], key=h.hexdigest(), format=FORMAT,
        type_name=type_name,
    )
    result.refs = tuple(refs)
    return result


@functools.lru_cache(maxsize=1024)
def _header(size: int, lengths: tuple[int, ...]) -> bytes:
    """The payload's header (cached: a cell's small values repeat the same few sizes; encoding it cost as
    much as pickling a scalar)."""
    return encode_header(
        MAGIC,
        {
            "format": FORMAT,
            "version": 1,
            "protocol": PROTOCOL,
            "cloudpickle": cloudpickle.__version__,
            "python": platform.python_version(),
            "pickle": size,
            "buffers": list(lengths),
        },
    )


def _dump(obj: object, namespace: dict[str, Any] | None,
          shared: dict[int, tuple[str, str]]) -> tuple[memoryview, list[memoryview], list[tuple[str, str]]]:
    """The pickle bytes and the out-of-band buffers (views of the objects' own memory)."""
    buffers: list[memoryview] = []

    def take_buffer(buf: pickle.PickleBuffer) -> bool:
        try:
            raw = buf.raw()
        except BufferError:  # not contiguous: let the pickler keep it in-band
            return True
        if raw.nbytes < INBAND_MAX:
            return True
        buffers.append(raw)
        return False  # false means out-of-band

    out = io.BytesIO()
    pickler = NotebookPickler(out, namespace=namespace, buffer_callback=take_buffer, shared=shared, root=obj)
    pickler.dump(obj)
    return out.getbuffer(), buffers, pickler.refs


class NotebookPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, except for notebook functions (rebuilt on the live namespace) and open files."""

    def __init__(
        self,
        file: io.BytesIO,
        *,
        namespace: dict[str, Any] | None,
        buffer_callback: Any,
        shared: dict[int, tuple[str, str]] | None = None,
        root: object = None,
    ) -> None:
        super().__init__(file, protocol=PROTOCOL, buffer_callback=buffer_callback)
        self._namespace = namespace
        self._shared = shared or {}
        self._root = root
        self.refs: list[tuple[str, str]] = []  # (instance, key) of the variables referenced, in pid order

    def persistent_id(self, obj: Any) -> Any:
        """Another variable's object, met inside this one: a reference to it (``_REF``, its index in refs)."""
        if not self._shared or obj is self._root:
            return None
        ref = self._shared.get(id(obj))
        if ref is None:
            return None
        if ref not in self.refs:
            self.refs.append(ref)
        return (_REF, self.refs.index(ref))

    def reducer_override(self, obj: Any) -> Any:
        if self._shared and type(obj).__name__ == "ndarray" and (view := _view_of_shared(obj, self._shared)):
            return view
        if type(obj).__name__ == "CallbackRegistry" and type(obj).__module__ == "matplotlib.cbook":
            return _reduce_callback_registry(obj)
        if type(obj) is types.FunctionType and self._namespace is not None and obj.__globals__ is self._namespace:
            return _reduce_notebook_function(obj)
        if _is_open_file(obj):
            # cloudpickle would pickle a read-mode file as a StringIO of its content: a different object.
            raise TypeError(f"cannot pickle open file {getattr(obj, 'name', '?')!r} ({type(obj).__name__})")
        return super().reducer_override(obj)


def _is_open_file(obj: Any) -> bool:
    if not isinstance(obj, io.IOBase) or isinstance(obj, (io.BytesIO, io.StringIO)):
        return False
    # The standard streams are pickled by reference (as sys.stdout...), which restores them correctly.
    return not any(
        obj is s
        for s in (
            sys.stdout,
            sys.stderr,
            sys.stdin,
            sys.__stdout__,
            sys.__stderr__,
            sys.__stdin__,
        )
    )


_REF = "nbd-var"


def _view_of_shared(arr: Any, shared: dict[int, tuple[str, str]]) -> tuple[Any, ...] | None:
    """An ndarray viewing the memory of another variable's array: rebuilt as a view of it on load."""
    base = arr.base
    root = None
    while base is not None and type(base).__name__ == "ndarray":
        root, base = base, base.base
    if root is None or id(root) not in shared or id(arr) in shared:
        return None
    offset = arr.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return (_rebuild_view, (root, arr.dtype, arr.shape, offset, arr.strides))


def _rebuild_view(root: Any, dtype: Any, shape: tuple[int, ...], offset: int, strides: tuple[int, ...]) -> Any:
    import numpy as np

    return np.ndarray(shape, dtype=dtype, buffer=root, offset=offset, strides=strides)


def _reduce_callback_registry(registry: Any) -> Any:
    """matplotlib's ``CallbackRegistry.__getstate__`` takes ``next()`` of its id counter: every pickle of a
    figure advanced it, so the same figure never pickled to the same bytes twice (a cell that only read
    ``ax`` stored it again). The same state, with the counter's value read without advancing it."""
    match = re.fullmatch(r"count\((\d+)\)", repr(getattr(registry, "_cid_gen", None)))
    pickled, callbacks = getattr(registry, "_pickled_cids", None), getattr(registry, "callbacks", None)
    if match is None or not isinstance(pickled, set) or not isinstance(callbacks, dict):
        return NotImplemented  # another matplotlib than this rule knows: its own __getstate__ decides
    values = dict(vars(registry))
    values["callbacks"] = {s: {cid: proxy() for cid, proxy in d.items() if cid in pickled}
                           for s, d in callbacks.items()}
    values["_func_cid_map"] = None
    values["_cid_gen"] = int(match.group(1))
    return (copyreg.__newobj__, (type(registry),), values)  # type: ignore[attr-defined]


class _EmptyCell:
    """Marks a closure cell that had no value yet (pickled by reference, so it survives the trip)."""

    def __reduce__(self) -> str:
        return "EMPTY_CELL"


EMPTY_CELL = _EmptyCell()


def _reduce_notebook_function(func: types.FunctionType) -> tuple[Any, ...]:
    """Reduce to (skeleton, state): the function is memoized before its state is pickled, so a function
    that refers to itself (recursion through a closure cell, its own ``__dict__``) pickles fine."""
    closure = func.__closure__ or ()
    state = {
        "defaults": func.__defaults__,
        "kwdefaults": func.__kwdefaults__,
        "dict": func.__dict__,
        "qualname": func.__qualname__,
        "module": func.__module__,
        "annotations": func.__annotations__,
        "doc": func.__doc__,
        "cells": tuple(_cell_value(cell) for cell in closure),
    }
    return (
        make_notebook_function,
        (func.__code__, func.__name__, len(closure)),
        state,
        None,
        None,
        set_function_state,
    )


def _cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # the variable was not assigned yet when the function was saved
        return EMPTY_CELL


def make_notebook_function(code: types.CodeType, name: str, ncells: int) -> types.FunctionType:
    """Rebuild a notebook function on the namespace being restored (its cells are filled afterwards)."""
    namespace = _LOAD_NAMESPACE.get()
    if namespace is None:  # loaded outside deserialize(): give it a namespace of its own
        namespace = {}
    closure = tuple(types.CellType() for _ in range(ncells)) if ncells else None
    return types.FunctionType(code, namespace, name, None, closure)


def set_function_state(func: types.FunctionType, state: dict[str, Any]) -> types.FunctionType:
    """Give a rebuilt function its defaults, attributes and closure contents."""
    func.__defaults__ = state["defaults"]
    func.__kwdefaults__ = state["kwdefaults"]
    func.__dict__.update(state["dict"])
    func.__qualname__ = state["qualname"]
    func.__module__ = state["module"]
    func.__annotations__ = state["annotations"]
    func.__doc__ = state["doc"]
    for cell, value in zip(func.__closure__ or (), state["cells"], strict=True):
        if value is not EMPTY_CELL:
            cell.cell_contents = value
    return func


def deserialize_pickle(payload: Payload, namespace: dict[str, Any] | None,
                       resolve: Callable[[int], object] | None = None) -> object:
    """Unpickle, with out-of-band buffers as views of the payload and notebook functions on ``namespace``."""
    meta, offset = decode_header(byte_view(payload), MAGIC, FORMAT)
    protocol, size, lengths = (
        meta.get("protocol"),
        meta.get("pickle"),
        meta.get("buffers"),
    )
    if not isinstance(size, int) or not isinstance(lengths, list) or not all(isinstance(n, int) for n in lengths):
        raise corrupt(FORMAT, "header lacks valid 'pickle' and 'buffers' lengths")
    if not isinstance(protocol, int) or protocol > pickle.HIGHEST_PROTOCOL:
        raise StoreFormatError(
            f"this object was pickled with protocol {protocol!r}, which Python {platform.python_version()} cannot read",
            hint=f"resume with the Python version that saved it ({meta.get('python', 'a newer one')}).",
        )
    # Out-of-band buffers become the restored arrays' memory: it must be writable (copied if not).
    buffer = byte_view(writable(payload) if lengths else payload)
    spans, end = [(offset, size)], offset + size
    for length in lengths:
        end += pad_to(end)
        spans.append((end, length))
        end += length
    if end != buffer.nbytes:
        raise corrupt(
            FORMAT,
            f"payload is {buffer.nbytes} bytes but its header describes {end} (truncated or padded)",
        )
    data, *buffers = [buffer[start : start + length] for start, length in spans]
    return _load_on(namespace, data, buffers, resolve)


def deserialize_pickle_parts(head: Payload, buffers: list[memoryview], namespace: dict[str, Any] | None,
                             resolve: Callable[[int], object] | None = None) -> object:
    """Unpickle from a payload given in parts (a sub-object delta): the head (header and pickle bytes) and
    the out-of-band buffers, each already assembled and writable."""
    view = byte_view(head)
    meta, offset = decode_header(view, MAGIC, FORMAT)
    size, lengths = meta.get("pickle"), meta.get("buffers")
    if not isinstance(size, int) or not isinstance(lengths, list) or offset + size > view.nbytes:
        raise corrupt(FORMAT, "the head of a delta lacks valid 'pickle' and 'buffers' lengths")
    if lengths != [b.nbytes for b in buffers]:
        raise corrupt(FORMAT, f"a delta's buffers are {[b.nbytes for b in buffers]} bytes, its header says {lengths}")
    return _load_on(namespace, view[offset : offset + size], buffers, resolve)


def _load_on(namespace: dict[str, Any] | None, data: memoryview, buffers: list[memoryview],
             resolve: Callable[[int], object] | None = None) -> object:
    token = _LOAD_NAMESPACE.set(namespace if namespace is not None else {})
    try:
        return _loads(data, buffers, resolve)
    finally:
        _LOAD_NAMESPACE.reset(token)


class _Unpickler(pickle.Unpickler):
    """Resolves references to other variables (``persistent_id``) through ``resolve``."""

    def __init__(self, data: memoryview, buffers: list[memoryview], resolve: Callable[[int], object]) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._resolve = resolve

    def persistent_load(self, pid: Any) -> object:
        if not (isinstance(pid, tuple) and len(pid) == 2 and pid[0] == _REF and isinstance(pid[1], int)):
            raise pickle.UnpicklingError(f"unknown persistent reference {pid!r}")
        return self._resolve(pid[1])


def _loads(data: memoryview, buffers: list[memoryview], resolve: Callable[[int], object] | None = None) -> object:
    try:
        if resolve is not None:
            return _Unpickler(data, buffers, resolve).load()
        return pickle.loads(data, buffers=buffers)
    except ImportError as exc:  # incl. ModuleNotFoundError: a package the object needs is missing
        missing = exc.name or str(exc)
        raise RestoreError(
            f"the object needs module {missing!r}, which cannot be imported here ({exc})",
            hint=f"install the package that provides it (pip install {missing.split('.')[0]}) and resume again.",
        ) from exc
    except (pickle.UnpicklingError, EOFError) as exc:
        raise corrupt(FORMAT, f"pickle data is damaged ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:
        raise RestoreError(
            f"unpickling failed with {type(exc).__name__}: {exc}",
            hint="the object does not load back from its pickle: its library's objects may not survive a "
            "pickle round trip, or its class changed since it was saved; its cell runs its own code instead "
            "(mark that cell `%%durable --always` if it should always run).",
        ) from exc
