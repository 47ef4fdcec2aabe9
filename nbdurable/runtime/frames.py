"""Big DataFrames stored column by column: a changed column writes one column, the others are reused.

A frame that would be a Parquet object of at least ``MIN_SIZE`` bytes is stored as its parts instead
(``serialization/_frame_parts.py``): one Parquet object per column, keyed by the column's dtype, length and
data, and one for a non-range index. A part whose object this process already wrote or restored (its key
and tag known here, its file still present) is neither encoded nor written again: a cell that adds,
updates, renames, moves or drops one column of a 1 GB frame costs that column. The reference keeps the
frame's manifest and each part's key and tag (``frame`` in ``store/records.py``); restoring reads each part
by the Parquet fast path and assembles them; ``vars.<name>`` reads the parts side by side in DuckDB.
"""

from __future__ import annotations

import threading
from typing import Any

from nbdurable.errors import CorruptObjectError, NbdurableError
from nbdurable.serialization import Serialized, assemble_frame, deserialize, frame_parts
from nbdurable.store import Store
from nbdurable.store.crypto import encryption_key

MIN_SIZE = 1 * 2**20  # smaller frames stay one Parquet object (often inlined in the journal)

_tags: dict[tuple[str, str], str] = {}  # (store directory, part key) -> its tag, for parts written or read here
_lock = threading.Lock()


def write(store: Store, s: Serialized) -> dict[str, Any] | None:
    """Store a big frame's parts; return the reference's fields (``size``, ``frame``), or None when the
    object is not a frame that can be stored by parts (the caller writes it whole)."""
    if s.size < MIN_SIZE or encryption_key() is not None:
        return None
    parts = frame_parts(s)
    if parts is None:
        return None
    columns = [[label, *_put(store, part)] for label, part in parts.columns]
    index = None if parts.index is None else _put(store, parts.index)
    return {"size": s.size, "frame": {**parts.manifest, "columns": columns, "index": index}}


def _put(store: Store, part: Serialized) -> list[str]:
    """A part's [key, tag]: known here and still in the store (touched: gc spares it), or written now."""
    with _lock:
        tag = _tags.get((str(store.path), part.key))
    if tag is None or not store.touch_object(part.key):
        _, tag = store.write_object(part.key, part.write)
        with _lock:
            _tags[(str(store.path), part.key)] = tag
    return [part.key, tag]


def load(store: Store, ref: dict[str, Any]) -> object:
    """The DataFrame a column-wise reference describes (each part authenticated as any object is)."""
    frame = ref["frame"]
    try:
        columns = [(str(key), str(tag)) for _label, key, tag in frame["columns"]]
        index = frame.get("index")
        index_part = None if index is None else (str(index[0]), str(index[1]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptObjectError(f"the record of DataFrame {ref.get('object')} stored by column is malformed ({exc})",
                                 hint="re-run the cell that produced it") from exc
    index_frame = None if index_part is None else _read(store, *index_part)
    return assemble_frame(frame, index_frame, [_read(store, key, tag) for key, tag in columns])


def _read(store: Store, key: str, tag: str) -> Any:
    """One part, deserialized; a failure names its file (``object_key``) so a restore sets that one aside."""
    try:
        obj = deserialize("parquet", store.read_object(key, tag))
    except NbdurableError as exc:
        exc.object_key = key  # type: ignore[attr-defined]
        raise
    with _lock:
        _tags[(str(store.path), key)] = tag
    return obj
