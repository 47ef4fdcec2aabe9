"""Events (``nbd_events``) and cancel requests (``nbd_cancels``) in PostgreSQL: one row each, the same
authenticated line (body and HMAC-SHA256 tag) an event or cancel file holds. A row failing its tag is
never used: the event is skipped with a warning, the cancel request ignored (``nbdurable check`` reports
both). The first cancel request of a run stands (``ON CONFLICT DO NOTHING``). An idempotency key
(``send_event_once``) is a claim of kind ``eventkey`` naming its event's id, taken before the event is
stored, as a directory store's ``idempotency/`` file is."""

from __future__ import annotations

import json
import time
import warnings
from typing import TYPE_CHECKING, Any

from ..events import _ID_RE, SendOnce, check_idempotency_key, event_time, new_event
from ..journal import _checked_body, check_run_id, encode_line
from .pg_journal import split_line

EVENT_KEY_KIND = "eventkey"  # the claims naming the event sent with an idempotency key


def open_line_row(body: bytes, tag: str) -> dict[str, Any] | None:
    """The JSON object of an authenticated row, or None (fails its tag, or not a JSON object)."""
    checked = _checked_body(bytes(body) + b"\t" + tag.encode("ascii"))
    try:
        value = json.loads(checked.decode("utf-8")) if checked is not None else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _low_id(after: float | None) -> str:
    """The smallest event id sent at or after ``after`` may have, with a millisecond to spare: ``after * 1e9``
    is a float whose last digits are rounding (the exact comparison is ``event_time(id) >= after``)."""
    return "" if after is None else f"{max(0, int(after * 1e9) - 1_000_000):020d}"


class PgEventsMixin(SendOnce):
    """Events and cancel requests of ``SharedStore``."""

    if TYPE_CHECKING:
        def _query(self, sql: str, params: Any = None, doing: str = "") -> list[tuple[Any, ...]]: ...
        def _many(self, sql: str, rows: list[list[Any]], doing: str) -> None: ...
        def record_decision(self, kind: str, key: str, record: dict[str, Any]) -> tuple[bool, dict[str, Any]]: ...

    def send_event(self, name: str, data: Any = None) -> dict[str, Any]:
        """Store an event durably (committed with a synchronous WAL flush); returns it with its id."""
        event = new_event(name, data)
        self.put_event_line(event["id"], encode_line(event))
        return event

    def send_events(self, events: list[dict[str, Any]]) -> None:
        """Store events made by ``new_event`` durably, together: one transaction, one WAL flush."""
        rows = [[event["id"], *split_line(encode_line(event))] for event in events]
        self._many("INSERT INTO nbd_events (id, body, tag) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", rows,
                   f"storing {len(rows)} events")

    def _write_events(self, events: list[dict[str, Any]]) -> None:
        self.send_events(events)

    def claim_event_key(self, key: str, event_id: str) -> str:
        """The event id the idempotency ``key`` names: ``event_id`` if this call claimed it, else the earlier
        claim's (a claim of kind ``eventkey``: the first one stands)."""
        _, standing = self.record_decision(EVENT_KEY_KIND, check_idempotency_key(key), {"event_id": event_id})
        return str(standing["event_id"])

    def open_event_writer(self) -> _EventWriter:
        """A writer storing batches of events durably, one transaction each (as ``Store.open_event_writer``)."""
        return _EventWriter(self)

    def put_event_line(self, event_id: str, line: bytes) -> None:
        """Store an event's authenticated line under its id (kept if present: migration is idempotent)."""
        body, tag = split_line(line)
        self._query("INSERT INTO nbd_events (id, body, tag) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    [event_id, body, tag], f"storing event {event_id}")

    def events(self, *, name: str | None = None, after: float | None = None) -> list[dict[str, Any]]:
        """Stored events, oldest first; only those called ``name`` and sent at or after ``after``."""
        found = []
        for event_id, body, tag in self._event_rows(after):
            event = open_line_row(body, tag)
            if event is None or event.get("id") != event_id:
                warnings.warn(f"nbdurable: skipping the damaged event {event_id}", stacklevel=2)
            elif (name is None or event.get("name") == name) and (after is None or event_time(event_id) >= after):
                found.append(event)
        return found

    def _event_rows(self, after: float | None) -> list[tuple[str, bytes, str]]:
        low = _low_id(after)
        return self._query("SELECT id, body, tag FROM nbd_events WHERE id >= %s ORDER BY id", [low], "reading events")

    def event_ids(self, *, after: float | None = None) -> list[str]:
        """Ids of the stored events sent at or after ``after`` (unix seconds), oldest first."""
        low = _low_id(after)
        ids = [i for (i,) in self._query("SELECT id FROM nbd_events WHERE id >= %s ORDER BY id", [low],
                                         "listing events")]
        return [i for i in ids if _ID_RE.fullmatch(i) and (after is None or event_time(i) >= after)]

    def read_event(self, event_id: str) -> dict[str, Any] | None:
        """One event, or None if it is missing or damaged."""
        rows = self._query("SELECT body, tag FROM nbd_events WHERE id = %s", [event_id], f"reading event {event_id}")
        event = open_line_row(*rows[0]) if rows else None
        return event if event is not None and event.get("id") == event_id else None

    def event_rows(self) -> list[tuple[str, bytes, str]]:
        """Every event row (id, body, tag), unchecked (maintenance)."""
        return [(i, bytes(b), t) for i, b, t in self._event_rows(None)]

    # ----- cancel requests

    def request_cancel(self, run_id: str, *, by: str | None, reason: str | None) -> dict[str, Any]:
        """Record durably that ``run_id`` is to be cancelled; returns the request (the first one stands)."""
        check_run_id(run_id)
        request = {"run_id": run_id, "by": by, "reason": reason, "requested_at": time.time()}
        self.put_cancel_line(run_id, encode_line(request))
        return self.cancel_request(run_id) or request

    def put_cancel_line(self, run_id: str, line: bytes) -> None:
        """Store a cancel request's authenticated line (a run's first request stands)."""
        body, tag = split_line(line)
        self._query("INSERT INTO nbd_cancels (run_id, body, tag) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    [run_id, body, tag], f"recording the cancel request of run {run_id}")

    def cancel_requested(self, run_id: str) -> bool:
        """True if ``run_id`` was asked to cancel (one indexed lookup)."""
        return bool(self._query("SELECT 1 FROM nbd_cancels WHERE run_id = %s", [run_id], "polling for a cancel"))

    def cancel_request(self, run_id: str) -> dict[str, Any] | None:
        """The cancel request of ``run_id``, or None (none, or one failing its tag)."""
        rows = self._query("SELECT body, tag FROM nbd_cancels WHERE run_id = %s", [run_id], "reading a cancel request")
        request = open_line_row(*rows[0]) if rows else None
        return request if request is not None and request.get("run_id") == run_id else None

    def cancel_rows(self) -> list[tuple[str, bytes, str]]:
        """Every cancel request row (run_id, body, tag), unchecked (maintenance)."""
        return [(r, bytes(b), t) for r, b, t in self._query("SELECT run_id, body, tag FROM nbd_cancels", None,
                                                            "listing cancel requests")]


__all__ = ["PgEventsMixin", "open_line_row"]


class _EventWriter:
    """Batches of events into a shared store: ``write`` commits each batch in one transaction."""

    def __init__(self, store: PgEventsMixin) -> None:
        self.store = store

    def write(self, events: list[dict[str, Any]]) -> None:
        self.store.send_events(events)

    def close(self) -> None:
        """Nothing to finish: each batch was committed."""
