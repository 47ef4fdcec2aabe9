"""Schedules and triggers as the API and the dashboard show them.

TODO(issue 17): schedules, triggers and the orchestration worker are being built (issue 17); until they are
merged these return no entries. The lead wires them here: ``list_schedules`` returns one dict per schedule
(``name``, ``notebook``, ``cron``, ``next_fire_at`` (unix seconds), ``paused``), ``list_triggers`` one per
trigger (``name``, ``event``, ``notebook``, ``match``); the dashboard's panes show those keys;
``set_paused`` pauses or resumes a schedule (``POST /api/schedules/{name}/pause|resume``, the dashboard's
buttons) and returns its dict as ``list_schedules`` gives it.
"""

from __future__ import annotations

from typing import Any

from nbdurable.errors import RequestError
from nbdurable.store import Store


def list_schedules(store: Store) -> list[dict[str, Any]]:
    """The store's schedules with their next fire times. TODO(issue 17): none until schedules exist."""
    return []


def list_triggers(store: Store) -> list[dict[str, Any]]:
    """The store's event triggers. TODO(issue 17): none until triggers exist."""
    return []


def set_paused(store: Store, name: str, paused: bool) -> dict[str, Any]:
    """Pause or resume the schedule ``name``; RequestError 404 when there is none. TODO(issue 17): no
    schedule exists until schedules do."""
    raise RequestError(f"no schedule {name!r}", status=404, hint="GET /api/schedules lists the schedules")
