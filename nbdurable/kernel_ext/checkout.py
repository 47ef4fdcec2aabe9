"""``%durable checkout RUN_ID [--cell N | --step NAME]``: the live namespace becomes a run's state after one of
its cells, and what runs next is a new run recorded as forked from it.

The fold (``runtime/checkout.py``) is applied as ``%durable resume`` applies a plan, with three differences:
the namespace is emptied first (variables bound later, or only in this session, are gone); a value a later
cell of the fold sets again is never loaded; nothing is offered for dataflow restores but the checked-out
executions themselves, as a resume offers its run's (Run All restores cells 1..N when their code and inputs match,
and executes the rest; they are copies in the new run already, so none is left "to resume" when it ends).
The new run begins with the next cell (checking out states to look at them creates no runs): its first steps
are the checked-out cells, recorded as restored (copies naming their origin), so the fork's journal is
self-contained like a resume's. Values that were not stored are
rebuilt by re-executing their cells from the recorded source, with a notice, as restore does; outputs are not
replayed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from nbdurable.capture.namespace import REDACTED, is_shell_name
from nbdurable.errors import LeaseHeldError, OptionsError, RestoreError
from nbdurable.runtime.checkout import CheckoutTarget, checkout_target
from nbdurable.runtime.checkpoint import ObjectLoader
from nbdurable.runtime.replay import PlannedStep, ReplayPlan
from nbdurable.runtime.run import DurableRun

if TYPE_CHECKING:  # the extension calls these with itself
    from nbdurable.kernel_ext.extension import Durable


@dataclasses.dataclass
class CheckoutResult:
    """What a checkout did (``summary()`` is what the magic prints)."""

    run_id: str  # the run checked out
    cell: int
    new_run: str | None  # None: it starts with the next cell
    restored: list[list[Any]]  # [run_id, ordinal] of each recorded execution folded, in order (for a runner)
    reexecuted: int
    missing: list[str]
    variables: list[str]
    seconds: float

    def summary(self) -> str:
        more = len(self.variables) - 12
        shown = ", ".join(self.variables[:12]) + (f" … (+{more})" if more > 0 else "")
        again = f", {self.reexecuted} re-executed" if self.reexecuted else ""
        text = (f"nbdurable: checked out run {self.run_id} after cell {self.cell} in {self.seconds * 1000:.0f} ms: "
                f"{len(self.restored)} cell(s) restored{again}"
                + f". Variables: {shown or '(none)'}.\n"
                f"What runs next is recorded in {f'run {self.new_run}' if self.new_run else 'a new run'}, forked "
                f"from {self.run_id} at cell {self.cell}; "
                "Run All restores the checked-out cells whose code and inputs match and executes the rest.")
        if self.missing:
            text += "\nNot restored:\n" + "\n".join(f"  - {line}" for line in self.missing)
        return text


def clear_namespace(ext: Durable) -> None:
    """Remove every user variable (IPython's own names, hidden names and dunders stay)."""
    ns = ext.shell.user_ns
    hidden = ext.shell.user_ns_hidden
    for name in [n for n in ns if n not in hidden and not is_shell_name(n)]:
        del ns[name]
    ext.tracker.reset()


def checkout(ext: Durable, run_id: str, *, cell: int | None = None, step: str | None = None,
             arm: bool = True, start: bool = False) -> CheckoutResult:
    """Make the namespace the state of ``run_id`` after ``cell`` (or its last cell named ``step``; default: its
    last cell); the next run is forked from it. ``arm``: offer the checked-out executions to Run All (a headless
    fork does not: everything after the checkout executes). The new run starts with the next cell (looking at
    states creates no runs), or now with ``start`` or when a value must be rebuilt by re-executing its cell."""
    started = time.perf_counter()
    if ext.flight is not None:
        raise OptionsError("%durable checkout replaces the whole namespace: it cannot run inside a cell with code.",
                           hint="put `%durable checkout RUN_ID --cell N` in a cell of its own.")
    target = checkout_target(ext.store_obj, run_id, cell=cell, step=step)  # (a mistake raises before anything)
    if ext.run is not None and ext.run.run_id == target.run_id:  # this session's own run: end it, then read it
        ext.close()
        target = checkout_target(ext.store_obj, target.run_id, cell=cell, step=step)
    holder = ext.store_obj.lease_holder(target.run_id)
    if holder is not None:
        raise LeaseHeldError(
            f"Run {target.run_id} is being recorded by process {holder.get('pid')} on {holder.get('host')}.",
            hint="check out one of its cells once it has finished, or a finished run (`%durable runs`).",
        )
    ext.start_fresh()
    clear_namespace(ext)
    ext.loader = ObjectLoader(ext.store_obj, ext.shell.user_ns)  # its cache holds objects loaded before: mutated since
    ext.fork = (target.run_id, target.cell)
    ext.plan = ReplayPlan(None, steps=list(target.steps) if arm else [])  # as a resume offers its run's
    if start:
        ext.ensure_run()
    restored, reexecuted, missing = apply_target(ext, target)
    names = sorted(n for n in ext.shell.user_ns
                   if n not in ext.shell.user_ns_hidden and not is_shell_name(n))
    result = CheckoutResult(target.run_id, target.cell, ext.run.run_id if ext.run else None, restored, reexecuted,
                            [*target.skipped, *missing], names, time.perf_counter() - started)
    ext.restorer.last_batch = json.dumps(restored)
    return result


def record_checked_out(ext: Durable, run: DurableRun) -> None:
    """A run forked by a checkout starts: the checked-out cells become its first steps, as restored copies."""
    for planned in ext.checked_out:
        inputs = planned.inputs.to_record() if planned.inputs is not None else None
        step = run.begin_step(source=planned.source, source_hash=planned.source_hash, name=planned.name,
                              options=planned.options, inputs=inputs)
        run.record_restored(step, planned)
    ext.checked_out = []


def apply_target(ext: Durable, target: CheckoutTarget) -> tuple[list[list[Any]], int, list[str]]:
    """Fold the target's executions into the namespace; each is a restored step of the new run (recorded when
    it starts: ``record_checked_out``). A cell re-executed to rebuild a value starts the run first."""
    restorer = ext.restorer
    restored: list[list[Any]] = []
    reexecuted = 0
    missing: list[str] = []
    for number, (planned, needed) in enumerate(zip(target.steps, target.needed(), strict=True), start=1):
        reason = planned.execution_reason()
        if reason is None:
            try:
                restorer.apply_step(_only(planned, needed))
            except Exception as exc:  # its cell can rebuild it
                reason = restorer.unloadable(exc)
            else:
                ext.inputs.restored(planned, f"cell {number} of the checkout")
                restored.append([planned.run_id, planned.ordinal])
                if ext.run is None:
                    ext.checked_out.append(planned)
                else:
                    ext.checked_out = [planned]
                    record_checked_out(ext, ext.run)
                continue
        run = ext.ensure_run()  # (records the cells checked out so far)
        inputs = planned.inputs.to_record() if planned.inputs is not None else None
        step = run.begin_step(source=planned.source, source_hash=planned.source_hash, name=planned.name,
                              options=planned.options, inputs=inputs)
        if REDACTED in planned.source:
            run.end_step(step, status="failed", error={"ename": "RestoreError", "evalue": "its secret is not stored"})
            missing.append(f"{planned.label}: it assigns a secret literal, which is never stored; run its cell")
            continue
        print(f"nbdurable: re-executing {planned.label}: {reason}.", file=sys.stderr)
        try:
            restorer.reexecute(step, planned)
            reexecuted += 1
            restored.append([planned.run_id, planned.ordinal])
        except RestoreError as exc:
            missing.append(f"{planned.label}: {exc.message} ({exc.hint})")
    return restored, reexecuted, missing


def _only(planned: PlannedStep, needed: set[str]) -> PlannedStep:
    """The step with only the references worth loading (interpreter state and deletions always apply)."""
    refs = [r for r in planned.variables
            if r.get("op") == "del" or str(r["name"]).startswith("%") or r["name"] in needed]
    return planned if len(refs) == len(planned.variables) else dataclasses.replace(planned, variables=refs)
