"""Running a notebook headless and resumably: one kernel, every cell a durable step.

The runner (this process) decides which earlier run to resume — the newest unfinished run of the same
notebook with the same parameters — and starts a kernel with the extension loaded and that decision in
its environment, so the kernel never opens the catalog. nbclient sends the cells; the kernel restores
the ones the earlier run completed. The runner collects the outputs, moves nbdurable's notices into
per-cell metadata, and writes the output notebook every few seconds and at the end (never after every
cell). Only once every cell ran does it tell the kernel that the run completed: a kernel that stops any
other way leaves a run that the next invocation resumes.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

from nbdurable.errors import LeaseHeldError, NbdurableError, OptionsError
from nbdurable.kernel_ext.cells import classify
from nbdurable.runtime.checkpoint import load_outputs
from nbdurable.kernel_ext.extension import ENV_KIND, ENV_OUTPUT, ENV_PARAMS, ENV_RESUME, ENV_SUSPEND_AFTER, HANDLE_NAME
from nbdurable.kernel_ext.outputs import NOTICE_METADATA_KEY
from nbdurable.runtime.replay import PlannedStep, ReplayPlan, find_resumable, params_key
from nbdurable.store import Store

LEASE_WAIT_SECONDS = 15.0  # an orphaned kernel (its runner was killed) exits within ~1 s by itself


@dataclass
class RunResult:
    """How a headless run ended."""

    status: str  # "completed" | "failed" | "crashed" | "suspended"
    run_id: str | None = None
    resumed_from: str | None = None
    executed: int = 0
    restored: int = 0
    time_saved: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    cells: list[dict[str, Any]] = field(default_factory=list)
    wake_at: float | None = None  # a suspended run: when its timer is due
    waiting_for: dict[str, Any] | None = None  # a suspended run: the event it waits for

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
        on_cell: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
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
        self.on_cell = on_cell
        self.result = RunResult(status="running")
        self._started_wall = time.time()
        self._last_save = 0.0
        self._cell_started: dict[int, float] = {}

    # ----- the run ------------------------------------------------------------------------

    def execute(self) -> RunResult:
        """Run every cell; never raises for a failing cell or a dying kernel (see ``result.status``)."""
        started, self._started_wall = time.perf_counter(), time.time()
        self.result.resumed_from = self._resume_target()
        for cell in self.nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
                cell.metadata.pop(NOTICE_METADATA_KEY, None)
        client = NotebookClient(
            self.nb,
            kernel_name=self.kernel_name,
            timeout=None,
            startup_timeout=int(self.start_timeout),
            resources={"metadata": {"path": str(self.cwd)}},
            extra_arguments=["--ext", "nbdurable"],
            on_cell_start=self._on_cell_start,
            on_cell_executed=self._on_cell_executed,
        )
        env = {
            **os.environ,
            "NBDURABLE_NOTEBOOK": self.notebook,
            "NBDURABLE_STORE": str(self.store.path),
            ENV_KIND: "headless",
            ENV_PARAMS: params_key(self.recorded),
            ENV_RESUME: self.result.resumed_from or "",
            ENV_OUTPUT: str(self.output_path.resolve()) if self.output_path else "",
        }
        if self.suspend_after is not None:
            env[ENV_SUSPEND_AFTER] = str(self.suspend_after)
        try:
            self._run_client(client, env)
        finally:
            self.result.seconds = time.perf_counter() - started
            self.result.run_id = self._find_run_id()
            if self.result.status == "suspended" and self.result.run_id:
                end = self.store.read_journal(self.result.run_id)[-1]
                self.result.wake_at, self.result.waiting_for = end.get("wake_at"), end.get("waiting_for")
            self._write_output()
        return self.result

    def _resume_target(self) -> str | None:
        if self.fresh:
            return None
        if self.resume_run:
            if not self.store.journal_exists(self.resume_run):
                raise OptionsError(f"no run {self.resume_run!r} in store {self.store.path}", hint="`nbdurable runs` lists run ids")
            return self.resume_run
        return find_resumable_headless(self.store, self.notebook, self.recorded)

    def _run_client(self, client: NotebookClient, env: dict[str, str]) -> None:
        try:
            with client.setup_kernel(env=env, cwd=str(self.cwd)):
                first = self._restore_leading_cells(client)
                for index, cell in enumerate(self.nb.cells):
                    if index >= first:
                        client.execute_cell(cell, index)
                assert client.kc is not None
                # The output notebook is written before the run is marked completed: a runner killed in
                # between leaves a resumable run (the next invocation restores every cell and writes it
                # again), never a completed run without its output notebook.
                self.result.status, self.result.run_id = "completed", self._find_run_id()
                self._write_output()
                client.wait_for_reply(client.kc.execute(f"{HANDLE_NAME}.finish_headless('completed')", silent=True))
        except CellExecutionError as exc:
            if exc.ename == "RunSuspended":
                self.result.status = "suspended"
                return
            self.result.status, self.result.error = "failed", str(exc).strip().splitlines()[-1] if str(exc).strip() else "a cell failed"
        except DeadKernelError:
            self.result.status, self.result.error = "crashed", "the kernel died (killed, out of memory, or sys.exit in C code)"
        except RuntimeError as exc:  # nbclient: "Kernel died before replying to kernel_info"
            self.result.status, self.result.error = "crashed", f"the kernel died during start-up: {exc}"

    # ----- leading cells restored in one request ---------------------------------------------

    def _restore_leading_cells(self, client: NotebookClient) -> int:
        """Restore the cells the resumed run completed with one kernel request; fill their outputs
        from the journal. Returns the index of the first cell left for normal execution.

        The leading cells that match the plan (same pure classification the kernel applies) are sent
        as a list of source hashes; the kernel checks each against its own plan and says how many it
        restored. A control cell, a cell that must re-execute or any disagreement ends the batch: the
        rest goes cell by cell, through the kernel's usual restore-or-execute decision."""
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
            if cell.cell_type != "code" or not cell.source.strip():
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

    def _fill_restored(self, index: int, planned: PlannedStep, seconds: float) -> None:
        cell = self.nb.cells[index]
        cell.outputs = [
            nbformat.from_dict({k: v for k, v in output.items() if k != "transient"})
            for output in load_outputs(self.store, planned.outputs)
        ]
        cell.execution_count = next((o.get("execution_count") for o in cell.outputs if o.get("output_type") == "execute_result"), None)
        meta = {"status": "restored", "duration": round(seconds, 6), "restored_from": planned.origin}
        cell.metadata[NOTICE_METADATA_KEY] = meta
        self.result.restored += 1
        self.result.time_saved += max(0.0, planned.duration - seconds)
        self.result.cells.append({"index": index, **meta})
        if self.on_cell:
            self.on_cell(index, meta)

    # ----- per cell -----------------------------------------------------------------------

    def _on_cell_start(self, cell: Any, cell_index: int) -> None:
        self._cell_started[cell_index] = time.perf_counter()

    def _on_cell_executed(self, cell: Any, cell_index: int, execute_reply: Any = None) -> None:
        duration = time.perf_counter() - self._cell_started.get(cell_index, time.perf_counter())
        info = self._take_notices(cell)
        content = (execute_reply or {}).get("content", {})
        ok = content.get("status", "ok") == "ok"
        if content.get("ename") == "RunSuspended":
            how = "suspended"
            cell.outputs = [o for o in cell.outputs if o.get("ename") != "RunSuspended"]
        elif info.get("notice") == "restored":
            how = "restored"
            self.result.restored += 1
            self.result.time_saved += float(info.get("saved", 0.0))
        elif cell.source.lstrip().startswith(("%durable", "%load_ext nbdurable", "%reload_ext nbdurable")):
            how = "control"
        else:
            how = "executed" if ok else "failed"
            self.result.executed += int(ok)
        meta = {"status": how, "duration": round(duration, 6), **{k: v for k, v in info.items() if k == "restored_from"}}
        cell.metadata[NOTICE_METADATA_KEY] = meta
        self.result.cells.append({"index": cell_index, **meta})
        if self.on_cell:
            self.on_cell(cell_index, meta)
        if time.monotonic() - self._last_save >= self.autosave_seconds:
            self._write_output()

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
            if head.get("notebook") == self.notebook and params_key(head.get("params") or {}) == params_key(self.recorded):
                return run_id
        return None

    def _write_output(self) -> None:
        self._last_save = time.monotonic()
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
