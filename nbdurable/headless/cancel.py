"""The headless runner's side of cancelling: a thread that watches for a cancel request of the run (or of
the run it resumes) and stops the kernel.

The request is a file of the store (``store/control.py``), looked for every 0.1 s with one ``stat`` per run.
On a request the watcher interrupts the kernel (SIGINT, as Jupyter's interrupt does: a cell in Python
stops at once, its step ends ``interrupted``) and tells the runner, which sends no further cell and shuts
the kernel down; whoever finishes the run finishes it ``cancelled`` (``DurableRun.finish`` sees the
request). If the kernel is still there after the grace period (a cell stuck in native code, which a signal
does not stop), the watcher kills it; the runner then ends the run ``cancelled`` under its lease. A kernel
that stopped asks its run's compensations to run first (``compensate_in_kernel``); a killed one cannot, and
what its run owes stays listed (``runtime/compensation.pending``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from nbdurable.runtime.control import POLL_S, pending_cancel
from nbdurable.store import Store

COMPENSATE_TIMEOUT_S = 600.0  # a cancelled run's compensations, run in its kernel before it shuts down
RESEND_S = 1.0  # while a cell still runs after an interrupt, it is interrupted again this often


class CancelWatcher:
    """Watches for a cancel request while a runner's kernel runs; ``request`` once one came."""

    def __init__(self, store: Store, *, run_id: Callable[[], str | None], resumed_from: str | None, since: float,
                 kernel: Callable[[], tuple[int | None, int | None]], grace: float,
                 busy: Callable[[], bool] = lambda: False) -> None:
        """``run_id()``: the run the kernel records (None until it began); ``kernel()``: its (pid, pgid);
        ``busy()``: a cell is still running (an interrupt that reached the kernel between two cells, where
        it is ignored, is sent again while one runs)."""
        self.store, self._run_id, self.resumed_from, self.since = store, run_id, resumed_from, since
        self._kernel, self.grace, self._busy = kernel, grace, busy
        self.request: dict[str, Any] | None = None
        self.killed = False  # the kernel did not stop within the grace period
        self._gone = threading.Event()  # the runner is done with the kernel
        self._thread = threading.Thread(target=self._watch, name="nbdurable-cancel-watcher", daemon=True)

    @property
    def cancelled(self) -> bool:
        return self.request is not None

    def start(self) -> CancelWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        """The kernel is gone (or the run is over): stop watching, and never signal it again."""
        self._gone.set()
        self._thread.join(timeout=2.0)

    def _watch(self) -> None:
        known: str | None = None
        while not self._gone.wait(POLL_S):
            known = known or self._run_id()
            request = pending_cancel(self.store, known, [self.resumed_from], since=self.since)
            if request is None:
                continue
            self.request = request
            self._signal(signal.SIGINT)
            deadline = time.monotonic() + self.grace
            while not self._gone.wait(max(0.0, min(RESEND_S, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    self.killed = True
                    self._signal(signal.SIGKILL)
                    return
                if self._busy():
                    self._signal(signal.SIGINT)
            return

    def _signal(self, signum: int) -> None:
        pid, pgid = self._kernel()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pgid is not None and pgid != os.getpgid(0):
                os.killpg(pgid, signum)  # its own process group: what it started goes too
            elif pid is not None:
                os.kill(pid, signum)


def describe_cancel(request: dict[str, Any]) -> str:
    """How a cancel request reads in a run's summary: who, and why."""
    reason = f": {request['reason']}" if request.get("reason") else ""
    return f"cancelled by {request.get('by') or 'someone unknown'}{reason}"


def compensate_in_kernel(client: Any, code: str) -> None:
    """Once a cancelled run's cell stopped: its kernel runs the compensations of the run's completed steps
    (``runtime/compensation.py``: newest first, each a durable step) before the run ends ``cancelled``."""
    if getattr(client, "kc", None) is None:
        return
    try:
        client.wait_for_reply(client.kc.execute(code, silent=True), timeout=COMPENSATE_TIMEOUT_S)
    except Exception:  # a dead or unresponsive kernel: the run is cancelled all the same
        pass


def kernel_ids(client: Any) -> tuple[int | None, int | None]:
    """A runner's kernel's pid and process group (what the watcher signals); (None, None) before it starts."""
    provisioner = getattr(getattr(client, "km", None), "provisioner", None)
    return getattr(provisioner, "pid", None), getattr(provisioner, "pgid", None)
