"""Group commit of events on a local store: a write-ahead segment, so that a batch of events becomes durable
with one ``fdatasync`` instead of two fsyncs per event (the event file and its directory).

Used by a process that receives many events at once (``nbdurable serve``, through ``Store.open_event_writer``).
``EventLog.write(events)``:

1. appends the events' authenticated lines (``encode_line``, as in an event file) to this writer's segment
   ``eventlog/<time>-<pid>-<random>.log`` and fdatasyncs it: from here the events are durable, and the caller
   may acknowledge them;
2. writes each event's file ``events/<id>.json`` with those same bytes (a temp file renamed into place, not
   fsync'ed): every reader (``Store.events``, triggers, waiting runs, the catalog) finds it at once.

A segment is closed after ``ROTATE_S`` seconds or ``ROTATE_EVENTS`` events, and a background thread
*checkpoints* it: fsyncs each of its event files and the ``events`` directory, then deletes it.

The writer holds an exclusive ``flock`` on each segment until its checkpoint deleted it. So a segment that no
process holds is one whose writer died first: ``recover_event_log`` (called by ``Store.open``: one listdir when
there is nothing to do) writes again, fsync'ed, every event file of it that is missing or fails its tag, then
deletes it. A killed server loses nothing even before that (its files are in the page cache); a machine that
lost power loses no event that was acknowledged. A line torn by a crash during the append was never
acknowledged and is ignored.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .events import _ID_RE, EVENT_SUFFIX, EventsMixin
from .journal import _checked_body, encode_line, fsync_dir, io_error

LOG_DIR = "eventlog"
SEGMENT_SUFFIX = ".log"
ROTATE_S = 2.0  # a segment's age before the next write starts a new one
ROTATE_EVENTS = 4096  # or its size in events
_SYNC_THREADS = 8  # a checkpoint's concurrent fsyncs: the file system commits them together


def _datasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


@dataclass
class _Segment:
    path: pathlib.Path
    fd: int
    opened: float
    files: list[pathlib.Path] = field(default_factory=list)


class EventLog:
    """One writer's segments (not thread-safe: one thread writes; checkpoints run on its own thread)."""

    def __init__(self, store: EventsMixin) -> None:
        self.store = store
        self.directory = store.path / LOG_DIR
        self._segment: _Segment | None = None
        self._checkpoints = ThreadPoolExecutor(1, thread_name_prefix="nbdurable-eventlog")
        self._syncs = ThreadPoolExecutor(_SYNC_THREADS, thread_name_prefix="nbdurable-eventsync")
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()

    def write(self, events: list[dict[str, Any]]) -> None:
        """Store ``events`` (made by ``events.new_event``) durably: StoreError if they may not be."""
        if not events:
            return
        lines = [(str(event["id"]), encode_line(event)) for event in events]
        segment = self._current()
        data = b"".join(line for _, line in lines)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(segment.fd, view):]
            _datasync(segment.fd)
        except OSError as exc:
            self._abandon(segment)  # its tail is unknown: the next write starts a new segment
            raise io_error(exc, f"storing {len(events)} event(s)", segment.path) from exc
        self.store.write_event_files(lines, durable=False)
        directory = self.store.path / "events"
        segment.files.extend(directory / f"{event_id}{EVENT_SUFFIX}" for event_id, _ in lines)
        if len(segment.files) >= ROTATE_EVENTS or time.monotonic() - segment.opened >= ROTATE_S:
            self._rotate()

    def close(self) -> None:
        """Checkpoint every segment (waiting for it): afterwards no segment of this writer is left."""
        self._rotate()
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        self._checkpoints.shutdown()
        self._syncs.shutdown()

    def _current(self) -> _Segment:
        if self._segment is None:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            path = self.directory / f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
                fsync_dir(self.directory)  # the segment's name must survive for its lines to
            except OSError as exc:
                raise io_error(exc, "starting an event log segment", path) from exc
            self._segment = _Segment(path, fd, time.monotonic())
        return self._segment

    def _rotate(self) -> None:
        segment, self._segment = self._segment, None
        if segment is None:
            return
        future = self._checkpoints.submit(self._checkpoint, segment)
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()] + [future]

    def _abandon(self, segment: _Segment) -> None:
        """Keep a segment that failed for ``recover_event_log`` (its lock released), and start afresh."""
        self._segment = None
        os.close(segment.fd)

    def _checkpoint(self, segment: _Segment) -> None:
        """Make the segment's event files durable, then delete it (its lock held until then)."""
        try:
            list(self._syncs.map(_fsync_file, segment.files))
            fsync_dir(self.store.path / "events")
            os.unlink(segment.path)
        except OSError:
            pass  # left for recover_event_log: nothing is lost, the next Store.open writes the files again
        finally:
            os.close(segment.fd)


def _fsync_file(path: pathlib.Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # deleted since (gc): nothing to keep
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_event_log(store: EventsMixin) -> int:
    """Write again the event files of every segment whose writer died before its checkpoint (fsync'ed), then
    delete those segments; segments a live writer holds are left alone. Returns how many files it wrote."""
    directory = store.path / LOG_DIR
    try:
        names = [n for n in os.listdir(directory) if n.endswith(SEGMENT_SUFFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    written = 0
    for name in sorted(names):
        path = directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # checkpointed meanwhile
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its writer is alive (or another process recovers it now)
                continue
            if os.fstat(fd).st_nlink == 0:  # checkpointed and deleted between our open and our lock
                continue
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
            written += _restore(store, data)
            os.unlink(path)
        except OSError as exc:
            raise io_error(exc, "recovering the events of an event log segment", path) from exc
        finally:
            os.close(fd)
    return written


def _restore(store: EventsMixin, data: bytes) -> int:
    """Write the event files of a segment's complete, authentic lines that are missing or damaged."""
    lines: list[tuple[str, bytes]] = []
    for raw in data.split(b"\n")[:-1]:  # the part after the last newline: torn, never acknowledged
        body = _checked_body(raw)
        try:
            event = json.loads(body.decode("utf-8")) if body is not None else None
        except (ValueError, RecursionError):
            event = None
        if (isinstance(event, dict) and _ID_RE.fullmatch(str(event.get("id")))
                and store.read_event(event["id"]) is None):
            lines.append((event["id"], raw + b"\n"))
    if lines:
        store.write_event_files(lines, durable=True)
    return len(lines)
