"""The cell in flight: what the extension decided for a cell, and what its commit needs, between
``pre_run_cell`` and ``post_run_cell`` (one object, cleared in one place)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from nbdurable.kernel_ext.attempts import CellAttempts
from nbdurable.kernel_ext.interpreter import Before
from nbdurable.runtime.cells import Cell
from nbdurable.runtime.dataflow import Inputs
from nbdurable.runtime.replay import PlannedStep
from nbdurable.runtime.run import StepHandle

DecisionKind = Literal["execute", "reexecute", "restore"]


@dataclass(frozen=True)
class Decision:
    """What to do with a step cell (``runtime/dataflow.py``): ``restore`` a recorded execution,
    ``reexecute`` one that matched but whose state cannot be loaded, or ``execute`` (and why)."""

    kind: DecisionKind
    step: PlannedStep | None = None
    reason: str | None = None
    announce: bool = False  # an execution although the cell has a recorded one: the cell says why

    @property
    def executes(self) -> bool:
        """True when the cell's own code runs."""
        return self.kind != "restore"

    def reexecuting(self, reason: str) -> Decision:
        """This decision, turned into a re-execution (a restore whose state did not load)."""
        return replace(self, kind="reexecute", reason=reason)


@dataclass
class CellInFlight:
    """The cell between ``pre_run_cell`` and ``post_run_cell``: everything the commit needs."""

    cell: Cell
    decision: Decision
    code: str | None = None  # the Python code IPython runs (for the delta analysis)
    step: StepHandle | None = None  # None when nothing is recorded (replayed outputs, a store that refused)
    keys_before: set[str] | None = None  # the namespace's names, for cells that need a full scan
    interpreter_before: Before | None = None  # fingerprints of the interpreter state outside variables
    attempts: CellAttempts | None = None  # the cell's retry/timeout policy
    policy_pending: bool = False  # its AST is still to be wrapped in the attempts loop
    inputs: Inputs | None = None  # what the executing cell read as it began
