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
_given: set[tuple[str, str]] = set()  # (store directory, part key) of parts given to a commit (``claim``)
_lock = threading.Lock()


def write(store: Store, s: Serialized) -> dict[str, Any] | None:
    """Store a big frame's parts; return the reference's fields (``size``, ``frame``), or None when the
    object is not a frame that can be stored by parts (the caller writes it whole)."""
    if s.size < MIN_SIZE or encryption_key() is not None:
        return None
    root, tags = str(store.path), {}

    def stored(key: str) -> bool:  # known here and still in the store (touched: gc spares it)
        with _lock:
            known = _tags.get((root, key))
        if known is None or not store.touch_object(key):
            return False
        tags[key] = known
        return True

    def tag(key: str, part: Serialized | None) -> str:  # (two columns of the same data: written once)
        if key not in tags:
            assert part is not None
            tags[key] = _put(store, part)
        return tags[key]

    parts = frame_parts(s, stored)
    if parts is None:
        return None
    columns = [[label, key, tag(key, part)] for label, key, part in parts.columns]
    index = None if parts.index is None else [parts.index[0], tag(*parts.index)]
    return {"size": s.size, "frame": {**parts.manifest, "columns": columns, "index": index}}


def claim(store: Store, s: Serialized) -> int:
    """The bytes a commit of ``s`` will write that no commit of this process wrote, read or was given
    before: a big frame's new parts (a cell that renamed or dropped a column of a 1 GB frame writes
    nothing but its manifest), ``s.size`` for anything else. The parts count as given from now on. This
    only schedules the commit (``committer.py``): ``_put`` still writes every part that is not stored."""
    sizes: dict[str, int] = getattr(s, "part_sizes", None) or {}
    if not sizes or s.size < MIN_SIZE or encryption_key() is not None:
        return s.size
    root = str(store.path)
    with _lock:
        new = {(root, key): size for key, size in sizes.items() if (root, key) not in _tags
               and (root, key) not in _given}
        _given.update(new)
    return sum(new.values())


def _put(store: Store, part: Serialized) -> str:
    """Write a part not stored yet; its tag."""
    _, tag = store.write_object(part.key, part.write)
    with _lock:
        _tags[(str(store.path), part.key)] = tag
    return tag


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
