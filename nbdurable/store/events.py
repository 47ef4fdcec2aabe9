"""Events: ``events/<id>.json``, one file per event, written atomically; read by waiting runs.

An event is one authenticated journal line (``encode_line``) ``{"id", "name", "data", "sent_at",
"sender"}``. Its id starts with the sending time in nanoseconds, so the directory listing sorts events
by time and a reader can skip the ones sent before a run started without opening them. One file per
event means any number of processes send at once without a lock, and a crashed sender leaves either a
whole event or nothing (a temp file that ``Store.open`` sweeps).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import secrets
import socket
import time
import warnings
from typing import Any

from ..errors import OptionsError
from .journal import _checked_body, encode_line, fsync_dir, io_error

EVENT_SUFFIX = ".json"
_ID_RE = re.compile(r"(\d{19,20})-[0-9a-f]{8}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")
MAX_DATA_DEPTH = 100  # nesting of an event's data: any reader's stack (a kernel's is deep) parses it back


def check_event_name(name: str) -> str:
    """``name`` if it is a valid event name, else OptionsError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise OptionsError(
            f"not an event name: {name!r}",
            hint="use 1-200 letters, digits and . _ : / - (e.g. 'report.approved')",
        )
    return name


def validate_event(name: str, data: Any) -> None:
    """OptionsError unless ``name`` is an event name and ``data`` JSON a waiting run can read back."""
    check_event_name(name)
    try:
        json.dumps(data)
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested past the interpreter's limit
        raise OptionsError(f"event data must be JSON (dicts, lists, strings, numbers, booleans, None): {exc}",
                           hint="send plain data, e.g. {'week': 47}") from None
    if _nested_deeper_than(data, MAX_DATA_DEPTH):
        raise OptionsError(f"event data is nested more than {MAX_DATA_DEPTH} levels deep: "
                           "a waiting run could not read it back",
                           hint="send flatter data, e.g. {'week': 47}")


def _event_time(event_id: str) -> float:
    return int(event_id.split("-", 1)[0]) / 1e9


class EventsMixin:
    """The event half of ``Store``."""

    path: pathlib.Path

    def send_event(self, name: str, data: Any = None) -> dict[str, Any]:
        """Store an event durably (fsync'ed before this returns); returns it with its id."""
        validate_event(name, data)
        now = time.time_ns()
        event = {"id": f"{now:020d}-{secrets.token_hex(4)}", "name": name, "data": data, "sent_at": now / 1e9,
                 "sender": {"pid": os.getpid(), "host": socket.gethostname()}}
        directory = self.path / "events"
        tmp = self.path / "tmp" / f"event-{event['id']}"
        final = directory / f"{event['id']}{EVENT_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                f.write(encode_line(event))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            fsync_dir(directory)
        except OSError as exc:
            raise io_error(exc, f"storing event {name!r}", final) from exc
        return event

    def events(self, *, name: str | None = None, after: float | None = None) -> list[dict[str, Any]]:
        """Stored events, oldest first; only those called ``name`` and sent at or after ``after``.
        A damaged event file is skipped with a warning (``nbdurable check`` reports it)."""
        found = []
        for event_id in self.event_ids(after=after):
            event = self.read_event(event_id)
            if event is None:
                warnings.warn(f"nbdurable: skipping the damaged event file events/{event_id}{EVENT_SUFFIX}",
                              stacklevel=2)
            elif name is None or event.get("name") == name:
                found.append(event)
        return found

    def event_ids(self, *, after: float | None = None) -> list[str]:
        """Ids of the stored events sent at or after ``after`` (unix seconds), oldest first."""
        try:
            names = os.listdir(self.path / "events")
        except FileNotFoundError:
            return []
        ids = sorted(n[: -len(EVENT_SUFFIX)] for n in names
                     if n.endswith(EVENT_SUFFIX) and _ID_RE.fullmatch(n[: -len(EVENT_SUFFIX)]))
        return [i for i in ids if after is None or _event_time(i) >= after]

    def read_event(self, event_id: str) -> dict[str, Any] | None:
        """One event, or None if its file is missing or damaged."""
        try:
            line = (self.path / "events" / f"{event_id}{EVENT_SUFFIX}").read_bytes()
        except FileNotFoundError:
            return None
        body = _checked_body(line[:-1]) if line.endswith(b"\n") else None
        try:
            # Decoded as UTF-8 (as journal lines are): json.loads(bytes) would guess UTF-16 for some bodies.
            event = json.loads(body.decode("utf-8")) if body is not None else None
        except (ValueError, RecursionError):  # authenticated but not JSON (a writer bug), or nested past the limit
            return None
        return event if isinstance(event, dict) and event.get("id") == event_id else None


def _nested_deeper_than(data: Any, limit: int) -> bool:
    """Whether ``data`` has containers more than ``limit`` levels deep (iterative: any depth, no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list, tuple)):
            if depth > limit:
                return True
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return False


__all__ = ["EventsMixin", "check_event_name"]
