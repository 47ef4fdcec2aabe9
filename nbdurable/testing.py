"""``nbd.testing``: test durable notebooks without waiting for their waits.

``with nbd.testing.time_skipping():`` (or ``NBDURABLE_TIME_SKIP=1`` in the environment of a kernel, of
``nbdurable run`` or of ``nbdurable worker``) puts durable time on a virtual clock that skips instead of
waiting: ``nbd.sleep("7d")`` returns at once with the clock 7 days ahead, ``nbd.wait_for_event(...,
timeout="2d")`` takes an event already sent or else returns None with the clock at its timeout, retry
backoffs are skipped, and a step timeout is reached by a skipping wait inside the step. A headless run that
would suspend runs to its end instead. Runs that record virtual times are marked time-skipped (journal,
catalog ``runs.time_skipped``, ``nbdurable show``). See ``nbdurable/runtime/clock.py``.

``now()``, ``monotonic()`` and ``sleep()`` read and wait on that clock: step code that polls or waits can use
them so that a time-skipped test skips its waits too.

The skipped time stays after a ``time_skipping()`` block (durable time never goes back in a process). A test
suite that skips time in several tests of one process calls ``reset_clock()`` between them (an autouse
fixture), or the next test starts with the clock ahead: a worker it drives would start delayed runs early.
"""

from __future__ import annotations

from nbdurable.runtime.clock import (
    ENV_TIME_SKIP,
    Clock,
    clock,
    is_skipping,
    monotonic,
    now,
    reset_clock,
    sleep,
    time_skipping,
)

__all__ = [
    "ENV_TIME_SKIP",
    "Clock",
    "clock",
    "is_skipping",
    "monotonic",
    "now",
    "reset_clock",
    "sleep",
    "time_skipping",
]
