"""The live stream: ``GET /api/stream``, server-sent events of run changes and new events.

One watcher per server (however many clients listen), polling every ``POLL_S`` seconds while someone
listens, and cheaply: the store's change marks (``Store.change_marks``: on a local store the ``journals/`` and
``events/`` directories' mtimes; on a shared store the newest record's transaction and event id) and the
journal sizes of runs that have not finished (a finished run's journal only grows when it is reopened, which
moves the first mark). Only when something changed does it ingest the catalog and read the changed runs' rows.

Messages (``event:`` name, ``data:`` JSON): ``runs`` ``{"runs": [run rows as GET /api/runs gives them]}``;
``events`` ``{}`` (new events: GET /api/events); ``hello`` ``{}`` once at connection; a ``: ping`` comment
every ``PING_S`` seconds keeps proxies from closing an idle stream. A client that falls behind gets
``resync`` (fetch the lists again).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from nbdurable.store import Store

POLL_S = 0.5
PING_S = 15.0
QUEUE_MAX = 200
_FINISHED = ("completed", "cancelled")


class Watcher:
    """Polls the store for run changes and fans them out to the stream's subscribers."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queues: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()
        self._marks: tuple[Any, Any] = (None, None)
        self._sizes: dict[str, int] = {}  # journal sizes of the runs not finished
        self._known: set[str] = set()  # every run id seen (a new journal is a new id)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin polling (on the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def subscribe(self) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        """A queue of (message name, data) for one client."""
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(QUEUE_MAX)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        """The client left."""
        self._queues.discard(queue)

    async def _run(self) -> None:
        await run_in_threadpool(self._baseline)
        while True:
            await asyncio.sleep(POLL_S)
            if not self._queues:
                continue
            try:
                messages = await run_in_threadpool(self.poll)
            except Exception:  # a locked catalog, a store being repaired: the next poll tries again
                continue
            for message in messages:
                self._publish(message)

    def _publish(self, message: tuple[str, dict[str, Any]]) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:  # a client that does not read: tell it to fetch everything again
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(("resync", {}))

    def _baseline(self) -> None:
        self._marks = self.store.change_marks()
        self._known = set(self.store.run_ids())
        self._sizes = self.store.journal_sizes(self._open_runs())

    def _open_runs(self) -> list[str]:
        table = self.store.catalog().query(
            f"SELECT run_id FROM runs WHERE status NOT IN {_FINISHED} OR status IS NULL")
        return [str(r) for r in table["run_id"]]

    def poll(self) -> list[tuple[str, dict[str, Any]]]:
        """What changed since the last poll, as stream messages (blocking: the thread pool calls it)."""
        from nbdurable.widgets.history import RUN_COLUMNS, run_row

        marks = self.store.change_marks()
        journals_changed, events_changed = marks[0] != self._marks[0], marks[1] != self._marks[1]
        self._marks = marks
        candidates = set(self._sizes)
        new: set[str] = set()
        if journals_changed:  # a new run, or a finished run's journal reopened (its marker file)
            ids = set(self.store.run_ids())
            new, self._known = ids - self._known, self._known | ids
            candidates |= new | set(self._open_runs())
        sizes = self.store.journal_sizes(sorted(candidates))
        changed = sorted(r for r, size in sizes.items() if r in new or self._sizes.get(r) != size)
        messages: list[tuple[str, dict[str, Any]]] = []
        if changed:
            rows = self.store.catalog().query(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))", [changed]
            ).to_dict("records")
            messages.append(("runs", {"runs": [run_row(r) for r in rows]}))
            for row in rows:
                if row["status"] in _FINISHED:
                    sizes.pop(row["run_id"], None)
        self._sizes = sizes
        if events_changed:
            messages.append(("events", {}))
        return messages


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, default=str)}\n\n".encode()


async def stream(request: Request) -> Response:
    """Server-sent events of run changes (see the module's docstring).
    ---
    summary: Live stream of run changes (text/event-stream)
    responses:
      200: {description: "events: hello, runs {runs: [...]}, events {}, resync {}"}
    """
    watcher: Watcher = request.app.state.watcher
    queue = watcher.subscribe()

    async def messages() -> AsyncIterator[bytes]:
        try:
            yield _sse("hello", {})
            while True:
                try:
                    name, data = await asyncio.wait_for(queue.get(), PING_S)
                except asyncio.TimeoutError:
                    yield b": ping\n\n"
                    continue
                yield _sse(name, data)
        finally:
            watcher.unsubscribe(queue)

    return StreamingResponse(messages(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
