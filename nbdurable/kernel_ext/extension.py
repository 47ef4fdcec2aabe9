"""The IPython side of nbdurable: turns cell executions into durable steps and replays them.

Path of a cell (see ARCHITECTURE.md): IPython transforms the raw cell (our cleanup transformer decides
*restore* or *execute*, purely from the text and the replay plan) → ``pre_run_cell`` begins a step
and starts output capture → the cell runs (or, when restored, ``__nbdurable__._restore_step()``
applies the recorded delta and replays the outputs) → ``post_run_cell`` computes the state delta of
the names the cell touched and commits the step to the run's journal.
"""

from __future__ import annotations

import ast
import atexit
import json
import linecache
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from traitlets import Bool, Float, Integer, List, Unicode
from traitlets.config import Configurable

from nbdurable.capture.names import analyze_code
from nbdurable.capture.namespace import DEFAULT_SECRET_PATTERNS, REDACTED, NamespaceTracker, SecretRules
from nbdurable.errors import (
    AuthenticationError, CorruptObjectError, NbdurableError, ObjectNotFoundError, RestoreError, RunSuspended, StoreError,
)
from nbdurable.kernel_ext.attempts import CellAttempts, CellPolicyTransformer
from nbdurable.kernel_ext.cells import Cell, classify, source_hash
from nbdurable.kernel_ext.identity import default_store_path, detect_notebook
from nbdurable.kernel_ext.outputs import OutputCapture, WaitIndicator, replay_outputs, show_notice
from nbdurable.runtime.checkpoint import DEFAULT_INLINE_MAX, ObjectLoader, load_outputs
from nbdurable.runtime.events import EventBus
from nbdurable.runtime.replay import PlannedStep, ReplayPlan, find_resumable
from nbdurable.runtime.run import DurableRun, StepHandle
from nbdurable.runtime.steps import StepContext, enter_cell
from nbdurable.runtime.waits import use_approval_ui, use_store
from nbdurable.store import Store
from nbdurable.store.journal import io_error
from nbdurable.store.records import StepStatus

HANDLE_NAME = "__nbdurable__"
ENV_KIND = "NBDURABLE_KIND"  # "headless" when a runner drives the kernel
ENV_PARAMS = "NBDURABLE_PARAMS"  # the run's parameters, JSON
ENV_RESUME = "NBDURABLE_RESUME"  # set by a runner: the run to resume ("" = start fresh)
ENV_OUTPUT = "NBDURABLE_OUTPUT"  # set by a runner: where it writes the output notebook (recorded for the worker)
ENV_SUSPEND_AFTER = "NBDURABLE_SUSPEND_AFTER"  # set by a runner: overrides Durable.suspend_after
RESTORE_CODE = f"{HANDLE_NAME}._restore_step()\n"
REPLAY_CODE = f"{HANDLE_NAME}._replay_outputs()\n"
# A recorded object that cannot be loaded (missing, damaged, failing authentication): its cell executes instead.
UNLOADABLE = (ObjectNotFoundError, CorruptObjectError, AuthenticationError)


@dataclass(frozen=True)
class Decision:
    """What to do with a step cell: ``execute``, ``diverged`` (execute, replay ends), ``reexecute``
    (execute, replay goes on), ``restore``, or ``replay_outputs`` (namespace already restored)."""

    kind: str
    step: PlannedStep | None = None
    reason: str | None = None


class Durable(Configurable):
    """nbdurable in an IPython shell. Configure with ``c.Durable.<trait>`` in an IPython profile."""

    store = Unicode("", help="Store directory. NBDURABLE_STORE overrides it; default .nbdurable beside the notebook.").tag(config=True)
    secret_patterns = List(
        Unicode(), default_value=list(DEFAULT_SECRET_PATTERNS), help="Variable-name patterns never written to disk (case-insensitive)."
    ).tag(config=True)
    exclude = List(Unicode(), default_value=[], help="Variable names never written to disk.").tag(config=True)
    auto_resume = Bool(True, help="Arm replay of this notebook's unfinished run when the extension loads.").tag(config=True)
    inline_max_bytes = Integer(DEFAULT_INLINE_MAX, help="Objects up to this size live inside the journal record.").tag(config=True)
    suspend_after = Float(
        60.0, help="Headless runs: a durable sleep or event wait longer than this many seconds suspends the run "
        "(it ends `suspended`, its process exits, `nbdurable worker` resumes it). Interactive sessions just wait."
    ).tag(config=True)

    def __init__(self, shell: Any, **kwargs: Any) -> None:
        super().__init__(parent=shell, **kwargs)
        self.shell = shell
        self.events = EventBus()
        self.secrets = SecretRules(self.secret_patterns, self.exclude)
        self.tracker = NamespaceTracker(shell.user_ns, secrets=self.secrets, hidden=self._is_hidden)
        self.capture = OutputCapture(shell)
        self.notebook: str | None = detect_notebook(shell.user_ns)
        self.kind: Literal["interactive", "headless"] = "headless" if os.environ.get(ENV_KIND) == "headless" else "interactive"
        self.params: dict[str, Any] = json.loads(os.environ.get(ENV_PARAMS) or "{}")
        self.store_path = self._resolve_store_path()
        self.store_obj = _open_store(self.store_path)
        self.run: DurableRun | None = None
        self._not_durable: str | None = None  # why this session records nothing (the store refused to)
        self.plan: ReplayPlan | None = None
        self._step: StepHandle | None = None
        self._mode: Decision | None = None
        self._cell: Cell | None = None
        self._last_code: str | None = None
        self._keys_before: set[str] | None = None
        self._loader = ObjectLoader(self.store_obj, shell.user_ns)
        self._registered = False
        self._bypass = False
        self._attempts: CellAttempts | None = None  # the executing cell's retry/timeout policy
        self._policy_pending = False  # its AST is still to be wrapped
        self._policy_transformer = CellPolicyTransformer(self._take_policy)
        self.waiting = WaitIndicator(shell)
        self.last_batch = 0  # steps the last restore_batch restored (read back by the runner)

    # ----- set-up and tear-down -------------------------------------------------------------

    def _resolve_store_path(self) -> Path:
        if os.environ.get("NBDURABLE_STORE") or not self.store:
            return default_store_path(self.notebook)
        return Path(self.store).expanduser()

    def _is_hidden(self, name: str) -> bool:
        return name in self.shell.user_ns_hidden

    def register(self) -> None:
        """Hook into the shell. Everything here is undone by ``unregister``."""
        shell = self.shell
        shell.events.register("pre_run_cell", self.pre_run_cell)
        shell.events.register("post_run_cell", self.post_run_cell)
        shell.input_transformers_cleanup.insert(0, self.transform)
        shell.input_transformers_post.append(self.remember_code)
        shell.ast_transformers.append(self._policy_transformer)
        use_store(self.store_obj)
        if self.kind == "interactive" and getattr(self.shell, "kernel", None) is not None:
            use_approval_ui(_show_approval)  # a Jupyter kernel: a frontend can show widgets
        shell.user_ns[HANDLE_NAME] = self
        shell.user_ns_hidden[HANDLE_NAME] = self
        self.capture.install()
        atexit.register(self.close)
        self._registered = True
        resume = os.environ.get(ENV_RESUME)
        if resume is not None:  # a headless runner decided already (no catalog lookup in the kernel)
            if resume:
                self.arm(ReplayPlan.from_run(self.store_obj, resume))
        elif self.auto_resume and self.notebook:
            try:
                self.arm_latest(announce=True)
            except NbdurableError as exc:  # a damaged store must not keep the notebook from running
                print(f"nbdurable: not resuming: {exc}\n  Cells are recorded in a new run meanwhile.", file=sys.stderr)

    def unregister(self) -> None:
        """Undo every registration and close the run."""
        if not self._registered:
            return
        shell = self.shell
        self.close()
        shell.events.unregister("pre_run_cell", self.pre_run_cell)
        shell.events.unregister("post_run_cell", self.post_run_cell)
        if self.transform in shell.input_transformers_cleanup:
            shell.input_transformers_cleanup.remove(self.transform)
        if self.remember_code in shell.input_transformers_post:
            shell.input_transformers_post.remove(self.remember_code)
        if self._policy_transformer in shell.ast_transformers:
            shell.ast_transformers.remove(self._policy_transformer)
        use_store(None)
        use_approval_ui(None)
        shell.user_ns.pop(HANDLE_NAME, None)
        shell.user_ns_hidden.pop(HANDLE_NAME, None)
        self.capture.uninstall()
        atexit.unregister(self.close)
        self._registered = False

    def close(self) -> None:
        """Finish the current run with the status its history implies."""
        if self.run is not None and self.run.status == "running":
            status = self._final_status()
            try:  # a big step committed in the background may have failed (disk full): say so here, once
                self.run.wait_durable()
            except NbdurableError as exc:
                print(f"nbdurable: a cell's state could not be made durable: {exc}\n  The run ends `failed`: "
                      "the next session resumes it from its last durable step.", file=sys.stderr)
                status = "failed"
            try:
                self.run.finish(status)
            except NbdurableError as exc:  # at exit or unload: report, release the lease, never raise
                print(f"nbdurable: could not finish run {self.run.run_id}: {exc}", file=sys.stderr)
                self.run.abandon()
        self.run = None

    def finish_headless(self, status: str) -> None:
        """Called by the headless runner once every cell ran: only it knows the notebook is done."""
        if self.run is not None and self.run.status == "running":
            self.run.finish(status)

    def _final_status(self) -> str:
        assert self.run is not None
        if self.run.stats.last_status in ("failed", "interrupted"):
            return "failed"
        if self.kind == "headless":
            return "cancelled"  # the kernel stopped before the runner saw the last cell: resumable
        if self.plan is not None and not self.plan.exhausted and not self.plan.namespace_restored:
            return "cancelled"  # a resume left half-way: the next session continues it
        return "completed"

    # ----- runs and replay plans --------------------------------------------------------------

    def arm_latest(self, *, announce: bool) -> str | None:
        """Arm replay of this notebook's latest unfinished run, if there is one."""
        run_id, note = find_resumable(self.store_obj, self.notebook)
        if note and announce:
            print(f"nbdurable: {note}; this session starts a new run.", file=sys.stderr)
        if run_id is None:
            return None
        self.arm(ReplayPlan.from_run(self.store_obj, run_id))
        if announce and self.plan is not None:
            print(
                f"nbdurable: resuming run {run_id}: {len(self.plan.steps)} completed step(s) will be restored "
                "instead of executed when their cells run unchanged (`%durable new` to start over).",
                file=sys.stderr,
            )
        return run_id

    def arm(self, plan: ReplayPlan) -> None:
        """Use ``plan`` for the cells that run next (a new run will record them)."""
        self.plan = plan
        if self.run is not None and self.run.steps_recorded:
            self.close()

    def ensure_run(self) -> DurableRun:
        """The run recording this session, created at its first step."""
        if self.run is None:
            self.run = DurableRun(
                self.store_obj,
                notebook=self.notebook,
                notebook_path=self.notebook if self.notebook and Path(self.notebook).is_absolute() else None,
                kind=self.kind,
                params=self.params,
                output_path=os.environ.get(ENV_OUTPUT) or None,
                resumed_from=self.plan.run_id if self.plan else None,
                root_run=self._root_of(self.plan.run_id) if self.plan else None,
                events=self.events,
                inline_max=self.inline_max_bytes,
            )
            self.tracker.instance_prefix = f"{self.run.run_id}:"
        return self.run

    def _root_of(self, run_id: str) -> str:
        records = self.store_obj.read_journal(run_id)
        return next((str(r.get("root_run") or run_id) for r in records if r.get("t") == "run"), run_id)

    # ----- the cell path ----------------------------------------------------------------------

    def decide(self, cell: Cell) -> Decision:
        """Restore or execute: a pure function of the cell and the replay plan."""
        planned = self.plan.peek() if self.plan else None
        if planned is None:
            return Decision("execute")
        if not planned.matches(cell.source_hash, cell.options.name):
            return Decision("diverged", planned)
        if self.plan is not None and self.plan.namespace_restored:
            return Decision("replay_outputs", planned)
        reason = planned.execution_reason()
        if reason:
            return Decision("reexecute", planned, reason)
        return Decision("restore", planned)

    def transform(self, lines: list[str]) -> list[str]:
        """IPython cleanup transformer: runs on the raw cell before ``pre_run_cell``; never raises."""
        if self._bypass or self._not_durable:
            return lines
        try:
            cell = classify("".join(lines).rstrip("\n"))
            if cell.control:
                return lines
            kind = self.decide(cell).kind
        except NbdurableError:
            return lines  # bad %%durable options: the magic itself reports them
        if kind == "restore":
            return [RESTORE_CODE]
        if kind == "replay_outputs":
            return [REPLAY_CODE]
        if cell.has_magic_line:
            return [line + "\n" for line in cell.body.splitlines()]
        return lines

    def remember_code(self, lines: list[str]) -> list[str]:
        """Last input transformer: keeps the final Python code for the delta analysis."""
        self._last_code = "".join(lines)
        return lines

    def pre_run_cell(self, info: Any) -> None:
        """A cell is about to run: begin its step."""
        if self._step is not None or self._mode is not None:
            return  # a nested run_cell belongs to the step in progress
        try:
            cell = classify(info.raw_cell.rstrip("\n"))
        except NbdurableError:
            cell = Cell(info.raw_cell, False, info.raw_cell, source_hash(info.raw_cell))
        if cell.control or self._not_durable:
            return
        decision = self.decide(cell)
        self._cell, self._mode = cell, decision
        if decision.kind == "replay_outputs":
            assert self.plan is not None
            self.plan.advance()
            return
        try:
            run = self.ensure_run()
        except (StoreError, OSError) as exc:
            self._stop_recording(exc)  # a cell transformed for a restore executes instead (``_restore_step``)
            return
        self._advance_plan(decision)
        self._step = run.begin_step(
            source=self.secrets.redact_source(cell.body), source_hash=cell.source_hash, name=cell.options.name,
            options=cell.options.as_record(),
        )
        if decision.kind in ("execute", "diverged", "reexecute"):
            self._enter_steps(run, cell)
            if cell.options.policy is not None or cell.options.timeout is not None:
                step = self._step
                self._attempts = CellAttempts(cell.options.policy, cell.options.timeout,
                                              lambda n, t, e, d: run.record_attempt(step, n, t, e, d))
                self._policy_pending = True
            self._keys_before = None
            code = self._last_code if self._last_code is not None else cell.body
            if analyze_code(code).needs_full_scan:
                self._keys_before = self.tracker.snapshot_keys()
            self.capture.start()

    def _enter_steps(self, run: DurableRun, cell: Cell) -> None:
        """Explicit steps called by this cell are its children; a cell that was cut short and runs
        again unchanged replays the step calls it had completed."""
        recorded = self.plan.calls_for(cell.source_hash) if self.plan else []
        if recorded and self.plan is not None:
            self.plan.pending = None  # replayed once: running the cell again in this session executes it
        assert self._step is not None
        self.waiting.reset()
        suspend_after = None
        if self.kind == "headless":
            suspend_after = float(os.environ.get(ENV_SUSPEND_AFTER) or self.suspend_after)
        enter_cell(StepContext(run, self._step, recorded, self._loader, suspend_after=suspend_after, show=self.waiting.show))

    def _take_policy(self) -> bool:
        """Asked by the AST transformer: wrap this module in the cell's attempts loop? (once per cell)"""
        pending, self._policy_pending = self._policy_pending, False
        return pending

    def _stop_recording(self, exc: BaseException) -> None:
        """The store refused to record this session (read-only, permissions, disk full): say so once; the
        notebook runs on, not durably (nothing recorded, nothing restored) until `%durable new`."""
        self._not_durable = str(getattr(exc, "message", exc))
        self.plan = None
        print(
            f"nbdurable: this session is NOT durable: {exc}\n  Cells run normally, but nothing is recorded or restored. "
            "Fix the store or point NBDURABLE_STORE (or c.Durable.store) at a writable directory and restart the "
            "kernel, or run `%durable new` to try recording again.",
            file=sys.stderr,
        )

    def _advance_plan(self, decision: Decision) -> None:
        if self.plan is None or decision.kind == "execute":
            return
        if decision.kind == "diverged":
            self.plan.disarm()
            return
        if decision.kind == "reexecute" and decision.step is not None:
            show_notice(self.shell, f"↻ nbdurable: re-executing this cell: {decision.reason}.", "reexecuted")
        self.plan.advance()

    def post_run_cell(self, result: Any) -> None:
        """A cell ran: commit its step."""
        step, decision, cell = self._step, self._mode, self._cell
        code, self._last_code = self._last_code, None
        enter_cell(None)
        self._step = self._mode = self._cell = None
        self._attempts, self._policy_pending = None, False
        if decision is None or cell is None:
            return
        if decision.kind == "replay_outputs" or step is None:
            return
        error = result.error_before_exec or result.error_in_exec
        if isinstance(error, RunSuspended):
            self._commit_suspended(step, error)
            return
        if decision.kind == "restore":
            self._commit_restored(step, decision, error)
            return
        self._commit_executed(step, cell, code or cell.body, error)
        if decision.kind == "reexecute" and error is not None and decision.step is not None:
            show_notice(
                self.shell,
                f"✗ nbdurable: this cell was re-executed to rebuild what {decision.step.label} could not store "
                f"({decision.reason}) and it failed. Fix the cell, or mark it `%%durable --always` so it is "
                "expected to run on every resume; `%durable new` starts over.",
                "reexecution_failed",
            )

    def _commit_restored(self, step: StepHandle, decision: Decision, error: BaseException | None) -> None:
        assert self.run is not None and decision.step is not None
        if error is None:
            self.run.record_restored(step, decision.step)
            return
        if self.plan is not None:
            self.plan.disarm()
        self.run.end_step(step, status="failed", error=_error_record(error))

    def _commit_suspended(self, step: StepHandle, signal: RunSuspended) -> None:
        """A wait suspended the run: the cell's step ends ``suspended`` with no state (it runs again on
        resume, its completed step calls replayed); the run ends ``suspended``, durably."""
        assert self.run is not None
        self._keys_before = None
        self.run.end_step(step, status="suspended", outputs=self.capture.stop())
        self.run.finish("suspended", wake_at=signal.wake_at, waiting_for=signal.waiting_for)

    def _commit_executed(self, step: StepHandle, cell: Cell, code: str, error: BaseException | None) -> None:
        assert self.run is not None
        if error is not None:
            self.capture.record_error(error)
        outputs = self.capture.stop()
        status: StepStatus = (
            "completed" if error is None else "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        )
        try:
            changes = self.tracker.compute_delta(analyze_code(code), before=self._keys_before, no_state=cell.options.no_state)
            self.run.end_step(step, status=status, changes=changes, outputs=outputs, error=_error_record(error))
            self.tracker.accept(changes)
        except Exception as exc:  # the cell ran; its state could not be made durable
            print(f"nbdurable: this cell ran, but its state could not be made durable: {exc}\n"
                  "  It will run again on resume (and the cells after it).", file=sys.stderr)
            self.run.end_step(step, status="failed", outputs=outputs, error=_error_record(exc))
        finally:
            self._keys_before = None

    # ----- what the magics call ----------------------------------------------------------------

    def status(self) -> dict[str, str]:
        """The facts `%durable status` shows."""
        run, plan = self.run, self.plan
        stats = run.stats if run else None
        replay = "none"
        if plan is not None:
            state = "armed" if plan.peek() else "finished"
            replay = f"{state}: {plan.cursor}/{len(plan.steps)} steps of run {plan.run_id} consumed"
        return {
            "run": run.run_id if run else f"(none: not recording: {self._not_durable})" if self._not_durable
            else "(starts with the next cell)",
            "notebook": self.notebook or "(unnamed: `%durable attach NAME` to make it resumable)",
            "store": str(self.store_path),
            "executed": str(stats.executed if stats else 0),
            "restored": str(stats.restored if stats else 0),
            "failed": str(stats.failed if stats else 0),
            "time saved": f"{stats.time_saved:.2f} s" if stats else "0.00 s",
            "replay": replay,
        }

    def start_fresh(self) -> None:
        """`%durable new`: end this run; the next cell starts a run that restores nothing."""
        self.close()
        self.plan = None
        self._not_durable = None  # a store that refused to record is tried again
        self.tracker.reset()

    def attach(self, name: str) -> None:
        """`%durable attach NAME`: set the notebook identity, and arm replay of its unfinished run."""
        from nbdurable.kernel_ext.identity import notebook_identity

        identity = notebook_identity(name)
        if self.run is not None and self.run.steps_recorded:
            self.start_fresh()
            print("nbdurable: the run recorded so far stays under its old identity; a new run starts.", file=sys.stderr)
        elif self.run is None and not self.store:
            self.notebook = identity
            new_path = self._resolve_store_path()
            if new_path != self.store_path:
                self.store_path, self.store_obj = new_path, _open_store(new_path)
                self._loader = ObjectLoader(self.store_obj, self.shell.user_ns)
        self.notebook = identity
        print(f"nbdurable: attached to notebook {identity!r} (store {self.store_path}).")
        if self.auto_resume:
            self.arm_latest(announce=True)

    def resume(self, run_id: str | None) -> str:
        """`%durable resume`: restore the namespace as of a run's last completed step, now."""
        from nbdurable.errors import LeaseHeldError, RunNotFoundError

        if run_id is None:
            run_id, note = find_resumable(self.store_obj, self.notebook)
            if run_id is None:
                raise RunNotFoundError(
                    f"No unfinished run to resume for notebook {self.notebook or '(unnamed)'}." + (f" {note}" if note else ""),
                    hint="`%durable runs --all` lists the runs of this store; pass one: `%durable resume RUN_ID`.",
                )
        if not self.store_obj.journal_exists(run_id):
            raise RunNotFoundError(f"No run {run_id!r} in store {self.store_path}.", hint="`%durable runs --all` lists run ids.")
        holder = self.store_obj.lease_holder(run_id)
        if holder is not None:
            raise LeaseHeldError(
                f"Run {run_id} is being driven by process {holder.get('pid')} on {holder.get('host')}.",
                hint="wait for it to finish or stop that kernel, then resume.",
            )
        plan = ReplayPlan.from_run(self.store_obj, run_id)
        self.start_fresh()
        self.arm(plan)
        restored, reexecuted = self._apply_plan_now(plan)
        plan.namespace_restored, plan.cursor = True, 0
        saved = self.run.stats.time_saved if self.run else 0.0
        names = sorted({ref["name"] for step in plan.steps for ref in step.variables if ref.get("op") == "set"})
        shown = ", ".join(names[:12]) + (f" … (+{len(names) - 12})" if len(names) > 12 else "")
        return (
            f"nbdurable: restored {restored} step(s) of run {run_id}"
            + (f", re-executed {reexecuted}" if reexecuted else "")
            + f" (saved {saved:.2f} s). Variables: {shown or '(none)'}.\n"
            "Run All shows their outputs again without executing them; new or changed cells execute normally."
        )

    def _apply_plan_now(self, plan: ReplayPlan) -> tuple[int, int]:
        run = self.ensure_run()
        restored = reexecuted = 0
        for planned in plan.steps:
            step = run.begin_step(
                source=planned.source, source_hash=planned.source_hash, name=planned.name, options=planned.options
            )
            reason = planned.execution_reason()
            if reason is None:
                try:
                    self.apply_step(planned)
                except UNLOADABLE as exc:  # its cell can rebuild it
                    reason = self._unloadable(exc)
                else:
                    run.record_restored(step, planned)
                    restored += 1
                    continue
            print(f"nbdurable: re-executing {planned.label}: {reason}.", file=sys.stderr)
            self._reexecute(step, planned)
            reexecuted += 1
        return restored, reexecuted

    def _reexecute(self, step: StepHandle, planned: PlannedStep) -> None:
        """Run a recorded cell's source again (to rebuild what could not be stored)."""
        assert self.run is not None
        if REDACTED in planned.source:
            self.run.end_step(step, status="failed", error={"ename": "RestoreError", "evalue": "its secret is not stored"})
            raise RestoreError(
                f"Cannot rebuild {planned.label}: it assigns a secret, which is never stored.",
                hint="run that cell again yourself (Run All restores the others), or read the secret from the "
                "environment in it (`os.environ[...]`) so that it can be re-executed.",
            )
        self._bypass = True
        try:
            code = self.shell.transform_cell(planned.source)
        finally:
            self._bypass = False
        try:
            exec(compile(code, f"<nbdurable: {planned.label}>", "exec"), self.shell.user_ns)
        except Exception as exc:
            self.run.end_step(step, status="failed", error=_error_record(exc))
            names = [r["name"] for r in planned.variables if r.get("format") == "unrestorable"]
            raise RestoreError(
                f"Cannot restore {', '.join(f'`{n}`' for n in names) or 'the state'} of {planned.label}: "
                f"re-executing its cell failed with {type(exc).__name__}: {exc}",
                hint="mark that cell `%%durable --always` and Run All, or `%durable new` to start over.",
            ) from exc
        changes = self.tracker.compute_delta(analyze_code(code))
        self.run.end_step(step, status="completed", changes=changes)
        self.tracker.accept(changes)

    # ----- called from transformed cells ------------------------------------------------------

    def _restore_step(self) -> None:
        """Body of a restored cell: apply the recorded delta, show the recorded outputs."""
        __tracebackhide__ = True  # IPython leaves this frame out of a failing cell's traceback
        decision = self._mode
        if decision is None or decision.step is None or decision.kind != "restore":
            raise RestoreError(
                "nbdurable: this cell was transformed for a restore that is no longer pending.",
                hint="run the cell again; `%durable new` starts a fresh run if this repeats.",
            )
        planned = decision.step
        if self._step is None:  # the store refused to record this session: just run the cell
            self._execute_instead(planned, None)
            return
        started = time.perf_counter()
        try:
            self.apply_step(planned)
        except UNLOADABLE as exc:  # an object file is missing or damaged
            reason: str | None = self._unloadable(exc)
        else:
            reason = None
        if reason is not None:  # outside the except: a failure of the cell is not chained to the load's
            show_notice(self.shell, f"↻ nbdurable: re-executing this cell: {reason}.", "reexecuted")
            self._execute_instead(planned, reason)
            return
        replay_outputs(self.shell, load_outputs(self.store_obj, planned.outputs))
        saved = max(0.0, planned.duration - (time.perf_counter() - started))
        show_notice(
            self.shell,
            f"↻ nbdurable: restored from {planned.label} (saved {saved:.2f} s)",
            "restored",
            {"restored_from": planned.origin, "saved": saved, "duration": planned.duration},
        )

    def _unloadable(self, exc: StoreError) -> str:
        """A recorded object did not load, so its cell executes instead; returns the reason to show. A
        damaged object file is set aside first: executing the cell then stores the object anew under its
        key (a missing one simply is written again), so the store heals and the next resume restores it."""
        key = getattr(exc, "object_key", None)
        if isinstance(exc, (CorruptObjectError, AuthenticationError)) and key:
            try:
                self.store_obj.set_aside_object(key)
            except OSError:
                pass  # e.g. a read-only store: the cell still executes
        return exc.message

    def _execute_instead(self, planned: PlannedStep, reason: str | None) -> None:
        """Inside a cell transformed into ``_restore_step()``: run the cell's own code after all. With a
        ``reason`` (its recorded state cannot be loaded) the step is then recorded as executed, like a
        cell decided ``reexecute``: outputs captured, delta committed by ``post_run_cell``, replay goes on."""
        __tracebackhide__ = True
        source = self._cell.body if self._cell is not None else planned.source
        self._bypass = True
        try:
            code = self.shell.transform_cell(source)
        finally:
            self._bypass = False
        if reason is not None and self.run is not None and self._cell is not None:
            self._mode = Decision("reexecute", planned, reason)
            self._last_code = code  # what post_run_cell analyses for the delta
            self._enter_steps(self.run, self._cell)
            self._keys_before = self.tracker.snapshot_keys() if analyze_code(code).needs_full_scan else None
            self.capture.start()
        _run_code(self.shell, code, f"<nbdurable: {planned.label}>")

    def restore_batch(self, source_hashes: list[str]) -> int:
        """Restore the next planned steps at once, for a headless runner that fills their outputs from
        the journal itself (one request instead of a round trip per cell). Each hash must be the next
        planned step's and restorable; restoring stops at the first that is not. Returns how many
        steps were restored (the runner executes the rest normally)."""
        restored = self.last_batch = 0
        for expected in source_hashes:
            planned = self.plan.peek() if self.plan else None
            if planned is None or planned.source_hash != expected or planned.name or planned.execution_reason():
                break
            run = self.ensure_run()
            assert self.plan is not None
            started = time.perf_counter()
            try:
                self.apply_step(planned)
            except UNLOADABLE:
                # Left in the plan: the runner sends this cell, whose restore fails again and executes it.
                break
            except Exception:
                self.plan.disarm()
                raise
            self.plan.advance()
            step = run.begin_step(
                source=planned.source, source_hash=planned.source_hash, name=planned.name, options=planned.options
            )
            step.t0 = started  # the restore time counts the load
            run.record_restored(step, planned)
            restored = self.last_batch = restored + 1
        return restored

    def _replay_outputs(self) -> None:
        """Body of a cell whose state `%durable resume` already restored: show its outputs only."""
        decision = self._mode
        if decision is not None and decision.step is not None:
            replay_outputs(self.shell, load_outputs(self.store_obj, decision.step.outputs))
            show_notice(self.shell, f"↻ nbdurable: outputs of {decision.step.label} (state restored by %durable resume)", "replayed")

    def apply_step(self, planned: PlannedStep) -> None:
        """Apply a recorded state delta to the namespace."""
        ns = self.shell.user_ns
        for ref in planned.variables:
            name = ref["name"]
            if ref.get("op") == "del":
                ns.pop(name, None)
                self.tracker.forget(name)
                continue
            if ref.get("inert"):
                continue
            obj = self._loader.load(ref, step_label=planned.label)
            ns[name] = obj
            self.tracker.adopt(name, obj, key=str(ref.get("object")), instance=str(ref.get("instance")))


def _open_store(path: Path) -> Store:
    """``Store.open``, with a directory it cannot create or read reported as a StoreError saying what to do."""
    try:
        return Store.open(path)
    except OSError as exc:
        raise io_error(exc, "opening the store", path) from exc


def _run_code(shell: Any, code: str, filename: str) -> None:
    """Execute transformed cell code in the user namespace, showing a last expression's value the way
    IPython does (through the displayhook, so it is an output of the cell)."""
    __tracebackhide__ = True
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)  # tracebacks show the code
    tree = ast.parse(code, filename)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, filename, "exec"), shell.user_ns)
    if last is not None:
        exec(compile(ast.Interactive([last]), filename, "single"), shell.user_ns)


def _error_record(error: BaseException | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"ename": type(error).__name__, "evalue": str(error)}


def _show_approval(store: Any, name: str, match: dict[str, Any] | None, timeout_at: float | None) -> Any:
    """The approval widget of a wait (imported on first use: widgets cost an import nobody else needs)."""
    from nbdurable.widgets.approval import show_approval

    return show_approval(store, name, match, timeout_at)
