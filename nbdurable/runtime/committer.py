"""Step commits, in order, with big objects written in the background.

A cell that produced a 1 GiB array should not sit blocked while the array reaches the disk. When a
step's delta holds a big payload, the step is *snapshotted* (the serializer copies live buffers, or
takes a copy-on-write view of a DataFrame) and its commit — object files first, fsync'ed, then the
``step_end`` record — runs on one background thread while the notebook goes on. Commits stay in step
order: once anything is queued, every later commit queues behind it.

What this means for a crash: a step is durable once its commit record is written. A process killed
while a big commit is still in flight has no record for that step, so a resume re-executes it — the
same as a crash during the cell itself. ``drain`` (called by ``finish``) waits for everything.

Memory is bounded: at most ``MAX_BIG_IN_FLIGHT`` snapshots of big payloads exist at once (a further big
step waits for the oldest to be written), and a payload too big to copy comfortably is committed in the
foreground instead. A step takes a slot by what its commit will write (``DurableRun._new_bytes``), and a
snapshot is allowed by the whole size of what it may copy: a DataFrame whose columns an earlier commit was
given writes only its new columns, so a cell that renames a column of a big frame queues behind the writes
like a small step (a copy-on-write view, or a copy checked against free memory without copy-on-write),
instead of waiting ~40 ms for a slot (bench/notebooks/update_by_column). Four slots, not two: in that notebook the
third cell waited ~75 ms for the first one's write with two; the writer then catches up during the cells
that compute. A snapshot of a DataFrame is a copy-on-write view: it costs memory only when the
notebook changes the frame in place before the write ends.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

ASYNC_MIN_BYTES = 16 * 2**20  # payloads at least this big are written in the background
MAX_BIG_IN_FLIGHT = 4


def available_memory() -> int:
    """Bytes of physical memory currently available (0 if the platform does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


class Committer:
    """Runs commit jobs in submission order: in the caller's thread when nothing is pending,
    else on a background thread. Errors of background jobs are raised by the next call."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.Queue[tuple[Callable[[], None], bool] | None] = queue.Queue()
        self._big = threading.BoundedSemaphore(MAX_BIG_IN_FLIGHT)
        self._lock = threading.Lock()
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def can_defer(self, written: int, size: int) -> bool:
        """Whether a commit that will write ``written`` bytes goes to the background, on a snapshot of payloads
        of ``size`` bytes (``can_copy``)."""
        return written >= ASYNC_MIN_BYTES and self.can_copy(size)

    @staticmethod
    def can_copy(size: int) -> bool:
        """Whether a snapshot of payloads of ``size`` bytes may be taken (it may copy them all)."""
        return size * 4 <= available_memory()

    @property
    def busy(self) -> bool:
        """Whether commits are pending: a job given to ``run`` now would run later, on the background thread
        (so what it writes must no longer depend on memory the notebook may change: ``Serialized.snapshot``)."""
        with self._lock:
            return self._pending > 0

    def run(self, job: Callable[[], None]) -> None:
        """Commit now if nothing is pending (keeps order), else queue behind the pending commits."""
        self.raise_error()
        with self._lock:
            if self._pending == 0:
                job()
                return
            self._pending += 1
        self._jobs.put((job, False))

    def defer(self, job: Callable[[], None]) -> None:
        """Queue a commit holding a big snapshot (waits while MAX_BIG_IN_FLIGHT are not yet written)."""
        self.raise_error()
        self._big.acquire()
        with self._lock:
            self._pending += 1
            self._start()
        self._jobs.put((job, True))

    def drain(self) -> None:
        """Wait until every queued commit is written; raise the first error of one that failed."""
        self._jobs.join()
        self.raise_error()

    def close(self) -> None:
        """Drain, then stop the background thread."""
        try:
            self.drain()
        finally:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread.join()
                self._thread = None

    def raise_error(self) -> None:
        """Re-raise (once) the error of a background commit that failed."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=f"nbdurable-commit-{self._name}", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                self._jobs.task_done()
                return
            job, big = item
            try:
                job()
            except BaseException as exc:  # reported to the notebook at its next commit
                if self._error is None:
                    self._error = exc
            finally:
                if big:
                    self._big.release()
                with self._lock:
                    self._pending -= 1
                self._jobs.task_done()
