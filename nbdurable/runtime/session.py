"""The session: what the rest of nbdurable may know of the notebook being recorded, through typed accessors.

A kernel with the extension loaded has one *active session* (the extension registers itself here and
withdraws at unload). Widgets, ``nbd.history``, ``nbd.current_run_id``, waits and ``send_event`` read the
session through the ``Session`` protocol below, never the extension's attributes; the headless runner and
the CLI use the names and rules defined here (environment variables, the store-path rule, the kernel's
handle name, the notice metadata key) instead of importing the extension.

Also here, because one cell runs at a time in a kernel: the *current step context* (the explicit steps of
the executing cell) and the *approval hook* (what an event wait shows in an interactive kernel). IPython
fires a cell's start and end events in different asyncio contexts (ipykernel), so these are module-level
slots, not ContextVars.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nbdurable.store import Store, is_store_url

if TYPE_CHECKING:  # typing only: the steps module imports this one
    from nbdurable.runtime.events import EventBus
    from nbdurable.runtime.planning import CellPlan
    from nbdurable.runtime.replay import PlannedStep
    from nbdurable.runtime.steps import StepContext

# ----- names shared by the kernel and the tools that drive it --------------------------------------

ENV_STORE = "NBDURABLE_STORE"  # the store directory; overrides configuration
ENV_NOTEBOOK = "NBDURABLE_NOTEBOOK"  # the notebook's identity (set by the headless runner)
ENV_KIND = "NBDURABLE_KIND"  # "headless" when a runner drives the kernel
ENV_PARAMS = "NBDURABLE_PARAMS"  # the run's parameters, JSON
ENV_RESUME = "NBDURABLE_RESUME"  # set by a runner: the run to resume ("" = start fresh)
ENV_REUSE = "NBDURABLE_REUSE"  # "1": also restore matching executions of any completed run of the notebook
ENV_OUTPUT = "NBDURABLE_OUTPUT"  # set by a runner: where it writes the output notebook (recorded for the worker)
ENV_SUSPEND_AFTER = "NBDURABLE_SUSPEND_AFTER"  # set by a runner: overrides Durable.suspend_after
ENV_RUN_ID = "NBDURABLE_RUN_ID"  # set by who starts a run and must know its id (the server): the process's first
# new run takes it (once; a run id already in the store is never reused)
ENV_ORIGIN = "NBDURABLE_ORIGIN"  # set by a launcher: what started the run, JSON (schedule, trigger, parent run...)
HANDLE_NAME = "__nbdurable__"  # the extension's name in the user namespace (what transformed cells call)
NOTICE_METADATA_KEY = "nbdurable"  # output/cell metadata key marking nbdurable's notices
STORE_DIRNAME = ".nbdurable"


def resolve_store_path(explicit: str | os.PathLike[str] | None = None, *, notebook: str | None = None,
                       configured: str | os.PathLike[str] | None = None) -> Path | str:
    """The one store-path rule: ``explicit`` (a ``--store`` option), else ``$NBDURABLE_STORE``, else
    ``configured`` (``c.Durable.store``), else ``.nbdurable`` beside ``notebook`` when it is a path, else the
    nearest ``.nbdurable`` in the working directory or one of its parents, else ``.nbdurable`` in the
    working directory. A ``postgresql://`` URL (a shared store) is returned as it is, a string."""
    for given in (explicit, os.environ.get(ENV_STORE), configured):
        if given:
            return given if isinstance(given, str) and is_store_url(given) else Path(given).expanduser()
    if notebook and Path(notebook).is_absolute():
        return Path(notebook).parent / STORE_DIRNAME
    here = Path.cwd()
    for folder in (here, *here.parents):  # the nearest store above, as git finds its repository
        if (folder / STORE_DIRNAME).is_dir():
            return folder / STORE_DIRNAME
    return here / STORE_DIRNAME


# ----- the active session -----------------------------------------------------------------------


class Session(Protocol):
    """What a loaded extension exposes to widgets, history and the public API."""

    @property
    def store(self) -> Store:
        """The store this session records into."""

    @property
    def notebook(self) -> str | None:
        """The notebook's identity (None: unnamed)."""

    @property
    def events(self) -> EventBus:
        """The runtime events of this session's runs (widgets subscribe)."""

    @property
    def run_id(self) -> str | None:
        """The run recording the session now (None before its first step)."""

    @property
    def run_live(self) -> bool:
        """True while that run is still recording."""

    @property
    def resume_target(self) -> str | None:
        """The earlier run this session restores from (None: it starts fresh)."""

    def pending_steps(self) -> list[PlannedStep]:
        """Recorded executions of the resumed runs this session has not restored or replaced yet."""

    def planned_cells(self) -> list[CellPlan]:
        """What Run All of the notebook file would do now, cell by cell (``runtime/planning.py``); empty when
        the notebook's file is not known."""

    def wait_durable(self) -> None:
        """Return once every step recorded so far is on disk (so the catalog sees it)."""


_active: list[Session | None] = [None]


def activate(session: Session) -> None:
    """The extension of this process's shell: from now on the session everything reads."""
    _active[0] = session


def deactivate(session: Session) -> None:
    """``session`` unloads: it is no longer the active one (another, if active meanwhile, stays)."""
    if _active[0] is session:
        _active[0] = None


def active_session() -> Session | None:
    """The active session, or None (no extension loaded in this process)."""
    return _active[0]


def default_store(store: str | os.PathLike[str] | Store | None = None) -> Store:
    """``store`` if given, else the active session's store, else the store-path rule's (no notebook)."""
    if isinstance(store, Store):
        return store
    if store is not None:
        return Store.open(store)
    session = _active[0]
    if session is not None:
        return session.store
    return Store.open(resolve_store_path())


# ----- the executing cell's explicit steps ------------------------------------------------------

_current_step: list[StepContext | None] = [None]


def enter_cell(context: StepContext | None) -> None:
    """The kernel extension: ``context`` holds the explicit steps of the cell that starts (None: it ended)."""
    _current_step[0] = context


def current_step_context() -> StepContext | None:
    """The explicit-step context of the executing durable cell, if any."""
    return _current_step[0]


# ----- what an event wait shows in an interactive kernel ----------------------------------------

# (store, name, match, timeout_at) -> an object with ``finish(event, interrupted=...)``, or None.
ApprovalFactory = Callable[[Store, str, "dict[str, Any] | None", "float | None"], Any]
_approval_ui: list[ApprovalFactory | None] = [None]


def use_approval_ui(factory: ApprovalFactory | None) -> None:
    """What ``wait_for_event`` shows while it waits in an interactive kernel (None: only its text line)."""
    _approval_ui[0] = factory


def approval_ui() -> ApprovalFactory | None:
    """The approval hook, if an interactive kernel set one."""
    return _approval_ui[0]
