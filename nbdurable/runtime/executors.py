"""``nbd.map(fn, items, executor=...)``: the items run on a ``dask.distributed.Client`` or on any
``concurrent.futures.Executor``; the kernel keeps the journal.

``steps.map`` reserves every call's place and journals the beginnings in item order before anything runs
(as without an executor), then hands the calls that have no recorded result to ``run_items``, which
submits them in one batch (``client.map``; ``submit`` per item on other executors), lets the kernel
replay the recorded calls meanwhile, and commits each result as it comes back (the kernel's thread only
journals: on Dask a feeder thread gathers the finished results in batches). A kernel killed mid-map
therefore resumes by submitting only the missing items.

Shipping: Dask pickles the function with cloudpickle itself; for other executors (a process pool) the
function, each item and each outcome travel as ``serialization.ship`` bytes, so functions and classes
defined in the notebook arrive by value. A thread pool gets the objects themselves.

Failures: the worker-side wrapper (``_call``) catches what ``fn`` raises and sends it back as a value, so
Dask's own retries never run it again: the step's RetryPolicy decides, each attempt recorded by the
kernel, a retry submitted again after its delay. A Dask worker lost mid-task is Dask's to handle: the
scheduler runs the task on another worker (up to ``distributed.scheduler.allowed-failures`` times, 3 by
default; after that KilledWorker comes back as a failed attempt under the policy). A process pool whose
process died is broken for good (``BrokenProcessPool``): its items fail with ExecutorError.
"""

from __future__ import annotations

import functools
import heapq
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from nbdurable.errors import ExecutorError, OptionsError
from nbdurable.runtime.clock import clock, is_skipping
from nbdurable.runtime.deadline import deadline
from nbdurable.serialization import ship, unship

if TYPE_CHECKING:
    from nbdurable.runtime.steps import Attempts

Outcome = tuple[bool, Any]  # (True, result) or (False, the exception raised)
Pending = tuple[int, Any, "Attempts"]  # (item index, item, its attempts)
_POLL = 0.25  # seconds between checks for Ctrl-C while waiting for results


def is_dask_client(executor: object) -> bool:
    """Whether ``executor`` is a ``distributed.Client`` (by its type's module: Dask is not imported for others)."""
    cls = type(executor)
    return cls.__module__.split(".")[0] == "distributed" and cls.__name__ == "Client"


def check_executor(executor: object) -> None:
    """OptionsError unless ``executor`` can run items: a live Dask client or a ``concurrent.futures.Executor``."""
    if is_dask_client(executor):
        status = str(getattr(getattr(executor, "status", None), "value", getattr(executor, "status", "")))
        if status not in ("running", "connecting", "newly-created"):
            raise OptionsError(f"the Dask client given to nbd.map is {status or 'not running'}",
                               hint="connect one first: client = dask.distributed.Client(ADDRESS)")
        return
    if not isinstance(executor, Executor):
        raise OptionsError(
            f"nbd.map's executor must be a dask.distributed.Client or a concurrent.futures.Executor, "
            f"not {type(executor).__module__}.{type(executor).__qualname__}",
            hint="e.g. nbd.map(fn, items, executor=Client(address)) or executor=ProcessPoolExecutor(4); "
            "without executor, items run in threads (concurrency=N)",
        )


def _call(fn: Callable[[Any], Any], timeout: float | None, item: Any) -> Outcome:
    """One attempt, where the executor runs it: what ``fn`` raised comes back as a value."""
    try:
        with deadline(timeout):
            return True, fn(item)
    except Exception as exc:  # the kernel's retry policy decides, not the executor
        return False, exc
    except BaseException as exc:  # SystemExit, KeyboardInterrupt where it ran: an error of this item, not the kernel's
        return False, ExecutorError(f"an nbd.map item raised {type(exc).__name__}({exc}) where it ran",
                                    hint="raise an Exception to fail an item (the step's retry policy applies)")


@functools.lru_cache(maxsize=8)
def _function(data: bytes) -> Callable[[Any], Any]:
    return unship(data)  # type: ignore[no-any-return]


def _call_shipped(fn_data: bytes, timeout: float | None, item_data: bytes) -> bytes:
    """``_call`` for a process pool: function, item and outcome as ``ship`` bytes."""
    ok, value = _call(_function(fn_data), timeout, unship(item_data))
    try:
        return ship((ok, value))
    except Exception as exc:  # said in the kernel, as the item's error
        what = "result" if ok else f"exception ({type(value).__name__}: {value})"
        return ship((False, ExecutorError(
            f"the {what} of an nbd.map item could not be sent back from the executor: {type(exc).__name__}: {exc}",
            hint="return (and raise) objects that pickle; or run the map without executor, in threads")))


class _Backend:
    """How items are submitted to a ``concurrent.futures.Executor`` and their outcomes read."""

    def __init__(self, executor: Any, fn: Callable[[Any], Any], timeout: float | None, name: str) -> None:
        self.executor, self.fn, self.timeout = executor, fn, timeout
        self.shipped = not isinstance(executor, ThreadPoolExecutor)
        self.fn_data = ship(fn) if self.shipped else b""

    def submit(self, items: list[Any]) -> list[Any]:
        """Futures for ``items`` (ExecutorError when the executor refuses them)."""
        try:
            return self._submit(items)
        except Exception as exc:
            raise ExecutorError(f"nbd.map could not submit its items to {type(self.executor).__name__}: "
                                f"{type(exc).__name__}: {exc}",
                                hint="check the executor (is it shut down? does the function pickle?)") from exc

    def _submit(self, items: list[Any]) -> list[Any]:
        if self.shipped:
            return [self.executor.submit(_call_shipped, self.fn_data, self.timeout, ship(item)) for item in items]
        return [self.executor.submit(_call, self.fn, self.timeout, item) for item in items]

    def watch(self, index: int, future: Any, done: queue.SimpleQueue[tuple[int, Any, Any]]) -> None:
        """Put ``(index, future, payload)`` on ``done`` once ``future`` finished."""
        future.add_done_callback(lambda f: done.put((index, f, None)))

    def outcome(self, future: Any, payload: Any) -> Outcome:
        """The outcome of a finished future."""
        try:
            value = future.result()
        except BaseException as exc:  # a broken pool, a cancelled future
            return False, ExecutorError(
                f"the executor could not run an nbd.map item: {type(exc).__name__}: {exc}",
                hint="a process pool whose process died is broken: create a new one and run the cell again "
                "(completed items are not run again)")
        return unship(value) if self.shipped else value  # type: ignore[no-any-return]

    def cancel(self, futures: list[Any]) -> None:
        for future in futures:
            future.cancel()

    def close(self) -> None:
        """Stop whatever the backend started."""


class _DaskBackend(_Backend):
    """A Dask client: one ``client.map`` per batch; a feeder thread follows the tasks as they finish
    (``as_completed``) and gathers each batch of results in one request, so the kernel's thread only journals."""

    def __init__(self, executor: Any, fn: Callable[[Any], Any], timeout: float | None, name: str) -> None:
        import distributed

        self.executor, self.fn, self.timeout, self.shipped = executor, fn, timeout, False
        self.token, self.batch = f"nbd.map-{name}-{uuid.uuid4().hex[:8]}", 0
        self.completed: Any = distributed.as_completed([], loop=executor.loop)  # type: ignore[no-untyped-call]
        self.indexes: dict[Any, int] = {}  # a future's key -> its item's index
        self.done: queue.SimpleQueue[tuple[int, Any, Any]] | None = None
        self.stopped = threading.Event()
        self.feeder: threading.Thread | None = None

    def _submit(self, items: list[Any]) -> list[Any]:
        self.batch += 1
        keys = [f"{self.token}-{self.batch}-{i}" for i in range(len(items))]
        return list(self.executor.map(functools.partial(_call, self.fn, self.timeout), items, key=keys, pure=False,
                                      retries=0))  # fn's exceptions come back as values: nothing for Dask to retry

    def watch(self, index: int, future: Any, done: queue.SimpleQueue[tuple[int, Any, Any]]) -> None:
        self.indexes[future.key], self.done = index, done
        self.completed.add(future)
        if self.feeder is None:
            self.feeder = threading.Thread(target=self._feed, args=(done,), name="nbdurable-map-dask", daemon=True)
            self.feeder.start()

    def _feed(self, done: queue.SimpleQueue[tuple[int, Any, Any]]) -> None:
        while not self.stopped.is_set():
            try:
                batch = self.completed.next_batch(block=True)
            except StopIteration:  # nothing in flight (retries waiting for their delay)
                self.stopped.wait(0.02)
                continue
            for future, payload in zip(batch, self._results(batch), strict=True):
                done.put((self.indexes[future.key], future, payload))

    def _results(self, batch: list[Any]) -> list[Any]:
        """The finished futures' results in one request; for the others, their exception."""
        finished = [f for f in batch if f.status == "finished"]
        try:
            gathered = dict(zip(finished, self.executor.gather(finished), strict=True)) if finished else {}
        except Exception:  # a result lost on the way (its worker died): each on its own, Dask recomputes it
            gathered = {}
        return [gathered[f] if f in gathered else _result_or_exception(f) for f in batch]

    def outcome(self, future: Any, payload: Any) -> Outcome:
        if isinstance(payload, tuple) and len(payload) == 2 and isinstance(payload[0], bool):
            return payload
        return False, payload if isinstance(payload, BaseException) else ExecutorError(
            f"the Dask task of an nbd.map item ended {future.status}")

    def cancel(self, futures: list[Any]) -> None:
        self.executor.cancel(futures)

    def close(self) -> None:
        self.stopped.set()


def _result_or_exception(future: Any) -> Any:
    """A Dask future's result, or the exception it ended with (KilledWorker after too many lost workers)."""
    try:
        return future.result()
    except BaseException as exc:  # a cancelled or failed task
        return exc


def run_items(executor: Any, fn: Callable[[Any], Any], pending: list[Pending], *, name: str,
              meanwhile: Callable[[], None] = lambda: None) -> dict[int, Outcome]:
    """Run the ``pending`` calls on ``executor``: each index's final outcome, every attempt recorded through its
    ``Attempts`` (in the calling thread). ``meanwhile`` runs once the items are submitted (the replays)."""
    if not pending:
        meanwhile()
        return {}
    kind = _DaskBackend if is_dask_client(executor) else _Backend
    batch = _Batch(kind(executor, fn, pending[0][2].timeout, name), pending)
    try:
        batch.submit([index for index, _, _ in pending])
        meanwhile()
        while batch.live or batch.retries:
            batch.settle(_wait(batch.done, batch.retries))
            batch.submit(batch.due())
    except BaseException:
        batch.backend.cancel(list(batch.live.values()))
        raise
    finally:
        batch.backend.close()
    return batch.results


class _Batch:
    """The calls of one map in flight: their futures, the retries waiting for their delay, the final outcomes."""

    def __init__(self, backend: _Backend, pending: list[Pending]) -> None:
        self.backend = backend
        self.by_index = {index: (item, attempts) for index, item, attempts in pending}
        self.done: queue.SimpleQueue[tuple[int, Any, Any]] = queue.SimpleQueue()  # (index, future, payload)
        self.live: dict[int, Any] = {}  # index -> the future of its current attempt
        self.retries: list[tuple[float, int]] = []  # heap of (when, index): attempts to submit again
        self.results: dict[int, Outcome] = {}

    def submit(self, indexes: list[int]) -> None:
        if not indexes:
            return
        for index in indexes:
            self.by_index[index][1].start()
        for index, future in zip(indexes, self.backend.submit([self.by_index[i][0] for i in indexes]), strict=True):
            self.live[index] = future
            self.backend.watch(index, future, self.done)

    def settle(self, ready: list[tuple[int, Any, Any]]) -> None:
        """Record the finished attempts: a result commits its call, an error fails it or schedules a retry."""
        for index, future, payload in ready:
            if self.live.get(index) is not future:
                continue
            del self.live[index]
            ok, value = self.backend.outcome(future, payload)
            attempts = self.by_index[index][1]
            if ok:
                self.results[index] = (True, attempts.succeeded(value))
            elif (delay := attempts.failed(value)) is None:
                self.results[index] = (False, value)
            else:
                heapq.heappush(self.retries, (time.monotonic() + _backoff(delay), index))

    def due(self) -> list[int]:
        """The retries whose delay is over, taken off the heap."""
        due = []
        while self.retries and self.retries[0][0] <= time.monotonic():
            due.append(heapq.heappop(self.retries)[1])
        return due


def _backoff(delay: float) -> float:
    """Real seconds to wait before a retry: none on a time-skipping clock (its time moves on at once instead)."""
    if is_skipping():
        clock().sleep(delay)
        return 0.0
    return delay


def _wait(done: queue.SimpleQueue[tuple[int, Any, Any]],
          retries: list[tuple[float, int]]) -> list[tuple[int, Any, Any]]:
    """The futures finished so far (at least one, unless a retry is due first)."""
    while True:
        timeout = _POLL if not retries else max(0.0, min(_POLL, retries[0][0] - time.monotonic()))
        try:
            first = done.get(timeout=timeout)
        except queue.Empty:
            if retries and retries[0][0] <= time.monotonic():
                return []
            continue
        ready = [first]
        while True:
            try:
                ready.append(done.get_nowait())
            except queue.Empty:
                return ready
