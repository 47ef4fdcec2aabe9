"""Group commit of the events the server receives: ``POST /api/events/{name}`` hands its event to one writer
thread and awaits it; the thread stores every event waiting at that moment with one write of the store's
event writer (``Store.open_event_writer``: on a local store one fdatasync of a write-ahead segment,
``store/event_log.py``; on a shared store one transaction). Each reply still comes only after its event is
durable; under load, many events share one sync, which is what lets the server accept more events per second
than one synchronous writer could.

An event with an idempotency key is not batched (``send_event_once`` claims the key first); the endpoint
stores it on the thread pool as before.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from typing import Any

from nbdurable.store import Store
from nbdurable.store.events import new_event

MAX_BATCH = 256  # events per commit: bounds a reply's wait behind others' files


class EventBatcher:
    """One writer thread storing the events submitted to it, as many per commit as are waiting."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[tuple[dict[str, Any], Future[dict[str, Any]]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._writer: Any = None  # the store's event writer, opened by the thread
        self._lock = threading.Lock()
        self.commits = 0  # how many commits stored the events so far (tests and figures read it)

    async def send(self, name: str, data: Any) -> dict[str, Any]:
        """Store the event ``name`` (OptionsError at once if it is invalid); returns it once it is durable."""
        event = new_event(name, data)
        future: Future[dict[str, Any]] = Future()
        self._ensure_thread()
        self._queue.put((event, future))
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        """Store what was submitted, then end the writer thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._write, name="nbdurable-events", daemon=True)
                    self._thread.start()

    def _write(self) -> None:
        try:
            self._drain()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _drain(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[dict[str, Any], Future[dict[str, Any]]]]) -> None:
        try:
            if self._writer is None:
                self._writer = self.store.open_event_writer()
            self._writer.write([event for event, _ in batch])
        except BaseException as exc:  # every waiting request hears of it (a 500 with the store's message)
            for _, future in batch:
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        for event, future in batch:
            future.set_result(event)
