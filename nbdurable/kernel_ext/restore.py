"""The restore machinery of the kernel extension: recorded steps brought back into the live namespace.

Four ways a recorded step comes back:
- **restore** (Run All after a restart): the cell's code was replaced by ``__nbdurable__._restore_step()``;
  its recorded delta is applied, its outputs replayed, a notice shown, a ``restored`` step recorded;
- **batch** (a headless runner): the leading restorable cells at once, in one kernel request
  (``restore_batch``); the runner fills their outputs from the journal itself;
- **resume** (``%durable resume``): every planned step applied now, before any cell runs;
- **instead** (a recorded step cannot be applied: an object file missing, damaged or failing
  authentication, a module that does not import, a pickle that does not load): the cell's own code runs in
  its place, after everything before it was restored, and is recorded as executed. Nothing restored before
  it runs again. A damaged object file is set aside first, so the store heals when the cell stores the
  object again.
"""

from __future__ import annotations

import ast
import linecache
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from nbdurable.capture.names import analyze_code
from nbdurable.capture.namespace import REDACTED
from nbdurable.errors import (
    AuthenticationError,
    CorruptObjectError,
    NbdurableError,
    ObjectNotFoundError,
    RestoreError,
)
from nbdurable.kernel_ext.interpreter import apply_order, is_pseudo
from nbdurable.kernel_ext.outputs import replay_outputs, show_notice
from nbdurable.runtime.checkpoint import load_outputs
from nbdurable.runtime.replay import PlannedStep, ReplayPlan
from nbdurable.runtime.run import StepHandle

if TYPE_CHECKING:  # the extension owns its Restorer
    from nbdurable.kernel_ext.extension import Durable

# A recorded object file that cannot be used (missing, damaged, failing authentication): set aside, and its
# cell executes instead. Any other failure to apply a step (an import, an unpickling) also runs the cell.
UNLOADABLE = (ObjectNotFoundError, CorruptObjectError, AuthenticationError)


class Restorer:
    """Applies recorded steps for one extension (its shell, store, tracker and run)."""

    def __init__(self, ext: Durable) -> None:
        self.ext = ext
        self.last_batch = 0  # steps the last restore_batch restored (read back by the runner)

    def apply_step(self, planned: PlannedStep) -> None:
        """Apply a recorded state delta to the namespace."""
        ext = self.ext
        ns = ext.shell.user_ns
        for ref in sorted(planned.variables, key=lambda r: apply_order(r["name"])):  # a stable sort: see interpreter.py
            name = ref["name"]
            if is_pseudo(name):
                if ref.get("op") == "set":
                    ext.interpreter.apply(name, ext.loader.load(ref, step_label=planned.label))
                continue
            if ref.get("op") == "del":
                ns.pop(name, None)
                ext.tracker.forget(name)
                continue
            if ref.get("inert"):
                continue
            try:
                obj = ext.loader.load(ref, step_label=planned.label)
            except RestoreError as exc:
                if ref.get("format") != "module":
                    raise
                raise module_error(ref, planned, exc) from exc
            ns[name] = obj
            ext.tracker.adopt(name, obj, key=str(ref.get("object")), instance=str(ref.get("instance")))

    # ----- a restored cell (its code replaced by ``_restore_step()``) ---------------------------------

    def restore_step(self) -> None:
        """Body of a restored cell: apply the recorded delta, show the recorded outputs."""
        __tracebackhide__ = True  # IPython leaves this frame out of a failing cell's traceback
        ext = self.ext
        flight = ext.flight
        if flight is None or flight.decision.step is None or flight.decision.kind != "restore":
            raise RestoreError(
                "nbdurable: this cell was transformed for a restore that is no longer pending.",
                hint="run the cell again; `%durable new` starts a fresh run if this repeats.",
            )
        planned = flight.decision.step
        if flight.step is None:  # the store refused to record this session: just run the cell
            self.execute_instead(planned, None)
            return
        started = time.perf_counter()
        try:
            self.apply_step(planned)
        except Exception as exc:  # an object file missing or damaged, an import or unpickling that fails...
            reason: str | None = self.unloadable(exc)
        else:
            reason = None
        if reason is not None:  # outside the except: a failure of the cell is not chained to the load's
            show_notice(ext.shell, f"↻ nbdurable: re-executing this cell: {reason}.", "reexecuted", {"reason": reason})
            self.execute_instead(planned, reason)
            return
        replay_outputs(ext.shell, load_outputs(ext.store_obj, planned.outputs))
        saved = max(0.0, planned.duration - (time.perf_counter() - started))
        show_notice(
            ext.shell,
            f"↻ nbdurable: restored from {planned.label} (saved {saved:.2f} s)",
            "restored",
            {"restored_from": planned.origin, "saved": saved, "duration": planned.duration},
        )
        if planned.exited is not None:  # the cell ended the notebook early: so does its restore, as a clean run
            raise SystemExit(None if planned.exited in ("", "None") else int(planned.exited))

    def replay_outputs(self) -> None:
        """Body of a cell whose state `%durable resume` already restored: show its outputs only."""
        flight = self.ext.flight
        if flight is not None and flight.decision.step is not None:
            planned = flight.decision.step
            replay_outputs(self.ext.shell, load_outputs(self.ext.store_obj, planned.outputs))
            show_notice(self.ext.shell, f"↻ nbdurable: outputs of {planned.label} (state restored by %durable resume)",
                        "replayed")

    def unloadable(self, exc: BaseException) -> str:
        """A recorded step could not be applied, so its cell executes instead; returns the reason to show. A
        damaged object file is set aside first: executing the cell then stores the object anew under its
        key (a missing one simply is written again), so the store heals and the next resume restores it."""
        key = getattr(exc, "object_key", None)
        if isinstance(exc, (CorruptObjectError, AuthenticationError)) and key:
            try:
                self.ext.store_obj.set_aside_object(key)
            except OSError:
                pass  # e.g. a read-only store: the cell still executes
        if isinstance(exc, NbdurableError):
            return exc.message
        return f"restoring it failed with {type(exc).__name__}: {exc}"

    def execute_instead(self, planned: PlannedStep, reason: str | None) -> None:
        """Inside a cell transformed into ``_restore_step()``: run the cell's own code after all. With a
        ``reason`` (its recorded state cannot be loaded) the step is then recorded as executed, like a
        cell decided ``reexecute``: outputs captured, delta committed by ``post_run_cell``, replay goes on."""
        __tracebackhide__ = True
        ext = self.ext
        flight = ext.flight
        source = flight.cell.body if flight is not None else planned.source
        code = ext.transform_bypassing(source)
        if reason is not None and ext.run is not None and flight is not None:
            flight.decision = flight.decision.reexecuting(reason)
            flight.code = code  # what post_run_cell analyses for the delta
            ext.begin_execution(ext.run, flight)
        run_code(ext.shell, code, f"<nbdurable: {planned.label}>")

    # ----- a headless runner's batch -----------------------------------------------------------

    def restore_batch(self, source_hashes: list[str]) -> int:
        """Restore the next planned steps at once, for a headless runner that fills their outputs from
        the journal itself (one request instead of a round trip per cell). Each hash must be the next
        planned step's and restorable; restoring stops at the first that is not. Returns how many
        steps were restored (the runner executes the rest normally)."""
        ext = self.ext
        restored = self.last_batch = 0
        for expected in source_hashes:
            plan = ext.plan
            planned = plan.peek() if plan else None
            if plan is None or planned is None or planned.source_hash != expected or planned.name \
                    or planned.execution_reason() or planned.exited is not None:
                break  # (a cell that ended the notebook early is sent on its own: it ends the restored run too)
            run = ext.ensure_run()
            started = time.perf_counter()
            try:
                self.apply_step(planned)
            except Exception:  # never raises: the runner must learn how many cells were restored
                # Left in the plan: the runner sends this cell, whose restore fails again and executes it in
                # place (the cells restored before it stay restored: none of them runs again).
                break
            plan.advance()
            step = run.begin_step(
                source=planned.source, source_hash=planned.source_hash, name=planned.name, options=planned.options
            )
            step.t0 = started  # the restore time counts the load
            run.record_restored(step, planned)
            restored = self.last_batch = restored + 1
        return restored

    # ----- `%durable resume` -------------------------------------------------------------------

    def apply_plan_now(self, plan: ReplayPlan) -> tuple[int, int]:
        """Apply every planned step now (re-executing those that cannot be restored); returns the counts."""
        run = self.ext.ensure_run()
        restored = reexecuted = 0
        for planned in plan.steps:
            step = run.begin_step(
                source=planned.source, source_hash=planned.source_hash, name=planned.name, options=planned.options
            )
            reason = planned.execution_reason() or self.ext.reads_rebuilt(planned.source)
            if reason is None:
                try:
                    self.apply_step(planned)
                except Exception as exc:  # its cell can rebuild it
                    reason = self.unloadable(exc)
                else:
                    run.record_restored(step, planned)
                    restored += 1
                    continue
            print(f"nbdurable: re-executing {planned.label}: {reason}.", file=sys.stderr)
            self.reexecute(step, planned)
            reexecuted += 1
        return restored, reexecuted

    def reexecute(self, step: StepHandle, planned: PlannedStep) -> None:
        """Run a recorded cell's source again (to rebuild what could not be stored)."""
        ext = self.ext
        run = ext.run
        assert run is not None
        if REDACTED in planned.source:
            run.end_step(step, status="failed", error={"ename": "RestoreError", "evalue": "its secret is not stored"})
            raise RestoreError(
                f"Cannot rebuild {planned.label}: it assigns a secret, which is never stored.",
                hint="run that cell again yourself (Run All restores the others), or read the secret from the "
                "environment in it (`os.environ[...]`) so that it can be re-executed.",
            )
        code = ext.transform_bypassing(planned.source)
        try:
            exec(compile(code, f"<nbdurable: {planned.label}>", "exec"), ext.shell.user_ns)
        except Exception as exc:
            run.end_step(step, status="failed", error=error_record(exc))
            names = [r["name"] for r in planned.variables if r.get("format") == "unrestorable"]
            raise RestoreError(
                f"Cannot restore {', '.join(f'`{n}`' for n in names) or 'the state'} of {planned.label}: "
                f"re-executing its cell failed with {type(exc).__name__}: {exc}",
                hint="mark that cell `%%durable --always` and Run All, or `%durable new` to start over.",
            ) from exc
        changes = ext.tracker.compute_delta(analyze_code(code))
        run.end_step(step, status="completed", changes=changes)
        ext.tracker.accept(changes)
        ext.note_rebuilt(planned, changes)


def module_error(ref: Any, planned: PlannedStep, exc: RestoreError) -> RestoreError:
    """A module variable that does not import: say where it was imported from when recorded and whether that
    directory is on ``sys.path`` now (a local module whose path an earlier cell added), not just "install it"."""
    name = str(ref.get("module"))
    origin = ref.get("origin")
    if not origin:
        return exc
    folder = os.path.dirname(origin)
    if os.path.basename(origin) == "__init__.py":
        folder = os.path.dirname(folder)
    on_path = any(os.path.abspath(p or ".") == folder for p in sys.path)
    where = (f"{folder} is on sys.path, but the module does not import from it now" if on_path else
             f"{folder} is not on sys.path now (sys.path: {', '.join(p or '.' for p in sys.path[:6])}"
             + (" …" if len(sys.path) > 6 else "") + ")")
    return RestoreError(
        f"Cannot restore module `{ref['name']}` of {planned.label}: {name!r} was imported from {origin} when it "
        f"was recorded; {where}.",
        hint="a cell that puts its directory on sys.path (`sys.path.insert(...)`) must run or be restored before "
        "this one; if the module is a package, install it. The cell runs its own code instead.",
    )


def run_code(shell: Any, code: str, filename: str) -> None:
    """Execute transformed cell code in the user namespace, showing a last expression's value the way
    IPython does (through the displayhook, so it is an output of the cell)."""
    __tracebackhide__ = True
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)  # tracebacks show the code
    tree = ast.parse(code, filename)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, filename, "exec"), shell.user_ns)
    if last is not None:
        exec(compile(ast.Interactive([last]), filename, "single"), shell.user_ns)


def error_record(error: BaseException | None) -> dict[str, Any] | None:
    """An exception as a step's journaled error."""
    if error is None:
        return None
    return {"ename": type(error).__name__, "evalue": str(error)}
