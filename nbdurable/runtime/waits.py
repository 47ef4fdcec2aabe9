"""Durable waits inside cells: ``nbd.sleep``, ``nbd.sleep_until``, ``nbd.wait_for_event``; and ``nbd.send_event``.

A wait is an explicit step (``nbd.sleep`` / ``nbd.wait_for_event``) whose deadline is journaled in its
``step_start`` *before* the wait begins. A run that resumes the cell after a crash or a suspension finds
the wait among the cell's recorded calls and waits only for what remains of the recorded deadline; a
wait that completed returns its recorded result at once.

Interactive, a wait shows a countdown (or a waiting indicator) and is interrupted like any cell. In a
headless run (``StepContext.suspend_after`` set) a wait longer than that threshold suspends the run
instead: ``RunSuspended`` unwinds the cell, the run ends ``suspended`` with what it waits for, and
``nbdurable worker`` resumes it when its timer is due, its event arrived or its wait timed out.

On the time-skipping clock (``clock.py``: ``NBDURABLE_TIME_SKIP=1``, ``nbd.testing.time_skipping()``) deadlines
are taken on that clock and recorded as such; a sleep moves the clock to its wake-up time at once, and an
event wait takes an event already sent or else moves the clock to its timeout (the timeout branch). Such
waits never suspend a headless run: it runs to its end. A wait for an event with no timeout has no time to
skip to: it waits (and suspends, headless) as on the real clock.

Events are durable in the store (``store/events.py``). ``wait_for_event`` returns the data of the first
event with that name whose data contains ``match`` (a recursive dict subset), sent at or after the run
started (the root run, for a chain of resumes) and not yet consumed by this run or a run it resumes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from nbdurable.errors import OptionsError, RunSuspended
from nbdurable.runtime.clock import clock
from nbdurable.runtime.policy import Duration, parse_duration
from nbdurable.runtime.session import approval_ui, current_step_context, default_store
from nbdurable.store import Store
from nbdurable.store.events import check_event_name

SLEEP, WAIT = "nbd.sleep", "nbd.wait_for_event"
POLL_SECONDS = 0.2  # how often a waiting run looks for its event
SHOW_EVERY = 1.0  # how often a wait's indicator is refreshed

_PROCESS_STARTED = time.time()
_consumed_outside: set[str] = set()  # events taken by waits outside a durable cell, in this process


# ----- sleep ------------------------------------------------------------------------------------


def sleep(duration: Duration) -> None:
    """Wait ``duration`` ("90s", "15m", "24h", "2d", seconds or a timedelta), durably: the wake-up time
    is recorded, so after a crash only the remaining time is waited (see the module docstring)."""
    sleep_until(clock().now() + parse_duration(duration))


def sleep_until(when: _dt.datetime | float) -> None:
    """Wait until ``when`` (a datetime, naive meaning local time; or unix seconds), durably."""
    wake_at = _timestamp(when)
    context = current_step_context()
    if context is None:
        _wait_until(wake_at, None)
        return
    slot = context.reserve(SLEEP, (), {})
    if slot.recorded is not None and slot.recorded.status != "waiting":
        context.replay(slot)
        return
    if slot.recorded is not None:
        wake_at = float(slot.recorded.options.get("wake_at", wake_at))
    child = context.begin(slot, {"wake_at": wake_at})
    limit = None if clock().skipping else context.suspend_after
    if limit is not None and wake_at - clock().now() > limit:
        raise RunSuspended(wake_at=wake_at)
    _wait_until(wake_at, context.show)
    context.end(child, "completed", None)


def _timestamp(when: _dt.datetime | float) -> float:
    if isinstance(when, _dt.datetime):
        return when.timestamp()
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return float(when)
    raise OptionsError(f"sleep_until takes a datetime (or unix seconds), not {when!r}",
                       hint="e.g. nbd.sleep_until(datetime.datetime(2026, 12, 1, 9, 0))")


def _wait_until(wake_at: float, show: Callable[[str, bool], None] | None) -> None:
    """Sleep until ``wake_at`` in short slices (interruptible), refreshing the countdown."""
    label = _dt.datetime.fromtimestamp(wake_at).isoformat(sep=" ", timespec="seconds")
    if clock().skipping:
        clock().sleep_until(wake_at)
        if show is not None:
            show(f"⏩ nbdurable: skipped to {label} (time-skipping clock)", True)
        return
    while (left := wake_at - clock().now()) > 0:
        if show is not None:
            show(f"⏳ nbdurable: sleeping until {label} ({_human(left)} left); a resume after a crash waits only "
                 "the time left", False)
        time.sleep(min(left, SHOW_EVERY))
    if show is not None:
        show(f"⏰ nbdurable: woke up (slept until {label})", True)


def _human(seconds: float) -> str:
    seconds = int(seconds + 0.999)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"] * bool(minutes)
    return " ".join(parts + [f"{secs}s"] * (bool(secs) or not parts))


# ----- events -----------------------------------------------------------------------------------


def send_event(name: str, data: Any = None, *, store: str | os.PathLike[str] | Store | None = None) -> str:
    """Send the event ``name`` with JSON ``data`` to the runs waiting on it (durable before it returns).
    Returns the event id. ``store``: see ``session.default_store``."""
    return str(default_store(store).send_event(name, data)["id"])


def matches(data: Any, match: dict[str, Any] | None) -> bool:
    """True if every key of ``match`` is in ``data`` with an equal value (nested dicts: recursively)."""
    if not match:
        return True
    if not isinstance(data, dict):
        return False
    for key, want in match.items():
        if key not in data:
            return False
        have = data[key]
        if isinstance(want, dict) and want:
            if not matches(have, want):
                return False
        elif have != want:
            return False
    return True


def find_event(store: Store, name: str, match: dict[str, Any] | None, *, after: float | None,
               consumed: set[str], cache: dict[str, dict[str, Any] | None] | None = None) -> dict[str, Any] | None:
    """The oldest event ``name`` matching ``match``, sent at or after ``after``, not in ``consumed``.
    ``cache`` keeps parsed events between polls (an event never changes)."""
    cache = {} if cache is None else cache
    for event_id in store.event_ids(after=after):
        if event_id in consumed:
            continue
        if event_id not in cache:
            cache[event_id] = store.read_event(event_id)
        event = cache[event_id]
        if event is not None and event.get("name") == name and matches(event.get("data"), match):
            return event
    return None


def wait_for_event(name: str, match: dict[str, Any] | None = None, timeout: Duration | None = None) -> Any:
    """Wait for the event ``name`` whose data contains ``match``; return its data, or None once ``timeout``
    passed. Durable: the deadline and the event taken are recorded (see the module docstring)."""
    check_event_name(name)
    if match is not None and not isinstance(match, dict):
        raise OptionsError(f"match must be a dict, not {type(match).__name__}", hint="e.g. match={'week': 47}")
    seconds = None if timeout is None else parse_duration(timeout)
    context = current_step_context()
    if context is None:
        timeout_at = None if seconds is None else clock().now() + seconds
        event = _poll_showing_approval(default_store(), name, match, timeout_at, None, after=_PROCESS_STARTED,
                                       consumed=_consumed_outside)
        if event is not None:
            _consumed_outside.add(event["id"])
        return None if event is None else event.get("data")
    slot = context.reserve(WAIT, (name, match), {})
    if slot.recorded is not None and slot.recorded.status != "waiting":
        return context.replay(slot)
    if slot.recorded is not None:
        timeout_at = slot.recorded.options.get("timeout_at")
    else:
        timeout_at = None if seconds is None else clock().now() + seconds
    child = context.begin(slot, {"event": name, "match": match, "timeout_at": timeout_at})
    after, consumed = context.run.wait_scope()
    suspend = None
    if context.suspend_after is not None and not (clock().skipping and timeout_at is not None):
        suspend = {"name": name, "match": match, "timeout_at": timeout_at, "after": after}
    event = _poll_showing_approval(context.run.store, name, match, timeout_at, context.show, after=after,
                                   consumed=consumed, suspend=suspend, suspend_after=context.suspend_after)
    if event is not None:
        context.run.consume(child, event)
    data = None if event is None else event.get("data")
    context.end(child, "completed", data)
    return data


def _poll_showing_approval(store: Store, name: str, match: dict[str, Any] | None, timeout_at: float | None,
                           show: Callable[[str, bool], None] | None, **poll: Any) -> dict[str, Any] | None:
    """``_poll``, with the approval widget shown for the length of the wait (interactive kernels) and told
    how it ended. A widget that fails to show never breaks the wait."""
    factory, ui = approval_ui(), None
    if factory is not None:
        try:
            ui = factory(store, name, match, timeout_at)
        except Exception as exc:  # e.g. no widget support in this frontend: the text line remains
            print(f"nbdurable: the approval widget could not be shown ({exc!r}); "
                  f"send the event with `nbdurable send {name} --data '{{...}}'`", file=sys.stderr)
    event, ended = None, False
    try:
        event = _poll(store, name, match, timeout_at, show, **poll)
        ended = True
        return event
    finally:
        if ui is not None:
            with contextlib.suppress(Exception):
                ui.finish(event, interrupted=not ended)


def _poll(store: Store, name: str, match: dict[str, Any] | None, timeout_at: float | None,
          show: Callable[[str, bool], None] | None, *, after: float, consumed: set[str],
          suspend: dict[str, Any] | None = None, suspend_after: float | None = None) -> dict[str, Any] | None:
    """Look for the event until it comes or ``timeout_at`` passes; with ``suspend``, raise RunSuspended
    as soon as the wait would outlast ``suspend_after``."""
    cache: dict[str, dict[str, Any] | None] = {}
    what = f"event {name!r}" + (f" matching {match}" if match else "")
    shown = 0.0
    while True:
        event = find_event(store, name, match, after=after, consumed=consumed, cache=cache)
        now = clock().now()
        if event is None and timeout_at is not None and now < timeout_at and clock().skipping:
            clock().sleep_until(timeout_at)  # no event yet: skip to the timeout, then look a last time
            event, now = find_event(store, name, match, after=after, consumed=consumed, cache=cache), clock().now()
        if event is not None or (timeout_at is not None and now >= timeout_at):
            if show is not None and (shown or clock().skipping):
                show(f"✓ nbdurable: received {what}" if event else f"⌛ nbdurable: no {what} before the timeout", True)
            return event
        if (suspend is not None and suspend_after is not None
                and (timeout_at is None or timeout_at - now > suspend_after)):
            raise RunSuspended(waiting_for=suspend)
        if show is not None and now - shown >= SHOW_EVERY:
            left = f" ({_human(timeout_at - now)} left)" if timeout_at is not None else ""
            show(f"⏳ nbdurable: waiting for {what}{left}; send it with `nbdurable send {name} --data '{{...}}'`",
                 False)
            shown = now
        time.sleep(POLL_SECONDS if timeout_at is None else max(0.0, min(POLL_SECONDS, timeout_at - now)))
