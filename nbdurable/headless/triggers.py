"""Event triggers: every matching event starts one run of a notebook, within the trigger's flow control.

A trigger (``nbdurable trigger add``; stored by ``store/triggers.py``) names an event, an optional match (a
recursive subset of the event's data, as ``nbd.wait_for_event`` matches), a notebook and its parameters,
and its flow control (``runtime/flow.py``). ``TriggerPass.tick`` — one of the worker's passes — reads the
events sent since its last tick and *decides* each matching one, durably, as a claim (``store/claims.py``):

- ``event`` claim ``"<trigger>:<event id>"``: a run whose parameter ``event`` is the event's data, plus the
  trigger's parameters; origin ``{"trigger", "event"}``. The dispatcher starts it (``headless/dispatch.py``).
- ``idem`` claim ``"<trigger>:<key value>"`` (``#n`` after it for later windows): the same, for a trigger with
  ``--idempotency-key``; an event whose key value started a run less than 24 h before it is a ``dropped``
  decision with reason ``duplicate``.
- ``debounce`` claim ``"<trigger>:<last event id>"``: made once a burst of events of a key went quiet for
  the debounce period; the run gets that last event's data.
- ``dropped`` decision ``"<trigger>:<event id>"`` (no run): excess under ``--rate … --rate-mode drop``, a
  duplicate, or an event that found the trigger's notebook gone (its run would fail at once, forever).
  Under ``--rate-mode delay`` the run is claimed with ``not_before`` instead.

Claims make it exactly once: however many workers tick and however often one crashes, an event's key
names one decision, and the first one recorded stands. Each decision is logged (``log(event, **fields)``).

Which events count: those sent at or after the trigger was created (an older event never fires a newer
trigger) and not while it was paused (events sent during a pause are never run, also after ``resume``).
Event times are the senders' wall clock (as the event ids are); the pass looks back ``LAG`` seconds on each
tick for events whose files appeared late. Debounce, rate windows and idempotency windows are measured on
the same wall clock; a delayed run's ``not_before`` is read by the dispatcher on its clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdurable.errors import OptionsError
from nbdurable.headless.dispatch import Log
from nbdurable.runtime.flow import Bursts, FlowControl, compile_key, is_duplicate, key_text, token_choice
from nbdurable.runtime.run import new_run_id
from nbdurable.runtime.waits import matches
from nbdurable.store import Store
from nbdurable.store.events import check_event_name, event_time
from nbdurable.store.triggers import check_trigger_name

LAG = 10.0  # seconds an event file may appear after its id's time (its write and fsync): looked back on
CURSOR_EVERY = 5.0  # seconds of progress between two writes of a trigger's cursor
RUN_KINDS = ("event", "idem", "debounce")  # the claims of a trigger that start runs
DECISION_KIND, RATE_KIND, RATED_KIND = "dropped", "rate", "rated"  # decisions that start none


# ----- definitions ------------------------------------------------------------------------------


def define_trigger(name: str, notebook: str | Path, *, on: str, match: Any = None,
                   params: dict[str, Any] | None = None, flow: FlowControl | None = None,
                   output_dir: str | Path | None = None) -> dict[str, Any]:
    """A checked trigger definition, ready for ``Store.add_trigger``; OptionsError for bad input. Creates
    ``output_dir`` if missing."""
    check_trigger_name(name)
    check_event_name(on)
    if match is not None and not isinstance(match, dict):
        raise OptionsError(f"--match must be a JSON object, not {type(match).__name__}",
                           hint='e.g. --match \'{"plan": "pro"}\' (the event data must contain it)')
    path = Path(notebook).expanduser().resolve()
    from nbdurable.headless.params import load_notebook

    load_notebook(path, {}, None)  # OptionsError for a missing file or one that is no notebook
    params = dict(params or {})
    if "event" in params:
        raise OptionsError("-p event: the parameter `event` is the triggering event's data",
                           hint="name the parameter otherwise; declare `event = {}` in the parameters cell")
    flow = (flow or FlowControl()).check()
    out = Path(output_dir).expanduser().resolve() if output_dir else None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)  # the runs write their notebooks there
        except OSError as exc:
            raise OptionsError(f"cannot create the output directory {out}: {exc.strerror}",
                               hint="pass a directory you can write to") from None
    return {"name": name, "on": on, "match": match or None, "notebook": str(path), "params": params,
            "flow": flow.to_dict(), "output_dir": str(out) if out else None, "created_at": time.time(), "pauses": []}


def is_paused(trigger: dict[str, Any]) -> bool:
    """True while the trigger is paused (its last pause has no end)."""
    pauses = trigger.get("pauses") or []
    return bool(pauses) and pauses[-1][1] is None


def paused_at(trigger: dict[str, Any], when: float) -> bool:
    """True if the trigger was paused at ``when`` (an event sent then is never run)."""
    return any(start <= when < (math.inf if end is None else end) for start, end in trigger.get("pauses") or [])


def pause_trigger(store: Store, name: str) -> bool:
    """Pause ``name``; False if it was paused already."""
    trigger = store.trigger(name)
    if is_paused(trigger):
        return False
    store.update_trigger({**trigger, "pauses": [*(trigger.get("pauses") or []), [time.time(), None]]})
    return True


def resume_trigger(store: Store, name: str) -> bool:
    """Resume ``name``; False if it was not paused."""
    trigger = store.trigger(name)
    if not is_paused(trigger):
        return False
    pauses = [list(p) for p in trigger["pauses"]]
    pauses[-1][1] = time.time()
    store.update_trigger({**trigger, "pauses": pauses})
    return True


def trigger_counts(store: Store, trigger: dict[str, Any]) -> dict[str, int]:
    """What the trigger decided so far: runs claimed (``runs``; ``delayed`` of them by a rate limit), events
    ``dropped`` by the rate limit, ``duplicates`` of an idempotency key, events that found the notebook gone
    (``notebook_missing``)."""
    mine = _mine(trigger)
    runs = [c for kind in RUN_KINDS for c in store.claims(kind) if mine(c)]
    decisions = [c for c in store.claims(DECISION_KIND) if mine(c)]
    return {"runs": len(runs), "delayed": sum(1 for c in runs if c.get("not_before")),
            "dropped": sum(1 for c in decisions if c.get("reason") == "rate"),
            "duplicates": sum(1 for c in decisions if c.get("reason") == "duplicate"),
            "notebook_missing": sum(1 for c in decisions if c.get("reason") == "notebook_missing")}


def _mine(trigger: dict[str, Any]) -> Any:
    return lambda c: c.get("trigger") == trigger["name"] and c.get("incarnation") == trigger["created_at"]


# ----- the pass ---------------------------------------------------------------------------------


@dataclass
class _Progress:
    """How far the pass got with one trigger (one incarnation of a name)."""

    after: float  # every event sent before this was decided
    flow: FlowControl
    seen: set[str] = field(default_factory=set)  # events decided at or after ``after``
    bursts: Bursts | None = None
    saved: float = 0.0  # the ``after`` of the cursor last written


class TriggerPass:
    """Decides new events for every trigger of a store (``tick``): claims runs, records drops, logs each."""

    def __init__(self, store: Store, log: Log, *, lag: float = LAG, cursor_every: float = CURSOR_EVERY) -> None:
        self.store, self.log, self.lag, self.cursor_every = store, log, lag, cursor_every
        self.decided = 0
        self._progress: dict[tuple[str, float], _Progress] = {}
        self._events: dict[str, dict[str, Any] | None] = {}
        self._generations: dict[tuple[str, str], tuple[int, dict[str, Any] | None]] = {}

    def tick(self) -> int:
        """One pass over the new events; returns how many runs it claimed."""
        now = time.time()
        active = [t for t in self.store.triggers() if not is_paused(t)]
        progress = [self._progress_of(t) for t in active]
        self._progress = {(t["name"], t["created_at"]): p for t, p in zip(active, progress, strict=True)}
        if not active:
            self._events.clear()
            return 0
        ids = self.store.event_ids(after=min(p.after for p in progress))
        claimed = sum(self._tick_trigger(t, p, ids, now) for t, p in zip(active, progress, strict=True))
        horizon = min(p.after for p in progress)
        self._events = {i: e for i, e in self._events.items() if event_time(i) >= horizon}
        return claimed

    def _progress_of(self, trigger: dict[str, Any]) -> _Progress:
        found = self._progress.get((trigger["name"], trigger["created_at"]))
        if found is None:
            flow = FlowControl.from_dict(trigger.get("flow") or {})
            after = float(trigger["created_at"])
            cursor = self.store.read_trigger_cursor(trigger["name"]) or {}
            if cursor.get("incarnation") == trigger["created_at"]:
                after = max(after, float(cursor.get("after") or 0))
            found = _Progress(after, flow, bursts=Bursts(flow.debounce) if flow.debounce else None, saved=after)
        return found

    def _save(self, trigger: dict[str, Any], progress: _Progress) -> None:
        """Write the trigger's cursor now and then: the events a restarted pass need not read again (an open
        debounce burst's last event stays after it, so the burst is folded again)."""
        safe = min([progress.after, *(b.sent_at for b in (progress.bursts.open.values() if progress.bursts else []))])
        if safe - progress.saved >= self.cursor_every:
            self.store.write_trigger_cursor(trigger["name"], {"incarnation": trigger["created_at"], "after": safe})
            progress.saved = safe

    def _tick_trigger(self, trigger: dict[str, Any], progress: _Progress, ids: list[str], now: float) -> int:
        claimed = 0
        for event_id in ids:
            sent = event_time(event_id)
            if sent < progress.after or event_id in progress.seen:
                continue
            progress.seen.add(event_id)
            if sent < trigger["created_at"] or paused_at(trigger, sent):
                continue
            event = self._event(event_id)
            if event is None or event.get("name") != trigger["on"] or not matches(event.get("data"), trigger["match"]):
                continue
            claimed += self._decide(trigger, progress, event, now)
        if progress.bursts is not None:
            for key, burst in progress.bursts.due(now):
                event = {"id": burst.event_id, "data": burst.data}
                claimed += self._start(trigger, progress.flow, event, "debounce", f"{trigger['name']}:{burst.event_id}",
                                       now, debounced=burst.count,
                                       flow_value=None if progress.flow.key is None else key) == "claimed"
        progress.after = max(progress.after, now - self.lag)
        progress.seen = {i for i in progress.seen if event_time(i) >= progress.after}
        self._save(trigger, progress)
        return claimed

    def _event(self, event_id: str) -> dict[str, Any] | None:
        if event_id not in self._events:
            self._events[event_id] = self.store.read_event(event_id)
        return self._events[event_id]

    def _decide(self, trigger: dict[str, Any], progress: _Progress, event: dict[str, Any], now: float) -> int:
        """One matching event: claimed, dropped, a duplicate, or added to a debounce burst."""
        name, flow, data = trigger["name"], progress.flow, event.get("data")
        key = f"{name}:{event['id']}"
        if any(self.store.read_claim(kind, key) is not None for kind in ("event", DECISION_KIND)):
            return 0  # decided by another worker, or before a restart
        if not Path(trigger["notebook"]).is_file():  # a run would fail at once, and be started again and again
            self._drop(trigger, event, "notebook_missing", notebook=trigger["notebook"])
            return 0
        if flow.idempotency_key is not None:
            value = compile_key(flow.idempotency_key).evaluate(data)
            if value is not None:
                return self._idempotent(trigger, flow, event, key_text(value), now)
            self.log("trigger_no_idempotency_key", trigger=name, event_id=event["id"], key=flow.idempotency_key)
        if progress.bursts is not None:
            value = flow.key_of(data) or ""
            first = progress.bursts.add(value, event["id"], event_time(event["id"]), data)
            self.log("trigger_debounced", trigger=name, event_id=event["id"], key=value, new_burst=first)
            return 0
        return self._start(trigger, flow, event, "event", key, now) == "claimed"

    def _idempotent(self, trigger: dict[str, Any], flow: FlowControl, event: dict[str, Any], value: str,
                    now: float) -> int:
        base = f"{trigger['name']}:{value}"
        sent = event_time(event["id"])
        while True:
            generation, latest = self._latest("idem", base)
            if latest is not None and latest.get("incarnation") == trigger["created_at"]:
                if latest.get("event_id") == event["id"]:
                    return 0
                if is_duplicate(float(latest.get("event_time", 0)), sent, flow.idempotency_window):
                    self._drop(trigger, event, "duplicate", of_event=latest.get("event_id"),
                               run_id=latest.get("run_id"))
                    return 0
            outcome = self._start(trigger, flow, event, "idem", _generation_key(base, generation + 1), now)
            if outcome != "lost":
                return int(outcome == "claimed")
            self._refresh("idem", base)

    def _start(self, trigger: dict[str, Any], flow: FlowControl, event: dict[str, Any], kind: str, key: str,
               now: float, *, debounced: int | None = None, flow_value: str | None = None) -> str:
        """Claim the run of ``event`` (after the rate limit): "claimed", "dropped", "decided" (before: by another
        pass, or by this one before a restart) or "lost" (another event holds ``key``)."""
        existing = self.store.read_claim(kind, key)
        if existing is not None:
            return "decided" if existing.get("event_id") == event["id"] else "lost"
        if self.store.read_claim(DECISION_KIND, f"{trigger['name']}:{event['id']}") is not None:
            return "dropped"
        data = event.get("data")
        value = flow_value if flow_value is not None else flow.key_of(data)
        start_at = None
        if flow.rate is not None:
            start_at = self._rated(trigger, flow, value, event["id"], now)
            if start_at is None:
                self._drop(trigger, event, "rate", key=value)
                return "dropped"
        run_id = new_run_id()
        record: dict[str, Any] = {
            "run_id": run_id, "notebook": trigger["notebook"],
            "params": {**(trigger.get("params") or {}), "event": {} if data is None else data},
            "origin": {"trigger": trigger["name"], "event": event["id"]}, "priority": flow.priority,
            "trigger": trigger["name"], "incarnation": trigger["created_at"], "event_id": event["id"],
            "event_time": event_time(event["id"]), "decided_at": now,
        }  # fmt: skip
        if debounced is not None:
            record["origin"]["debounced"] = debounced
        if flow.concurrency is not None:
            record["flow_key"] = f"trigger:{trigger['name']}" + (f":{value}" if value is not None else "")
            record["flow_limit"] = flow.concurrency
        if start_at is not None and start_at > now:
            record["not_before"] = start_at
        if trigger.get("output_dir"):
            stem = Path(trigger["notebook"]).stem
            record["output_path"] = str(Path(trigger["output_dir"]) / f"{stem}-{run_id}.ipynb")
        won, standing = self.store.claim(kind, key, record)
        if not won:
            return "decided" if standing.get("event_id") == event["id"] else "lost"
        self.decided += 1
        self.log("trigger_delayed" if "not_before" in record else "trigger_fired", trigger=trigger["name"],
                 event_id=event["id"], run_id=run_id, claim=f"{kind}:{key}", flow_key=record.get("flow_key"),
                 priority=flow.priority, not_before=record.get("not_before"), debounced=debounced)
        return "claimed"

    def _rated(self, trigger: dict[str, Any], flow: FlowControl, value: str | None, event_id: str,
               now: float) -> float | None:
        """The rate limit's one outcome for the event: when its run may start, or None (dropped). Taking a token
        and acting on it are separate steps, so two workers could disagree (one took the last token for the
        event, the other found none left and would drop it): the outcome is recorded first (``RATED_KIND``,
        the first record stands) and every worker acts on the one that stands. A token taken by a worker that
        lost is wasted, as one taken by a worker killed before its claim is."""
        key = f"{trigger['name']}:{event_id}"
        decided = self.store.read_claim(RATED_KIND, key)
        if decided is None:
            start_at = self._rate(trigger, flow, value, event_id, now)
            _, decided = self.store.record_decision(RATED_KIND, key, {"trigger": trigger["name"], "event_id": event_id,
                                                                      "start_at": start_at})
        start = decided.get("start_at")
        return None if start is None else float(start)

    def _rate(self, trigger: dict[str, Any], flow: FlowControl, value: str | None, event_id: str,
              now: float) -> float | None:
        """Take a rate token for the run: when it may start, or None (dropped)."""
        assert flow.rate is not None
        count, period = flow.rate
        base = f"{trigger['name']}@{trigger['created_at']!r}:{'' if value is None else value}"
        while True:
            latest = [self._latest(RATE_KIND, f"{base}:{i}") for i in range(count)]
            choice = token_choice([None if c is None else float(c["start_at"]) for _, c in latest], now, period,
                                  flow.rate_mode)
            if choice.start_at is None:
                return None
            token = f"{base}:{choice.token}"
            generation = latest[choice.token][0] + 1
            won, _ = self.store.record_decision(RATE_KIND, _generation_key(token, generation),
                                                {"event_id": event_id, "start_at": choice.start_at,
                                                 "trigger": trigger["name"]})
            if won:
                return choice.start_at
            self._refresh(RATE_KIND, token)  # another worker took it: look again

    def _drop(self, trigger: dict[str, Any], event: dict[str, Any], reason: str, **fields: Any) -> None:
        record = {"trigger": trigger["name"], "incarnation": trigger["created_at"], "event_id": event["id"],
                  "reason": reason, "decided_at": time.time(), **fields}
        won, _ = self.store.record_decision(DECISION_KIND, f"{trigger['name']}:{event['id']}", record)
        if won:
            self.log("trigger_dropped", trigger=trigger["name"], event_id=event["id"], reason=reason, **fields)

    def _latest(self, kind: str, base: str) -> tuple[int, dict[str, Any] | None]:
        """The newest generation of a chain of claims ``base``, ``base#1``, … (-1, None: none yet), as this
        pass last saw it. Another worker may have added newer ones: a claim of the next one then loses, and
        ``_refresh`` looks again."""
        if (kind, base) not in self._generations:
            self._generations[(kind, base)] = (-1, None)
            self._refresh(kind, base)
        return self._generations[(kind, base)]

    def _refresh(self, kind: str, base: str) -> None:
        generation, claim = self._generations.get((kind, base), (-1, None))
        while (newer := self.store.read_claim(kind, _generation_key(base, generation + 1))) is not None:
            generation, claim = generation + 1, newer
        self._generations[(kind, base)] = (generation, claim)


def text_log(log: Callable[[str], None]) -> Log:
    """A structured log (``log(event, **fields)``) written as one text line each: ``event key=value …``."""
    return lambda event, **fields: log(" ".join([event, *(f"{k}={v}" for k, v in fields.items() if v is not None)]))


def _generation_key(base: str, generation: int) -> str:
    return base if generation <= 0 else f"{base}#{generation}"


__all__ = ["LAG", "TriggerPass", "define_trigger", "is_paused", "pause_trigger", "paused_at", "resume_trigger",
           "text_log", "trigger_counts"]
