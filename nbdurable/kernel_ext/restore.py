"""The restore machinery of the kernel extension: recorded steps brought back into the live namespace.

Four ways a recorded step comes back (which one, and whether at all, is decided by dataflow:
``runtime/dataflow.py``):
- **restore** (Run All after a restart): the cell's code was replaced by ``__nbdurable__._restore_step()``;
  its recorded delta is applied, its outputs replayed, a notice shown, a ``restored`` step recorded;
- **batch** (a headless runner): consecutive restorable cells at once, in one kernel request
  (``restore_batch``); the runner fills their outputs from the journal itself;
- **resume** (``%durable resume``): every recorded execution of the resumed runs applied now, in the order
  they ran, before any cell runs; those that cannot be are listed (Run All then restores by dataflow again);
- **instead** (a recorded step cannot be applied: an object file missing, damaged or failing
  authentication, a module that does not import, a pickle that does not load): the cell's own code runs in
  its place, after everything before it was restored, and is recorded as executed. Nothing restored before
  it runs again. A damaged object file is set aside first, so the store heals when the cell stores the
  object again.
"""

from __future__ import annotations

import ast
import json
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
from nbdurable.runtime.cells import classify
from nbdurable.runtime.checkpoint import MISSING, load_outputs
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
        self.last_batch = "[]"  # what the last restore_batch restored, JSON (read back by the runner)

    def lookup(self, instance: str, key: str) -> Any:
        """The object the namespace holds with this content (a recorded variable's), for a restored object that
        holds or views it (``ObjectLoader``'s references); ``MISSING`` if none."""
        ns = self.ext.shell.user_ns
        for name, binding in self.ext.tracker.bindings.items():
            if key in (binding.key, binding.alt_key) and name in ns and id(ns[name]) == binding.obj_id:
                return ns[name]
        return MISSING

    def apply_step(self, planned: PlannedStep) -> None:
        """Apply a recorded state delta to the namespace."""
        ext = self.ext
        ns = ext.shell.user_ns
        ext.loader.expect(planned.variables)
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
            binding = ext.tracker.bindings.get(name)
            if binding is not None and binding.key == ref.get("object") and name in ns \
                    and id(ns[name]) == binding.obj_id:
                continue  # the namespace holds this very value already (Run All after `%durable resume`)
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
        outputs = load_outputs(ext.store_obj, planned.outputs)
        if planned.exited is not None:  # raising SystemExit again below shows its error (and IPython's warning)
            outputs = before_exit(outputs)
        replay_outputs(ext.shell, outputs)
        saved = max(0.0, planned.duration - (time.perf_counter() - started))
        show_notice(
            ext.shell,
            f"↻ nbdurable: restored from {planned.label} (saved {saved:.2f} s)",
            "restored",
            {"restored_from": planned.origin, "saved": saved, "duration": planned.duration},
        )
        if planned.exited is not None:  # the cell ended the notebook early: so does its restore, as a clean run
            raise SystemExit(None if planned.exited in ("", "None") else int(planned.exited))

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
            flight.inputs = ext.inputs.begin(analyze_code(code))  # (they matched: the start record holds them)
            ext.executed_hashes.add(flight.cell.source_hash)
            ext.begin_execution(ext.run, flight)
        run_code(ext.shell, code, f"<nbdurable: {planned.label}>")

    # ----- a headless runner's batch -----------------------------------------------------------

    def restore_batch(self, sources: list[str]) -> list[list[Any]]:
        """Restore consecutive cells at once, for a headless runner that fills their outputs from the journal
        itself (one request instead of a round trip per cell). Each cell is decided as the kernel would decide
        it when sent on its own; restoring stops at the first that is not restored (or ends the notebook, or
        does not load: sent on its own, it then executes in place). Returns the recorded executions restored,
        as ``[run_id, ordinal]`` of the journal they were read from (also in ``last_batch``, for the runner)."""
        ext = self.ext
        done: list[list[Any]] = []
        self.last_batch = "[]"
        for source in sources:
            try:
                cell = classify(source.rstrip("\n"))
            except NbdurableError:
                break
            decision = ext.decide(cell)
            planned = decision.step
            if cell.control or decision.kind != "restore" or planned is None or planned.exited is not None:
                break
            run = ext.ensure_run()
            started = time.perf_counter()
            try:
                self.apply_step(planned)
            except Exception:  # never raises: the runner must learn how many cells were restored
                break  # sent on its own, the cell's restore fails again and executes it in place
            ext.consumed.add(planned.origin_key)
            step = run.begin_step(source=ext.secrets.redact_source(cell.body), source_hash=planned.source_hash,
                                  name=planned.name, options=planned.options,
                                  inputs=planned.inputs.to_record() if planned.inputs is not None else None)
            step.t0 = started  # the restore time counts the load
            run.record_restored(step, planned)
            ext.inputs.restored(planned, f"step {step.ordinal} of this run")
            done.append([planned.run_id, planned.ordinal])
            self.last_batch = json.dumps(done)
        return done

    # ----- `%durable resume` -------------------------------------------------------------------

    def apply_plan_now(self, plan: ReplayPlan) -> tuple[int, int, list[str]]:
        """Apply every recorded execution of the resumed runs now, in the order they ran; one whose state
        cannot be loaded is re-executed from its recorded source. Nothing stops half-way: what cannot be
        brought back is listed (each with its step and what to do) and the rest is applied. Returns
        (restored, re-executed, what could not be restored)."""
        ext = self.ext
        run = ext.ensure_run()
        restored = reexecuted = 0
        missing: list[str] = []
        for planned in plan.steps:
            inputs = planned.inputs.to_record() if planned.inputs is not None else None
            step = run.begin_step(source=planned.source, source_hash=planned.source_hash, name=planned.name,
                                  options=planned.options, inputs=inputs)
            reason = planned.execution_reason()
            if reason is None:
                try:
                    self.apply_step(planned)
                except Exception as exc:  # its cell can rebuild it
                    reason = self.unloadable(exc)
                else:
                    run.record_restored(step, planned)
                    ext.inputs.restored(planned, f"step {step.ordinal} of this run")
                    restored += 1
                    continue
            if REDACTED in planned.source:
                run.end_step(step, status="failed",
                             error={"ename": "RestoreError", "evalue": "its secret is not stored"})
                missing.append(f"{planned.label} ({_first_line(planned.source)}): it assigns a secret literal, "
                               "which is never stored; Run All executes its cell from the notebook (or read the "
                               "secret from the environment in that cell)")
                continue
            print(f"nbdurable: re-executing {planned.label}: {reason}.", file=sys.stderr)
            try:
                self.reexecute(step, planned)
                reexecuted += 1
            except RestoreError as exc:
                missing.append(f"{planned.label} ({_first_line(planned.source)}): {exc.message} ({exc.hint})")
        return restored, reexecuted, missing

    def reexecute(self, step: StepHandle, planned: PlannedStep) -> None:
        """Run a recorded cell's source again (to rebuild what could not be stored)."""
        ext = self.ext
        run = ext.run
        assert run is not None
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
        ext.inputs.executed(changes, f"step {step.ordinal} of this run")


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


def _first_line(source: str) -> str:
    """A cell named by its first code line, for lists of steps."""
    line = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
    return f"`{line[:60]}{'…' if len(line) > 60 else ''}`"


def before_exit(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A cell's outputs up to its ``SystemExit`` error: what IPython showed from there on is shown again
    when its restore raises ``SystemExit`` itself."""
    for i, output in enumerate(outputs):
        if output.get("output_type") == "error" and output.get("ename") == "SystemExit":
            return outputs[:i]
    return outputs


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
