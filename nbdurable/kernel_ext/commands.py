"""What the ``%durable`` magics do that is more than a call: the status table, ``%durable resume``,
``%durable plan`` and ``%durable cancel`` (the extension keeps the session's state; these read and drive it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nbdurable.errors import CompensationError, LeaseHeldError, NbdurableError, OptionsError, RunNotFoundError
from nbdurable.runtime.changes import apply_policy
from nbdurable.runtime.compensation import compensate_run
from nbdurable.runtime.control import canceller, was_cancelled
from nbdurable.runtime.planning import CellPlan, Simulation, format_plan, notebook_sources, plan_cells
from nbdurable.runtime.replay import ReplayPlan, find_resumable

if TYPE_CHECKING:  # the extension calls these with itself
    from nbdurable.kernel_ext.extension import Durable


def status(ext: Durable) -> dict[str, str]:
    """The facts `%durable status` shows."""
    run, plan = ext.run, ext.plan
    stats = run.stats if run else None
    replay = "none"
    if plan is not None:
        source = (f"run {plan.run_id}" if plan.run_id else
                  f"the checkout of run {ext.fork[0]}" if ext.fork else "no unfinished run")
        if plan.reused:
            source += f" + {len(plan.reused)} execution(s) of completed runs (reuse)"
        replay = (f"{len(plan.steps) - len(ext.pending_steps())}/{len(plan.steps)} recorded execution(s) "
                  f"of {source} restored or replaced; cells restore when their code and inputs match")
    not_recording = f"(none: not recording: {ext._not_durable})" if ext._not_durable else None
    return {
        "run": run.run_id if run else not_recording or "(starts with the next cell)"
        + (f" (forked from run {ext.fork[0]} at cell {ext.fork[1]})" if ext.fork else ""),
        "notebook": ext.notebook or "(unnamed: `%durable attach NAME` to make it resumable)",
        "store": ext.store_obj.display,
        "executed": str(stats.executed if stats else 0),
        "restored": str(stats.restored if stats else 0),
        "failed": str(stats.failed if stats else 0),
        "time saved": f"{stats.time_saved:.2f} s" if stats else "0.00 s",
        "replay": replay,
    }


def resume(ext: Durable, run_id: str | None, *, on_change: str = "continue", force: bool = False) -> str:
    """`%durable resume`: restore the namespace as of a run's last completed step, now. Cells of this
    notebook's file (as last saved) that changed under the run are listed first; ``on_change="fail"`` then
    refuses (``runtime/changes.py``)."""
    if run_id is None:
        run_id, note = find_resumable(ext.store_obj, ext.notebook, completed=True)
        if run_id is None:
            raise RunNotFoundError(
                f"No unfinished run to resume for notebook {ext.notebook or '(unnamed)'}."
                + (f" {note}" if note else ""),
                hint="`%durable runs --all` lists the runs of this store; pass one: `%durable resume RUN_ID`.",
            )
    if not ext.store_obj.journal_exists(run_id):
        raise RunNotFoundError(f"No run {run_id!r} in store {ext.store_obj.display}.",
                               hint="`%durable runs --all` lists run ids.")
    holder = ext.store_obj.lease_holder(run_id)
    if holder is not None:
        raise LeaseHeldError(
            f"Run {run_id} is being driven by process {holder.get('pid')} on {holder.get('host')}.",
            hint="wait for it to finish or stop that kernel, then resume.",
        )
    if not force and was_cancelled(ext.store_obj, run_id):
        raise OptionsError(f"Run {run_id} was cancelled: nothing resumes it unless forced.",
                           hint=f"`%durable resume {run_id} --force` resumes it anyway.")
    changed = _code_changed(ext, run_id, on_change)
    plan = ReplayPlan.from_run(ext.store_obj, run_id)
    ext.start_fresh()
    ext.arm(plan)
    ext.set_reuse(ext.reuse)
    restored, reexecuted, missing = ext.restorer.apply_plan_now(plan)
    saved = ext.run.stats.time_saved if ext.run else 0.0
    names = sorted({ref["name"] for step in plan.steps for ref in step.variables
                    if ref.get("op") == "set" and not ref["name"].startswith("%")})
    shown = ", ".join(names[:12]) + (f" … (+{len(names) - 12})" if len(names) > 12 else "")
    text = (
        f"nbdurable: restored {restored} step(s) of run {run_id}"
        + (f", re-executed {reexecuted}" if reexecuted else "")
        + f" (saved {saved:.2f} s). Variables: {shown or '(none)'}.\n"
        "Run All restores the cells whose code and inputs match again (their outputs come back, nothing "
        "runs twice); edited cells and the cells reading what they change execute."
    )
    if missing:
        text += "\nNot restored:\n" + "\n".join(f"  - {line}" for line in missing)
    return (f"nbdurable: {changed}\n" if changed else "") + text


def _code_changed(ext: Durable, run_id: str, on_change: str) -> str | None:
    """The notice about cells of this notebook's file changed under ``run_id`` (None: none, or no file);
    OptionsError with ``on_change="fail"``."""
    path = Path(ext.notebook or "")
    if path.suffix != ".ipynb" or not path.is_file():
        return None
    return apply_policy(ext.store_obj, run_id, notebook_sources(path), on_change, transform=ext.transform_bypassing)


def announce_resume(ext: Durable, run_id: str | None) -> None:
    """What a session loaded on a notebook with recorded executions says: the run it goes on from, and the
    cells of the notebook's file changed since that run recorded them (they execute; the rule decides)."""
    plan = ext.plan
    if plan is None or not (plan.steps or plan.reused):
        return
    what = f"run {run_id}: {len(plan.steps)} recorded cell execution(s)" if run_id else ""
    if plan.reused:
        what += (" and " if what else "") + f"{len(plan.reused)} of completed runs (reuse)"
    print(f"nbdurable: resuming {what}: a cell is restored instead of executed when its code and what it reads "
          "match a recorded execution (`%durable plan` tells which; `%durable new` starts over).",
          file=sys.stdout)  # information, not a warning: JupyterLab shows stderr in red
    try:
        changed = _code_changed(ext, run_id, "continue") if run_id else None
    except NbdurableError:  # a notebook file that does not read: the session goes on, cell by cell
        changed = None
    if changed:
        print(f"nbdurable: {changed}", file=sys.stdout)


def plan_of_file(ext: Durable, notebook: str | None, *, quiet: bool = False) -> list[CellPlan]:
    """What Run All of the notebook file (``notebook``, else this notebook's own, as last saved) would do now,
    from this session's state. ``quiet``: an empty plan, not an error, when there is no such file."""
    path = Path(notebook or ext.notebook or "")
    if path.suffix != ".ipynb" or not path.is_file():
        if quiet:
            return []
        raise OptionsError(
            f"%durable plan: no notebook file to plan ({str(path) if str(path) != '.' else 'none known'}).",
            hint="pass its path: `%durable plan analysis.ipynb` (the file as last saved is planned).",
        )
    try:
        sources = notebook_sources(path)
    except OptionsError:
        if quiet:
            return []
        raise
    simulation = Simulation(ext.inputs.version, ext.inputs.ambient_version, set(ext.executed_hashes),
                            set(ext.consumed))
    return plan_cells(sources, ext.plan or ReplayPlan(None), simulation=simulation,
                      transform=ext.transform_bypassing)


def plan_run_all(ext: Durable, notebook: str | None) -> str:
    """`%durable plan`: what Run All of the notebook file would do now, cell by cell, and why."""
    cells = plan_of_file(ext, notebook)
    name = Path(notebook or ext.notebook or "").name
    return f"Run All of {name} now (the file as last saved):\n{format_plan(cells)}"


def cancel(ext: Durable, reason: str | None) -> str:
    """`%durable cancel`: end this session's current run as cancelled (who, when, why recorded); the next
    cell starts a new run that restores nothing (the namespace stays as it is)."""
    run = ext.run
    if run is None or run.status != "running":
        raise OptionsError("%durable cancel: this session has no run to cancel (no cell recorded since it "
                           "started, or since its last run ended).",
                           hint="`nbdurable cancel RUN_ID` cancels another run (`%durable runs --all` lists them)")
    undone = compensate(ext, "cancelled")  # the run's completed steps are undone first, newest first
    request = ext.store_obj.request_cancel(run.run_id, by=canceller(), reason=reason)
    _finish_cancelled(ext, request)
    why = f" ({reason})" if reason else ""
    undid = f" {undone} compensation(s) ran." if undone else ""
    return (f"nbdurable: run {run.run_id} cancelled{why}: nothing resumes it.{undid} The next cell starts a new "
            "run; nothing is restored from earlier runs.")


def end_if_cancelled(ext: Durable) -> None:
    """Before a cell: if this session's run was cancelled from outside (`nbdurable cancel`), end it so; the
    cell is recorded in a new run."""
    run = ext.run
    if run is None or run.status != "running" or not ext.store_obj.cancel_requested(run.run_id):
        return
    request = ext.store_obj.cancel_request(run.run_id) or {}
    _finish_cancelled(ext, request, fresh=False)
    why = f": {request['reason']}" if request.get("reason") else ""
    print(f"nbdurable: run {run.run_id} was cancelled by {request.get('by') or 'someone'}{why}; "
          "this cell starts a new run.", file=sys.stderr)


def _finish_cancelled(ext: Durable, request: dict[str, object], *, fresh: bool = True) -> None:
    run = ext.run
    assert run is not None
    try:
        run.wait_durable()
    except NbdurableError as exc:  # a big step that could not be written: the run ends anyway
        print(f"nbdurable: a cell's state could not be made durable: {exc}", file=sys.stderr)
    run.finish("cancelled", cancel=dict(request))
    ext.run = None
    if fresh:
        ext.start_fresh()


def compensate(ext: Durable, reason: str) -> int:
    """Run the compensations the current run owes (``runtime/compensation.py``); returns how many ran."""
    return compensate_run(ext.run, ext.loader, reason=reason) if ext.run is not None else 0


def finish_compensation(ext: Durable) -> None:
    """The first cell a run resumed mid-compensation would execute: the compensations left run instead."""
    __tracebackhide__ = True
    ext.compensation_due = False
    count = compensate(ext, "resumed a run that was compensating")
    raise CompensationError(
        f"the run this session resumes failed and was running its compensations: the {count} left ran now, "
        "and this cell did not run",
        hint="the run is over; the next `nbdurable run` (or `%durable new`) starts a fresh one",
    )
