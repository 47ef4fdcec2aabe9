"""Runtime events: the runtime announces what happens; widgets and the headless engine only listen.

Listeners are called synchronously in the executing thread; a listener that raises is reported once
on stderr and removed, so a broken widget can never break a run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EVENT_KINDS = ("run_started", "step_started", "attempt_finished", "step_finished", "run_finished")


@dataclass(frozen=True)
class RuntimeEvent:
    """One thing that happened in a run: ``kind`` is one of EVENT_KINDS; ``data`` holds its details."""

    kind: str
    run_id: str
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


Listener = Callable[[RuntimeEvent], None]


class EventBus:
    """Fan-out of runtime events to subscribed listeners."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self.unsubscribe(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Remove a listener (no error if it is already gone)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def active(self) -> bool:
        """True when someone listens: emitters skip building details nobody reads."""
        return bool(self._listeners)

    def emit(self, event: RuntimeEvent) -> None:
        """Deliver an event to every listener."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as exc:  # a listener must never break a run
                print(f"nbdurable: event listener {listener!r} failed and was removed: {exc!r}", file=sys.stderr)
                self.unsubscribe(listener)
