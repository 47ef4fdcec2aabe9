"""What every format shares: the ``Serialized`` result, content keys, payload headers, and writing.

Payloads of our own formats (``pickle``, ``ndarray``) start with a header::

    magic (4 bytes) | JSON length (uint32, little endian) | JSON | zero padding to a 64-byte boundary

so the data that follows starts 64-byte aligned (good for SIMD loads and for reading it back in place).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

import xxhash

from nbdurable.errors import ChangedDuringWriteError, CorruptObjectError, StoreFormatError

FORMAT_VERSION = 1
ALIGN = 64
FORMATS = ("pickle", "ndarray", "parquet", "module", "unrestorable")

# Anything exposing the buffer protocol that ``f.write`` and ``xxh3.update`` accept.
Chunk = bytes | bytearray | memoryview
Payload = bytes | bytearray | memoryview

_LENGTH = struct.Struct("<I")
_PAD = bytes(ALIGN)
_UPGRADE_HINT = "upgrade nbdurable (pip install -U nbdurable) and resume again."
_CORRUPT_HINT = "the object file is damaged; re-run the cell that produced it, or start a fresh run."


class Serialized:
    """One object turned into a content key plus a payload that ``write()`` produces on demand.

    Creating it only hashes (for arrays and DataFrames the data is hashed in place, never copied), so it
    is cheap enough to serve as the mutation fingerprint: compare ``key`` to know whether an object
    changed. ``write()`` encodes the object *as it is then*, so call it before the object can change again.
    """

    __slots__ = (
        "format",
        "format_version",
        "key",
        "member",
        "module",
        "origin",
        "reason",
        "refs",
        "size",
        "type_name",
    )

    def __init__(
        self,
        *,
        key: str,
        format: str,  # noqa: A002 - keyword of the public API, the attribute's name
        type_name: str,
        size: int = 0,
        module: str | None = None,
        reason: str | None = None,
        origin: str | None = None,
    ) -> None:
        self.key = key
        self.format = format
        self.format_version = FORMAT_VERSION
        self.type_name = type_name
        self.size = size
        self.module = module
        self.reason = reason
        self.origin = origin  # a module's file when it was recorded (says where a failed import looked)
        self.refs: tuple[tuple[str, str], ...] = ()  # other variables' objects referenced: (instance, key)
        self.member: str | None = None  # a group of variables stored together ({name: obj}): this one's name

    def _describe_as(self, other: Serialized) -> None:
        """Take ``other``'s descriptive fields (what a record says besides key, format, type and size)."""
        self.format_version, self.module, self.reason, self.origin = (other.format_version, other.module,
                                                                     other.reason, other.origin)
        self.refs, self.member = other.refs, other.member

    @classmethod
    def unrestorable(cls, obj: object, reason: str) -> Serialized:
        """A marker for an object that is not stored (cannot be pickled, a secret...), with the reason.

        Keyed by identity: stable while the object lives, different for another object of the same type.
        """
        type_name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        key = text_key("unrestorable", f"unrestorable:{type_name}:{id(obj)}")
        return Serialized(key=key, format="unrestorable", type_name=type_name, reason=reason)

    @property
    def has_payload(self) -> bool:
        """Whether there are bytes to store (False for modules and unrestorable objects)."""
        return False

    def write(self, f: BinaryIO) -> int:
        """Write the payload to ``f`` (an unbuffered binary file); return the number of bytes written."""
        return 0

    def to_bytes(self) -> bytes:
        """The payload in memory (for small objects inlined in the journal)."""
        return b""

    def snapshot(self) -> Serialized:
        """A Serialized whose ``write()`` no longer depends on memory the notebook may change next,
        so the payload can be written in the background while cells go on running."""
        return self

    def chunked(self) -> ChunkedSerialized | None:
        """The payload as a list of buffers, when it is one (what sub-object deltas cut into pieces)."""
        return None

    def __repr__(self) -> str:
        extra = f" module={self.module!r}" if self.module else ""
        extra += f" reason={self.reason!r}" if self.reason else ""
        return f"<Serialized {self.format} {self.type_name} key={self.key} size={self.size}{extra}>"


class ChunkedSerialized(Serialized):
    """A payload that is a list of ready buffers (header, pickle bytes, array memory...).

    ``hash_prefix`` and ``hashed`` say how ``key`` was computed: ``new_hasher(format)`` fed the prefix,
    then the chunks at the ``hashed`` indices in order. ``deferred()`` uses that to prove, while
    writing, that the bytes written are the bytes the key names."""

    __slots__ = ("_chunks", "buffers", "hash_prefix", "hashed")

    def __init__(
        self, *, chunks: Sequence[Chunk], hash_prefix: bytes = b"", hashed: Sequence[int] = (),
        buffers: Sequence[int] = (), **fields: Any
    ) -> None:
        super().__init__(size=sum(memoryview(c).nbytes for c in chunks), **fields)
        self._chunks = list(chunks)
        self.hash_prefix = hash_prefix
        self.hashed = tuple(hashed)
        # Indices of the chunks that are data buffers (an array's memory, a pickle's out-of-band buffers):
        # everything before the first is the head (header, pickle bytes); the rest between them is padding.
        self.buffers = tuple(buffers)

    def chunked(self) -> ChunkedSerialized | None:
        return self if self.buffers and self.hashed else None

    @property
    def chunks(self) -> list[Chunk]:
        return self._chunks

    def head(self) -> bytes:
        """The bytes before the first buffer (header and pickle bytes; they are small)."""
        return b"".join(bytes(c) for c in self._chunks[: self.buffers[0]])

    def buffer_offsets(self) -> list[tuple[int, int]]:
        """(offset in the payload, length) of each buffer chunk."""
        spans, offset = [], 0
        for index, chunk in enumerate(self._chunks):
            n = memoryview(chunk).nbytes
            if index in self.buffers:
                spans.append((offset, n))
            offset += n
        return spans

    def hash_pieces(self, piece: int) -> tuple[str, list[list[str]]]:
        """One pass over the live memory: the content key as ``key`` was computed, and each buffer's
        hashes of consecutive ``piece``-byte pieces (what a later version is compared with, piece by piece)."""
        h = new_hasher(self.format)
        h.update(self.hash_prefix)
        pieces: list[list[str]] = []
        for index, chunk in enumerate(self._chunks):
            if index not in self.buffers:
                if index in self.hashed:
                    h.update(chunk)
                continue
            view = byte_view(chunk)
            hashes = []
            for start in range(0, view.nbytes, piece):
                part = view[start : start + piece]
                if index in self.hashed:
                    h.update(part)
                hashes.append(piece_key(part))
            pieces.append(hashes)
        return str(h.hexdigest()), pieces

    @property
    def has_payload(self) -> bool:
        return True

    def write(self, f: BinaryIO) -> int:
        return sum(write_all(f, chunk) for chunk in self._chunks)

    def to_bytes(self) -> bytes:
        return b"".join(self._chunks)

    def snapshot(self) -> Serialized:
        # A small payload is copied (a copy of a few MiB costs less than writing them). Copying more live
        # memory into fresh memory is slow where first-touch page faults are (VMs): the payload is instead
        # written from live memory and verified against the key.
        if self.size <= SNAPSHOT_COPY_MAX:
            copy = ChunkedSerialized(chunks=[bytes(c) for c in self._chunks], hash_prefix=self.hash_prefix,
                                     hashed=self.hashed, buffers=self.buffers, key=self.key, format=self.format,
                                     type_name=self.type_name)
            copy._describe_as(self)
            return copy
        return _VerifiedWrite(self) if self.hashed else self


BOUNCE_BYTES = 8 * 2**20
SNAPSHOT_COPY_MAX = 4 * 2**20


class _VerifiedWrite(Serialized):
    """Writes a ChunkedSerialized from live memory through a small bounce buffer, hashing exactly
    the bytes written; raises ChangedDuringWriteError unless they hash to the key (no torn object
    is ever stored under a key that does not describe it)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: ChunkedSerialized) -> None:
        super().__init__(key=inner.key, format=inner.format, type_name=inner.type_name, size=inner.size)
        self._describe_as(inner)
        self._inner = inner

    @property
    def has_payload(self) -> bool:
        return True

    def write(self, f: BinaryIO) -> int:
        inner = self._inner
        h = new_hasher(inner.format)
        h.update(inner.hash_prefix)
        bounce = bytearray(min(BOUNCE_BYTES, max((memoryview(c).nbytes for c in inner._chunks), default=0)))
        total = 0
        for index, chunk in enumerate(inner._chunks):
            hashed = index in inner.hashed
            if isinstance(chunk, bytes):
                total += write_all(f, chunk)
                if hashed:
                    h.update(chunk)
                continue
            view = memoryview(chunk).cast("B") if memoryview(chunk).format != "B" else memoryview(chunk)
            for start in range(0, view.nbytes, len(bounce)):
                piece = memoryview(bounce)[: min(len(bounce), view.nbytes - start)]
                piece[:] = view[start : start + len(piece)]
                if hashed:
                    h.update(piece)
                total += write_all(f, piece)
        if h.hexdigest() != self.key:
            raise ChangedDuringWriteError(
                f"a {self.type_name} changed while it was being saved in the background",
                hint="its step is recorded as not durable and re-executes on resume",
            )
        return total

    def to_bytes(self) -> bytes:
        return self._inner.to_bytes()

    def chunked(self) -> ChunkedSerialized | None:
        return self._inner.chunked()


def write_all(f: BinaryIO, data: Chunk) -> int:
    """Write all of ``data``: a raw file's write() is one write(2), which may write less (2 GiB cap)."""
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    total, done = view.nbytes, 0
    while done < total:
        n = f.write(view[done:])
        if not n:  # None (non-blocking file) or 0: retrying would spin forever
            raise OSError(f"write() wrote nothing after {done} of {total} bytes")
        done += n
    return total


def new_hasher(fmt: str) -> Any:
    """An xxh3-128 hasher seeded with the format, so equal bytes in different formats never collide."""
    h = xxhash.xxh3_128()
    h.update(f"nbdurable:{fmt}:{FORMAT_VERSION}\0".encode())
    return h


def piece_key(data: Chunk) -> str:
    """The key of one piece of a buffer (xxh3-128, seeded apart from whole objects)."""
    h = xxhash.xxh3_128()
    h.update(b"nbdurable:piece\0")
    h.update(data)
    return str(h.hexdigest())


def text_key(fmt: str, text: str) -> str:
    """The key of a payload-less object (a module name, an unrestorable object's identity)."""
    h = new_hasher(fmt)
    h.update(text.encode("utf-8", "surrogatepass"))
    return str(h.hexdigest())


def pad_to(offset: int) -> int:
    """Number of zero bytes that bring ``offset`` up to the next 64-byte boundary."""
    return -offset % ALIGN


def padding(offset: int) -> bytes:
    return _PAD[: pad_to(offset)]


def encode_header(magic: bytes, meta: dict[str, Any]) -> bytes:
    """Magic, JSON length and JSON (keys sorted: the header is hashed, it must be deterministic), padded."""
    body = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    head = magic + _LENGTH.pack(len(body)) + body
    return head + padding(len(head))


def byte_view(payload: Payload) -> memoryview:
    """The payload as a flat view of bytes, whatever buffer it came in (bytes, bytearray, mmap...)."""
    view = memoryview(payload)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def decode_header(payload: memoryview, magic: bytes, fmt: str) -> tuple[dict[str, Any], int]:
    """Parse and check a header; return its JSON and the offset where the data starts."""
    fixed = len(magic) + _LENGTH.size
    if payload.nbytes < fixed:
        raise corrupt(fmt, f"payload is truncated: {payload.nbytes} bytes, shorter than a header")
    found = bytes(payload[: len(magic)])
    if found != magic:
        raise corrupt(
            fmt,
            f"bad magic bytes {found!r} (expected {magic!r}): not an nbdurable {fmt} payload",
        )
    (length,) = _LENGTH.unpack(payload[len(magic) : fixed])
    if fixed + length > payload.nbytes:
        raise corrupt(
            fmt,
            f"payload is truncated inside its header ({payload.nbytes} bytes, header needs {fixed + length})",
        )
    try:
        meta = json.loads(bytes(payload[fixed : fixed + length]))
    except ValueError as exc:
        raise corrupt(fmt, f"header is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt or not isinstance(meta.get("version"), int):
        raise corrupt(fmt, f"header does not describe a {fmt} payload: {meta!r:.200}")
    check_version(fmt, meta["version"])
    return meta, fixed + length + pad_to(fixed + length)


def check_version(fmt: str, version: int) -> None:
    """Refuse payloads written by a newer nbdurable rather than misreading them."""
    if version > FORMAT_VERSION:
        raise StoreFormatError(
            f"this {fmt} object was written by a newer nbdurable (format version {version}; "
            f"this one reads up to {FORMAT_VERSION})",
            hint=_UPGRADE_HINT,
        )
    if version < 1:
        raise StoreFormatError(
            f"this {fmt} object has an invalid format version {version}",
            hint=_CORRUPT_HINT,
        )


def unknown_format(fmt: str) -> StoreFormatError:
    return StoreFormatError(
        f"unknown object format {fmt!r}: it was probably written by a newer nbdurable",
        hint=_UPGRADE_HINT,
    )


def corrupt(fmt: str, what: str) -> CorruptObjectError:
    return CorruptObjectError(f"cannot read {fmt} object: {what}", hint=_CORRUPT_HINT)


def writable(payload: Payload) -> bytearray | memoryview:
    """The payload as something writable to build objects on (a copy only if it is read-only).

    Restored arrays are views into the payload; a read-only one (``bytes``) would give read-only arrays
    where the user had writable ones, so it is copied once. The store passes a bytearray: no copy.
    """
    if isinstance(payload, bytearray):
        return payload
    view = byte_view(payload)
    return bytearray(view) if view.readonly else view
