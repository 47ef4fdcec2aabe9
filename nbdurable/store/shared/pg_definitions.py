"""Schedules, triggers and queue settings in PostgreSQL, with their cursors: ``store/schedules.py``,
``store/triggers.py`` and ``store/queues.py``'s interface and rules on rows.

Each is one row keyed by its name holding the authenticated line a file would (body and HMAC-SHA256 tag);
a row failing its tag, or naming another name, is never used. A new definition is inserted with ``ON
CONFLICT DO NOTHING`` (of two ``add`` of one name exactly one succeeds), a change replaces the row in one
statement (a reader sees the old definition or the new, never a mix). Cursors (how far workers evaluated a
schedule, or read events for a trigger) are rows of their own, so a ``pause`` never races a worker's write;
a schedule's only moves forward, in the statement itself.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ...errors import OptionsError, StoreError
from ..journal import encode_line
from ..queues import check_queue_name, queue_setting
from ..schedules import check_schedule_name
from ..triggers import TriggerLookup, check_trigger_name
from .pg_events import open_line_row
from .pg_journal import split_line

_TABLES = {"schedule": "nbd_schedules", "schedule cursor": "nbd_schedule_cursors", "trigger": "nbd_triggers",
           "trigger cursor": "nbd_trigger_cursors", "queue": "nbd_queues"}


class PgDefinitionsMixin(TriggerLookup):
    """Schedules, triggers and queues of ``SharedStore``."""

    if TYPE_CHECKING:
        def _query(self, sql: str, params: Any = None, doing: str = "") -> list[tuple[Any, ...]]: ...
        @property
        def display(self) -> str: ...

    # ----- rows holding one authenticated line, keyed by name

    def _put(self, what: str, name: str, record: dict[str, Any], *, replace: bool) -> bool:
        return self._put_line(what, name, encode_line(record), replace=replace)

    def _put_line(self, what: str, name: str, line: bytes, *, replace: bool) -> bool:
        body, tag = split_line(line)
        conflict = "DO UPDATE SET body = excluded.body, tag = excluded.tag" if replace else "DO NOTHING"
        return bool(self._query(f"INSERT INTO {_TABLES[what]} (name, body, tag) VALUES (%s, %s, %s) "
                                f"ON CONFLICT (name) {conflict} RETURNING 1", [name, body, tag],
                                f"recording the {what} {name!r}"))

    def put_definition_line(self, what: str, name: str, line: bytes) -> bool:
        """Copy a verified authenticated line of ``what`` (``schedule``, ``schedule cursor``, ``trigger``,
        ``trigger cursor``, ``queue``) under ``name`` (``nbdurable migrate``); True if there was none. One
        already here is kept: the target's definitions stand."""
        if what not in _TABLES or _opened(*split_line(line), name) is None:
            raise StoreError(f"the {what} {name!r} to copy fails its authentication tag or names another {what}",
                             hint="run `nbdurable check` on the source store")
        return self._put_line(what, name, line, replace=False)

    def _get(self, what: str, name: str) -> dict[str, Any] | None:
        rows = self._query(f"SELECT body, tag FROM {_TABLES[what]} WHERE name = %s", [name],
                           f"reading the {what} {name!r}")
        return _opened(rows[0][0], rows[0][1], name) if rows else None

    def _all(self, what: str) -> list[tuple[str, dict[str, Any] | None]]:
        rows = self._query(f"SELECT name, body, tag FROM {_TABLES[what]} ORDER BY name", None, f"listing {what}s")
        return [(str(name), _opened(body, tag, str(name))) for name, body, tag in rows]

    def _drop(self, what: str, name: str) -> None:
        self._query(f"DELETE FROM {_TABLES[what]} WHERE name = %s", [name], f"deleting the {what} {name!r}")

    # ----- schedules (store/schedules.py)

    def add_schedule(self, definition: dict[str, Any]) -> None:
        """Store a new schedule; a schedule of that name already stored is an OptionsError (nothing changes)."""
        name = check_schedule_name(str(definition["name"]))
        if not self._put("schedule", name, definition, replace=False):
            raise OptionsError(f"a schedule named {name!r} already exists",
                               hint=f"choose another name, or `nbdurable schedule delete {name}` first")

    def update_schedule(self, definition: dict[str, Any]) -> None:
        """Replace a stored schedule's definition atomically (pause, resume)."""
        name = str(definition["name"])
        self.read_schedule(name)
        self._put("schedule", name, definition, replace=True)

    def read_schedule(self, name: str) -> dict[str, Any]:
        """The definition of schedule ``name``; an unknown one (or one failing authentication) is an OptionsError."""
        found = self._get("schedule", check_schedule_name(name))
        if found is None:
            known = ", ".join(d["name"] for d in self.schedules()) or "none"
            raise OptionsError(f"no schedule named {name!r} in {self.display} (schedules: {known})",
                               hint="`nbdurable schedule list` lists them; `nbdurable schedule add` makes one")
        return found

    def schedules(self) -> list[dict[str, Any]]:
        """Every stored schedule definition, by name."""
        return [d for _, d in self._all("schedule") if d is not None]

    def delete_schedule(self, name: str) -> None:
        """Remove a schedule (its runs and slot claims stay: a slot it already claimed never runs twice)."""
        self.read_schedule(name)
        self._drop("schedule", name)
        self._drop("schedule cursor", name)

    def schedule_cursor(self, name: str) -> float | None:
        """The time up to which a worker evaluated the schedule's slots, or None (never evaluated)."""
        cursor = (self._get("schedule cursor", name) or {}).get("cursor")
        return float(cursor) if isinstance(cursor, (int, float)) else None

    def advance_schedule_cursor(self, name: str, cursor: float) -> None:
        """Move the schedule's cursor forward to ``cursor`` (never back)."""
        current = self.schedule_cursor(name)
        if current is not None and current >= cursor:
            return
        self._put("schedule cursor", name, {"name": name, "cursor": cursor}, replace=True)

    # ----- triggers (store/triggers.py)

    def add_trigger(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Store a new trigger (``definition["name"]`` must be free: OptionsError otherwise)."""
        name = check_trigger_name(str(definition.get("name")))
        if not self._put("trigger", name, definition, replace=False):
            raise OptionsError(f"a trigger named {name!r} exists already",
                               hint=f"pick another name, or `nbdurable trigger delete {name}` first")
        return definition

    def update_trigger(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Replace an existing trigger's definition atomically (OptionsError if there is none)."""
        name = str(definition.get("name"))
        self.trigger(name)
        self._put("trigger", name, definition, replace=True)
        return definition

    def read_trigger(self, name: str) -> dict[str, Any] | None:
        """The trigger ``name``, or None (none, or a row that fails its tag)."""
        return self._get("trigger", check_trigger_name(name))

    def triggers(self) -> list[dict[str, Any]]:
        """Every trigger, by name. A row that fails its tag is skipped with a warning."""
        found = []
        for name, definition in self._all("trigger"):
            if definition is None:
                warnings.warn(f"nbdurable: ignoring the trigger {name!r}: it fails its authentication tag or does "
                              "not parse (add the trigger again)", stacklevel=2)
            else:
                found.append(definition)
        return found

    def delete_trigger(self, name: str) -> None:
        """Delete the trigger ``name`` (OptionsError if there is none). Runs it already claimed still start."""
        self.trigger(name)
        self._drop("trigger", name)
        self._drop("trigger cursor", name)

    def read_trigger_cursor(self, name: str) -> dict[str, Any] | None:
        """Where a trigger pass got to (``write_trigger_cursor``), or None."""
        return self._get("trigger cursor", name)

    def write_trigger_cursor(self, name: str, cursor: dict[str, Any]) -> None:
        """Remember where a trigger pass got to (only a shortcut: claims decide each event once)."""
        self._put("trigger cursor", name, {**cursor, "name": name}, replace=True)

    # ----- queues (store/queues.py)

    def set_queue(self, name: str, concurrency: int | None) -> dict[str, Any]:
        """Store the queue's setting (replacing the previous one atomically); returns it."""
        setting = queue_setting(name, concurrency)
        self._put("queue", name, setting, replace=True)
        return setting

    def read_queue(self, name: str) -> dict[str, Any] | None:
        """The queue's setting, or None (none, or one failing its tag)."""
        return self._get("queue", check_queue_name(name))

    def queues(self) -> list[dict[str, Any]]:
        """Every queue setting, by name."""
        return [s for _, s in self._all("queue") if s is not None]


def _opened(body: bytes, tag: str, name: str) -> dict[str, Any] | None:
    record = open_line_row(bytes(body), str(tag))
    return record if record is not None and record.get("name") == name else None


__all__ = ["PgDefinitionsMixin"]
