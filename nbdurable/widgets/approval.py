"""The approval widget: a pending ``nbd.wait_for_event`` in a kernel, with Approve and Reject buttons.

A click sends the awaited event (``send_event``) with data ``{**match, **payload, "approved": true|false}``
— ``payload`` being the optional JSON object typed in the widget — so the wait takes it like any event
sent with ``nbdurable send``. The widget only sends events: the waiting cell decides what they mean (a
wait with ``match={"approved": True}`` is released by Approve only).

The waiting cell blocks the kernel's main thread. JupyterLab (≥ 4.4) with ipykernel (≥ 7) sends widget
messages on a kernel subshell, so the click is handled on the subshell's thread while the cell waits;
the widget tells ipykernel to handle its messages wherever the frontend sends them (ipykernel would
otherwise route them back to the main thread, which is busy). Where a frontend has no subshells the
buttons act when the cell ends; ``nbdurable send NAME --data JSON`` releases the wait from a terminal.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anywidget
import traitlets

from nbdurable.runtime.session import NOTICE_METADATA_KEY
from nbdurable.store import Store
from nbdurable.widgets.assets import static_text


class ApprovalWidget(anywidget.AnyWidget):
    """Approve / Reject (with an optional JSON payload) for the event a cell waits for."""

    _esm = static_text("approval.js")
    event = traitlets.Unicode("").tag(sync=True)
    match = traitlets.Dict(allow_none=True, default_value=None).tag(sync=True)
    timeout_at = traitlets.Float(allow_none=True, default_value=None).tag(sync=True)
    state = traitlets.Unicode("waiting").tag(sync=True)  # waiting | sent | received | timeout | interrupted
    message = traitlets.Unicode("").tag(sync=True)

    def __init__(self, store: Store, event: str, match: dict[str, Any] | None = None, timeout_at: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(event=event, match=match, timeout_at=timeout_at, **kwargs)
        self.store = store
        self.on_msg(self._on_frontend)
        comm = getattr(self, "comm", None)
        if comm is not None and hasattr(comm, "_reply_subshell_for"):
            # ipykernel routes a comm's incoming messages to the thread that last published on it (here the
            # main thread, blocked by the waiting cell): keep them on the subshell the frontend chose.
            comm._reply_subshell_for = lambda data, default: default

    def _on_frontend(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("action") not in ("approve", "reject"):
            return
        self.decide(content["action"] == "approve", content.get("payload") or "")

    def decide(self, approved: bool, payload: str | dict[str, Any] = "") -> str | None:
        """Send the event as Approve/Reject would; returns its id (None if the payload is not a JSON object)."""
        if self.state not in ("waiting", "sent"):
            self.message = f"this wait already ended ({self.state}): nothing sent"
            return None
        if isinstance(payload, str):
            try:
                payload = json.loads(payload) if payload.strip() else {}
            except ValueError as exc:
                self.message = f"the payload is not valid JSON ({exc}); nothing was sent — fix it and click again"
                return None
        if not isinstance(payload, dict):
            self.message = "the payload must be a JSON object, e.g. {\"comment\": \"looks good\"}; nothing was sent"
            return None
        data = {**(self.match or {}), **payload, "approved": approved}
        event_id = str(self.store.send_event(self.event, data)["id"])
        self.state = "sent"
        self.message = f"{'approved' if approved else 'rejected'}: event {self.event!r} sent ({event_id})"
        return event_id

    def finish(self, event: dict[str, Any] | None, *, interrupted: bool = False) -> None:
        """The wait ended: with ``event``, at its timeout (None), or interrupted."""
        if interrupted:
            self.state, self.message = "interrupted", "the wait was interrupted"
        elif event is not None:
            data = event.get("data")
            verdict = ""
            if isinstance(data, dict) and isinstance(data.get("approved"), bool):
                verdict = "approved — " if data["approved"] else "rejected — "
            self.state, self.message = "received", (f"{verdict}the cell received event {self.event!r} "
                                                    f"({event.get('id')})")
        else:
            self.state, self.message = "timeout", f"no event {self.event!r} before the timeout"


def show_approval(store: Store, event: str, match: dict[str, Any] | None, timeout_at: float | None) -> ApprovalWidget:
    """Display the approval widget of a wait beginning now (a notice: never recorded as the cell's output)."""
    from IPython.display import display

    widget = ApprovalWidget(store, event, match, timeout_at)
    display(widget, metadata={NOTICE_METADATA_KEY: {"notice": "approval", "event": event, "shown_at": time.time()}})  # type: ignore[no-untyped-call]
    return widget
