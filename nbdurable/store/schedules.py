"""Schedule definitions and their evaluation cursors: ``schedules/<name>.json`` and ``schedules/<name>.state``.

A definition is one authenticated line (``encode_line``) holding what ``nbdurable schedule add`` was given
(notebook, timing, parameters, catch-up policy, concurrency, output directory, priority, working directory)
and whether it is paused. It is written to a temporary file, fsync'ed and then *linked* into place when it
is new (so of two ``schedule add`` of one name exactly one succeeds) or *renamed* over the old one when it
changes (pause, resume: an atomic replace; a reader sees the old definition or the new, never a mix).

The *state* file is the engine's cursor: the time up to which the schedule's slots were evaluated (claimed
or, by the catch-up policy, skipped). Only workers write it, only forward, and apart from the definition so
a ``pause`` never races a worker's write. Losing it costs nothing but work: slots are claimed
(``store/claims.py``), so evaluating a slot twice starts nothing twice.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

from ..errors import OptionsError
from .journal import encode_line, fsync_dir, io_error, read_signed_file

SCHEDULES_DIR = "schedules"
DEFINITION_SUFFIX = ".json"
STATE_SUFFIX = ".state"


def check_schedule_name(name: str) -> str:
    """``name`` if it can name a schedule, else OptionsError."""
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise OptionsError(f"{name!r} is not a valid schedule name",
                           hint="use letters, digits, '.', '_' or '-', e.g. nightly-report")
    return name


class SchedulesMixin:
    """The schedules half of ``Store``."""

    path: pathlib.Path

    def _schedule_path(self, name: str, suffix: str = DEFINITION_SUFFIX) -> pathlib.Path:
        return self.path / SCHEDULES_DIR / (check_schedule_name(name) + suffix)

    def _write_line(self, final: pathlib.Path, record: dict[str, Any], *, replace: bool, doing: str) -> bool:
        """Write ``record`` durably at ``final``: renamed over it (``replace``) or linked (False if it exists)."""
        tmp = self.path / "tmp" / f"schedule-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(encode_line(record))
                f.flush()
                os.fsync(f.fileno())
            created = True
            if replace:
                os.replace(tmp, final)
            else:
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    created = False
                finally:
                    os.unlink(tmp)
            fsync_dir(final.parent)
        except OSError as exc:
            raise io_error(exc, doing, final) from exc
        return created

    def add_schedule(self, definition: dict[str, Any]) -> None:
        """Store a new schedule; a schedule of that name already stored is an OptionsError (nothing changes)."""
        name = str(definition["name"])
        if not self._write_line(self._schedule_path(name), definition, replace=False,
                                doing=f"recording the schedule {name!r}"):
            raise OptionsError(f"a schedule named {name!r} already exists",
                               hint=f"choose another name, or `nbdurable schedule delete {name}` first")

    def update_schedule(self, definition: dict[str, Any]) -> None:
        """Replace a stored schedule's definition atomically (pause, resume)."""
        name = str(definition["name"])
        self.read_schedule(name)  # an unknown name: its error
        self._write_line(self._schedule_path(name), definition, replace=True, doing=f"updating the schedule {name!r}")

    def read_schedule(self, name: str) -> dict[str, Any]:
        """The definition of schedule ``name``; an unknown one (or one failing authentication) is an OptionsError."""
        found = _read(self._schedule_path(name))
        if found is None:
            known = ", ".join(d["name"] for d in self.schedules()) or "none"
            raise OptionsError(f"no schedule named {name!r} in {self.path} (schedules: {known})",
                               hint="`nbdurable schedule list` lists them; `nbdurable schedule add` makes one")
        return found

    def schedules(self) -> list[dict[str, Any]]:
        """Every stored schedule definition, by name."""
        directory = self.path / SCHEDULES_DIR
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        return [d for n in names if n.endswith(DEFINITION_SUFFIX) and (d := _read(directory / n)) is not None]

    def delete_schedule(self, name: str) -> None:
        """Remove a schedule (its runs and slot claims stay: a slot it already claimed never runs twice)."""
        self.read_schedule(name)
        for suffix in (DEFINITION_SUFFIX, STATE_SUFFIX):
            try:
                self._schedule_path(name, suffix).unlink()
            except FileNotFoundError:
                pass
        fsync_dir(self.path / SCHEDULES_DIR)

    def schedule_cursor(self, name: str) -> float | None:
        """The time up to which a worker evaluated the schedule's slots, or None (never evaluated)."""
        state = _read(self._schedule_path(name, STATE_SUFFIX))
        cursor = (state or {}).get("cursor")
        return float(cursor) if isinstance(cursor, (int, float)) else None

    def advance_schedule_cursor(self, name: str, cursor: float) -> None:
        """Move the schedule's cursor forward to ``cursor`` (never back)."""
        current = self.schedule_cursor(name)
        if current is not None and current >= cursor:
            return
        self._write_line(self._schedule_path(name, STATE_SUFFIX), {"name": name, "cursor": cursor}, replace=True,
                         doing=f"recording how far the schedule {name!r} was evaluated")


def _read(path: pathlib.Path) -> dict[str, Any] | None:
    record = read_signed_file(path)
    return record if record is not None and isinstance(record.get("name"), str) else None


__all__ = ["SCHEDULES_DIR", "SchedulesMixin", "check_schedule_name"]
