"""The engine the server runs for its lifetime: the worker (``headless/worker.py``: schedules fired, events
decided by the triggers, suspended runs resumed, claimed runs started, each in a process of its own), its
passes on a thread of its own.

``ENGINE`` is the one place that says which engine runs: anything with ``start()`` and ``stop()`` built as
``ENGINE(store, log=..., poll=...)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from nbdurable.headless.worker import Worker
from nbdurable.headless.worker_log import describe
from nbdurable.store import Store


class Engine(Protocol):
    """What the server starts with it and stops with it."""

    def start(self) -> None:
        """Begin working (returns at once)."""

    def stop(self, timeout: float = ...) -> None:
        """Stop working; wait up to ``timeout`` seconds for work in progress."""


class WorkerEngine:
    """``Worker`` passes every ``poll`` seconds on a daemon thread until ``stop()``."""

    def __init__(self, store: Store, *, log: Callable[[str], None], poll: float = 2.0,
                 max_concurrent: int = 4) -> None:
        self.worker = Worker(store, log=lambda event, **fields: log(describe(event, fields)),
                             max_concurrent=max_concurrent)
        self.poll, self.log = poll, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nbdurable-serve-worker", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop after its current pass (a run being resumed finishes its own process)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.worker.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.worker.tick(skip=False)
            except Exception as exc:  # a pass that failed (a locked catalog...): logged, the next one retries
                self.log(f"worker pass failed: {exc}")
            self._stop.wait(self.poll)


ENGINE: Callable[..., Engine] = WorkerEngine
"""The engine ``nbdurable serve`` runs."""
