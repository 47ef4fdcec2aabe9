"""Retry policies and durations for explicit steps.

A duration is seconds (int/float, or a number as text), a ``timedelta``, or text: ``"250ms"``, ``"90s"``, ``"15m"``,
``"24h"``, ``"2d"`` (units may be combined: ``"1h30m"``).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Union

from nbdurable.errors import OptionsError

Duration = Union[int, float, str, timedelta]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_BLANKS = " \t\n\r\f\v"
_FINITE = 'use a number of seconds, or text like "90s", "24h", "2d"'


def parse_duration(value: Duration) -> float:
    """Seconds in ``value``; OptionsError for anything else."""
    # Only ASCII blanks around the text: str.strip() also drops \x1c-\x1f, which float() refuses.
    text = value.strip(_BLANKS) if isinstance(value, str) else ""
    try:
        if isinstance(value, timedelta):
            seconds = value.total_seconds()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif _NUMBER.fullmatch(text):
            seconds = float(text)  # a bare number is seconds (as typed on a %%durable line)
        elif text and _PART.sub("", text.replace(" ", "")) == "":
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text.replace(" ", "")))
        else:
            raise OptionsError(f"not a duration: {value!r}",
                               hint='use seconds, a timedelta, or text like "90s", "15m", "24h", "2d"')
    except OverflowError:  # float() of an int beyond the float range
        raise OptionsError("a duration is out of range: the number is beyond what a float can hold",
                           hint=_FINITE) from None
    if not math.isfinite(seconds):  # nan, ±inf (also "9" * 400, which float() makes inf)
        raise OptionsError(f"a duration must be a finite number of seconds, not {value!r}", hint=_FINITE)
    if seconds < 0:
        raise OptionsError(f"a duration cannot be negative: {value!r}", hint="use 0 or more")
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing step is retried: ``max_attempts`` tries in all, waiting ``initial_interval`` and then
    ``backoff`` times longer each time, at most ``max_interval``, give or take ``jitter`` (a fraction).
    Exceptions of the ``non_retryable`` types (and ``NonRetryableError``) fail at once."""

    max_attempts: int = 3
    initial_interval: Duration = 1.0
    backoff: float = 2.0
    max_interval: Duration = 60.0
    jitter: float = 0.0
    non_retryable: tuple[type[BaseException], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise OptionsError(f"max_attempts must be at least 1, not {self.max_attempts}", hint="1 means no retry")
        if not (math.isfinite(self.backoff) and self.backoff >= 1.0):  # `nan < 1.0` is False
            raise OptionsError(f"backoff must be a finite number, at least 1.0, not {self.backoff}",
                               hint="2.0 doubles each wait")
        if not 0.0 <= self.jitter <= 1.0:  # False for nan too
            raise OptionsError(f"jitter is a fraction between 0 and 1, not {self.jitter}", hint="0.1 = ±10%")
        parse_duration(self.initial_interval)
        parse_duration(self.max_interval)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        initial = parse_duration(self.initial_interval)
        try:
            base = initial * self.backoff ** (attempt - 1)
        except OverflowError:  # float ** past the float range (many attempts): far beyond any cap
            base = math.inf if initial else 0.0
        capped = min(base, parse_duration(self.max_interval))
        if self.jitter:
            capped *= 1.0 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, capped)


NO_RETRY = RetryPolicy(max_attempts=1)
