"""What Run All would do with each cell of a notebook, and why: the restore rule (``dataflow.py``) played
forward over the notebook's cells without running anything (``%durable plan``, ``nbdurable plan``, the run
graph's pending nodes).

The simulation starts from a session's versions (a fresh kernel: nothing defined, interpreter state at its
start; a live kernel: what it holds now). A restored cell makes the versions of what it wrote current, as
it would. An executed cell is assumed to change what its code assigns (new versions, equal to nothing
recorded), and the interpreter state its last recorded execution changed: this is the plan's one guess. A
cell that executes to the same value after all lets the cells reading it restore in the real Run All where
the plan said they execute: the plan never promises a restore that Run All would not make, except when a
file changes between the plan and the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from nbdurable.capture.names import analyze_code
from nbdurable.capture.namespace import ABSENT
from nbdurable.errors import NbdurableError, OptionsError
from nbdurable.runtime.cells import classify
from nbdurable.runtime.dataflow import chain, choose, describe_read
from nbdurable.runtime.replay import PlannedStep, ReplayPlan

ALREADY_RAN = "it already ran in this session"  # a cell run again in a live session executes


@dataclass(frozen=True)
class CellPlan:
    """What Run All would do with one code cell."""

    index: int  # the cell's position among the notebook's cells (0-based)
    action: str  # "restore" | "execute" | "control" (a `%durable` command: runs, never a step)
    reason: str = ""  # why it executes (or re-executes)
    step: PlannedStep | None = None  # the recorded execution restored (or re-executed)
    source: str = ""  # the cell's code (without its %%durable line)
    name: str | None = None  # its step name (`%%durable --name`)

    @property
    def saved(self) -> float:
        """Seconds its restore saves (the recorded execution's duration)."""
        return self.step.duration if self.step is not None and self.action == "restore" else 0.0

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"index": self.index, "action": self.action, "reason": self.reason}
        if self.step is not None:
            record["from"] = dict(self.step.origin)
            record["saved"] = round(self.saved, 6)
        return record


@dataclass
class Simulation:
    """A session's versions, advanced cell by cell as Run All would."""

    version: Callable[[str], str] = lambda name: ABSENT  # the session's versions before the first cell
    ambient: Callable[[str], str] = lambda name: ""
    executed: set[str] = field(default_factory=set)  # source hashes already executed in the session
    consumed: set[tuple[str, int]] = field(default_factory=set)  # recorded executions already restored
    _versions: dict[str, str] = field(default_factory=dict)
    _ambient: dict[str, str] = field(default_factory=dict)
    _writers: dict[str, str] = field(default_factory=dict)
    _fresh: int = 0

    def current(self, name: str) -> str:
        return self._versions[name] if name in self._versions else self.version(name)

    def current_ambient(self, name: str) -> str:
        return self._ambient[name] if name in self._ambient else self.ambient(name)

    def describe(self, name: str, recorded: str, current: str) -> str:
        text = describe_read(name, recorded, current)
        writer = self._writers.get(name)
        return f"{text} ({writer})" if writer and text.endswith("changed") else text

    def restored(self, planned: PlannedStep, label: str) -> None:
        for name, version in planned.writes().items():
            if not name.startswith("%"):
                self._versions[name] = version
        for ref in planned.variables:
            if ref["name"].startswith("%") and ref.get("op") == "set":
                self._ambient[ref["name"]] = chain(self.current_ambient(ref["name"]), str(ref.get("object")))
        self.consumed.add(planned.origin_key)

    def executes(self, names: Iterable[str], ambient: Iterable[str], label: str) -> None:
        for name in [*names, *ambient]:
            self._fresh += 1
            token = f"~{self._fresh}"  # a version equal to nothing recorded
            if name.startswith("%"):
                self._ambient[name] = token
            else:
                self._versions[name] = token
            self._writers[name] = f"changed by {label}, which executes"


def plan_cells(sources: list[str | None], plan: ReplayPlan, *, simulation: Simulation | None = None,
               transform: Callable[[str], str] = lambda source: source) -> list[CellPlan]:
    """What Run All would do with each code cell (``None``: a cell Run All does not send, skipped).
    ``transform`` turns a cell's source into the Python IPython runs (its magics as calls)."""
    sim = simulation or Simulation()
    out: list[CellPlan] = []
    for index, source in enumerate(sources):
        if source is None:
            continue
        try:
            cell = classify(source.rstrip("\n"))
        except NbdurableError as exc:
            out.append(CellPlan(index, "execute", f"its %%durable options are invalid: {exc.message}", None, source))
            continue
        if cell.control:
            out.append(CellPlan(index, "control", "a %durable command: it runs, it is not a step", None, source))
            continue
        label = f"cell {index + 1}"
        if cell.source_hash in sim.executed:
            verdict_step, reason = None, ALREADY_RAN
        else:
            candidates = [p for p in plan.candidates(cell.source_hash, cell.options.name)
                          if p.origin_key not in sim.consumed]
            verdict = choose(candidates, sim.current, sim.current_ambient, always=cell.options.always,
                             describe=sim.describe)
            verdict_step, reason = verdict.step, verdict.reason
        if verdict_step is not None and not reason:
            sim.restored(verdict_step, label)
            out.append(CellPlan(index, "restore", "", verdict_step, cell.body, cell.options.name))
            continue
        sim.executed.add(cell.source_hash)
        recorded = verdict_step or next(iter(plan.candidates(cell.source_hash, cell.options.name)), None)
        if verdict_step is not None:
            sim.consumed.add(verdict_step.origin_key)
        ambient = [r["name"] for r in (recorded.variables if recorded else []) if r["name"].startswith("%")]
        sim.executes(_assigned(cell.body, transform), ambient, label)
        out.append(CellPlan(index, "execute", reason, verdict_step, cell.body, cell.options.name))
    return out


def _assigned(body: str, transform: Callable[[str], str]) -> frozenset[str]:
    """The globals a cell's code may assign (what an executed cell is assumed to change)."""
    try:
        code = transform(body)
    except Exception:  # IPython could not transform it: it will fail when it runs, changing nothing
        return frozenset()
    return analyze_code(code).stored


def notebook_sources(path: Any) -> list[str | None]:
    """The sources of a notebook file's cells as Run All sends them (None for markdown and raw cells, and
    for cells tagged ``skip-execution``). Plain JSON: no notebook library needed to plan."""
    try:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
        cells = nb["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OptionsError(f"{path} is not a readable notebook: {exc}", hint="open it in Jupyter to check it") from exc
    out: list[str | None] = []
    for cell in cells:
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        tags = (cell.get("metadata") or {}).get("tags") or []
        out.append(source if cell.get("cell_type") == "code" and "skip-execution" not in tags else None)
    return out


def summarize(cells: list[CellPlan]) -> str:
    """One line: how many cells restore (and the time saved) and how many execute."""
    restore = [c for c in cells if c.action == "restore"]
    execute = [c for c in cells if c.action == "execute"]
    saved = sum(c.saved for c in restore)
    return f"{len(restore)} cell(s) restore (saving {saved:.1f} s), {len(execute)} execute"


def format_plan(cells: list[CellPlan]) -> str:
    """The plan as a table: cell, action, where from or why."""
    lines = []
    for c in cells:
        if c.action == "restore" and c.step is not None:
            detail = f"from {c.step.label} (saves {c.saved:.2f} s)"
        elif c.action == "execute" and c.step is not None:
            detail = f"re-executes {c.step.label}: {c.reason}"
        else:
            detail = c.reason
        lines.append(f"cell {c.index + 1:>4}  {c.action:<8} {detail}")
    lines.append(summarize(cells))
    return "\n".join(lines)
