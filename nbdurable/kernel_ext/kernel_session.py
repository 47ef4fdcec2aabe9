"""The loaded extension as the rest of nbdurable sees it: the ``runtime.session.Session`` protocol, read
through the extension's current state (widgets, ``nbd.history`` and ``nbd.current_run_id`` use it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nbdurable.kernel_ext.commands import plan_of_file
from nbdurable.runtime.events import EventBus
from nbdurable.runtime.planning import ALREADY_RAN, CellPlan
from nbdurable.runtime.replay import PlannedStep
from nbdurable.store import Store

if TYPE_CHECKING:  # the extension owns its session view
    from nbdurable.kernel_ext.extension import Durable


class KernelSession:
    """The extension as the rest of nbdurable sees it (``runtime.session.Session``)."""

    def __init__(self, ext: Durable) -> None:
        self._ext = ext

    @property
    def store(self) -> Store:
        return self._ext.store_obj

    @property
    def notebook(self) -> str | None:
        return self._ext.notebook

    @property
    def events(self) -> EventBus:
        return self._ext.events

    @property
    def run_id(self) -> str | None:
        return self._ext.run.run_id if self._ext.run is not None else None

    @property
    def run_live(self) -> bool:
        return self._ext.run is not None and self._ext.run.status == "running"

    @property
    def resume_target(self) -> str | None:
        return self._ext.plan.run_id if self._ext.plan is not None else None

    def pending_steps(self) -> list[PlannedStep]:
        return self._ext.pending_steps()

    def planned_cells(self) -> list[CellPlan]:
        cells = plan_of_file(self._ext, None, quiet=True)
        if cells:
            return [c for c in cells if c.reason != ALREADY_RAN]
        # no notebook file known: the recorded executions still to restore, in the order they ran
        return [CellPlan(k, "restore", "", p, p.source, p.name) for k, p in enumerate(self.pending_steps())]

    def wait_durable(self) -> None:
        if self.run_live:
            assert self._ext.run is not None
            self._ext.run.wait_durable()
