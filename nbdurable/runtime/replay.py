"""What a resumed run can restore: the replay plan built from an earlier run's journal.

A plan is the ordered list of an earlier run's steps that completed (or were themselves restored).
Steps are matched in order by the hash of their normalized source (and their name, if they have
one): the first cell that is new, changed, failed or unfinished ends the replay, and from there on
everything executes normally.

Rules that make the plan safe:
- a step that never ended (the crash happened inside it) ends the plan;
- a failed or interrupted step that changed no variable is skipped (the user fixed and re-ran it);
  one that did change variables ends the plan, since its partial effects are part of the state;
- a run that resumed another and never diverged from it continues that run's plan, so a resume that
  was itself interrupted half-way loses nothing (``resumed_from`` chains are followed).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from nbdurable.store import Store
from nbdurable.store.records import VarRef


@dataclass
class PlannedStep:
    """One restorable step of an earlier run."""

    run_id: str
    ordinal: int
    source: str
    source_hash: str
    name: str | None
    options: dict[str, Any]
    duration: float
    variables: list[VarRef]
    outputs: list[dict[str, Any]]
    origin: dict[str, Any]  # {"run_id", "ordinal"} where the step really executed
    exited: str | None = None  # the cell ended the notebook with `sys.exit(...)` (this value): a restore does too

    @property
    def label(self) -> str:
        """How messages name this step."""
        name = f" `{self.name}`" if self.name else ""
        return f"step {self.origin['ordinal']}{name} of run {self.origin['run_id']}"

    def execution_reason(self) -> str | None:
        """Why this step must be executed again instead of restored, or None if it can be restored."""
        if self.options.get("always"):
            return "the cell is marked %%durable --always"
        for ref in self.variables:
            if ref.get("op") == "set" and ref.get("format") == "unrestorable" and not ref.get("inert"):
                return f"variable `{ref['name']}` ({ref.get('type')}) was not stored ({ref.get('reason')})"
        return None

    def matches(self, source_hash: str, name: str | None) -> bool:
        """Whether a cell about to run is this step."""
        return self.source_hash == source_hash and (self.name or None) == (name or None)


@dataclass
class ReplayPlan:
    """The steps a new run may restore instead of executing, consumed in order."""

    run_id: str
    steps: list[PlannedStep] = field(default_factory=list)
    # The explicit-step calls that completed inside the cell where the plan ends (the cell that was
    # running when the kernel died, or that failed), keyed by that cell's source hash.
    pending: tuple[str, list[RecordedCall]] | None = None
    cursor: int = 0
    armed: bool = True
    namespace_restored: bool = False  # `%durable resume` already applied every step

    @classmethod
    def from_run(cls, store: Store, run_id: str) -> ReplayPlan:
        """The plan for resuming ``run_id`` (follows ``resumed_from`` chains)."""
        records = store.read_journal(run_id)
        steps = _completed_prefix(run_id, records)
        pending = _pending_calls(records, len(steps))
        parent = next((r.get("resumed_from") for r in records if r.get("t") == "run"), None)
        if parent and store.journal_exists(parent):
            parent_plan = cls.from_run(store, parent)
            inherited = parent_plan.steps
            if len(steps) <= len(inherited) and all(
                mine.source_hash == theirs.source_hash for mine, theirs in zip(steps, inherited, strict=False)
            ):
                steps = steps + inherited[len(steps):]
                pending = _merge_pending(parent_plan.pending, pending)
        return cls(run_id, steps, pending)

    def calls_for(self, source_hash: str) -> list[RecordedCall]:
        """Recorded explicit-step calls to replay in a cell executing where the plan ends."""
        if self.pending is None or self.cursor < len(self.steps) or self.pending[0] != source_hash:
            return []
        return self.pending[1]

    def peek(self) -> PlannedStep | None:
        """The next step to match, if replay is still armed."""
        if self.armed and self.cursor < len(self.steps):
            return self.steps[self.cursor]
        return None

    def advance(self) -> None:
        """The peeked step was consumed."""
        self.cursor += 1

    def disarm(self) -> None:
        """A cell diverged from the plan: from here on, everything executes."""
        self.armed = False

    @property
    def exhausted(self) -> bool:
        """True once every planned step was consumed or replay was disarmed."""
        return not self.armed or self.cursor >= len(self.steps)


@dataclass(frozen=True)
class RecordedCall:
    """A completed explicit-step call of an earlier run: replayed instead of executed."""

    name: str
    call: int
    seq: int
    args: str
    status: str  # "completed" | "failed" | "waiting" (a durable wait that began and did not end)
    value: VarRef | None  # the ``result`` or ``error`` reference
    options: dict[str, Any] = field(default_factory=dict)  # as journaled (a wait's deadline)


WAIT_STEPS = ("nbd.sleep", "nbd.wait_for_event")


def _pending_calls(records: list[dict[str, Any]], completed: int) -> tuple[str, list[RecordedCall]] | None:
    """The completed calls inside the last top-level step that is not in the plan, if it follows it."""
    tops = [r for r in records if r.get("t") == "step_start" and r.get("parent") is None]
    done = {r["ordinal"] for r in records if r.get("t") == "step_end" and r.get("status") in ("completed", "restored")}
    later = [r for r in tops if r["ordinal"] not in done]
    if not later or sum(1 for r in tops if r["ordinal"] in done) != completed:
        return None  # the plan ended at a divergence that is not simply "the last cell did not finish"
    cell = later[-1]
    starts = {r["ordinal"]: r for r in records if r.get("t") == "step_start" and r.get("parent") == cell["ordinal"]}
    calls: dict[int, RecordedCall] = {}
    for r in records:
        start = starts.get(r.get("ordinal", -1))
        if start is None:
            continue
        o = start.get("options") or {}
        if r.get("t") == "step_start" and start.get("name") in WAIT_STEPS:
            status, value = "waiting", None  # until its step_end, if there is one
        elif r.get("t") == "step_end" and r.get("status") in ("completed", "restored", "failed"):
            status = "failed" if r["status"] == "failed" else "completed"  # a replayed call counts as its original
            value = (r.get("variables") or [None])[0]
        else:
            continue
        calls[r["ordinal"]] = RecordedCall(str(start.get("name")), int(o.get("call", 0)), int(o.get("seq", 0)),
                                           str(o.get("args", "")), status, value, dict(o))
    return (str(cell["source_hash"]), sorted(calls.values(), key=lambda c: c.seq)) if calls else None


def _merge_pending(inherited: tuple[str, list[RecordedCall]] | None,
                   mine: tuple[str, list[RecordedCall]] | None) -> tuple[str, list[RecordedCall]] | None:
    """The completed calls of the cell where a chain of resumes stopped. A resume killed before it reached
    that cell recorded none of them, and one killed while replaying them recorded only some: the calls the
    earlier run completed still count (each call ran once, in whichever run executed it)."""
    if inherited is None:
        return mine
    if mine is None:
        return inherited
    if mine[0] != inherited[0]:
        return mine  # this run stopped in another cell: the earlier run's calls are not that cell's
    calls = {c.seq: c for c in inherited[1]}
    calls.update({c.seq: c for c in mine[1]})
    return mine[0], sorted(calls.values(), key=lambda c: c.seq)


def _completed_prefix(run_id: str, records: list[dict[str, Any]]) -> list[PlannedStep]:
    starts: dict[int, dict[str, Any]] = {}
    ends: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.get("parent") is not None:
            continue  # explicit steps inside a cell restore with their cell
        if record.get("t") == "step_start":
            starts[record["ordinal"]] = record
        elif record.get("t") == "step_end":
            ends[record["ordinal"]] = record
    plan: list[PlannedStep] = []
    for ordinal in sorted(starts):
        end = ends.get(ordinal)
        if end is None:
            break
        if end["status"] == "suspended":
            break  # cut short by a suspension: it runs again, its completed step calls replayed
        if end["status"] in ("failed", "interrupted"):
            if any(ref.get("op") in ("set", "del") for ref in end.get("variables", [])):
                break
            continue
        plan.append(_planned(run_id, starts[ordinal], end))
    return plan


def _planned(run_id: str, start: dict[str, Any], end: dict[str, Any]) -> PlannedStep:
    origin = end.get("restored_from") or {"run_id": run_id, "ordinal": start["ordinal"]}
    error = end.get("error") or {}
    return PlannedStep(
        run_id=run_id,
        ordinal=start["ordinal"],
        source=start.get("source", ""),
        source_hash=start["source_hash"],
        name=start.get("name"),
        options=start.get("options") or {},
        duration=float(end.get("duration") or 0.0),
        variables=list(end.get("variables") or []),
        outputs=list(end.get("outputs") or []),
        origin={"run_id": origin["run_id"], "ordinal": origin["ordinal"]},
        exited=str(error.get("evalue", "")) if error.get("ename") == "SystemExit" else None,
    )


RESUMABLE_STATUSES = ("failed", "crashed", "cancelled", "suspended")


def journal_status(store: Store, run_id: str) -> tuple[str, int]:
    """A run's status and number of top-level steps, from its journal and lease (no catalog)."""
    records = store.read_journal(run_id)
    steps = sum(1 for r in records if r.get("t") == "step_start" and r.get("parent") is None)
    end = next((r for r in reversed(records) if r.get("t") == "run_end"), None)
    if end is not None:
        return str(end.get("status")), steps
    return ("running" if store.is_live(run_id) else "crashed"), steps


def find_resumable(
    store: Store, notebook: str | None, params: dict[str, Any] | None = None
) -> tuple[str | None, str | None]:
    """The newest run of ``notebook`` (with these ``params``, if given) that did not finish, and a note.

    Reads journal heads newest first and stops at the first run of the notebook that recorded steps, so
    neither a kernel nor a runner opens the catalog to decide. A run still live in another process is
    not resumed: the second element is then a note naming it."""
    if not notebook:
        return None, None
    wanted = params_key(params) if params is not None else None
    for run_id in reversed(store.run_ids()):
        head = store.journal_head(run_id)
        if head is None or head.get("notebook") != notebook:
            continue
        if wanted is not None and params_key(head.get("params") or {}) != wanted:
            continue
        status, steps = journal_status(store, run_id)
        if not steps:
            continue
        if status == "running" or (status == "suspended" and store.is_live(run_id)):  # a worker is resuming it
            return None, f"run {run_id} of this notebook is live in another process"
        return (run_id if status in RESUMABLE_STATUSES else None), None
    return None, None


def params_key(params: dict[str, Any]) -> str:
    """Parameters as compared between runs (canonical JSON)."""
    return json.dumps(params, sort_keys=True, default=str)


def chain_scope(store: Store, run_id: str) -> tuple[float, set[str]]:
    """For ``run_id`` and the runs it resumes: the start of the root run, and the events they consumed."""
    consumed: set[str] = set()
    started = time.time()
    seen: set[str] = set()
    current: str | None = run_id
    while current and current not in seen and store.journal_exists(current):
        seen.add(current)
        records = store.read_journal(current)
        consumed.update(str(r["event"]) for r in records if r.get("t") == "consumed")
        head = records[0] if records else {}
        started = float(head.get("ts", started))
        current = head.get("resumed_from")
    return started, consumed
