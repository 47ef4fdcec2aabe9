"""How the command line shows runs and steps to a person: local times to the second, durations with units,
notebooks relative to the working directory, a step numbered by its cell, and why a run ended."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from typing import Any

from nbdurable.headless.result import duration

# Why a run ended, by status (the last word `runs` and `show` give on a run).
ENDINGS = {
    "completed": "completed",
    "failed": "a cell failed: fix it and run the same command again (completed cells are restored)",
    "crashed": "its process died (killed, out of memory, or a crash in native code): run the same command "
               "again to resume it",
    "interrupted": "stopped between cells before its end (resumable: run the same command again)",
    "cancelled": "cancelled (for good: `run` and the worker never resume it; `nbdurable resume RUN_ID --force` "
                 "can)",
    "suspended": "suspended itself on a durable wait: `nbdurable worker` resumes it when it is due",
    "running": "still running",
}


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("NaT", "nan", "<NA>")


def when(value: Any) -> str:
    """A catalog timestamp (UTC) as local time to the second; ``-`` when missing."""
    if missing(value):
        return "-"
    stamp = value.to_pydatetime() if hasattr(value, "to_pydatetime") else value
    if isinstance(stamp, datetime):
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=timezone.utc)
        return stamp.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def seconds(value: Any) -> str:
    """A duration: ``850 ms``, ``2.0 s``, ``3 min 05 s``, ``1 h 02 min``; ``-`` when missing."""
    return "-" if missing(value) else duration(float(value))


def notebook(value: Any) -> str:
    """A notebook identity, relative to the working directory when it lies below it."""
    if missing(value):
        return "-"
    text = str(value)
    if os.path.isabs(text):
        try:
            relative = os.path.relpath(text)
        except ValueError:  # another drive (Windows)
            return text
        if not relative.startswith(".."):
            return relative
    return text


def cancelled(by: Any, reason: Any, requested_at: Any) -> str:
    """Who cancelled a run, when and why, in one line."""
    who = "someone unknown" if missing(by) else str(by)
    why = "" if missing(reason) or not str(reason) else f": {reason}"
    return f"cancelled by {who} at {when(requested_at)}{why}"


def step_status(status: Any, run_status: str) -> str:
    """A step's status as the person reading ``show`` needs it: a step a dead run never ended was cut short."""
    if status == "running" and run_status != "running":
        return "cut short"
    return str(status)


def lineage(row: Any, forks: list[tuple[str, Any]] | None = None) -> str | None:
    """Where a run came from and what was forked from it (``show``): ``forked from R after cell N`` (a rerun
    from the start: ``rerun of R``), ``child run of R`` (``nbd.run_notebook``), then the runs forked from it;
    None for a run with none of these."""
    lines = []
    origin = getattr(row, "forked_from", None)
    if not missing(origin):
        cell = getattr(row, "forked_at_cell", None)
        at = 0 if cell is None or missing(cell) else int(cell)
        lines.append(f"rerun of {origin} (nothing restored)" if at == 0 else
                     f"forked from {origin} after cell {at} (cells 1-{at} restored from it)")
    parent = getattr(row, "parent_run", None)
    if isinstance(parent, str) and parent:  # nbd.run_notebook started it
        try:
            attempt = json.loads(getattr(row, "origin", None) or "{}").get("attempt")
        except (TypeError, ValueError, AttributeError):
            attempt = None
        lines.append(f"child run of {parent}" + (f" (attempt {attempt})" if isinstance(attempt, int) and attempt > 1
                                                 else ""))
    if forks:
        shown = [f"{run_id} (after cell {0 if missing(cell) else int(cell)})" for run_id, cell in forks[:5]]
        lines.append("forked into " + ", ".join(shown) + (f" and {len(forks) - 5} more" if len(forks) > 5 else ""))
    return "\n  ".join(lines) if lines else None
