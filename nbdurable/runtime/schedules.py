"""Schedule arithmetic, pure: a schedule's slots, the next one, and which missed slots a catch-up policy runs.

A schedule fires at *slots*: the times its cron expression names in its time zone (croniter over zone-aware
datetimes, so a daily ``0 6 * * *`` in ``Europe/Paris`` stays at 06:00 local across daylight-saving changes),
or every ``every`` seconds aligned on the Unix epoch (``--every 1h`` fires on the hour, UTC). Around a
daylight-saving change: a wall time that does not exist (spring forward) fires at the first time after it
(croniter's rule: ``30 2 * * *`` fires at 03:00 that day); a wall time that occurs twice (fall back) fires
once, at its first occurrence, unless the hour field is a wildcard (``*/30 * * * *`` fires every 30 real
minutes through the repeated hour, as an interval should).

Slots are Unix seconds. A slot is named in UTC for its claim key (``slot_key``: ``2026-12-06T14:15:00Z``) and
in the schedule's zone, with its offset, for the run's ``scheduled_at`` parameter (``slot_iso``).

After downtime the worker finds several slots due at once. A slot older than the grace period (``grace``
seconds before now) was *missed*; the catch-up policy decides which run: ``all`` (every missed slot, oldest
first), ``latest`` (only the most recent slot), ``none`` (no missed slot: only slots within the grace).
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from nbdurable.errors import OptionsError

CATCHUP_POLICIES = ("all", "latest", "none")
MAX_SLOTS = 100_000  # slots listed at once (a year of minutes is 525,600: a backfill that big is refused)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_UTC = dt.timezone.utc


@dataclass(frozen=True)
class Timing:
    """When a schedule fires: a cron expression in a zone, or a fixed interval in seconds."""

    cron: str | None = None
    tz: str = "UTC"
    every: float | None = None

    @classmethod
    def of(cls, definition: dict[str, Any]) -> Timing:
        """The timing of a stored schedule definition."""
        every = definition.get("every")
        return cls(definition.get("cron"), str(definition.get("tz") or "UTC"),
                   float(every) if every is not None else None)

    def describe(self) -> str:
        """``cron '*/15 * * * *' (Europe/Paris)`` or ``every 15m``."""
        if self.cron is not None:
            return f"cron '{self.cron}' ({self.tz})"
        return f"every {format_interval(self.every or 0)}"


def check_name(name: str) -> str:
    """A schedule (or trigger) name: letters, digits, '.', '_', '-', at most 100, not starting with a sign."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise OptionsError(f"{name!r} is not a valid schedule name",
                           hint="use letters, digits, '.', '_' or '-' (at most 100, starting with a letter or digit), "
                                "e.g. nightly-report")
    return name


def zone(name: str) -> dt.tzinfo:
    """The IANA time zone ``name`` (``UTC`` accepted); an unknown zone is an OptionsError."""
    if name.upper() == "UTC":
        return _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise OptionsError(f"unknown time zone {name!r}",
                           hint="give an IANA zone name such as 'Europe/Paris', 'America/New_York' or 'UTC'") from None


def check_cron(expr: str) -> str:
    """A five-field cron expression croniter accepts; anything else is an OptionsError."""
    fields = expr.split() if isinstance(expr, str) else []
    if len(fields) != 5 or not croniter.is_valid(" ".join(fields)):
        raise OptionsError(f"not a cron expression: {expr!r}",
                           hint="five fields: minute hour day-of-month month day-of-week, "
                                "e.g. '*/15 * * * *' or '0 6 * * 1-5'")
    return " ".join(fields)


def check_timing(cron: str | None, tz: str | None, every: float | None) -> Timing:
    """Exactly one of ``cron`` / ``every``; ``tz`` only with ``cron``; a positive interval."""
    if (cron is None) == (every is None):
        raise OptionsError("give --cron EXPR or --every DURATION (one of them)",
                           hint="e.g. --cron '0 6 * * *' --tz Europe/Paris, or --every 15m")
    if every is not None:
        if tz is not None:
            raise OptionsError("--tz applies to --cron only (an --every interval is counted in seconds since the "
                               "Unix epoch)", hint="drop --tz, or give the times with --cron")
        if not math.isfinite(every) or every < 1:
            raise OptionsError(f"--every must be at least 1 second, not {format_interval(every)}",
                               hint="e.g. --every 15m, --every 1h, --every 1d")
        return Timing(every=float(every))
    zone(tz or "UTC")
    return Timing(cron=check_cron(str(cron)), tz=tz or "UTC")


def format_interval(seconds: float) -> str:
    """``900`` -> ``15m``; ``86400`` -> ``1d``; ``90`` -> ``90s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@lru_cache(maxsize=4096)
def _wildcard_hour(cron: str) -> bool:
    return cron.split()[1].startswith("*")


def _repeated_wall_time(when: dt.datetime) -> bool:
    """True if ``when`` is the second occurrence of its wall time (a fall-back hour)."""
    first = when.replace(tzinfo=None).replace(tzinfo=when.tzinfo, fold=0)
    return first.timestamp() != when.timestamp()


def slots(timing: Timing, after: float, until: float, *, limit: int = MAX_SLOTS) -> list[float]:
    """The slots in ``(after, until]``, oldest first (at most ``limit``)."""
    found: list[float] = []
    if timing.every is not None:
        step = timing.every
        k = math.floor(after / step) + 1
        while len(found) < limit and (slot := k * step) <= until:
            if slot > after:
                found.append(slot)
            k += 1
        return found
    assert timing.cron is not None
    compiled = _compiled(timing.cron)
    if compiled is None:  # L, W, #: croniter walks them
        return _croniter_slots(timing, after, until, limit)
    return _fast_slots(compiled, zone(timing.tz), after, until, limit)


def _croniter_slots(timing: Timing, after: float, until: float, limit: int) -> list[float]:
    """The slots in ``(after, until]`` by croniter's own iteration (any expression croniter reads)."""
    assert timing.cron is not None
    tz = zone(timing.tz)
    it = croniter(timing.cron, dt.datetime.fromtimestamp(after, tz))
    skip_repeats = not _wildcard_hour(timing.cron) and tz is not _UTC
    found: list[float] = []
    while len(found) < limit:
        try:
            when = it.get_next(dt.datetime)
        except CroniterBadDateError:  # no further date matches
            break
        slot = when.timestamp()
        if slot > until:
            break
        if slot > after and not (skip_repeats and _repeated_wall_time(when)):
            found.append(slot)
    return found


@dataclass(frozen=True)
class _Compiled:
    """A cron expression's fields as croniter expands them (None: ``*``), and its times of day."""

    doms: frozenset[int] | None
    months: frozenset[int] | None
    dows: frozenset[int] | None
    times: tuple[tuple[int, int], ...]  # (hour, minute), in order
    wildcard_hour: bool


@lru_cache(maxsize=4096)
def _compiled(cron: str) -> _Compiled | None:
    """The expression expanded by croniter, or None when it uses what only croniter's walk handles."""
    fields, nth = croniter.expand(cron)
    if nth or len(fields) != 5:
        return None
    sets: list[frozenset[int] | None] = []
    for values in fields:
        if values == ["*"]:
            sets.append(None)
        elif all(isinstance(v, int) for v in values):
            sets.append(frozenset(values))
        else:
            return None
    minutes, hours, doms, months, dows = sets
    times = tuple((h, m) for h in sorted(hours if hours is not None else range(24))
                  for m in sorted(minutes if minutes is not None else range(60)))
    return _Compiled(doms, months, frozenset(d % 7 for d in dows) if dows is not None else None, times,
                     hours is None)


def _day_matches(c: _Compiled, day: dt.date) -> bool:
    """Cron's day rule: the month, and the day of month *or* of week when both are restricted."""
    if c.months is not None and day.month not in c.months:
        return False
    dom_ok = c.doms is None or day.day in c.doms
    dow_ok = c.dows is None or (day.weekday() + 1) % 7 in c.dows
    if c.doms is not None and c.dows is not None:
        return dom_ok or dow_ok
    return dom_ok and dow_ok


def _fast_slots(c: _Compiled, tz: dt.tzinfo, after: float, until: float, limit: int) -> list[float]:
    """The slots in ``(after, until]`` day by day from the expanded fields (same rules as the walk)."""
    found: list[float] = []
    start, end = dt.datetime.fromtimestamp(after, tz), dt.datetime.fromtimestamp(until, tz)
    day, last = start.date(), end.date()
    one = dt.timedelta(days=1)
    minutes = [h * 60 + m for h, m in c.times]
    while day <= last and len(found) < limit:
        if _day_matches(c, day):
            # only the times of day near the window's ends on its first and last day (3 h: beyond any DST shift)
            lo = bisect.bisect_left(minutes, start.hour * 60 + start.minute - 180) if day == start.date() else 0
            hi = bisect.bisect_right(minutes, end.hour * 60 + end.minute + 180) if day == last else len(minutes)
            todays: list[float] = []
            inside, cutoff = len(found), None
            for hour, minute in c.times[lo:hi]:
                if cutoff is not None and hour * 60 + minute > cutoff:
                    break  # enough slots found, and past any DST reordering of the ones before
                new = _local_slots(dt.datetime(day.year, day.month, day.day, hour, minute), tz, c.wildcard_hour)
                todays += new
                inside += sum(after < t <= until for t in new)
                if cutoff is None and inside >= limit:
                    cutoff = hour * 60 + minute + 180
            for slot in sorted(set(todays)):
                if after < slot <= until and (not found or slot > found[-1]):
                    found.append(slot)
        day += one
    return found[:limit]


def _local_slots(wall: dt.datetime, tz: dt.tzinfo, both_folds: bool) -> list[float]:
    """The instants of a wall time: one; none that exist (a spring-forward gap: the transition instead);
    or two (a fall-back hour: the first, and the second too for a wildcard hour)."""
    if tz is _UTC:
        return [wall.replace(tzinfo=_UTC).timestamp()]
    first, second = wall.replace(tzinfo=tz, fold=0).timestamp(), wall.replace(tzinfo=tz, fold=1).timestamp()
    if first == second:
        return [first]
    if first < second:
        return [first, second] if both_folds else [first]
    return [_transition(tz, second, first)]


def _transition(tz: dt.tzinfo, low: float, high: float) -> float:
    """The instant in ``(low, high]`` where ``tz``'s offset changes (to the second)."""
    after = dt.datetime.fromtimestamp(high, tz).utcoffset()
    lo, hi = math.floor(low), math.ceil(high)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, tz).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return float(hi)


def next_slot(timing: Timing, after: float) -> float:
    """The first slot after ``after``."""
    if timing.every is not None:
        return (math.floor(after / timing.every) + 1) * timing.every
    window = 366 * 86400.0
    for _ in range(5):  # 31 years: a cron that fires only on 29 February still fires within 8
        found = slots(timing, after, after + window, limit=1)
        if found:
            return found[0]
        after, window = after + window, window * 2
    raise OptionsError(f"the cron expression {timing.cron!r} never fires (no such day)",
                       hint="check the day-of-month and month fields, e.g. '0 0 31 2 *' names 31 February")


def catch_up(policy: str, due: list[float], now: float, grace: float) -> tuple[list[float], list[float]]:
    """Split the due slots ``due`` (oldest first, all ``<= now``) into (to run, skipped) by ``policy``."""
    if policy not in CATCHUP_POLICIES:
        raise OptionsError(f"unknown catch-up policy {policy!r}", hint="use all, latest or none")
    missed = [s for s in due if s <= now - grace]
    recent = [s for s in due if s > now - grace]
    if policy == "all":
        return missed + recent, []
    if policy == "latest":
        run = recent or missed[-1:]
        return run, [s for s in due if s not in run]
    return recent, missed


def slot_key(slot: float) -> str:
    """The slot in UTC, to the second: ``2026-12-06T14:15:00Z`` (claim keys, logs)."""
    return dt.datetime.fromtimestamp(slot, _UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def slot_iso(timing: Timing, slot: float) -> str:
    """The slot in the schedule's zone with its offset: ``2026-12-06T15:15:00+01:00`` (``scheduled_at``)."""
    return dt.datetime.fromtimestamp(slot, zone(timing.tz)).isoformat()


def parse_time(text: str, tz: str = "UTC") -> float:
    """An ISO 8601 date or time (``2026-12-01``, ``2026-12-01T06:00``, with or without offset; naive ones
    are in ``tz``) as Unix seconds."""
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise OptionsError(f"not a date or time: {text!r}",
                           hint="use ISO 8601, e.g. 2026-12-01 or 2026-12-01T06:00 or 2026-12-01T06:00+01:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=zone(tz))
    return when.timestamp()


__all__ = ["CATCHUP_POLICIES", "MAX_SLOTS", "Timing", "catch_up", "check_cron", "check_name", "check_timing",
           "format_interval", "next_slot", "parse_time", "slot_iso", "slot_key", "slots", "zone"]
