"""Events: ``events/<id>.json``, one file per event, written atomically; read by waiting runs.

An event is one authenticated journal line (``encode_line``) ``{"id", "name", "data", "sent_at",
"sender"}``. Its id starts with the sending time in nanoseconds, so the directory listing sorts events
by time and a reader can skip the ones sent before a run started without opening them. One file per
event means any number of processes send at once without a lock, and a crashed sender leaves either a
whole event or nothing (a temp file that ``Store.open`` sweeps).

Idempotency keys (``send_event_once``, the HTTP API's ``Idempotency-Key``): ``idempotency/<sha256 of the
key>`` names the id of the event sent with that key. It is claimed *before* the event is written (a
hard link of a fsync'ed temp file: exactly one sender wins, across processes), so a sender that crashed
between the claim and the event leaves an id that the retry fills in: one event per key, never two.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import secrets
import socket
import time
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import OptionsError
from .journal import _checked_body, encode_line, fsync_dir, io_error

EVENT_SUFFIX = ".json"
_ID_RE = re.compile(r"(\d{19,20})-[0-9a-f]{8}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")
IDEMPOTENCY_DIR = "idempotency"
MAX_IDEMPOTENCY_KEY = 200  # characters
_CLAIM_WAIT_S = 2.0  # how long a second sender waits for the first one's event file before writing it itself
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
    _check_data(data)


def event_time(event_id: str) -> float:
    """When the event ``event_id`` was sent (unix seconds, from its id: no read)."""
    return int(event_id.split("-", 1)[0]) / 1e9


class SendOnce:
    """``send_event_once`` over a store's ``claim_event_key``, ``read_event`` and ``_write_events`` (the
    directory store's and the shared store's)."""

    if TYPE_CHECKING:
        def claim_event_key(self, key: str, event_id: str) -> str: ...
        def read_event(self, event_id: str) -> dict[str, Any] | None: ...
        def _write_events(self, events: list[dict[str, Any]]) -> None: ...

    def send_event_once(self, name: str, data: Any, key: str) -> tuple[dict[str, Any], bool]:
        """Store an event durably unless one was sent with the idempotency ``key``: returns (the event,
        True) when this call stored it, (the first event sent with ``key``, False) when it stored nothing."""
        check_idempotency_key(key)
        event = new_event(name, data, key=key)
        claimed = self.claim_event_key(key, event["id"])
        if claimed == event["id"]:
            self._write_events([event])
            return event, True
        deadline = time.monotonic() + _CLAIM_WAIT_S
        while (first := self.read_event(claimed)) is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the first sender is writing it, or crashed before it did
        if first is not None:
            return first, False
        # The first sender claimed the key and died before its event was durable (it never acknowledged
        # it): this retry stores the event under the claimed id.
        event["id"], event["sent_at"] = claimed, event_time(claimed)
        self._write_events([event])
        return event, True


class EventsMixin(SendOnce):
    """The event half of ``Store``."""

    path: pathlib.Path

    def send_event(self, name: str, data: Any = None) -> dict[str, Any]:
        """Store an event durably (fsync'ed before this returns); returns it with its id."""
        event = new_event(name, data)
        self._write_events([event])
        return event

    def claim_event_key(self, key: str, event_id: str) -> str:
        """The event id the idempotency ``key`` names: ``event_id`` if this call claimed it, else the earlier
        claim's."""
        directory = self.path / IDEMPOTENCY_DIR
        final = directory / hashlib.sha256(key.encode("utf-8")).hexdigest()
        tmp = self.path / "tmp" / f"key-{event_id}"
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(encode_line({"key": key, "event_id": event_id}))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)  # atomic create-if-absent: one claimant wins
                fsync_dir(directory)
                return event_id
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            line = final.read_bytes()
        except OSError as exc:
            raise io_error(exc, f"claiming the idempotency key of an event {key!r}", final) from exc
        body = _checked_body(line[:-1]) if line.endswith(b"\n") else None
        claim = json.loads(body.decode("utf-8")) if body is not None else None
        if not isinstance(claim, dict) or not _ID_RE.fullmatch(str(claim.get("event_id"))):
            raise OptionsError(f"the idempotency key file {final} is damaged",
                               hint="run `nbdurable check`; send the event with a new key")
        return str(claim["event_id"])

    def _write_events(self, events: list[dict[str, Any]]) -> None:
        self.write_event_files([(event["id"], encode_line(event)) for event in events], durable=True)

    def write_event_files(self, lines: list[tuple[str, bytes]], *, durable: bool) -> None:
        """Write each event's authenticated line as ``events/<id>.json`` (a temp file renamed into place: a
        reader sees all of it or nothing). ``durable``: fsync each file, then the directory once; else leave
        that to the caller (``event_log.EventLog``, whose segment holds the lines durably)."""
        directory = self.path / "events"
        pending: list[tuple[pathlib.Path, pathlib.Path]] = []
        final = directory
        try:
            for event_id, line in lines:
                tmp = self.path / "tmp" / f"event-{event_id}"
                final = directory / f"{event_id}{EVENT_SUFFIX}"
                with open(tmp, "wb") as f:
                    pending.append((tmp, final))
                    f.write(line)
                    if durable:
                        f.flush()
                        os.fsync(f.fileno())
            for tmp, final in pending:
                os.replace(tmp, final)
            if durable:
                fsync_dir(directory)
        except OSError as exc:
            for tmp, _ in pending:
                tmp.unlink(missing_ok=True)
            raise io_error(exc, f"storing {len(lines)} event(s)", final) from exc

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
        return [i for i in ids if after is None or event_time(i) >= after]

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


def new_event(name: str, data: Any = None, *, key: str | None = None) -> dict[str, Any]:
    """A new event ``name`` carrying ``data`` (OptionsError if either is invalid), not yet stored: its id is the
    time now in nanoseconds and a random suffix. ``key``: its idempotency key, recorded in it."""
    check_event_name(name)
    _check_data(data)
    now = time.time_ns()
    event = {"id": f"{now:020d}-{secrets.token_hex(4)}", "name": name, "data": data, "sent_at": now / 1e9,
             "sender": _sender()}
    if key is not None:
        event["idempotency_key"] = key
    return event


def check_idempotency_key(key: str) -> str:
    """``key`` if it is a usable idempotency key (1-200 printable characters), else OptionsError."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise OptionsError(f"not an idempotency key: {str(key)[:80]!r}",
                           hint=f"use 1-{MAX_IDEMPOTENCY_KEY} printable characters, e.g. a UUID")
    return key


def _sender() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _check_data(data: Any) -> None:
    try:
        json.dumps(data)
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested past the interpreter's limit
        raise OptionsError(f"event data must be JSON (dicts, lists, strings, numbers, booleans, None): {exc}",
                           hint="send plain data, e.g. {'week': 47}") from None
    if _nested_deeper_than(data, MAX_DATA_DEPTH):
        raise OptionsError(f"event data is nested more than {MAX_DATA_DEPTH} levels deep: "
                           "a waiting run could not read it back",
                           hint="send flatter data, e.g. {'week': 47}")


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


__all__ = ["EventsMixin", "check_event_name", "check_idempotency_key", "event_time", "validate_event"]
