"""Objects: content-addressed files ``objects/<key[:2]>/<key[2:]>``, written atomically.

An object is written to a temporary file in ``tmp/`` (same file system), fsync'ed and renamed into place,
so a reader sees either nothing or the whole object. Big payloads are written by the caller straight from
memoryviews into an unbuffered file: no copy on the way to the disk.

Every object is authenticated: ``write_object`` returns the HMAC-SHA256 of its bytes (``auth.py``), which
the caller keeps in the authenticated journal record that refers to it, and ``read_object(key, tag)``
checks it before handing the bytes over. Objects that unpickle (they run code) are always checked in
full, as is every object under 4 MiB. Bigger data objects (raw ndarray buffers, Parquet: loading them
runs no code) are mapped lazily and checked only when ``NBDURABLE_VERIFY_DATA=1`` (``nbdurable check``
always verifies every byte): checking costs about 0.6 s per GiB, and a restored 1 GiB array is otherwise
usable in a millisecond.
"""

from __future__ import annotations

import errno
import hmac
import io
import mmap
import os
import pathlib
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO, cast

from ..errors import AuthenticationError, CorruptObjectError, ObjectNotFoundError
from .auth import Tagger, object_tag
from .crypto import EncryptingFile, encryption_key, open_object
from .journal import fsync_dir, io_error

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer is 3.12+

_KEY_RE = re.compile(r"[0-9a-f]{32}")
_FANOUT_RE = re.compile(r"[0-9a-f]{2}")
MMAP_THRESHOLD = 4 * 2**20  # objects at least this big are memory-mapped by read_object
TMP_MAX_AGE_S = 24 * 3600  # temp files older than this are left over from a crashed writer


def check_key(key: str) -> str:
    """Return ``key`` if it is 32 lowercase hex characters, else raise ValueError."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid object key {key!r}: expected 32 lowercase hex characters (an xxh3-128 digest)")
    return key


CODE_MAGIC = b"NBDP"  # objects that unpickle: always authenticated in full before use
DELTA_MAGIC = b"NBDD"  # the changed pieces of a sub-object delta (may hold pickle bytes): always authenticated


class _TagSink:
    """A write-only "file" that only computes the tag of what is written (for content already stored)."""

    def __init__(self) -> None:
        self.tagger = Tagger()

    def write(self, data: Buffer) -> int:
        with memoryview(data) as view:
            self.tagger.update(view)
            return view.nbytes


class _WholeWriteFile(io.FileIO):
    """An unbuffered file whose ``write`` writes everything it is given.

    A raw ``FileIO.write`` is one write(2) call, which Linux caps at 2 GiB - 4 KiB: a caller writing a
    4 GiB memoryview in one call would silently lose the rest. This loops over the same buffer (no copy).
    With a ``tagger``, what is written is authenticated on another thread meanwhile (hashing and writing
    both release the GIL), so the tag costs about nothing on top of the disk's time: a big write slice by
    slice, each hashed while it is written; a small one copied and hashed while the caller goes on
    (``tag`` waits for the last).
    """

    tagger: Tagger | None = None
    _pending: Future[None] | None = None

    def write(self, b: Buffer, /) -> int:
        with memoryview(b) as view, view.cast("B") as data:
            tagger = self.tagger
            if tagger is None:
                self._write_all(data)
            elif len(data) < _PIPELINE_MIN:  # a copy: the caller may reuse its buffer once we return
                self._pending = _hash_soon(tagger, bytes(data))
                self._write_all(data)
            else:
                for start in range(0, len(data), _PIPELINE_SLICE):
                    piece = data[start : start + _PIPELINE_SLICE]
                    hashing = _hash_soon(tagger, piece)  # after any pending piece: one thread, FIFO
                    try:
                        self._write_all(piece)
                    finally:
                        hashing.result()
                self._pending = None
            return len(data)

    def tag(self) -> str:
        """The tag of everything written (once the hashing of the last piece is done)."""
        assert self.tagger is not None
        if self._pending is not None:
            self._pending.result()
        return self.tagger.hexdigest()

    def _write_all(self, data: memoryview) -> None:
        done = super().write(data) or 0
        while done < len(data):
            done += super().write(data[done:]) or 0


_PIPELINE_MIN = 8 * 2**20  # writes at least this big hash and write in parallel, slice by slice
_PIPELINE_SLICE = 32 * 2**20
_hashers: list[ThreadPoolExecutor] = []


def _hash_soon(tagger: Tagger, data: Buffer) -> Future[None]:
    """``tagger.update(data)`` on the hashing thread; in this thread once the interpreter is shutting down
    (``concurrent.futures`` refuses new work after its exit hook, which runs before ``atexit``'s: a session
    closed at exit still commits its last big step)."""
    try:
        return _hasher().submit(tagger.update, data)
    except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
        done: Future[None] = Future()
        tagger.update(data)
        done.set_result(None)
        return done


def _hasher() -> ThreadPoolExecutor:
    """One thread that authenticates slices while the writer writes them (created on first use)."""
    if not _hashers:
        _hashers.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbdurable-tag"))
    return _hashers[0]


def _unlink_quiet(path: str | pathlib.Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class ObjectsMixin:
    """The object half of ``Store``."""

    path: pathlib.Path

    def object_path(self, key: str) -> pathlib.Path:
        """Where an object's file lives (for DuckDB's read_parquet; it may not exist)."""
        check_key(key)
        return self.path / "objects" / key[:2] / key[2:]

    def has_object(self, key: str) -> bool:
        """True if the object's file exists."""
        return self.object_path(key).is_file()

    def touch_object(self, key: str) -> bool:
        """Mark an object as freshly referenced (gc spares recently touched objects); False if it is missing."""
        try:
            os.utime(self.object_path(key))
        except FileNotFoundError:
            return False
        return True

    def object_size(self, key: str) -> int:
        """Size in bytes of an object; ObjectNotFoundError if it is missing."""
        try:
            return self.object_path(key).stat().st_size
        except FileNotFoundError:
            raise self._not_found(key) from None

    def object_mtime(self, key: str) -> float:
        """When an object was last written or touched (unix seconds); FileNotFoundError if it is missing."""
        return self.object_path(key).stat().st_mtime

    def write_object(self, key: str, write: Callable[[BinaryIO], int | None]) -> tuple[int, str]:
        """Store an object unless it exists; return its size and its authentication tag (hex).

        ``write(f)`` writes the payload into ``f``, an unbuffered binary file (pass big memoryviews straight
        to ``f.write``: they reach the disk without a copy). The file is fsync'ed and renamed into place. On
        any exception the temporary file is removed and the exception re-raised (disk full, quota exceeded or a
        file-size limit -> StoreError).
        """
        final = self.object_path(key)
        try:
            size = final.stat().st_size  # content-addressed: same key, same bytes
            os.utime(final)  # a fresh reference: gc spares recently touched objects
        except FileNotFoundError:
            pass
        else:
            # The tag comes from our own bytes, never from the file (which anyone may have replaced).
            sink = _TagSink()
            self._write_content(key, cast(BinaryIO, sink), write)
            return size, sink.tagger.hexdigest()
        tmp_dir = self.path / "tmp"
        try:
            fd, tmp = tempfile.mkstemp(prefix=key + ".", suffix=".tmp", dir=tmp_dir)
        except OSError as exc:
            raise io_error(exc, f"creating a temporary file for object {key}", tmp_dir) from exc
        try:
            with _WholeWriteFile(fd, "wb", closefd=True) as f:
                f.tagger = Tagger()
                self._write_content(key, cast(BinaryIO, f), write)
                size = os.fstat(fd).st_size
                os.fsync(fd)
                tag = f.tag()
            self._place(tmp, final)
        except BaseException as exc:
            _unlink_quiet(tmp)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise io_error(exc, f"writing object {key}", final) from exc
            raise
        return size, tag

    @staticmethod
    def _write_content(key: str, f: BinaryIO, write: Callable[[BinaryIO], int | None]) -> None:
        """``write(f)``, through an encrypting layer when the store is encrypted (``crypto.py``)."""
        secret = encryption_key()
        if secret is None:
            write(f)
            return
        sealed = EncryptingFile(f, secret, key)
        write(cast(BinaryIO, sealed))
        sealed.finish()

    def _place(self, tmp: str, final: pathlib.Path) -> None:
        """Rename a synced temp file into place, making (and syncing) its fan-out directory as needed."""
        fanout = final.parent
        try:
            os.mkdir(fanout, 0o700)
            fsync_dir(fanout.parent)  # a new fan-out directory must itself survive a crash
        except FileExistsError:
            pass
        os.rename(tmp, final)
        fsync_dir(fanout)

    def read_object(self, key: str, tag: str | None) -> bytearray | memoryview:
        """The whole content of an object, writable, once ``tag`` (from the record that refers to it)
        authenticates it (see the module docstring; ``tag=None`` reads without checking, for tools that
        inspect a store, never for loading). Small objects are read into a bytearray; big ones
        memory-mapped copy-on-write, so a restored array is a view of the page cache (no zero-fill of
        fresh memory, no copy) and is read lazily. Safe because object files are only ever renamed
        into place or deleted (a deleted file stays mapped), never truncated or rewritten."""
        data = self._read_object(key)
        if tag is not None:
            self._authenticate(key, data, tag)
        return open_object(data, f"object {key}")

    def _authenticate(self, key: str, data: bytearray | memoryview, tag: str) -> None:
        lazy = len(data) >= MMAP_THRESHOLD and bytes(data[:4]) not in (CODE_MAGIC, DELTA_MAGIC)
        if lazy and os.environ.get("NBDURABLE_VERIFY_DATA") != "1":
            return  # a big data object: checked by `nbdurable check`, or here with NBDURABLE_VERIFY_DATA=1
        if not hmac.compare_digest(object_tag(data), tag):
            raise AuthenticationError(
                f"object {key} fails authentication: it was damaged, tampered with, or written under another key",
                hint="nothing of it was loaded; run `nbdurable check`, and re-execute the step that produced it",
            )

    def _read_object(self, key: str) -> bytearray | memoryview:
        path = self.object_path(key)
        try:
            f = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise self._not_found(key) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size >= MMAP_THRESHOLD:
                return memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY))
            buf = bytearray(size)
            got = 0
            with memoryview(buf) as view:
                while got < size:  # one read(2) returns at most 2 GiB - 4 KiB
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
        if got != size:
            raise CorruptObjectError(
                f"object {key} shrank while being read ({got} of {size} bytes)",
                hint="another process may be rewriting the store; retry, and run `nbdurable check` if it persists",
            )
        return buf

    def set_aside_object(self, key: str) -> pathlib.Path | None:
        """Move an object file that failed to load (truncated, overwritten) out of its key's place, so the
        step that produced it can store it again (``write_object`` keeps any file already under a key).
        It is kept in ``tmp/`` for a day, then swept like any leftover. Returns where it went (None if
        it was gone)."""
        aside = self.path / "tmp" / f"{key}.damaged-{time.time_ns()}"
        try:
            os.rename(self.object_path(key), aside)
        except FileNotFoundError:
            return None
        os.utime(aside)  # the sweep counts a day from now, not from when the object was written
        return aside

    def object_keys(self) -> Iterator[str]:
        """Keys of all objects in the store, in no particular order."""
        root = self.path / "objects"
        with os.scandir(root) as fanouts:
            prefixes = [e.name for e in fanouts if _FANOUT_RE.fullmatch(e.name) and e.is_dir()]
        for prefix in prefixes:
            try:
                names = os.listdir(root / prefix)
            except FileNotFoundError:
                continue
            for name in names:
                key = prefix + name
                if _KEY_RE.fullmatch(key):
                    yield key

    def delete_object(self, key: str) -> None:
        """Delete an object's file. Deleting a missing object is not an error (idempotent, for GC)."""
        _unlink_quiet(self.object_path(key))

    def _sweep_tmp(self) -> None:
        """Remove temporary files left by writers that crashed long ago (never a write in progress)."""
        cutoff = time.time() - TMP_MAX_AGE_S
        try:
            with os.scandir(self.path / "tmp") as entries:
                old = [e.path for e in entries if e.is_file() and e.stat().st_mtime < cutoff]
        except OSError:
            return
        for path in old:
            try:
                os.unlink(path)
            except OSError:
                pass

    def _not_found(self, key: str) -> ObjectNotFoundError:
        return ObjectNotFoundError(
            f"object {key} is missing from the store {self.path}",
            hint="it may have been garbage-collected or the store copied partially; "
            "run `nbdurable check`, and re-execute the step that produced it",
        )
