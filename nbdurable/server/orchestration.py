"""Schedules and triggers as the API and the dashboard show them (``GET /api/schedules``, ``GET
/api/triggers``, ``POST /api/schedules/{name}/pause|resume``): the definitions ``nbdurable schedule`` and
``nbdurable trigger`` keep in the store, with each schedule's next fire time and each trigger's counts of
what it decided.
"""

from __future__ import annotations

from typing import Any

from nbdurable.errors import OptionsError, RequestError
from nbdurable.headless.scheduler import next_fire, pause_schedule, resume_schedule
from nbdurable.headless.triggers import is_paused, trigger_counts
from nbdurable.runtime.clock import clock
from nbdurable.runtime.schedules import Timing
from nbdurable.store import Store


def _schedule(store: Store, definition: dict[str, Any], now: float) -> dict[str, Any]:
    return {"name": definition["name"], "notebook": definition["notebook"], "cron": Timing.of(definition).describe(),
            "next_fire_at": next_fire(store, definition, now), "paused": bool(definition.get("paused")),
            "catchup": definition.get("catchup"), "concurrency": definition.get("concurrency"),
            "params": definition.get("params") or {}}


def list_schedules(store: Store) -> list[dict[str, Any]]:
    """The store's schedules, by name: ``name``, ``notebook``, ``cron`` (its timing in words),
    ``next_fire_at`` (unix seconds; None while paused), ``paused``, ``catchup``, ``concurrency``, ``params``."""
    now = clock().now()
    return [_schedule(store, d, now) for d in store.schedules()]


def list_triggers(store: Store) -> list[dict[str, Any]]:
    """The store's event triggers: ``name``, ``event``, ``notebook``, ``match``, ``paused``, ``flow`` and
    ``counts`` (runs claimed, delayed, dropped, duplicates)."""
    return [{"name": d["name"], "event": d["on"], "notebook": d["notebook"], "match": d.get("match"),
             "paused": is_paused(d), "flow": d.get("flow") or {}, "counts": trigger_counts(store, d)}
            for d in store.triggers()]


def set_paused(store: Store, name: str, paused: bool) -> dict[str, Any]:
    """Pause or resume the schedule ``name``; RequestError 404 when there is none."""
    try:
        definition = (pause_schedule if paused else resume_schedule)(store, name)
    except OptionsError as exc:
        raise RequestError(exc.message, status=404,
                           hint="GET /api/schedules lists the schedules") from None
    return _schedule(store, definition, clock().now())
