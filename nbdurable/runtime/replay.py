"""What a new run may restore: the recorded executions of the runs it resumes (and, with reuse, of any
completed run of the notebook), indexed by the code they ran.

Restore decisions are taken by dataflow (``dataflow.py``): a cell is restored when one of these executions
ran the same code and read the same values. This module only gathers the executions:

- a run's top-level steps that completed (or were restored: a restored step is a copy that names its
  origin, so a journal stays self-contained even when the journal it came from is collected);
- for a run that resumed another (``resumed_from``), the chain's executions, oldest run first, each
  origin once; the newest execution of a cell is tried first;
- the explicit-step calls that completed inside a cell that was cut short (killed, failed, suspended),
  keyed by that cell's source hash and the values it read when it began: when that cell runs again with
  the same inputs, its completed calls replay instead of running again. A resume killed before it reached
  that cell, or while replaying its calls, keeps the earlier run's calls (each call ran once).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from nbdurable.runtime.dataflow import ABSENT, UNKNOWN, Inputs
from nbdurable.store import Store
from nbdurable.store.records import VarRef, run_end_status


@dataclass
class PlannedStep:
    """One recorded execution of a cell that a run may restore."""

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
    inputs: Inputs | None = None  # what it read (None: recorded before inputs were; see dataflow.py)
    reused: bool = False  # offered from another completed run (reuse), not from the run being resumed

    @property
    def label(self) -> str:
        """How messages name this step."""
        name = f" `{self.name}`" if self.name else ""
        return f"step {self.origin['ordinal']}{name} of run {self.origin['run_id']}"

    @property
    def origin_key(self) -> tuple[str, int]:
        return str(self.origin["run_id"]), int(self.origin["ordinal"])

    def execution_reason(self) -> str | None:
        """Why this step must be executed again instead of restored, or None if it can be restored."""
        if self.options.get("always"):
            return "the cell is marked %%durable --always"
        for ref in self.variables:
            if ref.get("op") == "set" and ref.get("format") == "unrestorable" and not ref.get("inert"):
                return f"variable `{ref['name']}` ({ref.get('type')}) was not stored ({ref.get('reason')})"
        return None

    def matches(self, source_hash: str, name: str | None) -> bool:
        """Whether a cell about to run ran this step's code."""
        return self.source_hash == source_hash and (self.name or None) == (name or None)

    def writes(self) -> dict[str, str]:
        """The version of each name (and piece of interpreter state) after this step, as restoring it leaves
        them: an object's content key, ABSENT for a deletion, UNKNOWN for an object that is not stored (a
        secret's key is a keyed digest of its value: known)."""
        out: dict[str, str] = {}
        for ref in self.variables:
            name = ref["name"]
            if ref.get("op") == "del":
                out[name] = ABSENT
            elif ref.get("version"):
                out[name] = str(ref.get("version"))
            elif ref.get("format") == "unrestorable" and not str(ref.get("reason") or "").startswith("secret"):
                out[name] = UNKNOWN
            else:
                out[name] = str(ref.get("object") or ref.get("module") or UNKNOWN)
        return out


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


@dataclass
class CutShort:
    """A cell that was cut short: the calls it completed, and what it had read when it began."""

    source_hash: str
    inputs: Inputs | None
    calls: list[RecordedCall]
    ordinal: int = 0


@dataclass
class ReplayPlan:
    """The recorded executions a session may restore (``dataflow.py`` decides which, cell by cell)."""

    run_id: str | None  # the run this session resumes (None: only reuse)
    steps: list[PlannedStep] = field(default_factory=list)  # the chain's executions, oldest first
    pending: dict[str, CutShort] = field(default_factory=dict)  # source hash -> its cut-short execution
    reused: list[PlannedStep] = field(default_factory=list)  # other completed runs' executions (reuse)
    _index: dict[tuple[str, str | None], list[PlannedStep]] | None = field(default=None, repr=False)

    @classmethod
    def from_run(cls, store: Store, run_id: str) -> ReplayPlan:
        """The executions of ``run_id`` and of the runs it resumed, transitively."""
        chain: list[str] = []
        current: str | None = run_id
        while current and current not in chain and store.journal_exists(current):
            chain.append(current)
            head = store.journal_head(current) or {}
            current = head.get("resumed_from")
        steps: list[PlannedStep] = []
        seen: set[tuple[str, int]] = set()
        pending: dict[str, CutShort] = {}
        for rid in reversed(chain):  # oldest first; in each run, in the order its steps began
            records = store.read_journal(rid)
            events: list[tuple[int, PlannedStep | CutShort]] = [(p.ordinal, p) for p in _executions(rid, records)]
            events += [(c.ordinal, c) for c in _cut_short(records)]
            for _, item in sorted(events, key=lambda e: e[0]):
                if isinstance(item, CutShort):
                    pending[item.source_hash] = _merge_pending(pending.get(item.source_hash), item)
                    continue
                pending.pop(item.source_hash, None)  # it completed after all: nothing left to replay
                if item.origin_key not in seen:
                    seen.add(item.origin_key)
                    steps.append(item)
        return cls(run_id, steps, pending)

    def add_reuse(self, store: Store, notebook: str) -> None:
        """Also offer the executions of every completed run of ``notebook`` (newest run first)."""
        known = {step.origin_key for step in self.steps}
        for run_id in reversed(store.run_ids()):
            head = store.journal_head(run_id) or {}
            if head.get("notebook") != notebook:
                continue
            records = store.read_journal(run_id)
            end = next((r for r in reversed(records) if r.get("t") == "run_end"), None)
            if end is None or run_end_status(end) != "completed":
                continue
            for planned in _executions(run_id, records):
                if planned.origin_key not in known:
                    known.add(planned.origin_key)
                    planned.reused = True
                    self.reused.append(planned)
        self._index = None

    def drop_reuse(self) -> None:
        """Offer only the resumed runs' executions again."""
        self.reused.clear()
        self._index = None

    def candidates(self, source_hash: str, name: str | None) -> list[PlannedStep]:
        """The recorded executions of this code (and step name), newest first (the chain before reuse)."""
        if self._index is None:
            index: dict[tuple[str, str | None], list[PlannedStep]] = {}
            for planned in [*reversed(self.steps), *self.reused]:
                index.setdefault((planned.source_hash, planned.name or None), []).append(planned)
            self._index = index
        return self._index.get((source_hash, name or None), [])

    def calls_for(self, source_hash: str, reads_match: Any = None) -> list[RecordedCall]:
        """The completed calls of a cut-short execution of this code, to replay once in a cell that runs it
        again with the same inputs (``reads_match(inputs)`` decides); then forgotten."""
        cut = self.pending.get(source_hash)
        if cut is None or not cut.calls:
            return []
        if reads_match is not None and cut.inputs is not None and not reads_match(cut.inputs):
            return []
        del self.pending[source_hash]
        return cut.calls


WAIT_STEPS = ("nbd.sleep", "nbd.wait_for_event", "nbd.run_notebook")  # (a child-run call waits for its child)


def _cut_short(records: list[dict[str, Any]]) -> list[CutShort]:
    """The top-level steps of a journal that did not complete (no end, failed, interrupted, suspended), with
    the explicit-step calls that completed inside each (the last such step of each code wins)."""
    tops = [r for r in records if r.get("t") == "step_start" and r.get("parent") is None]
    done = {r["ordinal"] for r in records if r.get("t") == "step_end" and r.get("status") in ("completed", "restored")}
    found: dict[str, CutShort] = {}
    for cell in tops:
        if cell["ordinal"] in done:
            continue
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
        source_hash = str(cell["source_hash"])
        found[source_hash] = CutShort(source_hash, Inputs.from_record(cell.get("inputs")),
                                      sorted(calls.values(), key=lambda c: c.seq), int(cell["ordinal"]))
    return list(found.values())


def _merge_pending(inherited: CutShort | None, mine: CutShort) -> CutShort:
    """The completed calls of a cell cut short in an earlier run and again in a later one (a resume killed
    while replaying them, or before reaching them): every call that completed in either still counts."""
    if inherited is None or not inherited.calls:
        return mine
    if mine.inputs is not None and inherited.inputs is not None \
            and dict(mine.inputs.reads) != dict(inherited.inputs.reads):
        return mine  # the later run read other values: the earlier calls are not its calls
    calls = {c.seq: c for c in inherited.calls}
    calls.update({c.seq: c for c in mine.calls})
    return CutShort(mine.source_hash, mine.inputs or inherited.inputs, sorted(calls.values(), key=lambda c: c.seq),
                    mine.ordinal)


def _executions(run_id: str, records: list[dict[str, Any]]) -> list[PlannedStep]:
    """A journal's top-level steps that completed or were restored, in the order they ran."""
    starts: dict[int, dict[str, Any]] = {}
    ends: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.get("parent") is not None:
            continue  # explicit steps inside a cell restore with their cell
        if record.get("t") == "step_start":
            starts[record["ordinal"]] = record
        elif record.get("t") == "step_end":
            ends[record["ordinal"]] = record
    return [_planned(run_id, starts[o], ends[o]) for o in sorted(starts)
            if o in ends and ends[o].get("status") in ("completed", "restored")]


def _planned(run_id: str, start: dict[str, Any], end: dict[str, Any]) -> PlannedStep:
    origin = end.get("restored_from") or {"run_id": run_id, "ordinal": start["ordinal"]}
    error = end.get("error") or {}
    inputs = Inputs.from_record(start.get("inputs"))
    if inputs is not None:
        inputs = inputs.completed(end.get("files"), end.get("drawn"), end.get("wrote"))
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
        inputs=inputs,
    )


RESUMABLE_STATUSES = ("failed", "crashed", "interrupted", "suspended")  # never "cancelled": it is terminal


def journal_status(store: Store, run_id: str) -> tuple[str, int]:
    """A run's status and number of top-level steps, from its journal and lease (no catalog)."""
    records = store.read_journal(run_id)
    steps = sum(1 for r in records if r.get("t") == "step_start" and r.get("parent") is None)
    end = next((r for r in reversed(records) if r.get("t") == "run_end"), None)
    if end is not None:
        return run_end_status(end), steps
    return ("running" if store.is_live(run_id) else "crashed"), steps


def find_resumable(
    store: Store, notebook: str | None, params: dict[str, Any] | None = None, *, completed: bool = False,
) -> tuple[str | None, str | None]:
    """The newest run of ``notebook`` (with these ``params``, if given) that did not finish (or, with
    ``completed``, that finished too: an interactive session goes on from the last one), and a note.

    Reads journal heads newest first and stops at the first run of the notebook that recorded steps, so
    neither a kernel nor a runner opens the catalog to decide. A run still live in another process is
    not resumed: the second element is then a note naming it. A run that compensated and ended is never
    resumed (its steps were undone): the new run starts fresh; one killed mid-compensation is resumed."""
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
        if status not in ("running", "crashed") and _compensated(store, run_id):
            return None, None  # it failed for good and undid its steps (``compensation.py``): start fresh
        if status == "running" or (status == "suspended" and store.is_live(run_id)):  # a worker is resuming it
            return None, f"run {run_id} of this notebook is live in another process"
        return (run_id if status in RESUMABLE_STATUSES or (completed and status == "completed") else None), None
    return None, None


def _compensated(store: Store, run_id: str) -> bool:
    """Whether the run ran compensations (a ``compensating`` record): it ended for good."""
    return any(r.get("t") == "compensating" for r in store.read_journal(run_id))


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
