"""The IPython side of nbdurable: turns cell executions into durable steps.

Path of a cell (see ARCHITECTURE.md): IPython transforms the raw cell (our cleanup transformer decides
*restore* or *execute*, purely from the text and the replay plan) → ``pre_run_cell`` begins a step
and starts output capture (the cell in flight) → the cell runs (or, when restored,
``__nbdurable__._restore_step()`` applies the recorded delta and replays the outputs: ``restore.py``) →
``post_run_cell`` computes the state delta of the names the cell touched and commits the step to the
run's journal.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

from traitlets import Bool, Float, Integer, List, Unicode
from traitlets.config import Configurable

from nbdurable.capture.ambient import Ambient
from nbdurable.capture.names import analyze_code
from nbdurable.capture.namespace import UNKNOWN, Change, NamespaceTracker, SecretRules
from nbdurable.capture.secrets import DEFAULT_SECRET_PATTERNS
from nbdurable.errors import (
    NbdurableError,
    RunSuspended,
    StoreError,
)
from nbdurable.kernel_ext import commands
from nbdurable.kernel_ext.attempts import CellAttempts, CellPolicyTransformer
from nbdurable.kernel_ext.checkout import checkout as checkout_state
from nbdurable.kernel_ext.checkout import record_checked_out
from nbdurable.kernel_ext.flight import CellInFlight, Decision
from nbdurable.kernel_ext.inputs import CellInputs
from nbdurable.kernel_ext.interpreter import InterpreterState
from nbdurable.kernel_ext.kernel_session import KernelSession
from nbdurable.kernel_ext.outputs import OutputCapture, WaitIndicator, show_notice
from nbdurable.kernel_ext.restore import Restorer, error_record
from nbdurable.runtime import session
from nbdurable.runtime.cells import Cell, classify, source_hash
from nbdurable.runtime.checkpoint import DEFAULT_INLINE_MAX, ObjectLoader
from nbdurable.runtime.compensation import compensate_after_failure, compensating
from nbdurable.runtime.dataflow import Inputs, choose
from nbdurable.runtime.events import EventBus
from nbdurable.runtime.identity import detect_notebook, notebook_identity
from nbdurable.runtime.replay import PlannedStep, ReplayPlan, find_resumable
from nbdurable.runtime.run import DurableRun, StepHandle, launch_origin
from nbdurable.runtime.session import (
    ENV_KIND,
    ENV_OUTPUT,
    ENV_PARAMS,
    ENV_RESUME,
    ENV_REUSE,
    ENV_SUSPEND_AFTER,
    HANDLE_NAME,
)
from nbdurable.runtime.steps import StepContext
from nbdurable.store import Store
from nbdurable.store.journal import io_error
from nbdurable.store.records import StepStatus

RESTORE_CODE = f"{HANDLE_NAME}._restore_step()\n"
COMPENSATE_CODE = f"{HANDLE_NAME}._finish_compensation()\n"  # a resumed run that was compensating

def exits_cleanly(error: BaseException | None) -> bool:
    """``sys.exit()``, ``sys.exit(0)``, ``raise SystemExit``: a successful early end of the notebook (the
    headless runner applies the same rule to the cell's error output: evalue "", "0" or "None")."""
    return isinstance(error, SystemExit) and str(error).strip() in ("", "0", "None")


class Durable(Configurable):
    """nbdurable in an IPython shell. Configure with ``c.Durable.<trait>`` in an IPython profile."""

    store = Unicode(
        "", help="Store directory. NBDURABLE_STORE overrides it; default .nbdurable beside the notebook."
    ).tag(config=True)
    secret_patterns = List(
        Unicode(), default_value=list(DEFAULT_SECRET_PATTERNS),
        help="Patterns of secret variable names, never written to disk: shell-style, matched against the "
        "name's words upper-cased and joined by `_` (apiKey -> API_KEY; see nbdurable/capture/secrets.py).",
    ).tag(config=True)
    exclude = List(Unicode(), default_value=[], help="Variable names never written to disk.").tag(config=True)
    auto_resume = Bool(
        True, help="Arm replay of this notebook's unfinished run when the extension loads."
    ).tag(config=True)
    reuse = Bool(
        False, help="Also restore matching cell executions of any completed run of this notebook (not only of "
        "the run being resumed): a cell whose code and inputs match a recorded execution is not run again. "
        "NBDURABLE_REUSE=1 sets it; `%durable reuse on|off` changes it in a session."
    ).tag(config=True)
    inline_max_bytes = Integer(
        DEFAULT_INLINE_MAX, help="Objects up to this size live inside the journal record."
    ).tag(config=True)
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
        self.interpreter = InterpreterState(shell, Ambient(is_secret=self.secrets.is_secret))
        self.capture = OutputCapture(shell)
        self.notebook: str | None = detect_notebook(shell.user_ns)
        headless = os.environ.get(ENV_KIND) == "headless"
        self.kind: Literal["interactive", "headless"] = "headless" if headless else "interactive"
        self.params: dict[str, Any] = json.loads(os.environ.get(ENV_PARAMS) or "{}")
        self.store_path = session.resolve_store_path(notebook=self.notebook, configured=self.store)
        self.store_obj = _open_store(self.store_path)
        self.restorer = Restorer(self)
        self.loader = ObjectLoader(self.store_obj, shell.user_ns, lookup=self.restorer.lookup)
        self.session = KernelSession(self)
        self.run: DurableRun | None = None
        self.plan: ReplayPlan | None = None
        self.flight: CellInFlight | None = None
        self.inputs = CellInputs(self.tracker, self.store_obj.local_dirs)
        self.executed_hashes: set[str] = set()  # cells executed in this session: run again, they execute again
        self.consumed: set[tuple[str, int]] = set()  # recorded executions restored (or re-run) in this session
        self.fork: tuple[str, int] | None = None  # (run, cell) a checkout took the state of: the next run's origin
        self.checked_out: list[PlannedStep] = []  # the checkout's cells, recorded when the forked run starts
        self._not_durable: str | None = None  # why this session records nothing (the store refused to)
        self._last_code: str | None = None  # set by the last input transformer, before pre_run_cell
        self._registered = False
        self._bypass = False
        self._policy_transformer = CellPolicyTransformer(self._take_policy)
        self.waiting = WaitIndicator(shell)
        self.compensation_due = False  # the resumed run was compensating: its next executed cell finishes that

    # ----- set-up and tear-down -------------------------------------------------------------

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
        session.activate(self.session)
        if self.kind == "interactive" and getattr(self.shell, "kernel", None) is not None:
            session.use_approval_ui(_show_approval)  # a Jupyter kernel: a frontend can show widgets
        shell.user_ns[HANDLE_NAME] = self
        shell.user_ns_hidden[HANDLE_NAME] = self
        self.capture.install()
        atexit.register(self.close)
        self._registered = True
        resume = os.environ.get(ENV_RESUME)
        self.reuse = self.reuse or os.environ.get(ENV_REUSE) == "1"
        if resume is not None:  # a headless runner decided already (no catalog lookup in the kernel)
            if resume:
                self.arm(ReplayPlan.from_run(self.store_obj, resume))
            self.set_reuse(self.reuse)
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
        session.deactivate(self.session)
        session.use_approval_ui(None)
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
        self.fork, self.checked_out = None, []  # a checkout's origin belongs to the run it started

    def finish_headless(self, status: str) -> None:
        """Called by the headless runner once every cell ran: only it knows the notebook is done."""
        if self.run is not None and self.run.status == "running":
            self.run.finish(status)

    def _final_status(self) -> str:
        assert self.run is not None
        if self.run.stats.last_status in ("failed", "interrupted"):
            return "failed"
        if self.kind == "headless":
            return "interrupted"  # the kernel stopped before the runner saw the last cell: resumable
        if self.pending_steps():
            return "interrupted"  # a resume left half-way: the next session continues it
        return "completed"

    def pending_steps(self) -> list[PlannedStep]:
        """The executions of the resumed runs that this session neither restored nor replaced by executing
        their code (what the next session would still resume)."""
        if self.plan is None:
            return []
        if self.fork is not None:
            return []  # a checkout's executions are copies in this run already (`%durable checkout`)
        return [p for p in self.plan.steps
                if p.origin_key not in self.consumed and p.source_hash not in self.executed_hashes]

    # ----- runs and replay plans --------------------------------------------------------------

    def arm_latest(self, *, announce: bool) -> str | None:
        """Arm replay of this notebook's latest unfinished run, if there is one (and, with reuse, of the
        executions of its completed runs)."""
        # A session goes on from the notebook's last run, finished or not: after a restart, Run All restores
        # every cell whose code and inputs are unchanged (a kernel restart ends its run `completed`).
        run_id, note = find_resumable(self.store_obj, self.notebook, completed=True)
        if note and announce:
            print(f"nbdurable: {note}; this session starts a new run.", file=sys.stderr)
        if run_id is not None:
            self.arm(ReplayPlan.from_run(self.store_obj, run_id))
        self.set_reuse(self.reuse)
        if announce:
            commands.announce_resume(self, run_id)
        return run_id

    def set_reuse(self, on: bool) -> None:
        """`%durable reuse on|off`: offer (or stop offering) the executions of every completed run of this
        notebook for restoring, besides the run being resumed."""
        self.reuse = on
        if on and self.notebook:
            plan = self.plan or ReplayPlan(None)
            plan.drop_reuse()
            plan.add_reuse(self.store_obj, self.notebook)
            self.plan = plan
        elif not on and self.plan is not None:
            self.plan.drop_reuse()
            if self.plan.run_id is None:
                self.plan = None

    def arm(self, plan: ReplayPlan) -> None:
        """Use ``plan`` for the cells that run next (a new run will record them)."""
        self.plan = plan
        self.compensation_due = bool(plan.run_id) and compensating(self.store_obj, str(plan.run_id))
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
                root_run=self._root_of(self.plan.run_id) if self.plan and self.plan.run_id else None,
                events=self.events,
                inline_max=self.inline_max_bytes,
                forked_from=self.fork[0] if self.fork else None,
                forked_at_cell=self.fork[1] if self.fork else None,
                origin=launch_origin(self.store_obj, self.plan.run_id if self.plan else None),
            )
            self.tracker.instance_prefix = f"{self.run.run_id}:"
            if self.checked_out:
                record_checked_out(self, self.run)
        return self.run

    def _root_of(self, run_id: str) -> str:
        records = self.store_obj.read_journal(run_id)
        return next((str(r.get("root_run") or run_id) for r in records if r.get("t") == "run"), run_id)

    # ----- the cell path ----------------------------------------------------------------------

    def decide(self, cell: Cell) -> Decision:
        """Restore or execute, by dataflow (``runtime/dataflow.py``): a pure function of the cell, the
        recorded executions and the versions this session holds (the same before and in ``pre_run_cell``)."""
        if self.plan is None:
            return Decision("execute")
        if cell.source_hash in self.executed_hashes:
            return Decision("execute", reason="it already ran in this session")
        candidates = [p for p in self.plan.candidates(cell.source_hash, cell.options.name)
                      if p.origin_key not in self.consumed]
        verdict = choose(candidates, self.inputs.version, self.inputs.ambient_version,
                         always=cell.options.always, describe=self.inputs.describe)
        if verdict.step is None:
            return Decision("execute", reason=verdict.reason, announce=bool(candidates) and not cell.options.always)
        if verdict.reason:
            return Decision("reexecute", verdict.step, verdict.reason)
        return Decision("restore", verdict.step)

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
        if self.compensation_due and not cell.body.lstrip().startswith(HANDLE_NAME):  # (not a runner's request)
            return [COMPENSATE_CODE]
        if cell.has_magic_line:
            return [line + "\n" for line in cell.body.splitlines()]
        return lines

    def transform_bypassing(self, source: str) -> str:
        """IPython's transformation of ``source`` without ours (the code of a cell we run ourselves)."""
        self._bypass = True
        try:
            return str(self.shell.transform_cell(source))
        finally:
            self._bypass = False

    def remember_code(self, lines: list[str]) -> list[str]:
        """Last input transformer: keeps the final Python code for the delta analysis."""
        self._last_code = "".join(lines)
        return lines

    def pre_run_cell(self, info: Any) -> None:
        """A cell is about to run: begin its step."""
        if self.flight is not None:
            return  # a nested run_cell belongs to the step in progress
        try:
            cell = classify(info.raw_cell.rstrip("\n"))
        except NbdurableError:
            cell = Cell(info.raw_cell, False, info.raw_cell, source_hash(info.raw_cell))
        if cell.control or self._not_durable:
            return
        decision = self.decide(cell)
        flight = self.flight = CellInFlight(cell, decision, code=self._last_code)
        try:
            commands.end_if_cancelled(self)  # `nbdurable cancel` of this session's run: it ends, a new one starts
            run = self.ensure_run()
        except (StoreError, OSError) as exc:
            self._stop_recording(exc)  # a cell transformed for a restore executes instead (``_restore_step``)
            return
        if decision.step is not None:
            self.consumed.add(decision.step.origin_key)
        if decision.kind == "reexecute" or decision.announce:
            verb = "re-executing" if decision.kind == "reexecute" else "executing"  # (announced: it ran before)
            show_notice(self.shell, f"↻ nbdurable: {verb} this cell: {decision.reason}.", "reexecuted",
                        {"reason": decision.reason})
        inputs: dict[str, Any] | None = None
        if decision.executes:
            self.executed_hashes.add(cell.source_hash)
            code = flight.code if flight.code is not None else cell.body
            names = analyze_code(code)
            stored, loaded = self.tracker.candidates(names)
            self.tracker.settle(stored | loaded, everything=names.needs_full_scan)
            flight.inputs = self.inputs.begin(names)
            inputs = flight.inputs.to_record()
        elif decision.step is not None and decision.step.inputs is not None:
            inputs = decision.step.inputs.to_record()
        flight.step = run.begin_step(
            source=self.secrets.redact_source(cell.body), source_hash=cell.source_hash, name=cell.options.name,
            options=cell.options.as_record(), inputs=inputs,
        )
        if decision.executes:
            if cell.options.policy is not None or cell.options.timeout is not None:
                step = flight.step
                flight.attempts = CellAttempts(cell.options.policy, cell.options.timeout,
                                               lambda n, t, e, d: run.record_attempt(step, n, t, e, d))
                flight.policy_pending = True
            self.begin_execution(run, flight)

    def begin_execution(self, run: DurableRun, flight: CellInFlight) -> None:
        """The cell's own code is about to run: its explicit steps are children of its step (a cell that
        was cut short and runs again unchanged replays the step calls it had completed); a cell that can
        reach the namespace dynamically gets a snapshot of its names; output capture starts."""
        assert flight.step is not None
        recorded = self.plan.calls_for(flight.cell.source_hash, self._read_same) if self.plan else []
        self.waiting.reset()
        suspend_after = None
        if self.kind == "headless":
            suspend_after = float(os.environ.get(ENV_SUSPEND_AFTER) or self.suspend_after)
        session.enter_cell(StepContext(run, flight.step, recorded, self.loader, suspend_after=suspend_after,
                                       show=self.waiting.show))
        code = flight.code if flight.code is not None else flight.cell.body
        names = analyze_code(code)
        flight.keys_before = self.tracker.snapshot_keys() if names.needs_full_scan else None
        flight.interpreter_before = self.interpreter.before(names)
        self.capture.start()

    @property
    def _attempts(self) -> CellAttempts | None:
        """The executing cell's attempts (what the cell wrapped by ``CellPolicyTransformer`` talks to)."""
        return self.flight.attempts if self.flight is not None else None

    def _take_policy(self) -> bool:
        """Asked by the AST transformer: wrap this module in the cell's attempts loop? (once per cell)"""
        flight = self.flight
        if flight is None or not flight.policy_pending:
            return False
        flight.policy_pending = False
        return True

    def _stop_recording(self, exc: BaseException) -> None:
        """The store refused to record this session (read-only, permissions, disk full): say so once; the
        notebook runs on, not durably (nothing recorded, nothing restored) until `%durable new`."""
        self._not_durable = str(getattr(exc, "message", exc))
        self.plan = None
        print(
            f"nbdurable: this session is NOT durable: {exc}\n  Cells run normally, but nothing is recorded or "
            "restored. Fix the store or point NBDURABLE_STORE (or c.Durable.store) at a writable directory and "
            "restart the kernel, or run `%durable new` to try recording again.",
            file=sys.stderr,
        )

    def _read_same(self, inputs: Inputs) -> bool:
        """Whether a cell that was cut short read, when it began, what this cell reads now (its completed
        explicit-step calls then replay)."""
        return all(self.inputs.version(name) == v for name, v in inputs.reads.items() if v != UNKNOWN)

    def post_run_cell(self, result: Any) -> None:
        """A cell ran: commit its step."""
        flight, self.flight = self.flight, None
        self._last_code = None
        session.enter_cell(None)
        if flight is None or flight.step is None:
            self.inputs.abandon()
            return
        decision, step = flight.decision, flight.step
        error = result.error_before_exec or result.error_in_exec
        if isinstance(error, RunSuspended):
            self.inputs.abandon()
            self._commit_suspended(step, error)
            return
        if decision.kind == "restore":
            self._commit_restored(step, decision, error)
            return
        self._commit_executed(flight, error)
        if self.kind == "headless" and error is not None and not exits_cleanly(error) \
                and not isinstance(error, KeyboardInterrupt):  # the run fails for good: undo its steps
            compensate_after_failure(self.run, self.loader, step.ordinal, error)
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
        if error is None or (decision.step.exited is not None and exits_cleanly(error)):
            self.run.record_restored(step, decision.step)
            self.inputs.restored(decision.step, f"step {step.ordinal} of this run")
            return
        self.run.end_step(step, status="failed", error=error_record(error))

    def _commit_suspended(self, step: StepHandle, signal: RunSuspended) -> None:
        """A wait suspended the run: the cell's step ends ``suspended`` with no state (it runs again on
        resume, its completed step calls replayed); the run ends ``suspended``, durably."""
        assert self.run is not None
        self.run.end_step(step, status="suspended", outputs=self.capture.stop())
        self.run.finish("suspended", wake_at=signal.wake_at, waiting_for=signal.waiting_for)

    def _commit_executed(self, flight: CellInFlight, error: BaseException | None) -> list[Change]:
        """Commit an executed cell; returns its state delta (empty when it could not be made durable)."""
        assert self.run is not None and flight.step is not None
        if error is not None:
            self.capture.record_error(error)
        outputs = self.capture.stop()
        status: StepStatus = (
            "completed" if error is None or exits_cleanly(error)
            else "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        )  # `sys.exit(0)` ends a notebook successfully, as in papermill: the cell completed (its error says how)
        code = flight.code or flight.cell.body
        try:
            names = analyze_code(code)
            changes = self.tracker.compute_delta(names, before=flight.keys_before,
                                                 no_state=flight.cell.options.no_state)
            if flight.interpreter_before is not None:  # state outside variables first (restores apply it first)
                prefix = self.tracker.instance_prefix
                changes = self.interpreter.changes(flight.interpreter_before, names, prefix) + changes
            read = self.inputs.end(changes)
            self.run.end_step(flight.step, status=status, changes=changes, outputs=outputs, error=error_record(error),
                              read=read)
            self.tracker.accept(changes)
            self.inputs.executed(changes, f"step {flight.step.ordinal} of this run")
            return changes
        except Exception as exc:  # the cell ran; its state could not be made durable
            self.inputs.abandon()
            print(f"nbdurable: this cell ran, but its state could not be made durable: {exc}\n"
                  "  It will run again on resume (and the cells after it).", file=sys.stderr)
            self.run.end_step(flight.step, status="failed", outputs=outputs, error=error_record(exc))
            return []

    # ----- called from transformed cells and by the headless runner ---------------------------

    def _restore_step(self) -> None:
        """Body of a restored cell (``RESTORE_CODE``)."""
        __tracebackhide__ = True
        self.restorer.restore_step()

    def _finish_compensation(self) -> None:
        """Body of the first cell a run resumed mid-compensation would execute (``COMPENSATE_CODE``)."""
        __tracebackhide__ = True
        commands.finish_compensation(self)

    def compensate(self, reason: str) -> int:
        """The hook a cancel calls in the kernel (``commands.compensate``); returns how many ran."""
        return commands.compensate(self, reason)

    def restore_batch(self, sources: list[str]) -> list[list[Any]]:
        """A headless runner's batch restore of consecutive cells (see ``Restorer.restore_batch``)."""
        return self.restorer.restore_batch(sources)

    @property
    def last_batch(self) -> str:
        """What the last ``restore_batch`` restored, as JSON (read back by the runner)."""
        return self.restorer.last_batch

    # ----- what the magics call ----------------------------------------------------------------

    def checkout(self, run_id: str, cell: int | None = None, step: str | None = None, *, arm: bool = True,
                 start: bool = False) -> str:
        """`%durable checkout` as a Python call (a headless fork, a server): the namespace becomes the state of
        ``run_id`` after ``cell``; the next cell (``start``: now) starts a run forked from it; returns the
        summary. What was restored is in ``last_batch`` (``[[run_id, ordinal], ...]``), as after
        ``restore_batch``."""
        return checkout_state(self, run_id, cell=cell, step=step, arm=arm, start=start).summary()

    def start_fresh(self) -> None:
        """`%durable new`: end this run; the next cell starts a run that restores nothing."""
        self.close()
        self.plan = None
        self._not_durable = None  # a store that refused to record is tried again
        self.tracker.reset()
        self.inputs.reset()
        self.executed_hashes.clear()
        self.consumed.clear()

    def attach(self, name: str) -> None:
        """`%durable attach NAME`: set the notebook identity, and arm replay of its unfinished run."""
        identity = notebook_identity(name)
        if self.run is not None and self.run.steps_recorded:
            self.start_fresh()
            print("nbdurable: the run recorded so far stays under its old identity; a new run starts.", file=sys.stderr)
        elif self.run is None and not self.store:
            new_path = session.resolve_store_path(notebook=identity)
            if new_path != self.store_path:
                self.store_path, self.store_obj = new_path, _open_store(new_path)
                self.loader = ObjectLoader(self.store_obj, self.shell.user_ns, lookup=self.restorer.lookup)
        self.notebook = identity
        print(f"nbdurable: attached to notebook {identity!r} (store {self.store_obj.display}).")
        if self.auto_resume:
            self.arm_latest(announce=True)


def _open_store(path: Path | str) -> Store:
    """``Store.open``, with a directory it cannot create or read reported as a StoreError saying what to do."""
    try:
        return Store.open(path)
    except OSError as exc:
        raise io_error(exc, "opening the store", Path(path)) from exc


def _show_approval(store: Any, name: str, match: dict[str, Any] | None, timeout_at: float | None) -> Any:
    """The approval widget of a wait (imported on first use: widgets cost an import nobody else needs)."""
    from nbdurable.widgets.approval import show_approval

    return show_approval(store, name, match, timeout_at)
