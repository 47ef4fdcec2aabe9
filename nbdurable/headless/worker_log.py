"""The engine's decisions as log lines: one structured event each (``log(event, **fields)``), written as JSON
(``--log-format json``: ``{"ts", "event", **fields}``) or as one readable sentence (the default).

Events: ``worker_started`` / ``worker_stopped``; ``slot_claimed`` and ``slots_skipped`` (schedules);
``resume_started``, ``resume_skipped``, ``run_resumed`` (suspended runs); ``run_started``, ``run_deferred``,
``run_exited``, ``run_finished`` (runs started from claims, by the dispatcher); ``run_recovering``,
``recovery_given_up`` (claimed runs whose process died mid-run: ``recovery.py``); ``run_notice`` (a line a run
printed: code changed under it, what ``--on-change`` decided); ``clock_skipped`` (the time-skipping clock).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

_TEXT = {
    "worker_started": "worker started on store {store} ({mode}; at most {max_concurrent} run(s) at once)",
    "worker_stopped": "worker stopped: resumed {resumed} run(s), started {started} new run(s)",
    "slot_claimed": "schedule {schedule}: slot {slot} claimed as run {run_id}",
    "slots_skipped": "schedule {schedule}: {count} missed slot(s) skipped (--catchup {catchup}), {first} to {last}",
    "resume_started": "run {run_id}: resuming {notebook} ({reason})",
    "resume_skipped": "run {run_id}: {why}",
    "run_resumed": "run {run_id}: resumed as run {new_run}: {outcome} ({executed} executed, {restored} restored, "
                   "{seconds:.1f} s)",
    "run_notice": "run {run_id}: {text}",
    "run_started": "run {run_id}: started ({claim}: {notebook})",
    "run_deferred": "run {run_id}: not started now: {why}",
    "run_exited": "run {run_id}: its process exited with code {exit_code} after {seconds} s",
    "run_finished": "run {run_id}: {outcome} ({executed} executed, {restored} restored)",
    "run_recovering": "run {run_id}: its process died mid-run ({claim}): resuming it from its last committed cell",
    "recovery_given_up": "run {run_id}: not resumed again ({claim}): {why}",
    "clock_skipped": "time-skipping clock: nothing due, skipped to {to}",
}


def describe(event: str, fields: dict[str, Any]) -> str:
    """The readable sentence of one event (``event key=value …`` for one without a template)."""
    template = _TEXT.get(event)
    if template is not None:
        try:
            return template.format(**fields)
        except (KeyError, ValueError, TypeError):
            pass
    return " ".join([event, *(f"{k}={v}" for k, v in fields.items())])


def format_line(event: str, fields: dict[str, Any], *, json_format: bool, now: float | None = None) -> str:
    """One log line: JSON with the UTC time, or the local time and the sentence."""
    when = dt.datetime.now(dt.timezone.utc) if now is None else dt.datetime.fromtimestamp(now, dt.timezone.utc)
    if json_format:
        return json.dumps({"ts": when.isoformat(timespec="milliseconds"), "event": event, **fields}, default=str)
    return f"{when.astimezone().isoformat(sep=' ', timespec='seconds')} {describe(event, fields)}"


__all__ = ["describe", "format_line"]
