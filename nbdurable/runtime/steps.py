"""Explicit durable steps inside a cell: ``@nbd.step`` and ``nbd.run_step``.

Check → execute → record happens in one place (``StepContext.call``). A call's identity is its step
name plus a per-cell call counter (Inngest's ``id:N``) and its position among the cell's step calls;
its arguments' hash is recorded. When a cell that was cut short (killed, failed) runs again unchanged,
its completed calls return their recorded results (or re-raise their recorded errors) without running;
a call that disagrees with the record raises NondeterminismError. New calls run with the step's retry
policy, every attempt recorded. Outside a durable cell a step simply runs with its retries.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

from nbdurable.capture.namespace import Change
from nbdurable.errors import NondeterminismError, NonRetryableError, RetryAfter
from nbdurable.runtime.checkpoint import ObjectLoader
from nbdurable.runtime.policy import NO_RETRY, RetryPolicy
from nbdurable.runtime.replay import RecordedCall
from nbdurable.runtime.run import DurableRun, StepHandle
from nbdurable.serialization import serialize

F = TypeVar("F", bound=Callable[..., Any])
# One cell runs at a time in a kernel, and IPython fires the cell's start and end events in different
# asyncio contexts (ipykernel), so the current cell's steps are a module-level slot, not a ContextVar.
_current: list[StepContext | None] = [None]


class StepContext:
    """The explicit steps of one executing cell."""

    def __init__(self, run: DurableRun, cell: StepHandle, recorded: list[RecordedCall], loader: ObjectLoader,
                 replayed_from: str | None = None) -> None:
        self.run, self.cell, self.loader = run, cell, loader
        # A failed call that was the cell's last one most likely ended the cell: it executes again on
        # resume. One the cell went on past (it handled the error) replays its error, for determinism.
        last = max((c.seq for c in recorded), default=0)
        self.recorded = {c.seq: c for c in recorded if c.status == "completed" or c.seq != last}
        self.replayed_from = replayed_from
        self.counters: dict[str, int] = {}
        self.seq = 0

    def call(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], policy: RetryPolicy) -> Any:
        """Run (or replay) one step call."""
        self.seq += 1
        call = self.counters[name] = self.counters.get(name, 0) + 1
        args_key = serialize((args, kwargs)).key
        recorded = self.recorded.get(self.seq)
        if recorded is not None:
            return self._replay(recorded, name, call, args_key)
        child = self.run.begin_step(source="", source_hash=args_key, name=name, parent=self.cell.ordinal,
                                    options={"call": call, "seq": self.seq, "args": args_key})
        return _attempts(fn, args, kwargs, policy, on_attempt=lambda n, s, e, d: self.run.record_attempt(child, n, s, e, d),
                         on_done=lambda status, value: self._commit(child, status, value))

    def _replay(self, recorded: RecordedCall, name: str, call: int, args_key: str) -> Any:
        where = f"step call {self.seq} of this cell"
        if (recorded.name, recorded.call) != (name, call):
            raise NondeterminismError(
                f"{where} is `{name}` (call {call}), but the recorded run made `{recorded.name}` (call {recorded.call}) there.",
                hint="steps must be called in the same order as when recorded; to start over after changing "
                "the order on purpose, run `%durable new` (or `nbdurable run --fresh`).",
            )
        if recorded.args != args_key:
            raise NondeterminismError(
                f"{where}, `{name}` (call {call}), gets other arguments than in the recorded run.",
                hint="make the step's inputs deterministic, or run `%durable new` (or `nbdurable run --fresh`) to start over.",
            )
        value = self.loader.load(recorded.value, step_label=f"step `{name}` call {call}") if recorded.value else None
        child = self.run.begin_step(source="", source_hash=args_key, name=name, parent=self.cell.ordinal,
                                    options={"call": call, "seq": self.seq, "args": args_key})
        self.run.end_child(child, "restored", [recorded.value] if recorded.value else [])
        if recorded.status == "failed" and isinstance(value, BaseException):
            raise value
        return value

    def _commit(self, child: StepHandle, status: str, value: Any) -> None:
        label = "error" if status == "failed" else "result"
        self.run.end_child(child, status, changes=[Change(label, "set", serialize(value), f"{child.ordinal}:{label}")])


def _attempts(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], policy: RetryPolicy, *,
              on_attempt: Callable[[int, float, dict[str, Any] | None, float | None], None],
              on_done: Callable[[str, Any], None]) -> Any:
    """Call ``fn`` until it succeeds or the policy gives up; report each attempt and the outcome."""
    attempt = 0
    while True:
        attempt += 1
        started = time.time()
        try:
            result = fn(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            on_attempt(attempt, started, {"ename": "KeyboardInterrupt", "evalue": "interrupted"}, None)
            raise
        except BaseException as exc:
            delay = _retry_delay(exc, attempt, policy)
            on_attempt(attempt, started, {"ename": type(exc).__name__, "evalue": str(exc)}, delay)
            if delay is None:
                on_done("failed", exc)
                raise
            time.sleep(delay)
            continue
        on_attempt(attempt, started, None, None)
        on_done("completed", result)
        return result


def _retry_delay(exc: BaseException, attempt: int, policy: RetryPolicy) -> float | None:
    """Seconds before the next attempt, or None when the step fails now."""
    if isinstance(exc, NonRetryableError) or (policy.non_retryable and isinstance(exc, policy.non_retryable)):
        return None
    if attempt >= policy.max_attempts:
        return None
    return exc.seconds if isinstance(exc, RetryAfter) else policy.delay(attempt)


def run_step(name: str, fn: Callable[..., Any], *args: Any, retry: RetryPolicy | None = None, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` as the durable step ``name`` (see the module docstring)."""
    if inspect.iscoroutinefunction(fn):
        raise TypeError("run_step calls synchronous functions; decorate async ones with @nbd.step and await them")
    context = _current[0]
    policy = retry or NO_RETRY
    if context is None:
        return _attempts(fn, args, kwargs, policy, on_attempt=lambda *a: None, on_done=lambda *a: None)
    return context.call(name, fn, args, kwargs, policy)


def step(fn: F | None = None, *, name: str | None = None, retry: RetryPolicy | None = None) -> Any:
    """Decorator: every call of ``fn`` is a durable step (``@nbd.step`` or ``@nbd.step(retry=...)``)."""

    def decorate(func: F) -> F:
        step_name = name or func.__qualname__

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return run_step(step_name, func, *args, retry=retry, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def enter_cell(context: StepContext | None) -> None:
    """Make ``context`` the executing cell's step context (None: steps run unrecorded)."""
    _current[0] = context
