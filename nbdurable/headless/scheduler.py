"""Schedules as a source of runs: a definition made from the command line, and the worker's pass that claims
due slots.

A schedule never starts a run itself: it *claims* each slot (``store/claims.py``, kind ``slot``, key
``<name>@<slot in UTC>``) with the launch fields of its run (notebook, parameters with ``scheduled_at``,
origin ``{"schedule", "slot"}``, output path, working directory, priority, and the flow key
``schedule:<name>`` limited to ``--concurrency``), and the dispatcher (``dispatch.py``) starts the open
claims. The claim is durable before the run starts and the first claim of a key stands, so a slot starts
exactly one run however many workers evaluate it and whenever they crash.

``fire_schedules`` is the worker's pass: for each active schedule, the slots between its cursor (how far a
worker evaluated it, ``Store.schedule_cursor``; at first its creation time) and now, split by the catch-up
policy into slots to claim and slots skipped, the claims made, then the cursor moved to now (only when a
slot was due: an idle pass writes nothing). A worker that
dies between the claims and the cursor claims the same slots again next time: the claims stand, nothing
starts twice. On the time-skipping clock a worker whose clock is behind a cursor (a new process after a
skipping one) first skips to it: the cursor is the store's notion of how far simulated time went.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbdurable.errors import OptionsError
from nbdurable.runtime.clock import clock
from nbdurable.runtime.run import new_run_id
from nbdurable.runtime.schedules import (
    CATCHUP_POLICIES,
    MAX_SLOTS,
    Timing,
    catch_up,
    check_name,
    check_timing,
    next_slot,
    slot_iso,
    slot_key,
    slots,
)
from nbdurable.store import Store

Log = Callable[..., None]  # log(event, **fields)
SLOT_KIND = "slot"


def make_schedule(name: str, notebook: str | os.PathLike[str], *, cron: str | None = None, tz: str | None = None,
                  every: float | None = None, params: dict[str, Any] | None = None, catchup: str = "all",
                  concurrency: int | None = None, output_dir: str | None = None, priority: int = 0,
                  cwd: str | None = None, created_at: float | None = None) -> dict[str, Any]:
    """A checked schedule definition (nothing stored): bad input is an OptionsError saying what to fix."""
    check_name(name)
    timing = check_timing(cron, tz, every)
    path = Path(notebook).expanduser().resolve()
    if not path.is_file():
        raise OptionsError(f"no notebook at {path}", hint="give the path of an existing .ipynb file")
    if catchup not in CATCHUP_POLICIES:
        raise OptionsError(f"unknown catch-up policy {catchup!r}", hint="use --catchup all, latest or none")
    if concurrency is not None and concurrency < 1:
        raise OptionsError(f"--concurrency must be at least 1, not {concurrency}", hint="e.g. --concurrency 1")
    next_slot(timing, clock().now())  # one that never fires (31 February) is an OptionsError now
    if params and "scheduled_at" in params:
        raise OptionsError("the parameter scheduled_at is set by the schedule (each run gets its slot's time)",
                           hint="drop -p scheduled_at")
    return {
        "name": name, "notebook": str(path), "cron": timing.cron, "tz": timing.tz if timing.cron else None,
        "every": timing.every, "params": dict(params or {}), "catchup": catchup, "concurrency": concurrency,
        "output_dir": str(Path(output_dir).expanduser().resolve()) if output_dir else None,
        "priority": int(priority), "cwd": cwd or os.getcwd(), "paused": False,
        "created_at": clock().now() if created_at is None else created_at,
    }


def slot_claim(definition: dict[str, Any], slot: float, *, backfill: bool = False) -> tuple[str, dict[str, Any]]:
    """The claim key of one slot and the launch fields of its run."""
    timing = Timing.of(definition)
    name, key = definition["name"], f"{definition['name']}@{slot_key(slot)}"
    scheduled_at = slot_iso(timing, slot)
    output = None
    if definition.get("output_dir"):
        stamp = slot_key(slot).replace(":", "").replace("-", "")
        output = str(Path(definition["output_dir"]) / f"{name}-{stamp}.ipynb")
    record: dict[str, Any] = {
        "run_id": new_run_id(), "notebook": definition["notebook"],
        "params": {**(definition.get("params") or {}), "scheduled_at": scheduled_at},
        "origin": {"schedule": name, "slot": scheduled_at, **({"backfill": True} if backfill else {})},
        "output_path": output, "cwd": definition.get("cwd"), "priority": int(definition.get("priority") or 0),
    }
    if definition.get("concurrency"):
        record.update(flow_key=f"schedule:{name}", flow_limit=int(definition["concurrency"]))
    return key, record


def claim_slots(store: Store, definition: dict[str, Any], due: list[float], *, log: Log,
                backfill: bool = False) -> int:
    """Claim each slot of ``due`` for ``definition``; returns how many claims this call made (the others
    stood already)."""
    made = 0
    for slot in due:
        key, record = slot_claim(definition, slot, backfill=backfill)
        won, claim = store.claim(SLOT_KIND, key, record)
        made += won
        if won:
            log("slot_claimed", schedule=definition["name"], slot=record["origin"]["slot"], run_id=claim["run_id"],
                backfill=backfill)
    return made


def fire_schedules(store: Store, *, log: Log, grace: float) -> list[float]:
    """The worker's schedule pass: claim every active schedule's due slots (by its catch-up policy) and move
    its cursor to now. Returns each active schedule's next slot (the worker's wake-up times)."""
    wakeups: list[float] = []
    for definition in store.schedules():
        if definition.get("paused"):
            continue
        name, timing = definition["name"], Timing.of(definition)
        cursor = store.schedule_cursor(name)
        if cursor is None:
            cursor = float(definition.get("created_at") or clock().now())
        if clock().skipping and cursor > clock().now():
            clock().sleep_until(cursor)
        now = clock().now()
        due = slots(timing, cursor, now, limit=MAX_SLOTS)
        run, skipped = catch_up(str(definition.get("catchup") or "all"), due, now, grace)
        claim_slots(store, definition, run, log=log)
        if skipped:
            log("slots_skipped", schedule=name, count=len(skipped), first=slot_key(skipped[0]),
                last=slot_key(skipped[-1]), catchup=definition.get("catchup"))
        if due:  # nothing due: the cursor may stay (the same range holds no slot), no file written per tick
            store.advance_schedule_cursor(name, due[-1] if len(due) == MAX_SLOTS else now)
        wakeups.append(next_slot(timing, now))
    return wakeups


def next_fire(store: Store, definition: dict[str, Any], now: float) -> float | None:
    """When the schedule fires next (None while paused): its first slot after its cursor, which is in the past
    when no worker evaluated it since (it fires as soon as one does, by its catch-up policy)."""
    if definition.get("paused"):
        return None
    cursor = store.schedule_cursor(definition["name"])
    return next_slot(Timing.of(definition), float(definition.get("created_at") or now) if cursor is None else cursor)


def pause_schedule(store: Store, name: str) -> dict[str, Any]:
    """Pause the schedule ``name`` (no slot fires until resumed; runs already started go on); returns its
    definition. An unknown name is an OptionsError."""
    definition = {**store.read_schedule(name), "paused": True}
    store.update_schedule(definition)
    return definition


def resume_schedule(store: Store, name: str) -> dict[str, Any]:
    """Resume the schedule ``name`` from now: the slots that passed while it was paused do not run (``schedule
    backfill`` runs them); returns its definition."""
    definition = {**store.read_schedule(name), "paused": False}
    store.advance_schedule_cursor(name, clock().now())
    store.update_schedule(definition)
    return definition


__all__ = ["SLOT_KIND", "claim_slots", "fire_schedules", "make_schedule", "next_fire", "pause_schedule",
           "resume_schedule", "slot_claim"]
