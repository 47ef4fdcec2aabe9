"""Explicit durable steps inside a cell: ``@nbd.step`` and ``nbd.run_step``.

Check → execute → record happens in one place (``StepContext.call``). A call's identity is its step
name plus a per-cell call counter (Inngest's ``id:N``) and its position among the cell's step calls;
its arguments' hash is recorded. When a cell that was cut short (killed, failed) runs again unchanged,
its completed calls return their recorded results (or re-raise their recorded errors) without running;
a call that disagrees with the record raises NondeterminismError. New calls run with the step's retry
policy, every attempt recorded. Outside a durable cell a step simply runs with its retries.

A step with ``compensate=undo`` registers, when it completes, the compensation ``undo(result, *args,
**kwargs)``: its step_end also carries the variable ``compensation`` (``undo`` with the call's arguments),
and this process keeps the live objects (``live_compensations``). ``compensation.py`` runs them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from nbdurable.capture.namespace import Change
from nbdurable.errors import NondeterminismError, NonRetryableError, OptionsError, RetryAfter, StepTimeoutError
from nbdurable.runtime.checkpoint import ObjectLoader
from nbdurable.runtime.clock import clock
from nbdurable.runtime.deadline import deadline
from nbdurable.runtime.executors import check_executor, run_items
from nbdurable.runtime.policy import NO_RETRY, Duration, RetryPolicy, parse_duration
from nbdurable.runtime.replay import RecordedCall
from nbdurable.runtime.run import DurableRun, StepHandle
from nbdurable.runtime.session import current_step_context
from nbdurable.serialization import serialize

F = TypeVar("F", bound=Callable[..., Any])
Compensate = Callable[..., Any]
COMPENSATION_VAR = "compensation"  # the step_end variable of a compensable step: (undo, args, kwargs)

# Compensations registered in this process: by the step they undo, (run id, ordinal) -> (undo, args, kwargs,
# result); and, outside a durable cell, in the order their steps completed (nothing durable to key them by).
live_compensations: dict[tuple[str, int], tuple[Compensate, tuple[Any, ...], dict[str, Any], Any]] = {}
outside_compensations: list[tuple[str, Compensate, tuple[Any, ...], dict[str, Any], Any]] = []


@dataclass(frozen=True)
class Slot:
    """A step call's place in its cell, reserved in call order (before any work, even in parallel)."""

    name: str
    call: int
    seq: int
    args: str
    recorded: RecordedCall | None


class StepContext:
    """The explicit steps of one executing cell."""

    def __init__(self, run: DurableRun, cell: StepHandle, recorded: list[RecordedCall], loader: ObjectLoader, *,
                 suspend_after: float | None = None, show: Callable[[str, bool], None] | None = None) -> None:
        self.run, self.cell, self.loader = run, cell, loader
        # A failed call that was the cell's last one most likely ended the cell: it executes again on
        # resume. One the cell went on past (it handled the error) replays its error, for determinism.
        # A wait that had begun (``waiting``) continues with its recorded deadline.
        last = max((c.seq for c in recorded), default=0)
        self.recorded = {c.seq: c for c in recorded if c.status != "failed" or c.seq != last}
        # Waits longer than this suspend the run (headless); None: wait in the process (interactive).
        self.suspend_after = suspend_after
        self.show = show  # shows a wait's progress: (text, finished)
        self.counters: dict[str, int] = {}
        self.seq = 0
        self._lock = threading.Lock()

    def reserve(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Slot:
        """Give the next call its identity; a recorded call there must agree (NondeterminismError)."""
        args_key = serialize((args, kwargs)).key
        with self._lock:
            self.seq += 1
            call = self.counters[name] = self.counters.get(name, 0) + 1
            slot = Slot(name, call, self.seq, args_key, self.recorded.get(self.seq))
        if slot.recorded is not None:
            _check_agrees(slot, slot.recorded)
        return slot

    def replay(self, slot: Slot) -> Any:
        """The recorded result of a call (or its recorded error, raised), recorded in this run too."""
        recorded = slot.recorded
        assert recorded is not None
        value = (self.loader.load(recorded.value, step_label=f"step `{slot.name}` call {slot.call}")
                 if recorded.value else None)
        status = "failed" if recorded.status == "failed" else "restored"  # a recorded error stays an error
        self.run.end_child(self.begin(slot), status, [recorded.value] if recorded.value else [])
        if recorded.status == "failed" and isinstance(value, BaseException):
            raise value
        return value

    def attempts(self, slot: Slot, policy: RetryPolicy, undo: tuple[Compensate, tuple[Any, ...], dict[str, Any]]
                 | None = None) -> Attempts:
        """The bookkeeping of a call that executes: a child step, its attempts, its result (and, with
        ``undo`` = (compensation, args, kwargs), the compensation it registers once it completed)."""
        child = self.begin(slot)
        return Attempts(policy, lambda n, s, e, d: self.run.record_attempt(child, n, s, e, d),
                        lambda status, value: self.end(child, status, value, undo if status == "completed" else None))

    def begin(self, slot: Slot, extra: dict[str, Any] | None = None) -> StepHandle:
        """Journal the start of a call (``extra`` options, e.g. a wait's deadline, are journaled with it)."""
        return self.run.begin_step(source="", source_hash=slot.args, name=slot.name, parent=self.cell.ordinal,
                                   options={"call": slot.call, "seq": slot.seq, "args": slot.args, **(extra or {})})

    def end(self, child: StepHandle, status: str, value: Any,
            undo: tuple[Compensate, tuple[Any, ...], dict[str, Any]] | None = None) -> None:
        """Commit a call with its result (or, ``failed``, the error it raised), and the compensation it
        registers (``undo``)."""
        label = "error" if status == "failed" else "result"
        changes = [Change(label, "set", serialize(value), f"{child.ordinal}:{label}")]
        if undo is not None:
            changes.append(Change(COMPENSATION_VAR, "set", serialize(undo), f"{child.ordinal}:{COMPENSATION_VAR}"))
            live_compensations[(self.run.run_id, child.ordinal)] = (*undo, value)
        self.run.end_child(child, status, changes=changes)


def _check_agrees(slot: Slot, recorded: RecordedCall) -> None:
    where = f"step call {slot.seq} of this cell"
    if (recorded.name, recorded.call) != (slot.name, slot.call):
        raise NondeterminismError(
            f"{where} is `{slot.name}` (call {slot.call}), but the recorded run made `{recorded.name}` "
            f"(call {recorded.call}) there.",
            hint="steps must be called in the same order as when recorded; to start over after changing "
            "the order on purpose, run `%durable new` (or `nbdurable run --fresh`).",
        )
    if recorded.args != slot.args:
        raise NondeterminismError(
            f"{where}, `{slot.name}` (call {slot.call}), gets other arguments than in the recorded run.",
            hint="make the step's inputs deterministic, or run `%durable new` (or `nbdurable run --fresh`) "
            "to start over.",
        )


class Attempts:
    """One call's attempts under a retry policy: what to record and whether to try again."""

    def __init__(self, policy: RetryPolicy,
                 record: Callable[[int, float, dict[str, Any] | None, float | None], None] = lambda *a: None,
                 finish: Callable[[str, Any], None] = lambda *a: None, timeout: float | None = None) -> None:
        self.policy, self._record, self._finish, self.timeout = policy, record, finish, timeout
        self.attempt = 0
        self._started = 0.0

    def start(self) -> None:
        self.attempt += 1
        self._started = clock().now()

    def failed(self, exc: BaseException) -> float | None:
        """Record a failed attempt; the delay before the next one, or None (the call fails)."""
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            self._record(self.attempt, self._started, {"ename": type(exc).__name__, "evalue": "interrupted"}, None)
            return None
        delay = _retry_delay(exc, self.attempt, self.policy)
        self._record(self.attempt, self._started, {"ename": type(exc).__name__, "evalue": str(exc)}, delay)
        if delay is None:
            self._finish("failed", exc)
        return delay

    def succeeded(self, result: Any) -> Any:
        self._record(self.attempt, self._started, None, None)
        self._finish("completed", result)
        return result


def _run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], attempts: Attempts) -> Any:
    while True:
        attempts.start()
        try:
            with deadline(attempts.timeout):
                result = fn(*args, **kwargs)
        except BaseException as exc:
            delay = attempts.failed(exc)
            if delay is None:
                raise
            clock().sleep(delay)  # a time-skipping clock skips the backoff
            continue
        return attempts.succeeded(result)


async def _run_async(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], attempts: Attempts) -> Any:
    while True:
        attempts.start()
        try:
            result = await _within(fn(*args, **kwargs), attempts.timeout)
        except BaseException as exc:
            delay = attempts.failed(exc)
            if delay is None:
                raise
            await clock().sleep_async(delay)
            continue
        return attempts.succeeded(result)


async def _within(awaitable: Any, timeout: float | None) -> Any:
    if timeout is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise StepTimeoutError(f"the step attempt exceeded its timeout of {timeout:g} s and was cancelled") from None


def _retry_delay(exc: BaseException, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds before the next attempt, or None when the step fails now."""
    if isinstance(exc, NonRetryableError) or (policy.non_retryable and isinstance(exc, policy.non_retryable)):
        return None
    if attempt >= policy.max_attempts:
        return None
    return exc.seconds if isinstance(exc, RetryAfter) else policy.delay(attempt)


def _prepare(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], policy: RetryPolicy,
             timeout: Duration | None, compensate: Compensate | None = None) -> tuple[Slot | None, Attempts]:
    seconds = None if timeout is None else parse_duration(timeout)
    if compensate is not None and not callable(compensate):
        raise OptionsError(f"compensate must be a function, not {type(compensate).__name__}",
                           hint="e.g. @nbd.step(compensate=cancel_booking), called as cancel_booking(result, *args)")
    context = current_step_context()
    if context is None:
        def register(status: str, value: Any) -> None:
            if compensate is not None and status == "completed":
                outside_compensations.append((name, compensate, args, kwargs, value))

        return None, Attempts(policy, timeout=seconds, finish=register)
    slot = context.reserve(name, args, kwargs)
    undo = None if compensate is None else (compensate, args, kwargs)
    attempts = context.attempts(slot, policy, undo) if slot.recorded is None else Attempts(policy)
    attempts.timeout = seconds
    return slot, attempts


def run_step(name: str, fn: Callable[..., Any], *args: Any, retry: RetryPolicy | None = None,
             timeout: Duration | None = None, compensate: Compensate | None = None, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` as the durable step ``name`` (see the module docstring). An attempt
    running longer than ``timeout`` is interrupted (``deadline.py`` says what can be) and retried. Once
    the call completed, ``compensate(result, *args, **kwargs)`` is registered to undo it (``nbd.compensate``)."""
    if inspect.iscoroutinefunction(fn):
        raise TypeError("run_step calls synchronous functions; decorate async ones with @nbd.step and await them")
    slot, attempts = _prepare(name, args, kwargs, retry or NO_RETRY, timeout, compensate)
    if slot is not None and slot.recorded is not None:
        return _current_context().replay(slot)
    return _run(fn, args, kwargs, attempts)


async def run_step_async(name: str, fn: Callable[..., Any], *args: Any, retry: RetryPolicy | None = None,
                         timeout: Duration | None = None, compensate: Compensate | None = None,
                         **kwargs: Any) -> Any:
    """The async twin of ``run_step``: ``asyncio.gather`` of async steps keeps each durable."""
    slot, attempts = _prepare(name, args, kwargs, retry or NO_RETRY, timeout, compensate)
    if slot is not None and slot.recorded is not None:
        return _current_context().replay(slot)
    return await _run_async(fn, args, kwargs, attempts)


def _current_context() -> StepContext:
    context = current_step_context()
    assert context is not None
    return context


def step(fn: F | None = None, *, name: str | None = None, retry: RetryPolicy | None = None,
         timeout: Duration | None = None, compensate: Compensate | None = None) -> Any:
    """Decorator: every call of ``fn`` is a durable step (``@nbd.step`` or ``@nbd.step(retry=...)``).

    Works on ``async def`` functions too (await them, or ``asyncio.gather`` several). ``compensate``: see
    ``run_step`` (``nbd.map`` does not register compensations)."""

    def decorate(func: F) -> F:
        step_name = name or func.__qualname__
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await run_step_async(step_name, func, *args, retry=retry, timeout=timeout,
                                            compensate=compensate, **kwargs)

            wrapper: Any = async_wrapper
        else:

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return run_step(step_name, func, *args, retry=retry, timeout=timeout, compensate=compensate, **kwargs)

        wrapper.nbdurable_step = (step_name, retry, timeout)
        return wrapper  # type: ignore[no-any-return]

    return decorate(fn) if fn is not None else decorate


def map(fn: Callable[..., Any], items: Iterable[Any], *, concurrency: int = 4, retry: RetryPolicy | None = None,  # noqa: A001 - public `nbd.map`
        name: str | None = None, timeout: Duration | None = None, executor: Any = None) -> list[Any]:
    """``[fn(item) for item in items]`` with each call a durable step, ``concurrency`` at a time in threads,
    or on ``executor`` (a ``dask.distributed.Client`` or any ``concurrent.futures.Executor``; see
    ``executors.py``: the kernel journals every call, the executor runs them).

    Call positions are reserved in item order before anything runs, so a resume replays exactly the
    items that completed and runs only the missing ones. Results come back in item order; the first
    failing item's error is raised once the others finished. ``fn`` may be an ``@nbd.step`` function
    (its name and retry policy are used). ``fn`` may be ``nbd.run_notebook`` (or a ``functools.partial`` of
    it): a fan-out of child runs (``headless/children.py``)."""
    if concurrency < 1:
        raise OptionsError(f"concurrency must be at least 1, not {concurrency}",
                           hint="e.g. nbd.map(fn, items, concurrency=8)")
    fan_out = getattr(fn.func if isinstance(fn, functools.partial) else fn, "nbdurable_fanout", None)
    if fan_out is not None:  # nbd.run_notebook: child runs, all claimed before any is waited for
        return fan_out(fn, items)  # type: ignore[no-any-return]
    if executor is not None:
        check_executor(executor)
    default_name, default_retry, default_timeout = getattr(fn, "nbdurable_step", (None, None, None))
    func = getattr(fn, "__wrapped__", fn) if default_name else fn
    step_name, policy = name or default_name or func.__qualname__, retry or default_retry or NO_RETRY
    items = list(items)
    prepared = [_prepare(step_name, (item,), {}, policy, timeout or default_timeout) for item in items]
    if executor is not None:
        return _map_on(executor, func, items, prepared, step_name)

    def one(index: int) -> Any:
        slot, attempts = prepared[index]
        if slot is not None and slot.recorded is not None:
            return _current_context().replay(slot)
        return _run(func, (items[index],), {}, attempts)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="nbdurable-map") as pool:
        futures = [pool.submit(one, i) for i in range(len(items))]
    return [f.result() for f in futures]


def _map_on(executor: Any, func: Callable[..., Any], items: list[Any], prepared: list[tuple[Slot | None, Attempts]],
            step_name: str) -> list[Any]:
    """``map`` on an executor: the calls without a recorded result submitted at once, the others replayed here."""
    outcomes: dict[int, tuple[bool, Any]] = {}
    replays = [(i, slot) for i, (slot, _) in enumerate(prepared) if slot is not None and slot.recorded is not None]

    def replay() -> None:
        for index, slot in replays:
            try:
                outcomes[index] = (True, _current_context().replay(slot))
            except Exception as exc:  # a recorded error, raised again in item order below
                outcomes[index] = (False, exc)

    pending = [(i, items[i], attempts) for i, (slot, attempts) in enumerate(prepared)
               if slot is None or slot.recorded is None]
    outcomes.update(run_items(executor, func, pending, name=step_name, meanwhile=replay))
    for index in range(len(items)):
        ok, value = outcomes[index]
        if not ok:
            raise value
    return [outcomes[i][1] for i in range(len(items))]
