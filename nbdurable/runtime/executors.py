"""``nbd.map(fn, items, executor=...)``: the items run on a ``dask.distributed.Client`` or on any
``concurrent.futures.Executor``; the kernel keeps the journal.

``steps.map`` reserves every call's place and journals the beginnings in item order before anything runs
(as without an executor), then hands the calls that have no recorded result to ``run_items``, which
submits them in one batch (``client.map``; ``submit`` per item on other executors), lets the kernel
replay the recorded calls meanwhile, and commits each result as it comes back. A kernel killed mid-map
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
    """How items are submitted to one kind of executor and their outcomes read."""

    def __init__(self, executor: Any, fn: Callable[[Any], Any], timeout: float | None, name: str) -> None:
        self.executor, self.fn, self.timeout = executor, fn, timeout
        self.dask = is_dask_client(executor)
        self.token = f"nbd.map-{name}-{uuid.uuid4().hex[:8]}"
        self.shipped = not self.dask and not isinstance(executor, ThreadPoolExecutor)
        self.fn_data = ship(fn) if self.shipped else b""
        self.attempt = 0

    def submit(self, items: list[Any]) -> list[Any]:
        """Futures for ``items``, in one batch on Dask."""
        self.attempt += 1
        try:
            if self.dask:
                keys = [f"{self.token}-{self.attempt}-{i}" for i in range(len(items))]
                return list(self.executor.map(functools.partial(_call, self.fn, self.timeout), items, key=keys,
                                              pure=False, retries=0))
            if self.shipped:
                return [self.executor.submit(_call_shipped, self.fn_data, self.timeout, ship(item)) for item in items]
            return [self.executor.submit(_call, self.fn, self.timeout, item) for item in items]
        except Exception as exc:
            raise ExecutorError(f"nbd.map could not submit its items to {type(self.executor).__name__}: "
                                f"{type(exc).__name__}: {exc}",
                                hint="check the executor (is it shut down? does the function pickle?)") from exc

    def outcomes(self, futures: list[Any]) -> list[Outcome]:
        """The outcomes of finished futures (on Dask, the successful ones gathered in one request)."""
        if self.dask:
            finished = [f for f in futures if f.status == "finished"]
            gathered = dict(zip(finished, self.executor.gather(finished), strict=True)) if finished else {}
            return [gathered[f] if f in gathered else (False, _lost(f)) for f in futures]
        out = []
        for future in futures:
            try:
                value = future.result()
            except BaseException as exc:  # a broken pool, a cancelled future
                out.append((False, ExecutorError(
                    f"the executor could not run an nbd.map item: {type(exc).__name__}: {exc}",
                    hint="a process pool whose process died is broken: create a new one and run the cell again "
                    "(completed items are not run again)")))
                continue
            out.append(unship(value) if self.shipped else value)
        return out

    def cancel(self, futures: list[Any]) -> None:
        if self.dask:
            self.executor.cancel(futures)
        else:
            for future in futures:
                future.cancel()


def _lost(future: Any) -> BaseException:
    """What a Dask task that did not finish ended with (KilledWorker after too many lost workers)."""
    try:
        exc = future.exception()
    except BaseException as cancelled:  # a cancelled future raises here
        exc = cancelled
    return exc if isinstance(exc, BaseException) else ExecutorError(f"the Dask task ended {future.status}")


def run_items(executor: Any, fn: Callable[[Any], Any], pending: list[Pending], *, name: str,
              meanwhile: Callable[[], None] = lambda: None) -> dict[int, Outcome]:
    """Run the ``pending`` calls on ``executor``: each index's final outcome, every attempt recorded through its
    ``Attempts`` (in the calling thread). ``meanwhile`` runs once the items are submitted (the replays)."""
    if not pending:
        meanwhile()
        return {}
    batch = _Batch(_Backend(executor, fn, pending[0][2].timeout, name), pending)
    try:
        batch.submit([index for index, _, _ in pending])
        meanwhile()
        while batch.live or batch.retries:
            batch.settle(_wait(batch.done, batch.retries))
            batch.submit(batch.due())
    except BaseException:
        batch.backend.cancel(list(batch.live.values()))
        raise
    return batch.results


class _Batch:
    """The calls of one map in flight: their futures, the retries waiting for their delay, the final outcomes."""

    def __init__(self, backend: _Backend, pending: list[Pending]) -> None:
        self.backend = backend
        self.by_index = {index: (item, attempts) for index, item, attempts in pending}
        self.done: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()  # filled by the futures' callbacks
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
            future.add_done_callback(lambda f, i=index: self.done.put((i, f)))

    def settle(self, ready: list[tuple[int, Any]]) -> None:
        """Record the finished attempts: a result commits its call, an error fails it or schedules a retry."""
        current = [(i, f) for i, f in ready if self.live.get(i) is f]
        outcomes = self.backend.outcomes([f for _, f in current])
        for (index, _), (ok, value) in zip(current, outcomes, strict=True):
            del self.live[index]
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


def _wait(done: queue.SimpleQueue[tuple[int, Any]], retries: list[tuple[float, int]]) -> list[tuple[int, Any]]:
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
