"""Sub-object deltas: a new version of a big array or pickled object stores only the pieces that changed.

A payload that keeps its data in buffers (an ndarray's memory; a pickle's out-of-band buffers: the arrays
inside estimators, models, containers and pickled DataFrames) is cut, buffer by buffer, into pieces of
``PIECE`` bytes aligned at each buffer's start, and compared piece by piece with the *base* of the same
variable: the last version of it written whole (in this process, or restored into it). When at most
``MAX_CHANGED`` of its buffer bytes changed, the version is stored as a delta: one object file (magic
``NBDD``) holding its head (header and pickle bytes) and the changed pieces, and the record names the base
file and where each buffer lies in it. Otherwise it is written whole, as before, and becomes the
variable's base, its piece hashes recorded in its reference so that a later process can compare against it.

Restoring a delta reads the base file as a restore does (big files mapped copy-on-write) and copies the
changed pieces over it: the buffers stay views of the page cache, read lazily, and only patched pages are
touched. A delta's file is always authenticated in full (``store/objects.py``); its base like any object.

Nothing torn is ever stored: the pieces are hashed from live memory in one pass that also recomputes the
content key (a key that differs means the object changed after its cell ended: ChangedDuringWriteError, as
for a whole write); each changed piece is copied before it is written and its hash checked again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import xxhash

from nbdurable.errors import ChangedDuringWriteError, CorruptObjectError, NbdurableError
from nbdurable.serialization import Serialized, deserialize_parts, piece_key
from nbdurable.store import Store
from nbdurable.store.crypto import encryption_key
from nbdurable.store.objects import DELTA_MAGIC

PIECE = 4 * 2**20  # bytes per piece: a 1% slice of 1 GiB touches at most 4 (16 MiB, <= 2%); 8 MiB would be 24
MIN_SIZE = 4 * 2**20  # smaller payloads are written whole
MAX_CHANGED = 0.5  # a version with more of its buffer bytes changed is written whole (a new base)
_ALIGN = 64

_CHANGED_HINT = "its step is recorded as not durable and re-executes on resume"


@dataclass(frozen=True)
class Base:
    """A version written whole: the file, and each buffer's place in it with its piece hashes."""

    key: str
    tag: str
    format: str
    piece: int
    buffers: tuple[tuple[int, int, tuple[str, ...]], ...]  # (offset in the file, length, piece hashes)

    def to_json(self) -> dict[str, Any]:
        return {"object": self.key, "tag": self.tag, "format": self.format, "piece": self.piece,
                "buffers": [[offset, length, list(hashes)] for offset, length, hashes in self.buffers]}

    @classmethod
    def from_json(cls, data: Any) -> Base | None:
        try:
            buffers = tuple((int(o), int(n), tuple(str(h) for h in hs)) for o, n, hs in data["buffers"])
            return cls(str(data["object"]), str(data["tag"]), str(data["format"]), int(data["piece"]), buffers)
        except (KeyError, TypeError, ValueError):
            return None  # written by another version: no base, the next version is written whole


_bases: dict[tuple[str, str], Base] = {}  # (store directory, variable name) -> its base
_lock = threading.Lock()


def remember(store: Store, name: str, ref: dict[str, Any]) -> None:
    """Make a reference's object the base of ``name`` (a whole version with piece hashes, or a delta's base)."""
    data = ref.get("pieces") or (ref.get("delta") or {}).get("base")
    base = Base.from_json(data) if isinstance(data, dict) else None
    if base is not None:
        with _lock:
            _bases[(str(store.path), name)] = base


def write(store: Store, name: str, s: Serialized) -> dict[str, Any] | None:
    """Store a big payload as a delta or whole with its piece hashes; return the reference's fields
    (``size``, ``tag``, ``pieces`` or ``delta``). None when the payload has no buffers to compare (the
    caller writes it whole as before)."""
    chunked = s.chunked()
    if chunked is None or s.size < MIN_SIZE or encryption_key() is not None:
        return None
    key, pieces = chunked.hash_pieces(PIECE)
    if key != s.key:
        raise ChangedDuringWriteError(f"a {s.type_name} changed while it was being saved in the background",
                                      hint=_CHANGED_HINT)
    with _lock:
        base = _bases.get((str(store.path), name))
    spans = chunked.buffer_offsets()
    changed = _changed_pieces(base, s, spans, pieces)
    # A base is referenced again now (gc spares fresh files); one gc'ed since it was written is not used.
    if base is None or changed is None or not store.touch_object(base.key):
        size, tag = store.write_object(s.key, s.write)
        new_base = Base(s.key, tag, s.format, PIECE,
                        tuple((o, n, tuple(p)) for (o, n), p in zip(spans, pieces, strict=True)))
        with _lock:
            _bases[(str(store.path), name)] = new_base
        return {"size": size, "tag": tag, "pieces": new_base.to_json()}
    return _write_delta(store, s, base, spans, pieces, changed)


def _changed_pieces(base: Base | None, s: Serialized, spans: list[tuple[int, int]],
                    pieces: list[list[str]]) -> list[tuple[int, int]] | None:
    """(buffer, piece) indices that differ from the base; None when a delta would not pay (no base, another
    layout, the same object, or more than MAX_CHANGED of the bytes changed)."""
    if (base is None or base.key == s.key or base.format != s.format or base.piece != PIECE
            or [n for _, n, _ in base.buffers] != [n for _, n in spans]):
        return None
    changed, changed_bytes, total = [], 0, 0
    for j, ((_, length, old), new) in enumerate(zip(base.buffers, pieces, strict=True)):
        total += length
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                changed.append((j, i))
                changed_bytes += min(PIECE, length - i * PIECE)
    return None if changed_bytes > MAX_CHANGED * max(total, 1) else changed


def _write_delta(store: Store, s: Serialized, base: Base, spans: list[tuple[int, int]], pieces: list[list[str]],
                 changed: list[tuple[int, int]]) -> dict[str, Any]:
    chunked = s.chunked()
    assert chunked is not None
    head = chunked.head()
    offset = _ALIGN + len(head)
    places: list[list[list[int]]] = [[] for _ in spans]
    for j, i in changed:
        offset += -offset % _ALIGN
        places[j].append([i, offset])
        offset += min(PIECE, spans[j][1] - i * PIECE)
    buffers = [chunked.chunks[index] for index in chunked.buffers]

    def write_patch(f: BinaryIO) -> int:
        written = f.write(DELTA_MAGIC + bytes(_ALIGN - len(DELTA_MAGIC))) or 0
        written += f.write(head) or 0
        bounce = bytearray(PIECE)
        for j, i in changed:
            written += f.write(bytes(-written % _ALIGN)) or 0
            view = memoryview(buffers[j]).cast("B")
            length = min(PIECE, view.nbytes - i * PIECE)
            piece = memoryview(bounce)[:length]
            piece[:] = view[i * PIECE : i * PIECE + length]
            if piece_key(piece) != pieces[j][i]:
                raise ChangedDuringWriteError(f"a {s.type_name} changed while it was being saved in the background",
                                              hint=_CHANGED_HINT)
            written += f.write(piece) or 0
        return written

    patch_key = xxhash.xxh3_128_hexdigest(f"nbdurable:delta\0{s.key}\0{base.key}\0{PIECE}".encode())
    size, tag = store.write_object(patch_key, write_patch)
    return {
        "size": s.size,
        "delta": {
            "base": base.to_json(),
            "patch": {"object": patch_key, "tag": tag, "size": size},
            "head": [_ALIGN, len(head)],
            "piece": PIECE,
            "buffers": [[o, n, places[j]] for j, (o, n, _) in enumerate(base.buffers)],
        },
    }


def load(store: Store, ref: dict[str, Any], namespace: dict[str, Any],
         resolve: Callable[[int], object] | None = None) -> object:
    """The object a delta reference describes: its base's buffers with the changed pieces copied over."""
    delta = ref["delta"]
    try:
        base, patch = delta["base"], delta["patch"]
        head_at, head_len = (int(n) for n in delta["head"])
        piece = int(delta["piece"])
        layout = [(int(o), int(n), [(int(i), int(at)) for i, at in places]) for o, n, places in delta["buffers"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptObjectError(f"the delta record of object {ref.get('object')} is malformed ({exc})",
                                 hint="re-run the cell that produced it") from exc
    patch_data = _read_part(store, patch)
    if bytes(patch_data[: len(DELTA_MAGIC)]) != DELTA_MAGIC:
        err = CorruptObjectError(f"object {patch['object']} is not a delta (bad magic bytes)",
                                 hint="run `nbdurable check`; re-run the cell that produced it")
        err.object_key = str(patch["object"])  # type: ignore[attr-defined]
        raise err
    base_data = _read_part(store, base)
    buffers = []
    for offset, length, places in layout:
        view = base_data[offset : offset + length]
        for i, at in places:
            n = min(piece, length - i * piece)
            view[i * piece : i * piece + n] = patch_data[at : at + n]
        buffers.append(view)
    return deserialize_parts(str(ref.get("format")), patch_data[head_at : head_at + head_len], buffers,
                             format_version=int(ref.get("format_version") or 1), namespace=namespace,
                             resolve=resolve)



def _read_part(store: Store, part: dict[str, Any]) -> memoryview:
    """A delta's base or patch file, authenticated; a failure names that file (``object_key``), so a restore
    that runs the cell instead sets that file aside, not the delta's content key (which has no file)."""
    try:
        return memoryview(store.read_object(str(part["object"]), str(part["tag"]))).cast("B")
    except NbdurableError as exc:
        exc.object_key = str(part["object"])  # type: ignore[attr-defined]
        raise
