"""Flow control of event triggers, as pure decisions: key expressions, debounce, rate windows, idempotency.

Nothing here reads or writes the store; ``headless/triggers.py`` feeds these functions the events and the
claims it read, and records what they decide.

**Key expressions** (``--key``, ``--idempotency-key``) such as ``event["customer"]`` are parsed with ``ast``
and evaluated by walking the tree, never by ``eval``: the only name is ``event`` (the event's data), and
the only operations are subscripts by a constant (``event["a"][0]``), ``.get(constant[, constant])`` and
tuples of such expressions (``(event["org"], event["user"])``). Anything else is refused when the trigger
is defined (``compile_key``). A key whose path is missing in an event evaluates to ``None``.

**Rate** (``--rate N/PERIOD``): each (trigger, key) has N *tokens*; a token starts at most one run per
PERIOD (its successive runs start at least PERIOD apart), so no span of PERIOD sees more than N starts.
An event finds the token free earliest (``token_choice``): with ``--rate-mode drop`` it is dropped unless a
token is free now; with ``delay`` its run starts when the token frees up (the claim's ``not_before``).

**Debounce** (``--debounce D``): the events of a key form a burst while each comes less than D after the
previous one; the burst fires one run, D after its last event, with that event's data (``Bursts``).

**Idempotency** (``--idempotency-key EXPR``): an event whose key value equals that of an event which
started a run less than the window (24 h) before it starts nothing (``is_duplicate``).
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from nbdurable.errors import OptionsError
from nbdurable.runtime.policy import parse_duration

IDEMPOTENCY_WINDOW = 24 * 3600.0
RATE_MODES = ("drop", "delay")
_KEY_HINT = ('use the event\'s data through `event`: event["customer"], event["a"]["b"], event.get("region", '
             '"eu") or a tuple of these')
_MISSING = object()


# ----- key expressions --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyExpr:
    """A checked key expression; ``evaluate(data)`` gives its value for an event's data."""

    text: str
    tree: ast.expr = field(repr=False, compare=False)

    def evaluate(self, data: Any) -> Any:
        """The expression's value for ``data`` (the event's data), ``None`` where a path is missing."""
        value = _evaluate(self.tree, data)
        return None if value is _MISSING else value


def compile_key(text: str) -> KeyExpr:
    """Parse and check a key expression; OptionsError naming what is not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise OptionsError("a key expression is empty", hint=_KEY_HINT)
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise OptionsError(f"key expression {text!r} is not valid Python: {exc.msg}", hint=_KEY_HINT) from None
    _check(tree, text)
    return KeyExpr(text.strip(), tree)


def _check(node: ast.expr, text: str) -> None:
    if isinstance(node, ast.Name):
        if node.id != "event":
            _refuse(text, f"the name {node.id!r} (only `event`, the event's data, is known)")
    elif isinstance(node, ast.Subscript):
        if not _is_constant(node.slice):
            _refuse(text, f"the subscript [{ast.unparse(node.slice)}] (subscripts are constants)")
        _check(node.value, text)
    elif isinstance(node, ast.Call):
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr == "get") or node.keywords:
            _refuse(text, f"the call {ast.unparse(node)} (only .get(key[, default]) is allowed)")
        assert isinstance(func, ast.Attribute)
        if not 1 <= len(node.args) <= 2 or not all(_is_constant(a) for a in node.args):
            _refuse(text, f"the call {ast.unparse(node)} (.get takes a constant key and an optional constant)")
        _check(func.value, text)
    elif isinstance(node, ast.Tuple) and node.elts:
        for element in node.elts:
            _check(element, text)
    else:
        _refuse(text, f"`{ast.unparse(node)}` ({type(node).__name__.lower()})")


def _is_constant(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):  # event["items"][-1]
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None)))


def _refuse(text: str, what: str) -> None:
    raise OptionsError(f"key expression {text!r} uses {what}", hint=_KEY_HINT)


def _evaluate(node: ast.expr, data: Any) -> Any:
    if isinstance(node, ast.Name):
        return data
    if isinstance(node, ast.Tuple):
        return tuple(None if (v := _evaluate(e, data)) is _MISSING else v for e in node.elts)
    if isinstance(node, ast.Subscript):
        return _lookup(_evaluate(node.value, data), ast.literal_eval(node.slice), _MISSING)
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    args = [ast.literal_eval(a) for a in node.args]
    return _lookup(_evaluate(node.func.value, data), args[0], args[1] if len(args) > 1 else None)


def _lookup(container: Any, key: Any, default: Any) -> Any:
    if isinstance(container, dict):
        return container.get(key, default)
    if isinstance(container, list) and isinstance(key, int) and not isinstance(key, bool):
        return container[key] if -len(container) <= key < len(container) else default
    return default


def key_text(value: Any) -> str:
    """A key value as text for claim and flow keys: a string as is, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# ----- rate -------------------------------------------------------------------------------------

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\S+)\s*")


def parse_rate(text: str) -> tuple[int, float]:
    """``"10/1m"`` → (10, 60.0): at most N runs started per PERIOD (a duration; a bare unit means one)."""
    match = _RATE.fullmatch(text or "")
    if match is None:
        raise OptionsError(f"not a rate: {text!r}", hint='write N/PERIOD, e.g. "10/1m", "100/1h" or "1/30s"')
    count, period = int(match.group(1)), match.group(2)
    if period.isalpha():
        period = "1" + period  # "5/m" = 5 per minute
    seconds = parse_duration(period)
    if count < 1 or seconds <= 0:
        raise OptionsError(f"rate {text!r} allows nothing: N and PERIOD must be more than 0",
                           hint='e.g. "10/1m"')
    return count, seconds


@dataclass(frozen=True)
class TokenChoice:
    """Where an event's run goes under a rate limit: which token, and when the run may start (None: dropped)."""

    token: int
    start_at: float | None


def token_choice(holders: list[float | None], at: float, period: float, mode: str) -> TokenChoice:
    """The token an event decided at ``at`` takes. ``holders[i]``: when token i's latest run starts (None: never
    used); the token freeing up first is chosen. ``drop``: start_at None unless it is free at ``at``."""
    free = [at if held is None else max(at, held + period) for held in holders]
    token = min(range(len(free)), key=lambda i: (free[i], i))
    start = free[token]
    if mode == "drop" and start > at:
        return TokenChoice(token, None)
    return TokenChoice(token, start)


# ----- debounce ---------------------------------------------------------------------------------


@dataclass
class Burst:
    """The events of one key, each less than the debounce period after the previous one."""

    event_id: str  # the last event's
    sent_at: float
    data: Any
    count: int = 1


@dataclass
class Bursts:
    """Open debounce bursts by key (text); ``add`` events in any order, ``due`` takes the finished ones."""

    period: float
    open: dict[str, Burst] = field(default_factory=dict)
    fired: dict[str, float] = field(default_factory=dict)  # key -> when the last event of its last burst was sent

    def add(self, key: str, event_id: str, sent_at: float, data: Any) -> bool:
        """Add an event; True if it starts a new burst. An event sent before the last event of a burst that
        already fired (read late) belonged to that burst: ignored."""
        if sent_at <= self.fired.get(key, -math.inf):
            return False
        burst = self.open.get(key)
        if burst is None:
            self.open[key] = Burst(event_id, sent_at, data)
            return True
        burst.count += 1
        if (sent_at, event_id) > (burst.sent_at, burst.event_id):  # an event sent late keeps the newest data
            burst.event_id, burst.sent_at, burst.data = event_id, sent_at, data
        return False

    def due(self, now: float) -> list[tuple[str, Burst]]:
        """The bursts whose last event is at least ``period`` old at ``now``, removed from the open ones."""
        done = [(key, burst) for key, burst in self.open.items() if now - burst.sent_at >= self.period]
        for key, burst in done:
            del self.open[key]
            self.fired[key] = burst.sent_at
        return sorted(done, key=lambda kb: (kb[1].sent_at, kb[1].event_id))


# ----- idempotency ------------------------------------------------------------------------------


def is_duplicate(first_at: float, at: float, window: float = IDEMPOTENCY_WINDOW) -> bool:
    """True if an event sent at ``at`` falls within ``window`` of the event sent at ``first_at`` that started a
    run with the same idempotency key."""
    return abs(at - first_at) < window


# ----- a trigger's flow settings ------------------------------------------------------------------


@dataclass(frozen=True)
class FlowControl:
    """A trigger's flow control, as stored in its definition (``to_dict`` / ``from_dict``)."""

    concurrency: int | None = None
    key: str | None = None
    debounce: float | None = None
    rate: tuple[int, float] | None = None
    rate_mode: str = "drop"
    priority: int = 0
    idempotency_key: str | None = None
    idempotency_window: float = IDEMPOTENCY_WINDOW

    def check(self) -> FlowControl:
        """Self, or OptionsError for a combination that means nothing."""
        for expr in (self.key, self.idempotency_key):
            if expr is not None:
                compile_key(expr)
        if self.key is not None and self.concurrency is None and self.debounce is None and self.rate is None:
            raise OptionsError("--key says what --concurrency, --debounce or --rate count by, and none is given",
                               hint='e.g. --concurrency 1 --key \'event["customer"]\'')
        if self.concurrency is not None and self.concurrency < 1:
            raise OptionsError(f"--concurrency must be at least 1, not {self.concurrency}", hint="e.g. --concurrency 2")
        if self.debounce is not None and not (0 < self.debounce < math.inf):
            raise OptionsError("--debounce must be a positive duration", hint='e.g. --debounce 30s')
        if self.debounce is not None and self.idempotency_key is not None:
            raise OptionsError("--debounce and --idempotency-key cannot be combined: a debounced burst starts one "
                               "run already", hint="keep one of them")
        if self.rate_mode not in RATE_MODES:
            raise OptionsError(f"--rate-mode is drop or delay, not {self.rate_mode!r}", hint="--rate-mode delay")
        if not self.idempotency_window > 0:
            raise OptionsError("the idempotency window must be a positive duration", hint="e.g. 24h")
        return self

    def key_of(self, data: Any) -> str | None:
        """The flow key value (text) of an event's data, or None without --key."""
        return None if self.key is None else key_text(compile_key(self.key).evaluate(data))

    def to_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "key": self.key, "debounce": self.debounce,
                "rate": list(self.rate) if self.rate else None, "rate_mode": self.rate_mode,
                "priority": self.priority, "idempotency_key": self.idempotency_key,
                "idempotency_window": self.idempotency_window}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowControl:
        rate = data.get("rate")
        return cls(concurrency=data.get("concurrency"), key=data.get("key"), debounce=data.get("debounce"),
                   rate=(int(rate[0]), float(rate[1])) if rate else None, rate_mode=data.get("rate_mode") or "drop",
                   priority=int(data.get("priority") or 0), idempotency_key=data.get("idempotency_key"),
                   idempotency_window=float(data.get("idempotency_window") or IDEMPOTENCY_WINDOW))

    def describe(self) -> str:
        """One short line: what limits the trigger's runs."""
        by = f" per {self.key}" if self.key else ""
        parts = []
        if self.concurrency:
            parts.append(f"concurrency {self.concurrency}{by}")
        if self.debounce:
            parts.append(f"debounce {self.debounce:g}s{by}")
        if self.rate:
            parts.append(f"rate {self.rate[0]}/{self.rate[1]:g}s{by} ({self.rate_mode})")
        if self.priority:
            parts.append(f"priority {self.priority}")
        if self.idempotency_key:
            parts.append(f"idempotent on {self.idempotency_key} for {self.idempotency_window:g}s")
        return ", ".join(parts) or "-"


__all__ = ["IDEMPOTENCY_WINDOW", "RATE_MODES", "Burst", "Bursts", "FlowControl", "KeyExpr", "TokenChoice",
           "compile_key", "is_duplicate", "key_text", "parse_rate", "token_choice"]
