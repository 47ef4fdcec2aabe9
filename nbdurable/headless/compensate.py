"""Compensations owed by a run cancelled without a kernel: a suspended run, one waiting for an event, or one
whose kernel had to be killed after the grace period (a cell stuck in native code).

A cancel of a live headless run has the stopped kernel run the compensations of the run's completed steps
(``headless/runner.py``). A run without a kernel still owes them: ``compensate_cancelled`` starts one. It
resumes the run (its notebook and parameters, as ``nbdurable resume --force`` would), restores what the run
completed and executes nothing; that kernel runs the compensations (``runtime/compensation.py``: newest
first, each a durable step, exactly once across crashes), and the resuming run ends ``cancelled`` by the
same person, for the same reason. Nothing is started when nothing is owed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nbdurable.errors import NbdurableError
from nbdurable.headless.cancel import compensate_in_kernel
from nbdurable.headless.params import load_notebook, secrets_from_environment
from nbdurable.headless.result import RunResult
from nbdurable.headless.runner import HeadlessRunner
from nbdurable.runtime.compensation import pending
from nbdurable.runtime.session import HANDLE_NAME
from nbdurable.store import Store


class CompensatingRunner(HeadlessRunner):
    """Brings a cancelled run's state back, has its kernel run the compensations owed, and ends the resuming
    run ``cancelled`` (``request``: the original cancel: who, and why)."""

    restore_only = True

    def __init__(self, nb: Any, *, request: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.request = request

    def _complete(self, client: Any) -> None:
        run_id = self._find_run_id()
        compensate_in_kernel(client, f"{HANDLE_NAME}.compensate('cancelled')")
        self._watcher.stop()  # the request below is ours: no interrupt of the kernel finishing the run
        if run_id is not None:
            self.store.request_cancel(run_id, by=self.request.get("by"), reason=self.request.get("reason"))
        client.wait_for_reply(client.kc.execute(f"{HANDLE_NAME}.finish_headless('failed')", silent=True))
        self.result.status, self.result.run_id = "cancelled", run_id


def compensate_cancelled(store: Store, run_id: str, request: dict[str, Any]) -> RunResult | None:
    """Run the compensations a cancelled run without a kernel owes (see the module docstring); None when it
    owes none. Raises NbdurableError when its notebook is gone (the compensations stay owed)."""
    if not pending(store, run_id):
        return None
    head = store.journal_head(run_id) or {}
    notebook = head.get("notebook_path")
    if not notebook or not Path(notebook).exists():
        raise NbdurableError(f"run {run_id} owes compensations, but its notebook is gone ({notebook or 'unnamed'})",
                             hint="restore the notebook file, then `nbdurable cancel` the run again to run them")
    params = secrets_from_environment(head.get("params") or {}, run_id)
    nb = load_notebook(Path(notebook), params, None)
    runner = CompensatingRunner(nb, request=request, notebook_path=Path(notebook), store_path=store.location,
                                params=params, output_path=None, resume_run=run_id)
    return runner.execute()
