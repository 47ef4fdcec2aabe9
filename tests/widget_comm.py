"""A recording comm: widget logic tested without a browser or a kernel.

``recording_comms()`` makes every widget created inside it open a ``RecordingComm`` (through the
``comm`` package's ``create_comm`` hook, which ipywidgets calls), which records what the kernel side
would send to the frontend; ``RecordingComm.receive`` delivers a message as if the frontend sent it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import comm
from comm.base_comm import BaseComm


class RecordingComm(BaseComm):
    """Keeps every message published to the frontend: ``(msg_type, data, buffers)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[tuple[str, dict[str, Any], list[Any]]] = []
        super().__init__(*args, **kwargs)

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None,
                    **keys: Any) -> None:
        self.sent.append((msg_type, dict(data or {}), list(buffers or [])))

    def updates(self) -> list[dict[str, Any]]:
        """The state updates sent after the comm opened (``method == 'update'``)."""
        return [data["state"] for kind, data, _ in self.sent if kind == "comm_msg" and data.get("method") == "update"]

    def customs(self) -> list[Any]:
        """The custom messages sent to the frontend."""
        return [data["content"] for kind, data, _ in self.sent if kind == "comm_msg" and data.get("method") == "custom"]

    def receive(self, data: dict[str, Any], buffers: list[Any] | None = None) -> None:
        """Deliver a message as the frontend would (``data`` is the widget protocol's ``data``)."""
        self.handle_msg({"content": {"comm_id": self.comm_id, "data": data}, "buffers": buffers or []})

    def click(self, content: dict[str, Any]) -> None:
        """A custom message from the frontend (anywidget's ``model.send(content)``)."""
        self.receive({"method": "custom", "content": content})


@contextlib.contextmanager
def recording_comms() -> Iterator[list[RecordingComm]]:
    """Within the block, widgets open RecordingComms; yields the list of comms opened."""
    opened: list[RecordingComm] = []
    original = comm.create_comm

    def create(*args: Any, **kwargs: Any) -> RecordingComm:
        made = RecordingComm(*args, **kwargs)
        opened.append(made)
        return made

    comm.create_comm = create  # type: ignore[assignment]
    try:
        yield opened
    finally:
        comm.create_comm = original  # type: ignore[assignment]
