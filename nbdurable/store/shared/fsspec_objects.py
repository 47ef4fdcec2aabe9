"""Objects of a shared store on any fsspec file system (``NBDURABLE_OBJECTS``: ``file://``, ``memory://``,
``s3://``, ``gs://``...), laid out as a local store's: ``<root>/objects/<key[:2]>/<key[2:]>``.

Content-addressed and written once: an object is written to a local temporary file (tagged while it is
written, as ``objects.py`` does), then uploaded unless its key is present: on a local file system into
``<root>/tmp`` and renamed into place; elsewhere in one ``put`` (an S3/GCS object appears whole or not at
all). Its tag is checked on read as for a local store (``ObjectsMixin._authenticate``). DuckDB reads
Parquet objects through ``object_path``: the file itself on a local file system, else a copy downloaded
once into the store's local cache directory.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, cast

from ...errors import ObjectNotFoundError, StoreError
from ..auth import Tagger
from ..crypto import open_object
from ..objects import ObjectsMixin, _TagSink, _unlink_quiet, _WholeWriteFile, check_key
from .pg import redact

_KEY_TAIL_RE = re.compile(r"[0-9a-f]{30}")


def object_filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, root path in it) of an objects URL; StoreError if fsspec cannot open it."""
    try:
        import fsspec
    except ImportError as exc:
        raise StoreError("a shared store's objects need fsspec", hint="pip install 'nbdurable[postgres]'") from exc
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise StoreError(f"cannot open the objects location {redact(url)}: {exc}",
                         hint="set NBDURABLE_OBJECTS to an fsspec URL (file:///dir, s3://bucket/prefix...) whose "
                         "package is installed (s3fs for s3://: pip install 'nbdurable[s3]')") from None
    return fs, root.rstrip("/")


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


class FsspecObjectsMixin(ObjectsMixin):
    """The object half of ``SharedStore``: ``ObjectsMixin``'s rules on an fsspec file system."""

    path: pathlib.Path  # the local cache directory (temporary files, downloaded copies)
    objects_url: str
    _fs: Any
    _root: str

    def _remote(self, key: str) -> str:
        check_key(key)
        return f"{self._root}/objects/{key[:2]}/{key[2:]}"

    def object_path(self, key: str) -> pathlib.Path:
        """A local file holding the object (for DuckDB's read_parquet): the object's own file on a local
        file system, else a copy downloaded once into the cache."""
        remote = self._remote(key)
        if _is_local(self._fs):
            return pathlib.Path(remote)
        cached = self.path / "objects" / key
        if not cached.exists():
            cached.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.path / "tmp" / f"{key}.{os.getpid()}.download"
            try:
                self._fs.get_file(remote, str(tmp))
            except FileNotFoundError:
                return cached  # missing: the reader reports it as a missing file
            os.replace(tmp, cached)
        return cached

    def has_object(self, key: str) -> bool:
        return bool(self._fs.exists(self._remote(key)))

    def touch_object(self, key: str) -> bool:
        """Mark an object as freshly referenced where the file system can (local); False if it is missing."""
        remote = self._remote(key)
        if _is_local(self._fs):
            try:
                os.utime(remote)
            except FileNotFoundError:
                return False
            return True
        return bool(self._fs.exists(remote))

    def object_size(self, key: str) -> int:
        try:
            return int(self._fs.size(self._remote(key)))
        except FileNotFoundError:
            raise self._not_found(key) from None

    def object_mtime(self, key: str) -> float:
        """When an object was last written or touched (unix seconds); FileNotFoundError if it is missing."""
        remote = self._remote(key)
        if _is_local(self._fs):
            return os.stat(remote).st_mtime
        try:
            return float(self._fs.modified(remote).timestamp())
        except (NotImplementedError, AttributeError):
            self._fs.size(remote)  # FileNotFoundError if missing
            return 0.0  # no modification time: old enough

    def write_object(self, key: str, write: Callable[[BinaryIO], int | None]) -> tuple[int, str]:
        """Store an object unless it exists; return its size and authentication tag (``ObjectsMixin``)."""
        remote = self._remote(key)
        if self._fs.exists(remote):
            sink = _TagSink()
            self._write_content(key, cast(BinaryIO, sink), write)  # the tag of our bytes, never of the file's
            self.touch_object(key)
            return int(self._fs.size(remote)), sink.tagger.hexdigest()
        fd, tmp = tempfile.mkstemp(prefix=key + ".", suffix=".tmp", dir=self.path / "tmp")
        try:
            with _WholeWriteFile(fd, "wb", closefd=True) as f:
                f.tagger = Tagger()
                self._write_content(key, cast(BinaryIO, f), write)
                size = os.fstat(fd).st_size
                if _is_local(self._fs):
                    os.fsync(fd)
                tag = f.tag()
            self._upload(tmp, remote, key)
        finally:
            _unlink_quiet(tmp)
        return size, tag

    def put_object_file(self, key: str, local: str | os.PathLike[str]) -> None:
        """Upload an existing object file under its key unless present (migration)."""
        remote = self._remote(key)
        if not self._fs.exists(remote):
            self._upload(os.fspath(local), remote, key)

    def _upload(self, tmp: str, remote: str, key: str) -> None:
        try:
            if _is_local(self._fs):
                staging = f"{self._root}/tmp/{os.path.basename(tmp)}"
                self._fs.makedirs(os.path.dirname(staging), exist_ok=True)
                self._fs.makedirs(os.path.dirname(remote), exist_ok=True)
                shutil.copyfile(tmp, staging)
                with open(staging, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(staging, remote)
            else:
                self._fs.makedirs(os.path.dirname(remote), exist_ok=True)
                self._fs.put_file(tmp, remote)
        except OSError as exc:
            raise StoreError(f"cannot write object {key} to {redact(self.objects_url)}: {exc}",
                             hint="check the objects location (NBDURABLE_OBJECTS) and its credentials") from None

    def read_object(self, key: str, tag: str | None) -> bytearray | memoryview:
        """The whole content of an object once ``tag`` authenticates it (see ``ObjectsMixin.read_object``)."""
        if _is_local(self._fs):
            data = super()._read_object(key)
        else:
            try:
                data = bytearray(self._fs.cat_file(self._remote(key)))
            except FileNotFoundError:
                raise self._not_found(key) from None
        if tag is not None:
            self._authenticate(key, data, tag)
        return open_object(data, f"object {key}")

    def set_aside_object(self, key: str) -> pathlib.Path | None:
        """Move an object that failed to load out of its key's place (kept under ``<root>/tmp``)."""
        remote = self._remote(key)
        aside = f"{self._root}/tmp/{key}.damaged-{time.time_ns()}"
        try:
            self._fs.makedirs(os.path.dirname(aside), exist_ok=True)
            self._fs.mv(remote, aside)
        except FileNotFoundError:
            return None
        return pathlib.Path(aside)

    def object_keys(self) -> Iterator[str]:
        """Keys of all objects, in no particular order."""
        base = f"{self._root}/objects"
        try:
            fanouts = self._fs.ls(base, detail=False)
        except FileNotFoundError:
            return
        for fanout in fanouts:
            prefix = fanout.rstrip("/").rsplit("/", 1)[-1]
            if len(prefix) != 2:
                continue
            try:
                names = self._fs.ls(f"{base}/{prefix}", detail=False)
            except FileNotFoundError:
                continue
            for name in names:
                tail = name.rstrip("/").rsplit("/", 1)[-1]
                if _KEY_TAIL_RE.fullmatch(tail):
                    yield prefix + tail

    def delete_object(self, key: str) -> None:
        try:
            self._fs.rm_file(self._remote(key))
        except FileNotFoundError:
            pass

    def _sweep_tmp(self) -> None:
        """Remove this machine's cached downloads older than a day, and its leftover temporary files."""
        cutoff = time.time() - 24 * 3600
        for sub in ("tmp", "objects"):
            with os.scandir(self.path / sub) as entries:
                for entry in entries:
                    if entry.is_file() and entry.stat().st_mtime < cutoff:
                        _unlink_quiet(entry.path)

    def _not_found(self, key: str) -> ObjectNotFoundError:
        return ObjectNotFoundError(
            f"object {key} is missing from {redact(self.objects_url)}",
            hint="it may have been garbage-collected or the store copied partially; "
            "run `nbdurable check`, and re-execute the step that produced it")


__all__ = ["FsspecObjectsMixin", "object_filesystem"]
