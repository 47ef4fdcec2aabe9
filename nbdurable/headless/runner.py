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

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from nbdurable.errors import LeaseHeldError, NbdurableError, OptionsError
from nbdurable.runtime.cells import classify
from nbdurable.runtime.checkpoint import load_outputs
from nbdurable.runtime.output_fold import display_id_of, is_pending_update, join_streams
from nbdurable.runtime.replay import PlannedStep, ReplayPlan, find_resumable, journal_status, params_key
from nbdurable.runtime.session import (
    ENV_KIND,
    ENV_NOTEBOOK,
    ENV_OUTPUT,
    ENV_PARAMS,
    ENV_RESUME,
    ENV_STORE,
    ENV_SUSPEND_AFTER,
    HANDLE_NAME,
    NOTICE_METADATA_KEY,
)
from nbdurable.store import Store

LEASE_WAIT_SECONDS = 15.0  # an orphaned kernel (its runner was killed) exits within ~1 s by itself
INTERRUPT_WAIT_SECONDS = 5.0  # a timed-out cell, interrupted: how long its reply is waited for
SETTLE_SECONDS = 5.0  # at the end, how long a run still live (its kernel shutting down) is waited for
SKIP_TAG = "skip-execution"  # nbclient's default ``skip_cells_with_tag``: such cells are never sent
CLEAN_EXIT_VALUES = ("", "0", "None")  # a SystemExit with one of these values ends a notebook successfully


@dataclass
class RunResult:
    """How a headless run ended."""

    # The run's status as its journal has it once the kernel is gone: "completed", "failed", "crashed",
    # "cancelled" (the kernel stopped between cells), "suspended"; the runner's own view when there is no
    # journal (the kernel died before the first cell). "running" only while it runs.
    status: str
    run_id: str | None = None
    resumed_from: str | None = None
    executed: int = 0
    restored: int = 0
    time_saved: float = 0.0
    seconds: float = 0.0
    error: str | None = None  # "ename: evalue" of the failing cell's first error output (as papermill reports it)
    cells: list[dict[str, Any]] = field(default_factory=list)
    wake_at: float | None = None  # a suspended run: when its timer is due
    waiting_for: dict[str, Any] | None = None  # a suspended run: the event it waits for
    # What stopped the run before its last cell: "error" (a cell raised), "timeout" (a cell ran longer than the
    # execution timeout), "kernel_died", "kernel_start" (the kernel did not start), "interrupted" (Ctrl-C);
    # None when it ran to its end, exited early or suspended itself.
    stopped_by: str | None = None
    stopped_at: int | None = None  # index (in the notebook) of the cell that failed, timed out or was running
    exited_at: int | None = None  # index of the cell whose sys.exit() / sys.exit(0) ended the notebook early

    @property
    def interrupted(self) -> bool:
        return self.stopped_by == "interrupted"

    def describe_suspension(self) -> str:
        """What a suspended run waits for, in words."""
        from nbdurable.errors import describe_suspension

        return describe_suspension(self.wake_at, self.waiting_for)


def find_resumable_headless(store: Store, notebook: str, params: dict[str, Any]) -> str | None:
    """The newest run of ``notebook`` with these parameters, if it did not finish.

    A run still live in another process is waited for a little (its runner may have been killed and the
    orphaned kernel is about to exit); if it stays live, LeaseHeldError."""
    deadline = time.monotonic() + LEASE_WAIT_SECONDS
    while True:
        run_id, live = find_resumable(store, notebook, params)
        if live is None:
            return run_id
        if time.monotonic() >= deadline:
            raise LeaseHeldError(
                f"{live} ({notebook}, same parameters).",
                hint="wait for it to finish, or stop it; use --fresh to start an independent run now.",
            )
        time.sleep(0.25)


def _notice(output: dict[str, Any]) -> dict[str, Any] | None:
    meta = output.get("metadata", {}).get(NOTICE_METADATA_KEY)
    return meta if isinstance(meta, dict) and "notice" in meta else None


def executes(cell: Any) -> bool:
    """True if nbclient sends ``cell`` to the kernel (a code cell with code, not tagged skip-execution)."""
    return bool(cell.cell_type == "code" and cell.source.strip() and SKIP_TAG not in cell.metadata.get("tags", []))


def first_exception(cell: Any, content: dict[str, Any] | None = None) -> tuple[str, str] | None:
    """The exception a cell raised, as papermill names it: its first ``error`` output's (ename, evalue).

    Not the reply's traceback: ipykernel's reply carries the last traceback shown, which may be an error
    raised after the cell (matplotlib's figure flush, a ``post_execute`` callback). A cell without an error
    output (a line magic's UsageError is printed, not raised as an output) falls back to the reply
    ``content``'s."""
    first = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
    if first is not None:
        return str(first.get("ename", "")), str(first.get("evalue", ""))
    if content and (content.get("status") == "error" or content.get("ename")):
        return str(content.get("ename") or "Error"), str(content.get("evalue") or "")
    return None


def describe_exception(exc: tuple[str, str] | None) -> str:
    """``ename: evalue`` (``ename`` alone when the value is empty)."""
    if exc is None:
        return "a cell failed"
    ename, evalue = exc
    return f"{ename}: {evalue}" if evalue.strip() else ename


def is_clean_exit(exc: tuple[str, str] | None) -> bool:
    """True for ``sys.exit()``, ``sys.exit(0)``, ``sys.exit(None)``, ``raise SystemExit``: an early, successful end."""
    return exc is not None and exc[0] == "SystemExit" and exc[1].strip() in CLEAN_EXIT_VALUES


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

    def __init__(
        self,
        nb: nbformat.NotebookNode,
        *,
        notebook_path: Path,
        store_path: Path,
        params: dict[str, Any],
        output_path: Path | None,
        kernel_name: str | None = None,
        cwd: Path | None = None,
        fresh: bool = False,
        resume_run: str | None = None,
        autosave_seconds: float = 10.0,
        suspend_after: float | None = None,
        start_timeout: float = 60.0,
        execution_timeout: float | None = None,
        on_cell: Callable[[int, dict[str, Any]], None] | None = None,
        on_cell_start: Callable[[int], None] | None = None,
        on_message: Callable[[int, Any], None] | None = None,
    ) -> None:
        """``execution_timeout``: seconds a cell may run (nbclient's per-cell ``timeout``; None: no limit);
        ``start_timeout``: seconds the kernel may take to start. Callbacks: ``on_cell(index, meta)`` once a
        code cell is done (executed, restored, failed…; ``meta`` is its ``nbdurable`` metadata),
        ``on_cell_start(index)`` before a cell is sent to the kernel (not for the leading cells restored
        in one batch), ``on_message(index, output)`` for every kernel message of a cell, with the output it
        added to the cell (None for other messages)."""
        self.nb = nb
        self.notebook = str(notebook_path.resolve())
        self.store = Store.open(store_path)
        self.params = params
        from nbdurable.headless.params import recorded_params  # (params imports papermill, whose engines import us)

        self.recorded = recorded_params(params)  # what the run records: secret parameters as digests
        self.output_path = output_path
        self.kernel_name = kernel_name or nb.metadata.get("kernelspec", {}).get("name") or "python3"
        self.cwd = cwd or notebook_path.resolve().parent
        self.fresh = fresh
        self.resume_run = resume_run
        self.autosave_seconds = autosave_seconds
        self.suspend_after = suspend_after
        self.start_timeout = start_timeout
        # 0: no limit, as in papermill; a whole number of seconds reads "after 2 seconds" in nbclient's error
        self.execution_timeout = (int(execution_timeout) if execution_timeout and float(execution_timeout).is_integer()
                                  else execution_timeout or None)
        self.on_cell = on_cell
        self.on_cell_start = on_cell_start
        self.on_message = on_message
        self.result = RunResult(status="running")
        self._started_wall = time.time()
        self._last_save = 0.0
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
            on_cell_start=self._on_cell_start,
            on_cell_executed=self._on_cell_executed,
        )
        env = {
            **os.environ,
            ENV_NOTEBOOK: self.notebook,
            ENV_STORE: str(self.store.path),
            ENV_KIND: "headless",
            ENV_PARAMS: params_key(self.recorded),
            ENV_RESUME: self.result.resumed_from or "",
            ENV_OUTPUT: str(self.output_path.resolve()) if self.output_path else "",
        }
        if self.suspend_after is not None:
            env[ENV_SUSPEND_AFTER] = str(self.suspend_after)
        self._client = client
        try:
            self._run_client(client, env)
        except KeyboardInterrupt:  # Ctrl-C: nbclient has shut the kernel down on the way out
            if self._running is not None:
                self._cell_stopped(self._running, "interrupted")
            self._stopped("interrupted", "interrupted (Ctrl-C)")
        finally:
            self.result.seconds = time.perf_counter() - started
            self.result.run_id = self._find_run_id()
            self._settle()
            if not (self._final_written and self.result.status == "completed"):
                self._write_output()
        return self.result

    def _resume_target(self) -> str | None:
        if self.fresh:
            return None
        if self.resume_run:
            if not self.store.journal_exists(self.resume_run):
                raise OptionsError(f"no run {self.resume_run!r} in store {self.store.path}",
                                   hint="`nbdurable runs` lists run ids")
            return self.resume_run
        return find_resumable_headless(self.store, self.notebook, self.recorded)

    def _run_client(self, client: NotebookClient, env: dict[str, str]) -> None:
        try:
            with client.setup_kernel(env=env, cwd=str(self.cwd)):
                first = self._restore_leading_cells(client)
                for index, cell in enumerate(self.nb.cells):
                    if index < first:
                        continue
                    try:
                        client.execute_cell(cell, index)
                    except CellExecutionError:
                        if self.result.exited_at != index:
                            raise
                        break  # sys.exit(0): the notebook ends here, successfully (papermill's rule)
                    except CellTimeoutError:
                        self._cell_stopped(index, "failed")
                        self._interrupt(client)  # the cell still runs: stop it, its step ends `interrupted`
                        raise
                self._complete(client)
        except CellExecutionError as exc:
            if exc.ename == "RunSuspended":
                self.result.status = "suspended"
                return
            self._stopped("error", describe_exception(self._failure or (exc.ename or "Error", exc.evalue or "")))
        except CellTimeoutError as exc:
            self._stopped("timeout", f"CellTimeoutError: {(str(exc).strip().splitlines() or [''])[0]}")
        except DeadKernelError:
            if self._running is not None:
                self._cell_stopped(self._running, "crashed")
            self._stopped("kernel_died", "the kernel died (killed, out of memory, or a crash in native code)")
        except RuntimeError as exc:  # nbclient: "Kernel died before replying to kernel_info", or did not reply
            self._stopped("kernel_start", f"the kernel failed during start-up: {exc}")

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
        self.result.stopped_by, self.result.error = by, error
        self.result.status = "crashed" if by in ("kernel_died", "kernel_start") else "failed"

    @staticmethod
    def _interrupt(client: NotebookClient) -> None:
        """Interrupt the kernel's running cell and wait (a little) for its reply: its step ends `interrupted`
        and the kernel, idle, shuts down at once instead of being killed."""
        from jupyter_core.utils import ensure_async, run_sync

        async def interrupt() -> None:
            assert client.km is not None and client.kc is not None
            await ensure_async(client.km.interrupt_kernel())
            deadline = time.monotonic() + INTERRUPT_WAIT_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                msg = await ensure_async(client.kc.shell_channel.get_msg(timeout=left))
                if msg.get("msg_type") == "execute_reply":
                    return

        try:
            run_sync(interrupt)()
        except Exception:  # no reply in time (queue.Empty), or the kernel is gone: it is shut down next anyway
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

    # ----- leading cells restored in one request ---------------------------------------------

    def _restore_leading_cells(self, client: NotebookClient) -> int:
        """Restore the cells the resumed run completed with one kernel request; fill their outputs
        from the journal. Returns the index of the first cell left for normal execution.

        The leading cells that match the plan (same pure classification the kernel applies) are sent
        as a list of source hashes; the kernel checks each against its own plan and says how many it
        restored. A control cell, a cell that must re-execute or any disagreement ends the batch: the
        rest goes cell by cell, through the kernel's usual restore-or-execute decision."""
        self._displays = client._display_id_map  # filled outputs join it; _fold_executed keeps it right
        if not self.result.resumed_from:
            return 0
        batch = self._restorable_prefix(ReplayPlan.from_run(self.store, self.result.resumed_from))
        if not batch:
            return 0
        assert client.kc is not None
        started = time.perf_counter()
        hashes = json.dumps([planned.source_hash for _, planned in batch])
        reply = client.wait_for_reply(client.kc.execute(
            f"{HANDLE_NAME}.restore_batch({hashes})", silent=True, store_history=False,
            user_expressions={"n": f"{HANDLE_NAME}.last_batch"},
        ))  # fmt: skip
        content = (reply or {}).get("content", {})
        done = int(content.get("user_expressions", {}).get("n", {}).get("data", {}).get("text/plain", "0"))
        share = (time.perf_counter() - started) / max(done, 1)
        for index, planned in batch[:done]:
            self._fill_restored(index, planned, share)
        return batch[done][0] if done < len(batch) else batch[-1][0] + 1

    def _restorable_prefix(self, plan: ReplayPlan) -> list[tuple[int, PlannedStep]]:
        batch: list[tuple[int, PlannedStep]] = []
        for index, cell in enumerate(self.nb.cells):
            if not executes(cell):
                continue  # nbclient never sends these to the kernel
            try:
                classified = classify(cell.source.rstrip("\n"))
            except NbdurableError:
                break
            if classified.control or len(batch) >= len(plan.steps):
                break
            planned = plan.steps[len(batch)]
            if not planned.matches(classified.source_hash, classified.options.name) or planned.execution_reason():
                break
            batch.append((index, planned))
        return batch

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
        notices = [i for i, output in enumerate(outputs) if _notice(output) is not None]
        others = [i for i, output in enumerate(outputs) if _notice(output) is None]
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
        info = self._take_notices(cell)
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
        self._take_notices(cell)
        duration = time.perf_counter() - self._cell_started.get(index, time.perf_counter())
        meta = {"status": how, "duration": round(duration, 6)}
        cell.metadata[NOTICE_METADATA_KEY] = meta
        self.result.cells.append({"index": index, **meta})
        self.result.stopped_at = index
        if self.on_cell:
            self.on_cell(index, meta)

    @staticmethod
    def _take_notices(cell: Any) -> dict[str, Any]:
        """Remove nbdurable's notices from the outputs (they would make them differ from a clean run)."""
        found: dict[str, Any] = {}
        kept = []
        for output in cell.get("outputs", []):
            notice = _notice(output)
            if notice is None:
                kept.append(output)
            elif notice.get("notice") == "restored" or not found:
                found = dict(notice)
        cell.outputs = kept
        return found

    # ----- results ------------------------------------------------------------------------

    def _find_run_id(self) -> str | None:
        """The run this execution recorded: the newest journal of this notebook since we started."""
        for run_id in reversed(self.store.run_ids()):
            head = self.store.journal_head(run_id) or {}
            if head.get("ts", 0) < self._started_wall - 1.0:  # older than this execution: not ours
                return None
            if (head.get("notebook") == self.notebook
                    and params_key(head.get("params") or {}) == params_key(self.recorded)):
                return run_id
        return None

    def _write_output(self) -> None:
        self._last_save = time.monotonic()
        if self._client is not None:
            self._client.set_widgets_metadata()  # the widgets' state, as nbclient and papermill save it
        self.nb.metadata[NOTICE_METADATA_KEY] = {
            "run_id": self.result.run_id,
            "resumed_from": self.result.resumed_from,
            "status": self.result.status,
            "store": str(self.store.path),
            "parameters": self.recorded,
        }
        if self.output_path is None:
            return
        nb = copy.deepcopy(self.nb)
        tmp = self.output_path.with_name(f".{self.output_path.name}.tmp")
        nbformat.write(nb, str(tmp))
        os.replace(tmp, self.output_path)
