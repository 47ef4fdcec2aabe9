"""What the ``%durable`` magics do that is more than a call: the status table, ``%durable resume`` and
``%durable plan`` (the extension keeps the session's state; these read and drive it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nbdurable.errors import LeaseHeldError, OptionsError, RunNotFoundError
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
        "store": str(ext.store_path),
        "executed": str(stats.executed if stats else 0),
        "restored": str(stats.restored if stats else 0),
        "failed": str(stats.failed if stats else 0),
        "time saved": f"{stats.time_saved:.2f} s" if stats else "0.00 s",
        "replay": replay,
    }


def resume(ext: Durable, run_id: str | None) -> str:
    """`%durable resume`: restore the namespace as of a run's last completed step, now."""
    if run_id is None:
        run_id, note = find_resumable(ext.store_obj, ext.notebook, completed=True)
        if run_id is None:
            raise RunNotFoundError(
                f"No unfinished run to resume for notebook {ext.notebook or '(unnamed)'}."
                + (f" {note}" if note else ""),
                hint="`%durable runs --all` lists the runs of this store; pass one: `%durable resume RUN_ID`.",
            )
    if not ext.store_obj.journal_exists(run_id):
        raise RunNotFoundError(f"No run {run_id!r} in store {ext.store_path}.",
                               hint="`%durable runs --all` lists run ids.")
    holder = ext.store_obj.lease_holder(run_id)
    if holder is not None:
        raise LeaseHeldError(
            f"Run {run_id} is being driven by process {holder.get('pid')} on {holder.get('host')}.",
            hint="wait for it to finish or stop that kernel, then resume.",
        )
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
    return text


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
