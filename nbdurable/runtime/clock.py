"""The clock durable time reads: real, or virtual and skipping (``NBDURABLE_TIME_SKIP=1``, ``time_skipping()``).

Every durable time goes through here: the deadlines of ``nbd.sleep`` / ``sleep_until`` / ``wait_for_event``
(``waits.py``), retry backoffs (``steps.py``, the cell policies of ``kernel_ext/attempts.py``), the times
steps and attempts are journaled with (``run.py``), step timeouts (``deadline.py``) and the worker's
due-time decisions (``headless/worker.py``).

The real clock is ``time.time`` / ``time.sleep`` / ``time.monotonic``. The *time-skipping* clock is the real
clock plus an offset: work takes the real time it takes, but a wait does not wait, it moves the offset so
that the clock reads the time the wait would have ended (a sleep to a time already passed moves nothing,
time never goes back; waits in several threads each move the clock, one after the other). With
``NBDURABLE_TIME_SKIP=1`` in its environment a process (a kernel, a headless runner, a worker) skips from
its start; in Python, ``with nbd.testing.time_skipping():`` skips for the block (the offset stays: time
never goes back).

A step timeout is a limit on an attempt's duration *on this clock*. Real work still runs into it in real
time (the SIGALRM / watchdog of ``deadline.py``), and a skipping wait inside the attempt that would go past
its deadline moves the clock to the deadline and raises ``StepTimeoutError`` there, instead of waiting.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from nbdurable.errors import StepTimeoutError

ENV_TIME_SKIP = "NBDURABLE_TIME_SKIP"  # "1": durable waits of this process skip time instead of waiting


class Clock:
    """Real time plus a skipped offset (0 and unused while not skipping)."""

    def __init__(self, skipping: bool = False) -> None:
        self.skipping = skipping
        self.offset = 0.0  # seconds skipped so far
        self._lock = threading.Lock()
        self._deadlines: dict[int, list[float]] = {}  # thread id -> the step-timeout deadlines it is inside

    def now(self) -> float:
        """Unix seconds on this clock."""
        return time.time() + self.offset

    def monotonic(self) -> float:
        """A monotonic reading on this clock (skipped time included)."""
        return time.monotonic() + self.offset

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (skipping: move the clock instead)."""
        if not self.skipping:
            if seconds > 0:
                time.sleep(seconds)
            return
        self.sleep_until(self.now() + max(0.0, seconds))

    def sleep_until(self, when: float) -> None:
        """Wait until the clock reads ``when`` (unix seconds; skipping: move the clock there at once). A
        skip past the deadline of a step timeout this thread is inside stops there: StepTimeoutError."""
        if not self.skipping:
            while (left := when - self.now()) > 0:
                time.sleep(left)
            return
        limit = self.deadline()
        target = when if limit is None else min(when, limit)
        with self._lock:
            self.offset = max(self.offset, target - time.time())
        if limit is not None and when >= limit:
            raise StepTimeoutError("the step attempt exceeded its timeout on the time-skipping clock (a wait inside "
                                   "it would have ended after the timeout)")

    async def sleep_async(self, seconds: float) -> None:
        """``sleep`` for coroutines."""
        if not self.skipping:
            await asyncio.sleep(seconds)
            return
        self.sleep(seconds)
        await asyncio.sleep(0)

    def deadline(self) -> float | None:
        """The nearest step-timeout deadline this thread is inside (unix seconds on this clock), or None."""
        stack = self._deadlines.get(threading.get_ident())
        return min(stack) if stack else None

    @contextmanager
    def within(self, seconds: float) -> Iterator[float]:
        """Mark this thread as inside a step timeout of ``seconds`` from now; yields the deadline."""
        ident, when = threading.get_ident(), self.now() + seconds
        self._deadlines.setdefault(ident, []).append(when)
        try:
            yield when
        finally:
            stack = self._deadlines.get(ident, [])
            if when in stack:
                stack.remove(when)
            if not stack:
                self._deadlines.pop(ident, None)


def _skipping_from_env() -> bool:
    return os.environ.get(ENV_TIME_SKIP, "").strip().lower() in ("1", "true", "yes", "on")


_clock = Clock(skipping=_skipping_from_env())


def clock() -> Clock:
    """The process's clock."""
    return _clock


def now() -> float:
    """Unix seconds on the process's clock."""
    return _clock.now()


def monotonic() -> float:
    """A monotonic reading of the process's clock."""
    return _clock.monotonic()


def sleep(seconds: float) -> None:
    """Wait ``seconds`` on the process's clock (skipping: at once)."""
    _clock.sleep(seconds)


def is_skipping() -> bool:
    """True while durable waits skip time (``NBDURABLE_TIME_SKIP=1`` or inside ``time_skipping()``)."""
    return _clock.skipping


def reset_clock() -> None:
    """Back to the real clock: not skipping, nothing skipped. For a test suite, between tests that skip time in
    one process (the offset of a ``time_skipping()`` block stays after it, so the next test would start days
    ahead); never inside a run, whose durable times would go back."""
    with _clock._lock:
        _clock.skipping = _skipping_from_env()
        _clock.offset = 0.0
        _clock._deadlines.clear()


@contextmanager
def time_skipping(enabled: bool = True) -> Iterator[Clock]:
    """Durable waits in the block advance the clock instead of waiting (``enabled=False``: they wait)."""
    before = _clock.skipping
    _clock.skipping = enabled
    try:
        yield _clock
    finally:
        _clock.skipping = before
