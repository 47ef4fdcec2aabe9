"""Running a notebook headless and resumably: one kernel, every cell a durable step.

The runner (this process) decides which earlier run to resume — the newest unfinished run of the same
notebook with the same parameters — and starts a kernel with the extension loaded and that decision in
its environment, so the kernel never opens the catalog. nbclient sends the cells; the kernel restores
the ones the earlier run completed. The runner collects the outputs, moves nbdurable's notices into
per-cell metadata, and writes the output notebook every few seconds and at the end (never after every
cell). Only once every cell ran (or a cell ended the notebook early with ``sys.exit()``/``sys.exit(0)``, which
papermill counts as success) does it tell the kernel that the run completed: a kernel that stops any other way
leaves a run that the next invocation resumes. The status the runner reports and writes into the output
notebook at the end is the one the run's journal has.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from nbdurable.errors import NbdurableError, OptionsError
from nbdurable.headless.cancel import CancelWatcher, compensate_in_kernel, describe_cancel, kernel_ids
from nbdurable.headless.result import (
    RunResult,
    describe_exception,
    executes,
    find_resumable_headless,
    first_exception,
    interrupt_kernel,
    is_clean_exit,
    notice_of,
    take_notices,
    without_load_ext_echo,
)
from nbdurable.kernelspec import local_kernel_config
from nbdurable.runtime.cells import classify
from nbdurable.runtime.changes import apply_policy
from nbdurable.runtime.checkpoint import load_outputs
from nbdurable.runtime.clock import ENV_TIME_SKIP, is_skipping
from nbdurable.runtime.control import cancel_grace, end_cancelled
from nbdurable.runtime.output_fold import display_id_of, is_pending_update, join_streams
from nbdurable.runtime.replay import PlannedStep, ReplayPlan, journal_status, params_key
from nbdurable.runtime.run import new_run_id, requested_run_id
from nbdurable.runtime.session import (
    ENV_KIND,
    ENV_NOTEBOOK,
    ENV_ORIGIN,
    ENV_OUTPUT,
    ENV_PARAMS,
    ENV_RESUME,
    ENV_REUSE,
    ENV_RUN_ID,
    ENV_STORE,
    ENV_SUSPEND_AFTER,
    HANDLE_NAME,
    NOTICE_METADATA_KEY,
)
from nbdurable.store import Store

# nbclient's log, minus its "Kernel died while waiting for execute reply" (the runner reports a dead kernel itself,
# once; under papermill that line broke into the progress bar before ours)
NBCLIENT_LOG = logging.getLogger("nbdurable.headless.nbclient")
NBCLIENT_LOG.addFilter(lambda record: not record.getMessage().startswith("Kernel died while waiting"))
NBCLIENT_LOG.addHandler(logging.NullHandler())  # as traitlets' logger: shown where logging is set up (papermill)
INTERRUPT_WAIT_SECONDS = 5.0  # a timed-out cell, interrupted: how long its reply is waited for
SETTLE_SECONDS = 5.0  # at the end, how long a run still live (its kernel shutting down) is waited for


class _Cancelled(Exception):
    """The run was asked to cancel: no further cell is sent."""


class _Client(NotebookClient):
    """nbclient's client, telling the runner about each message it turned into an output (papermill's client
    logs them, tees them to files and autosaves there)."""

    def __init__(self, nb: Any, on_message: Callable[[int, Any], None] | None, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self._on_message = on_message

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        output = super().process_message(msg, cell, cell_index)  # raises CellExecutionComplete at the end
        if self._on_message is not None:
            self._on_message(cell_index, output)
        return output


class HeadlessRunner:
    """Executes one (already parameterized) notebook durably."""

    restore_only = False  # a subclass that only brings a run's state back (restores, executes nothing)

    def __init__(
        self,
        nb: nbformat.NotebookNode,
        *,
        notebook_path: Path,
        store_path: Path | str,
        params: dict[str, Any],
        output_path: Path | None,
        kernel_name: str | None = None,
        cwd: Path | None = None,
        fresh: bool = False,
        resume_run: str | None = None,
        reuse: bool = False,
        autosave_seconds: float = 10.0,
        suspend_after: float | None = None,
        start_timeout: float = 60.0,
        execution_timeout: float | None = None,
        on_cell: Callable[[int, dict[str, Any]], None] | None = None,
        on_cell_start: Callable[[int], None] | None = None,
        on_message: Callable[[int, Any], None] | None = None,
        on_change: str = "continue",
        notify: Callable[[str], None] | None = None,
        fork: tuple[str, int] | None = None,
        run_id: str | None = None,
        origin: dict[str, Any] | None = None,
    ) -> None:
        """``execution_timeout``: seconds a cell may run (nbclient's per-cell ``timeout``; None: no limit);
        ``start_timeout``: seconds the kernel may take to start. Callbacks: ``on_cell(index, meta)`` once a
        code cell is done (executed, restored, failed…; ``meta`` is its ``nbdurable`` metadata),
        ``on_cell_start(index)`` before a cell is sent to the kernel (not for the leading cells restored
        in one batch), ``on_message(index, output)`` for every kernel message of a cell, with the output it
        added to the cell (None for other messages). ``on_change``: what a resume does when cells before its
        resumption point changed (``runtime/changes.py``: ``continue`` or ``fail``); ``notify(text)`` is told.
        ``fork=(run, k)``: a fork (``headless/fork.py``): the notebook's first k step cells are run ``run``'s
        cells 1..k, checked out in one request, and every cell after them executes. ``run_id``, ``origin``:
        the id the run takes and what started it (a launcher's: ``headless/launch.py``)."""
        self.nb = nb
        self.notebook = str(notebook_path.resolve())
        self.store = Store.open(store_path)
        self.params = params
        from nbdurable.headless.params import recorded_params  # (params imports papermill, whose engines import us)

        self.recorded = recorded_params(params)  # what the run records: secret parameters as digests
        self.output_path = output_path
        self.kernel_name = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or "python3"
        self.cwd = cwd or notebook_path.resolve().parent
        self.fresh, self.resume_run, self.fork, self.origin = fresh, resume_run, fork, origin
        # chosen here (or taken from $NBDURABLE_RUN_ID, as the server asks for it), so the runner knows its run
        # exactly, never by looking for a new journal: a run of the same notebook begun a moment earlier would
        # pass for it
        self.run_id = run_id or requested_run_id(self.store) or new_run_id()
        self.reuse = reuse  # also restore matching executions of the notebook's completed runs
        self.autosave_seconds, self.suspend_after, self.start_timeout = autosave_seconds, suspend_after, start_timeout
        # 0: no limit, as in papermill; a whole number of seconds reads "after 2 seconds" in nbclient's error
        self.execution_timeout = (int(execution_timeout) if execution_timeout and float(execution_timeout).is_integer()
                                  else execution_timeout or None)
        self.on_cell, self.on_cell_start, self.on_message = on_cell, on_cell_start, on_message
        self.on_change, self.notify, self.result = on_change, notify, RunResult(status="running")
        self._started_wall, self._last_save = time.time(), 0.0
        self._cell_started: dict[int, float] = {}
        self._running: int | None = None  # the cell sent to the kernel and not done yet
        self._final_written = False  # the output notebook was written as completed, before the kernel was told
        self._failure: tuple[str, str] | None = None  # (ename, evalue) of the cell that failed
        self._client: NotebookClient | None = None

    # ----- the run ------------------------------------------------------------------------

    def execute(self) -> RunResult:
        """Run every cell; never raises for a failing cell, a timeout, a dying kernel or Ctrl-C (see
        ``result.status`` and ``result.stopped_by``)."""
        started, self._started_wall = time.perf_counter(), time.time()
        self.result.resumed_from = self._resume_target()
        if self.result.resumed_from:  # before any kernel starts: `--on-change fail` executes nothing
            notice = apply_policy(self.store, self.result.resumed_from,
                                  [c.source if executes(c) else None for c in self.nb.cells], self.on_change)
            if notice and self.notify:
                self.notify(notice)
        for cell in self.nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
                cell.metadata.pop(NOTICE_METADATA_KEY, None)
        limit = self.execution_timeout

        def cell_timeout(cell: Any) -> Any:  # only cells: the runner's own requests (batch restore, finish) have none
            return limit

        client = _Client(
            self.nb,
            self.on_message,
            kernel_name=self.kernel_name,
            timeout=None,
            timeout_func=cell_timeout if limit else None,
            startup_timeout=math.ceil(self.start_timeout),
            resources={"metadata": {"path": str(self.cwd)}},
            extra_arguments=["--ext", "nbdurable"],
            config=local_kernel_config(),
            log=NBCLIENT_LOG,
            on_cell_start=self._on_cell_start,
            on_cell_executed=self._on_cell_executed,
        )
        env = {
            **os.environ,
            ENV_NOTEBOOK: self.notebook,
            ENV_STORE: self.store.location,
            ENV_KIND: "headless",
            ENV_PARAMS: params_key(self.recorded),
            ENV_RESUME: self.result.resumed_from or "",
            ENV_REUSE: "1" if self.reuse else "",
            ENV_OUTPUT: str(self.output_path.resolve()) if self.output_path else "",
            ENV_RUN_ID: self.run_id,
            **({ENV_ORIGIN: json.dumps(self.origin, sort_keys=True)} if self.origin else {}),
        }
        if self.suspend_after is not None:
            env[ENV_SUSPEND_AFTER] = str(self.suspend_after)
        if is_skipping():  # the runner's clock skips (nbd.testing.time_skipping()): so does the kernel's
            env[ENV_TIME_SKIP] = "1"
        self._client = client
        self._watcher = CancelWatcher(self.store, run_id=self._find_run_id, resumed_from=self.result.resumed_from,
                                      since=self._started_wall, kernel=lambda: kernel_ids(self._client),
                                      grace=cancel_grace(), busy=lambda: self._running is not None)
        try:
            self._watcher.start()
            self._run_client(client, env)
        except KeyboardInterrupt:  # Ctrl-C: nbclient has shut the kernel down on the way out
            if self._running is not None:
                self._cell_stopped(self._running, "interrupted")
            self._stopped("interrupted", "interrupted (Ctrl-C)")
        finally:
            self._watcher.stop()
            self.result.seconds = time.perf_counter() - started
            self.result.run_id = self._find_run_id()
            self._settle()
            self._settle_cancel()
            if not (self._final_written and self.result.status == "completed"):
                self._write_output()
        return self.result

    def _resume_target(self) -> str | None:
        if self.fresh or self.fork:
            return None
        if self.resume_run:
            if not self.store.journal_exists(self.resume_run):
                raise OptionsError(f"no run {self.resume_run!r} in store {self.store.display}",
                                   hint="`nbdurable runs` lists run ids")
            return self.resume_run
        return find_resumable_headless(self.store, self.notebook, self.recorded)

    def _run_client(self, client: NotebookClient, env: dict[str, str]) -> None:
        try:
            with client.setup_kernel(env=env, cwd=str(self.cwd)):
                self._displays = client._display_id_map  # filled outputs join it; _fold_executed keeps it right
                try:
                    self._run_cells(client)
                except (_Cancelled, CellExecutionError):
                    if self._watcher.request is not None:  # the stopped kernel undoes the run's completed steps
                        compensate_in_kernel(client, f"{HANDLE_NAME}.compensate('cancelled')")
                    raise
        except _Cancelled:
            self._stopped("cancelled", "")
        except CellExecutionError as exc:
            if exc.ename == "RunSuspended":
                self.result.status = "suspended"
                return
            self._stopped("error", describe_exception(self._failure or (exc.ename or "Error", exc.evalue or "")))
        except CellTimeoutError as exc:
            self._stopped("timeout", f"CellTimeoutError: {(str(exc).strip().splitlines() or [''])[0]}")
        except DeadKernelError:
            if self._running is not None:
                self._cell_stopped(self._running, "cancelled" if self._watcher.cancelled else "crashed")
            self._stopped("kernel_died", "the kernel died (killed, out of memory, or a crash in native code)")
        except RuntimeError as exc:  # nbclient: "Kernel died before replying to kernel_info", or did not reply
            self._stopped("kernel_start", f"the kernel failed during start-up: {exc}")

    def _run_cells(self, client: NotebookClient) -> None:
        """Restore and execute the notebook's cells in order (consecutive restorable ones in one batch)."""
        plan = self._plan()
        index = self._checkout(client) if self.fork else 0
        while index < len(self.nb.cells):
            if self._watcher.cancelled:
                raise _Cancelled
            restored = self._restore_batch(client, plan, index)
            if restored > index:
                index = restored
                continue
            cell = self.nb.cells[index]
            index += 1
            if not executes(cell):
                continue
            if self.restore_only:  # (``headless/compensate.py``) the run's state is back: what follows is its own
                break
            if self._watcher.cancelled:  # (asked during a batch restore)
                raise _Cancelled
            try:
                client.execute_cell(cell, index - 1)
            except CellExecutionError:
                if self.result.exited_at != index - 1:
                    raise
                break  # sys.exit(0): the notebook ends here, successfully (papermill's rule)
            except CellTimeoutError:
                self._cell_stopped(index - 1, "failed")
                interrupt_kernel(client, INTERRUPT_WAIT_SECONDS)  # the cell runs on: stop it (step `interrupted`)
                raise
        self._complete(client)

    def _complete(self, client: NotebookClient) -> None:
        """Every cell ran, or one ended the notebook early: the run completed.

        The output notebook is written before the kernel marks the run completed: a runner killed in
        between leaves a resumable run (the next invocation restores every cell and writes it again), never
        a completed run without its output notebook."""
        assert client.kc is not None
        self.result.status, self.result.run_id = "completed", self._find_run_id()
        self._write_output()
        self._final_written = True
        client.wait_for_reply(client.kc.execute(f"{HANDLE_NAME}.finish_headless('completed')", silent=True))

    def _stopped(self, by: str, error: str) -> None:
        """The run stopped before its end (see ``RunResult.stopped_by``); its journal has the last word on
        its status (``_settle``)."""
        if self._watcher.request is not None:  # whatever the kernel did as it was stopped
            by, error = "cancelled", describe_cancel(self._watcher.request)
        self.result.stopped_by, self.result.error = by, error
        self.result.status = "crashed" if by in ("kernel_died", "kernel_start") else "failed"

    def _settle_cancel(self) -> None:
        """A cancelled run ends ``cancelled``: its kernel finished it so when it could; a kernel killed after
        the grace period could not, and the run is ended here, under its lease, now that the kernel is gone."""
        request = self._watcher.request
        if request is None or self.result.status == "completed":
            return
        self.result.cancel, self.result.stopped_by = request, "cancelled"
        self.result.error = describe_cancel(request)
        run_id = self.result.run_id or self.result.resumed_from
        if self.result.status != "cancelled" and run_id is not None:
            try:
                if end_cancelled(self.store, run_id, request):
                    self.result.status = "cancelled"
            except (NbdurableError, OSError):  # the journal could not be appended: the request stands
                pass

    def _settle(self) -> None:
        """Take the run's status from its journal, now that its kernel is gone: the ``run_end`` record's, else
        ``crashed`` once no process holds the run's lease (``journal_status``). A kernel still shutting down
        (still holding the lease) is waited for a little. A suspended run also says what it waits for."""
        run_id = self.result.run_id
        if run_id is None:  # the kernel recorded nothing (it died at start-up, or no cell ran)
            return
        deadline = time.monotonic() + SETTLE_SECONDS
        try:
            status, _ = journal_status(self.store, run_id)
            while status == "running" and time.monotonic() < deadline:
                time.sleep(0.1)
                status, _ = journal_status(self.store, run_id)
            self.result.status = status
            if status == "suspended":
                end = next(r for r in reversed(self.store.read_journal(run_id)) if r.get("t") == "run_end")
                self.result.wake_at, self.result.waiting_for = end.get("wake_at"), end.get("waiting_for")
        except (NbdurableError, OSError):  # an unreadable journal: the runner's own view stands
            pass

    # ----- restorable cells restored in batches ------------------------------------------------

    def _plan(self) -> ReplayPlan:
        """The recorded executions the kernel may restore (its own plan is built the same way)."""
        plan = (ReplayPlan.from_run(self.store, self.result.resumed_from) if self.result.resumed_from
                else ReplayPlan(None))
        if self.reuse:
            plan.add_reuse(self.store, self.notebook)
        return plan

    def _restore_batch(self, client: NotebookClient, plan: ReplayPlan, start: int) -> int:
        """Restore the consecutive cells from ``start`` that have a recorded execution, in one kernel request,
        and fill their outputs from the journal. Returns the index of the first cell left (``start`` when none
        was restored: that cell goes through the kernel's usual restore-or-execute decision).

        The runner only proposes (cells whose code has a recorded execution); the kernel decides each as it
        would if the cell were sent on its own (``restore_batch``: same code, same inputs), stops at the first
        it does not restore, and says which recorded executions it restored."""
        batch: list[tuple[int, str]] = []
        for index in range(start, len(self.nb.cells)):
            cell = self.nb.cells[index]
            if not executes(cell):
                continue  # nbclient never sends these to the kernel
            try:
                classified = classify(cell.source.rstrip("\n"))
            except NbdurableError:
                break
            if classified.control or not plan.candidates(classified.source_hash, classified.options.name):
                break
            batch.append((index, cell.source))
        if not batch:
            return start
        assert client.kc is not None
        started = time.perf_counter()
        sources = json.dumps([source for _, source in batch])
        reply = client.wait_for_reply(client.kc.execute(
            f"{HANDLE_NAME}.restore_batch(__import__('json').loads({sources!r}))", silent=True, store_history=False,
            user_expressions={"done": f"{HANDLE_NAME}.last_batch"},
        ))  # fmt: skip
        content = (reply or {}).get("content", {})
        text = content.get("user_expressions", {}).get("done", {}).get("data", {}).get("text/plain", "'[]'")
        try:
            done = [tuple(origin) for origin in json.loads(ast.literal_eval(text))]
        except (ValueError, SyntaxError, TypeError):
            done = []
        if not done:
            return start
        by_origin = {(p.run_id, p.ordinal): p for p in [*plan.steps, *plan.reused]}
        share = (time.perf_counter() - started) / len(done)
        for (index, _), origin in zip(batch, done, strict=False):
            self._fill_restored(index, by_origin[origin], share)
        return batch[len(done) - 1][0] + 1

    def _checkout(self, client: NotebookClient) -> int:
        """A fork: the kernel checks out the source run's first k cells (one request, a new run forked from it),
        and the notebook's first k step cells get their recorded outputs. Returns the index of the first cell
        to send. A checkout that fails (the source's objects unreadable) is the fork's failing cell 0."""
        from nbdurable.headless.fork import step_cells
        from nbdurable.runtime.checkout import checkout_target

        assert client.kc is not None and self.fork is not None
        run_id, cells = self.fork
        started = time.perf_counter()
        reply = client.wait_for_reply(client.kc.execute(
            f"{HANDLE_NAME}.checkout({run_id!r}, {cells}, arm=False, start=True)", silent=True, store_history=False,
            user_expressions={"done": f"{HANDLE_NAME}.last_batch"},
        ))  # fmt: skip
        content = (reply or {}).get("content", {})
        if content.get("status") != "ok":
            raise CellExecutionError("", str(content.get("ename") or "Error"), str(content.get("evalue") or ""))
        text = content.get("user_expressions", {}).get("done", {}).get("data", {}).get("text/plain", "'[]'")
        done = [tuple(origin) for origin in json.loads(ast.literal_eval(text))]
        if len(done) < cells:  # a secret literal, a cell that failed to rebuild an unstored value
            raise CellExecutionError("", "RestoreError", f"only {len(done)} of the {cells} cells of run {run_id} "
                                     "before the fork could be restored (`%durable checkout` in Jupyter says why)")
        planned = {(p.run_id, p.ordinal): p for p in checkout_target(self.store, run_id, cell=cells).steps}
        where = step_cells(self.nb)[:cells]
        share = (time.perf_counter() - started) / max(1, len(done))
        for index, origin in zip(where, done, strict=False):
            self._fill_restored(index, planned[origin], share)
        return where[-1] + 1 if where else 0

    # ----- outputs: restored cells filled from the journal, executed cells as the frontend shows them -----

    _displays: dict[str, dict[int, list[int]]] | None = None  # nbclient's display ids, once the kernel is up

    def _fill_restored(self, index: int, planned: PlannedStep, seconds: float) -> None:
        """A cell restored in the batch gets its recorded outputs (``runtime.output_fold``'s form).

        Display updates reach across cells as nbclient applies them among the cells it executes: a
        recorded pending update, and a display reusing a display id, update the earlier cells' outputs with
        that id (filled or executed), in order. The filled displays join nbclient's own map of display ids
        (``NotebookClient._display_id_map``: display id → cell index → output indices), so that an update
        an executed cell sends later, or a restored cell replays, reaches them as well."""
        cell = self.nb.cells[index]
        displays = self._displays if self._displays is not None else {}
        cell.outputs = []
        for output in load_outputs(self.store, planned.outputs):
            display_id = display_id_of(output)
            if display_id:
                self._update_displays(display_id, output)
            if is_pending_update(output):
                continue
            if display_id:
                displays.setdefault(display_id, {}).setdefault(index, []).append(len(cell.outputs))
            cell.outputs.append(nbformat.from_dict({k: v for k, v in output.items() if k != "transient"}))
        cell.execution_count = next((o.get("execution_count") for o in cell.outputs
                                     if o.get("output_type") == "execute_result"), None)
        meta = {"status": "restored", "duration": round(seconds, 6), "restored_from": planned.origin}
        cell.metadata[NOTICE_METADATA_KEY] = meta
        self.result.restored += 1
        self.result.time_saved += max(0.0, planned.duration - seconds)
        self.result.cells.append({"index": index, **meta})
        if self.on_cell:
            self.on_cell(index, meta)

    def _update_displays(self, display_id: str, source: dict[str, Any]) -> None:
        """Every output nbclient knows by ``display_id`` gets the ``data`` and ``metadata`` of ``source``."""
        for cell_index, indices in (self._displays or {}).get(display_id, {}).items():
            outputs = self.nb.cells[cell_index].outputs
            for i in indices:
                if i < len(outputs):
                    outputs[i]["data"] = nbformat.from_dict(dict(source.get("data") or {}))
                    outputs[i]["metadata"] = nbformat.from_dict(dict(source.get("metadata") or {}))

    def _fold_executed(self, cell: Any, cell_index: int) -> None:
        """An executed cell's outputs as the frontend shows them, like a restored cell's recorded ones.

        nbclient adds an output per stream message (as many as the kernel's flushes: timing decides) and
        keeps ``\\r``/``\\b``: consecutive streams of one name are joined and folded (``join_streams``).
        nbdurable's notices do not separate them: they move last, so that ``_take_notices`` takes them off
        without moving the other outputs. nbclient's display ids of the cell follow their outputs (a notice's
        are dropped). Call it first in ``_on_cell_executed``, before anything removes an output."""
        outputs = list(cell.get("outputs", []))
        notices = [i for i, output in enumerate(outputs) if notice_of(output) is not None]
        others = [i for i, output in enumerate(outputs) if notice_of(output) is None]
        joined, moved = join_streams([outputs[i] for i in others])
        where = {old: moved[k] for k, old in enumerate(others)}
        cell.outputs = joined + [outputs[i] for i in notices]
        for cells in (self._displays or {}).values():
            if cell_index in cells:
                cells[cell_index] = sorted({where[i] for i in cells[cell_index] if i in where})

    # ----- per cell -----------------------------------------------------------------------

    def _on_cell_start(self, cell: Any, cell_index: int) -> None:
        if not executes(cell):  # nbclient calls this hook for every cell, then skips these
            return
        self._cell_started[cell_index] = time.perf_counter()
        self._running = cell_index
        if self.on_cell_start:
            self.on_cell_start(cell_index)

    def _on_cell_executed(self, cell: Any, cell_index: int, execute_reply: Any = None) -> None:
        self._running = None
        self._fold_executed(cell, cell_index)  # streams joined and folded as restored cells record them
        duration = time.perf_counter() - self._cell_started.get(cell_index, time.perf_counter())
        info = take_notices(cell)
        content = (execute_reply or {}).get("content", {})
        ok = content.get("status", "ok") == "ok"
        exception = None if ok else first_exception(cell, content)
        extra: dict[str, Any] = {}
        if content.get("ename") == "RunSuspended":
            how = "suspended"
            cell.outputs = [o for o in cell.outputs if o.get("ename") != "RunSuspended"]
        elif info.get("notice") == "restored":
            how = "restored"
            self.result.restored += 1
            self.result.time_saved += float(info.get("saved", 0.0))
            if is_clean_exit(exception):  # a restored sys.exit(0) ends the resumed run too, as a clean run ends
                extra = {"exited": True}
                self.result.exited_at = cell_index
        elif is_clean_exit(exception):  # sys.exit(0): the cell's step completed, and the notebook ends here
            how, extra = "executed", {"exited": True}
            self.result.executed += 1
            self.result.exited_at = cell_index
        elif cell.source.lstrip().startswith(("%durable", "%load_ext nbdurable", "%reload_ext nbdurable")):
            how = "control"
            cell.outputs = without_load_ext_echo(cell.outputs)
        else:
            how = "executed" if ok else "failed"
            self.result.executed += int(ok)
        if not ok and how != "suspended" and not extra:
            self._failure, self.result.stopped_at = exception, cell_index
        if info.get("notice") == "reexecuted":  # a committed cell run again: its state could not be stored
            extra["reexecuted"] = info.get("reason") or True
        meta = {"status": how, "duration": round(duration, 6),
                **{k: v for k, v in info.items() if k == "restored_from"}, **extra}
        cell.metadata[NOTICE_METADATA_KEY] = meta
        self.result.cells.append({"index": cell_index, **meta})
        if self.on_cell:
            self.on_cell(cell_index, meta)
        if time.monotonic() - self._last_save >= self.autosave_seconds:
            self._write_output()

    def _cell_stopped(self, index: int, how: str) -> None:
        """A cell that never finished (it timed out, the kernel died under it, Ctrl-C): its outputs so far,
        its status (``failed``, ``crashed``, ``interrupted``)."""
        self._running = None
        cell = self.nb.cells[index]
        self._fold_executed(cell, index)
        take_notices(cell)
        duration = time.perf_counter() - self._cell_started.get(index, time.perf_counter())
        meta = {"status": how, "duration": round(duration, 6)}
        cell.metadata[NOTICE_METADATA_KEY] = meta
        self.result.cells.append({"index": index, **meta})
        self.result.stopped_at = index
        if self.on_cell:
            self.on_cell(index, meta)

    # ----- results ------------------------------------------------------------------------

    def _find_run_id(self) -> str | None:
        """The run this execution recorded (the id chosen for it), once the kernel began it."""
        return self.run_id if self.store.journal_exists(self.run_id) else None

    def _write_output(self) -> None:
        self._last_save = time.monotonic()
        if self._client is not None:
            self._client.set_widgets_metadata()  # the widgets' state, as nbclient and papermill save it
        self.nb.metadata[NOTICE_METADATA_KEY] = {
            "run_id": self.result.run_id,
            "resumed_from": self.result.resumed_from,
            **({"forked_from": self.fork[0], "forked_at_cell": self.fork[1]} if self.fork else {}),
            "status": self.result.status,
            "store": self.store.display,
            "parameters": self.recorded,
        }
        if self.output_path is None:
            return
        nb = copy.deepcopy(self.nb)
        tmp = self.output_path.with_name(f".{self.output_path.name}.tmp")
        nbformat.write(nb, str(tmp))
        os.replace(tmp, self.output_path)
