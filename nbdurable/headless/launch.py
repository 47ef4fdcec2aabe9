"""Starting headless runs in their own processes, cheaply: what the worker engine, triggers, schedules and
child runs share.

A run the engine starts executes in a process of its own (its kernel is a further process), so a failing
or killed run never takes the engine down, and the engine never waits on a run. Starting a Python process
that imports the runner (nbclient, papermill, nbformat, zmq) costs several hundred milliseconds; the
launcher instead forks each run from a *forkserver* that imported them once (``multiprocessing``'s
``forkserver`` start method with these modules preloaded), which costs a few milliseconds. A run so
started keeps going if the engine dies: it is an ordinary headless run holding its own lease.

``LaunchSpec`` says what to run: the notebook, its parameters, its ``origin`` (what started it, recorded in its
``run`` record) and the id it takes (``run_id``, chosen before it starts so a claim can name it), or a run to
resume. With ``claim=(kind, key)`` the child holds that claim's lease (``store/claims.py``) for its life: a
claim whose starter died before the run's journal existed is then recognisably orphaned (on a shared store the
worker's ``take_claim`` took that lease: ``claim_token`` hands it to the child). With ``slot=(key, limit)`` it
holds one of the key's concurrency slots (``Store.hold_slot``) for its life, or exits at once without running
when all are taken; ``queue_slot`` the same for its queue's concurrency. A resume (``resume_run``) holds the
resumed run's lease for its life and exits at once if another process holds it or a run already resumed it: of
two engines resuming one suspended run, one does. ``on_change`` is ``nbdurable resume --on-change``; a run the
runner refuses to start (an ``OptionsError``: changed code under ``fail``, a secret parameter missing) prints
``nbdurable-refused: <JSON message>`` and exits with ``EXIT_REFUSED``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

PRELOAD = ["nbdurable.headless.preload",  # first: skips the slow optional imports (nbdurable.startup)
           "nbdurable.headless.runner", "nbdurable.headless.params", "nbdurable.headless.compensate",
           # jupyter_client imports these when it looks up a kernelspec (IPython.paths, ipykernel.kernelspec):
           # about a second per run if each forked run imported them again
           "IPython", "ipykernel.kernelspec"]
EXIT_CODES = {"completed": 0, "failed": 1, "suspended": 3, "cancelled": 4, "interrupted": 130}
EXIT_CLAIM_HELD = 75  # another live process is starting the claim's run: this one did nothing
EXIT_NO_SLOT = 76  # every concurrency slot of the run's flow key is held: this one did nothing (start it later)
EXIT_REFUSED = 77  # the runner refused the run (OptionsError, printed as ``nbdurable-refused: <JSON>``)
REFUSED_PREFIX = "nbdurable-refused: "


@dataclass(frozen=True)
class LaunchSpec:
    """A run to start: a new one of ``notebook`` (``run_id`` pre-chosen or new) or ``resume_run``."""

    store: str
    notebook: str
    params: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    resume_run: str | None = None
    claim: tuple[str, str] | None = None
    slot: tuple[str, int] | None = None  # (flow key, limit): the run holds one of the key's slots for its life
    queue_slot: tuple[str, int] | None = None  # (queue's slot key, its concurrency): held for its life, as ``slot``
    claim_token: str | None = None  # the claim's lease taken by a shared store's ``take_claim``, handed to the run
    output_path: str | None = None
    cwd: str | None = None
    suspend_after: float | None = None
    on_change: str = "continue"  # a resume whose cells before its resumption point changed: continue or fail
    env: dict[str, str] = field(default_factory=dict)  # set in the child before anything runs
    log_path: str | None = None  # the child's stdout/stderr (default: discarded)


@dataclass
class Launched:
    """A started run's process."""

    spec: LaunchSpec
    process: Any  # multiprocessing.Process
    started_at: float

    @property
    def alive(self) -> bool:
        return bool(self.process.is_alive())

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode  # type: ignore[no-any-return]

    def wait(self, timeout: float | None = None) -> int | None:
        self.process.join(timeout)
        return self.exitcode


class Launcher:
    """Starts runs from a forkserver that imported the headless runner once (started on first use)."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        self._ctx: Any = None

    def _context(self) -> Any:
        with self._lock:
            if self._ctx is None:
                methods = multiprocessing.get_all_start_methods()
                ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
                if ctx.get_start_method() == "forkserver":
                    ctx.set_forkserver_preload(PRELOAD)
                self._ctx = ctx
            return self._ctx

    def warm(self) -> None:
        """Start the forkserver now and wait until it imported the runner (a first, empty child is forked
        after the preload), so the first run starts fast too."""
        process = self._context().Process(target=_noop, daemon=True, name="nbdurable-warm")
        process.start()
        process.join()

    def start(self, spec: LaunchSpec) -> Launched:
        """Start ``spec`` in a new process and return at once."""
        process = self._context().Process(target=_child_main, args=(spec,), daemon=False,
                                          name=f"nbdurable-run-{spec.run_id or spec.resume_run or 'new'}")
        process.start()
        return Launched(spec, process, time.time())


def _noop() -> None:
    """What ``Launcher.warm`` forks: nothing."""


def _child_main(spec: LaunchSpec) -> None:
    """The started process: redirect output, hold the claim, run (or resume) the notebook, exit with the
    run's status as ``nbdurable run`` would (0, 1, 3 suspended, 4 cancelled)."""
    os.environ.update(spec.env)
    if spec.log_path:
        fd = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    else:
        fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.setsid()  # its own session: a Ctrl-C or a kill of the engine's process group does not reach it
    from nbdurable.errors import OptionsError
    from nbdurable.headless.compensate import compensate_cancelled
    from nbdurable.store import Store

    store = Store.open(spec.store)
    held: list[Any] = []  # released before an early exit: a shared store's leases would otherwise wait for expiry
    if spec.claim is not None:
        lease = store.hold_claim(*spec.claim, token=spec.claim_token)
        if lease is None or (spec.run_id and store.journal_exists(spec.run_id)):
            _exit_early(EXIT_CLAIM_HELD, [lease])
        held.append(lease)
    if spec.resume_run:
        held.append(_hold_resumed(store, spec.resume_run))
    for wanted in (spec.slot, spec.queue_slot):
        if wanted is not None:
            slot = store.hold_slot(*wanted)
            if slot is None:
                _exit_early(EXIT_NO_SLOT, held)
            held.append(slot)
    if spec.run_id and not spec.resume_run and store.cancel_requested(spec.run_id):
        _end_cancelled_unstarted(store, spec)  # e.g. a child run whose parent was cancelled before it started
        _exit_early(EXIT_CODES["cancelled"], held)
    try:
        result = _execute(spec, store)
    except OptionsError as exc:
        print(REFUSED_PREFIX + json.dumps(str(exc)), file=sys.stderr, flush=True)
        _exit_early(EXIT_REFUSED, held)
    print(f"{result.status}: run {result.run_id}: {result.executed} executed, {result.restored} restored"
          + (f": {result.error}" if result.error else ""), file=sys.stderr, flush=True)
    if result.status == "cancelled" and result.run_id and result.cancel:
        compensate_cancelled(store, result.run_id, result.cancel)
    _exit_early(EXIT_CODES.get(result.status, 1), held)


def _exit_early(code: int, held: list[Any]) -> NoReturn:
    """Release what this process holds (newest first) and exit with ``code`` at once."""
    for lease in reversed(held):
        if lease is not None:
            lease.release()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _hold_resumed(store: Any, run_id: str) -> Any:
    """The lease of the run being resumed, held for this process's life; exits (``EXIT_CLAIM_HELD``) if a live
    process holds it or a run resuming it exists already (read under the lease: fresher than any catalog)."""
    from nbdurable.errors import LeaseHeldError

    try:
        lease = store.acquire_lease(run_id)
    except LeaseHeldError:
        os._exit(EXIT_CLAIM_HELD)
    if any((store.journal_head(other) or {}).get("resumed_from") == run_id
           for other in store.run_ids() if other > run_id):
        _exit_early(EXIT_CLAIM_HELD, [lease])
    return lease


def _execute(spec: LaunchSpec, store: Any) -> Any:
    """Run (or resume) the spec's notebook in this process; the runner's result."""
    from nbdurable.headless.params import load_notebook, secrets_from_environment
    from nbdurable.headless.runner import HeadlessRunner

    params = spec.params
    if spec.resume_run:
        params = secrets_from_environment(params, spec.resume_run)
    notebook = Path(spec.notebook)
    runner = HeadlessRunner(
        load_notebook(notebook, params, None), notebook_path=notebook, store_path=spec.store, params=params,
        output_path=Path(spec.output_path) if spec.output_path else None,
        cwd=Path(spec.cwd) if spec.cwd and Path(spec.cwd).is_dir() else None, resume_run=spec.resume_run,
        fresh=spec.resume_run is None,  # a started run never picks up another unfinished run of the same params
        suspend_after=spec.suspend_after, run_id=None if spec.resume_run else spec.run_id,
        origin=spec.origin or None, on_change=spec.on_change,
        notify=lambda text: print(f"nbdurable: {text}", file=sys.stderr, flush=True),
    )  # fmt: skip
    return runner.execute()


def _end_cancelled_unstarted(store: Any, spec: LaunchSpec) -> None:
    """A claimed run asked to cancel before it started: its journal says so (run, then run_end cancelled), so
    its claim is started and its run terminal, without a kernel."""
    from nbdurable.runtime.run import DurableRun

    notebook = str(Path(spec.notebook).resolve())
    run = DurableRun(store, notebook=notebook, notebook_path=notebook,
                     kind="headless", params=spec.params, run_id=spec.run_id, origin=spec.origin or None)
    run.finish("cancelled", cancel=store.cancel_request(spec.run_id))


__all__ = ["EXIT_CLAIM_HELD", "EXIT_CODES", "EXIT_NO_SLOT", "EXIT_REFUSED", "REFUSED_PREFIX", "LaunchSpec", "Launched",
           "Launcher"]
