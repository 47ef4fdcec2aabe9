"""Journals: one append-only file of self-checking records per run (``journals/<run_id>.jsonl``).

A line is ``<json>\\t<HMAC-SHA256 hex of the json bytes>\\n`` under the user's key (``auth.py``): a line
nobody holding the key wrote is never parsed. The JSON is compact and ASCII-only, so no raw tab or
newline can appear inside it and the last tab of a line always separates the tag.

A crash in the middle of a write leaves a *torn tail*: a last line without its newline, or a last line
that fails its check. Readers ignore it; ``Store.append_journal`` truncates it before appending. A bad
line with more data after it cannot come from a crash (the writer truncates a failed write back, see
``JournalWriter._write``), so it is reported as ``CorruptJournalError``.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import threading
import time
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import CorruptJournalError, RunNotFoundError, StoreError
from .auth import TAG_HEX_LEN, line_tag, line_tag_matches
from .crypto import open_line, seal_line

JOURNAL_SUFFIX = ".jsonl"

# One encoder instance: json.dumps with keyword arguments builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_CHECK_LEN = TAG_HEX_LEN
_TAB = 0x09


# ----------------------------------------------------------------------------------------------------
# Shared helpers (also used by objects.py and lease.py)


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is safe as a file name (letters, digits, ``._-``), else raise ValueError."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' (max 200)")
    return run_id


def is_run_id(run_id: str) -> bool:
    """True if ``run_id`` is a well-formed run id."""
    return isinstance(run_id, str) and _RUN_ID_RE.fullmatch(run_id) is not None


def _mtime_ns(path: pathlib.Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


def fsync_dir(path: pathlib.Path) -> None:
    """fsync a directory so that a file created or renamed in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def io_error(exc: OSError, doing: str, where: pathlib.Path) -> StoreError:
    """A StoreError that says what failed and what to do, for an OSError raised while ``doing``."""
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full while {doing} ({where})",
                          hint="free space on the disk that holds the store, then retry")
    if exc.errno == errno.EDQUOT:
        return StoreError(f"disk quota exceeded while {doing} ({where})",
                          hint="free space or raise your quota, then retry")
    if exc.errno == errno.EFBIG:
        # A file-size limit: the process's (`ulimit -f`, RLIMIT_FSIZE) or the file system's largest file.
        return StoreError(
            f"disk full for this file while {doing} ({where}): it is larger than this process's file-size limit "
            "(`ulimit -f`) or the largest file its file system allows",
            hint="raise the limit (`ulimit -f unlimited` before starting Jupyter) or point NBDURABLE_STORE at a "
            "file system that takes bigger files, then retry",
        )
    if exc.errno == errno.EROFS:
        return StoreError(f"the store is on a read-only file system ({where})",
                          hint="point NBDURABLE_STORE at a writable directory")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoreError(
            f"permission denied while {doing} ({where}): the store is not writable by this process",
            hint="check the owner and mode of the store directory, or point NBDURABLE_STORE at a writable directory",
        )
    return StoreError(f"I/O error while {doing} ({where}): {exc.strerror or exc}",
                      hint="check the disk and retry; `nbdurable check` verifies the store")


# ----------------------------------------------------------------------------------------------------
# Line format


def encode_line(record: dict[str, Any]) -> bytes:
    """Serialize one record as a journal line (JSON, tab, authentication tag, newline)."""
    body = seal_line(_ENCODER.encode(record).encode("ascii"))  # encrypted if a key is set (crypto.py)
    return body + b"\t" + line_tag(body) + b"\n"


def _checked_body(line: bytes) -> bytes | None:
    """The JSON bytes of a line (without its newline) whose tag authenticates it, else None (a torn write,
    damage, tampering, or another user's key)."""
    if len(line) <= _CHECK_LEN + 1 or line[-_CHECK_LEN - 1] != _TAB:
        return None
    body = line[: -_CHECK_LEN - 1]
    if not line_tag_matches(body, line[-_CHECK_LEN:]):
        return None
    return open_line(body)


def read_signed_file(path: pathlib.Path) -> dict[str, Any] | None:
    """The JSON object of a one-line authenticated file (a claim, a definition, a cancel request), else None:
    no such file, a torn or damaged line, one that fails its tag, or not an object."""
    try:
        line = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    body = _checked_body(line[:-1]) if line.endswith(b"\n") else None
    try:
        record = json.loads(body.decode("utf-8")) if body is not None else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_records(path: str | os.PathLike[str], offset: int = 0) -> tuple[list[dict[str, Any]], int, bool]:
    """Read the valid records of a journal from byte ``offset`` (which must start a line).

    Returns ``(records, end_offset, torn_tail)``: ``end_offset`` is just after the last valid complete line
    (where the next incremental read starts), ``torn_tail`` tells whether bytes after it were ignored as a
    torn write. A bad line followed by more data raises CorruptJournalError naming the file and line.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    lines = data.split(b"\n")
    partial = lines.pop()  # after the last newline: b"" for a clean end, else a line cut short
    bodies: list[bytes] = []
    end = offset
    for index, line in enumerate(lines):
        body = _checked_body(line)
        if body is None:
            if index == len(lines) - 1 and not partial:
                return _parse(path, offset, data, bodies), end, True  # last line failing its check: torn
            why = ("fails authentication (damaged, tampered with, or written under another key)" if b"\t" in line
                   else "no tag")
            raise _corrupt(path, offset, data, end - offset, f"{why}, and more lines follow (not a torn write)")
        bodies.append(body)
        end += len(line) + 1
    return _parse(path, offset, data, bodies), end, bool(partial)


def _parse(path: str | os.PathLike[str], offset: int, data: bytes, bodies: list[bytes]) -> list[dict[str, Any]]:
    """Decode checked bodies. One json.loads of them all as an array: ~40% faster than one call per line."""
    try:
        records = json.loads(b"[" + b",".join(bodies) + b"]")
        if len(records) == len(bodies) and all(type(r) is dict for r in records):
            return records  # type: ignore[no-any-return]
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the interpreter's recursion limit
        pass
    # Some authenticated body is not a JSON object: not a torn write but a writer bug. Find and name it.
    records, pos = [], 0
    for body in bodies:
        try:
            # Decoded as UTF-8 like the array above: json.loads(bytes) would take b'{\x00}\x00' for UTF-16.
            record = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            raise _corrupt(path, offset, data, pos, "authenticated but the content is not a JSON object")
        records.append(record)
        pos += len(body) + _CHECK_LEN + 2
    return records


def _corrupt(path: str | os.PathLike[str], offset: int, data: bytes, pos: int, why: str) -> CorruptJournalError:
    """The error for a bad line at ``pos`` in ``data`` read from ``offset``; counts lines (error path only)."""
    before = 0
    if offset:
        with open(path, "rb") as f:
            before = f.read(offset).count(b"\n")
    line_no = before + data.count(b"\n", 0, pos) + 1
    err = CorruptJournalError(
        f"journal {os.fspath(path)} is damaged at line {line_no}: {why}",
        hint=f"run `nbdurable check` to inspect and repair it; the {line_no - 1} records before line {line_no} "
        "are intact",
    )
    err.path = os.fspath(path)  # type: ignore[attr-defined]
    err.line = line_no  # type: ignore[attr-defined]
    return err


# ----------------------------------------------------------------------------------------------------
# Writer


# Open writers of this process by journal path: two writers on one journal would number records twice.
_open_writers: weakref.WeakValueDictionary[str, JournalWriter] = weakref.WeakValueDictionary()


def _claim(path: pathlib.Path, run_id: str) -> None:
    writer = _open_writers.get(str(path))
    if writer is not None and not writer.closed:
        raise StoreError(
            f"the journal of run {run_id} is already open for writing in this process",
            hint="append through the JournalWriter that is open, or close it first",
        )


class _Flusher(threading.Thread):
    """fdatasyncs one journal whenever woken; stopped (and joined) before its descriptor is closed."""

    def __init__(self, fd: int, run_id: str) -> None:
        super().__init__(name=f"nbdurable-journal-flush-{run_id}", daemon=True)
        self.fd = fd
        self.wake = threading.Event()
        self.error: OSError | None = None
        self._stopping = False

    def run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            if self._stopping:
                return
            try:
                _fdatasync(self.fd)
            except OSError as exc:  # reported to the writer's next caller
                self.error = exc

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()
        self.join()


class JournalWriter:
    """Appends records to one run's journal. One line = one ``os.write`` on an ``O_APPEND`` descriptor."""

    def __init__(self, run_id: str, path: pathlib.Path, fd: int, *, last_seq: int, size: int) -> None:
        self.run_id = run_id
        self.path = path
        self._fd = fd
        self._seq = last_seq
        self._size = size  # bytes of valid content: a failed write is truncated back to it
        self._lock = threading.Lock()  # seq numbering and the write must not interleave across threads
        self._flusher: _Flusher | None = None
        _open_writers[str(path)] = self

    @property
    def seq(self) -> int:
        """The sequence number of the last record appended (0 for an empty journal)."""
        return self._seq

    def append(self, record: dict[str, Any], *, sync: bool = False) -> int:
        """Append ``record``; set its ``seq`` (and ``ts`` if absent); fdatasync if ``sync``. Returns the seq."""
        with self._lock:
            if self._fd < 0:
                raise StoreError(f"the journal writer of run {self.run_id} is closed",
                                 hint="reopen it with Store.append_journal(run_id)")
            seq = self._seq + 1
            had_ts = "ts" in record
            record["seq"] = seq
            if not had_ts:
                record["ts"] = time.time()
            try:
                line = encode_line(record)
            except (TypeError, ValueError):
                # Not serializable: leave the record as it was, the seq unused, and let the bug surface.
                del record["seq"]
                if not had_ts:
                    del record["ts"]
                raise
            self._raise_flush_error()
            self._write(line)
            if sync:
                self._datasync()
            self._seq = seq
            return seq

    def sync_soon(self) -> None:
        """Group commit: fdatasync everything appended so far on a background flusher thread.

        The record is already in the page cache, so a process crash (kill -9, OOM) loses nothing; the
        flusher makes it survive a power loss a moment later, off the caller's critical path. (A
        synchronous fdatasync per step queues behind IPython's own history-database fsyncs and tripled
        the cost of a trivial cell.) A failed background sync is raised by the next append or sync."""
        with self._lock:
            if self._fd < 0:
                return
            if self._flusher is None:
                self._flusher = _Flusher(self._fd, self.run_id)
                self._flusher.start()
            self._flusher.wake.set()

    def _raise_flush_error(self) -> None:
        if self._flusher is not None and self._flusher.error is not None:
            exc, self._flusher.error = self._flusher.error, None
            raise io_error(exc, f"syncing the journal of run {self.run_id}", self.path) from exc

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None

    def _write(self, line: bytes) -> None:
        try:
            written = os.write(self._fd, line)
            while written < len(line):  # short writes happen when the disk fills up or a signal lands
                written += os.write(self._fd, memoryview(line)[written:])
        except OSError as exc:
            # Cut the partial line off: left in place, the next append would turn it into a corrupt middle line.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise io_error(exc, f"appending to the journal of run {self.run_id}", self.path) from exc
        self._size += len(line)

    def _datasync(self) -> None:
        try:
            _fdatasync(self._fd)
        except OSError as exc:
            raise io_error(exc, f"syncing the journal of run {self.run_id}", self.path) from exc

    def sync(self) -> None:
        """fdatasync the journal: every record appended so far survives a crash or power loss."""
        with self._lock:
            if self._fd >= 0:
                self._raise_flush_error()
                self._datasync()

    def close(self) -> None:
        """Close the journal (idempotent). Waits for a background sync in progress; does not sync
        itself: append the last record with ``sync=True``."""
        with self._lock:
            self._stop_flusher()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    @property
    def closed(self) -> bool:
        """True once ``close`` has been called."""
        return self._fd < 0

    def __del__(self) -> None:
        # A writer dropped without close() must not leak its descriptor (nor sync a reused one).
        if getattr(self, "_flusher", None) is not None:
            self._stop_flusher()
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<JournalWriter run={self.run_id} seq={self._seq}{' closed' if self.closed else ''}>"


# ----------------------------------------------------------------------------------------------------
# Store methods


class JournalsMixin:
    """The journal half of ``Store``."""

    path: pathlib.Path

    if TYPE_CHECKING:

        def _check_not_driven_elsewhere(self, run_id: str) -> None: ...

    def journal_path(self, run_id: str) -> pathlib.Path:
        """Path of a run's journal file (it may not exist). ValueError for a malformed run id."""
        return self.path / "journals" / (check_run_id(run_id) + JOURNAL_SUFFIX)

    def _existing_journal(self, run_id: str) -> pathlib.Path:
        if is_run_id(run_id):
            path = self.journal_path(run_id)
            if path.is_file():
                return path
        raise RunNotFoundError(f"no run {run_id!r} in the store {self.path}",
                               hint="`nbdurable runs` lists the run ids of this store")

    def new_journal(self, run_id: str) -> JournalWriter:
        """Create the journal of a new run (exclusively: an existing journal raises StoreError)."""
        path = self.journal_path(run_id)
        _claim(path, run_id)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise StoreError(
                f"a journal for run {run_id} already exists in {self.path}",
                hint="start the run with a new run id, or use Store.append_journal to add to it",
            ) from None
        except OSError as exc:
            raise io_error(exc, f"creating the journal of run {run_id}", path) from exc
        try:
            fsync_dir(path.parent)  # the new directory entry must survive a crash along with the records
        except OSError as exc:
            os.close(fd)
            raise io_error(exc, f"creating the journal of run {run_id}", path) from exc
        return JournalWriter(run_id, path, fd, last_seq=0, size=0)

    def append_journal(self, run_id: str) -> JournalWriter:
        """Reopen an existing journal to append: truncate a torn tail, continue the seq numbering.

        Raises RunNotFoundError if it does not exist, LeaseHeldError if another live process drives the run.
        """
        path = self._existing_journal(run_id)
        self._check_not_driven_elsewhere(run_id)
        _claim(path, run_id)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            records, end, torn = read_records(path)
            if torn:
                os.ftruncate(fd, end)
                _fdatasync(fd)
        except BaseException:
            os.close(fd)
            raise
        last_seq = int(records[-1].get("seq", len(records))) if records else 0
        return JournalWriter(run_id, path, fd, last_seq=last_seq, size=end)

    def read_journal(self, run_id: str) -> list[dict[str, Any]]:
        """All valid records of a run's journal (a torn last line is ignored)."""
        return read_records(self._existing_journal(run_id))[0]

    def journal_head(self, run_id: str) -> dict[str, Any] | None:
        """The first record of a run's journal (its ``run`` record), reading only its first line.

        None if the journal is empty or its first line is not complete and valid yet. Lets a runner
        choose the run to resume without opening the catalog."""
        with open(self._existing_journal(run_id), "rb") as f:
            line = f.readline()
        body = _checked_body(line[:-1]) if line.endswith(b"\n") else None
        try:
            record = json.loads(body.decode("utf-8")) if body is not None else None
        except (ValueError, RecursionError):  # authenticated but not JSON: read_records reports it as corrupt
            record = None
        return record if isinstance(record, dict) else None

    def journal_exists(self, run_id: str) -> bool:
        """True if the run has a journal in this store."""
        return is_run_id(run_id) and self.journal_path(run_id).is_file()

    def journal_sizes(self, run_ids: list[str]) -> dict[str, int]:
        """A mark per run that grows with its journal (its size in bytes); runs without a journal left out."""
        sizes = {}
        for run_id in run_ids:
            try:
                sizes[run_id] = os.stat(self.journal_path(run_id)).st_size
            except FileNotFoundError:
                continue
        return sizes

    def change_marks(self) -> tuple[int, int]:
        """Two cheap marks: the first changes when a run is created or a finished run's journal reopened, the
        second when an event arrives (the ``journals`` and ``events`` directories' mtimes)."""
        return _mtime_ns(self.path / "journals"), _mtime_ns(self.path / "events")

    def run_ids(self) -> list[str]:
        """The ids of all runs with a journal, sorted ascending."""
        return sorted(run_id for run_id, _ in self._journal_entries())

    def _journal_entries(self) -> Iterator[tuple[str, int]]:
        """(run_id, size in bytes) of every journal, unsorted; for the catalog's incremental ingest."""
        with os.scandir(self.path / "journals") as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(JOURNAL_SUFFIX) and is_run_id(run_id := name[: -len(JOURNAL_SUFFIX)]):
                    try:
                        yield run_id, entry.stat().st_size
                    except FileNotFoundError:
                        continue  # deleted while listing


__all__ = ["JournalWriter", "JournalsMixin", "read_records", "encode_line", "check_run_id"]
