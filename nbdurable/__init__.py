"""nbdurable: durable execution for Jupyter notebooks.

``%load_ext nbdurable`` turns every cell into a durable step: recorded in a journal, its state changes
checkpointed, its outputs kept. A crashed or failed notebook resumes at the failed cell with its
namespace and outputs restored.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nbdurable._version import __version__
from nbdurable.errors import (  # the error hierarchy is part of the public API (= nbdurable.errors.__all__)
    AuthenticationError,
    CatalogLockedError,
    ChangedDuringWriteError,
    ChildRunFailed,
    ChildRunTimeoutError,
    CompensationError,
    CorruptJournalError,
    CorruptObjectError,
    ExecutorError,
    LeaseHeldError,
    NbdurableError,
    NondeterminismError,
    NonRetryableError,
    ObjectNotFoundError,
    OptionsError,
    RequestError,
    RestoreError,
    RetryAfter,
    RunNotFoundError,
    RunSuspended,
    StepTimeoutError,
    StoreError,
    StoreFormatError,
    SuspendedError,
)

if TYPE_CHECKING:  # imported on first use (below): `import nbdurable` stays cheap for the command line
    from nbdurable import testing
    from nbdurable.headless.children import run_notebook
    from nbdurable.run_history import history, sql
    from nbdurable.runtime.children import result
    from nbdurable.runtime.compensation import compensate
    from nbdurable.runtime.policy import RetryPolicy
    from nbdurable.runtime.steps import map as map  # noqa: A004  (not in __all__: `import *` keeps the builtin)
    from nbdurable.runtime.steps import run_step, step
    from nbdurable.runtime.waits import send_event, sleep, sleep_until, wait_for_event
    from nbdurable.widgets import HistoryExplorer, RunGraph

# The public API by the module that defines it, imported when first used.
_LAZY = {
    "history": "nbdurable.run_history", "sql": "nbdurable.run_history", "RetryPolicy": "nbdurable.runtime.policy",
    "map": "nbdurable.runtime.steps", "run_step": "nbdurable.runtime.steps", "step": "nbdurable.runtime.steps",
    "compensate": "nbdurable.runtime.compensation",
    "send_event": "nbdurable.runtime.waits", "sleep": "nbdurable.runtime.waits",
    "sleep_until": "nbdurable.runtime.waits", "wait_for_event": "nbdurable.runtime.waits",
    # the widgets import anywidget/ipywidgets: only when asked for (a kernel recording steps never is)
    "RunGraph": "nbdurable.widgets", "HistoryExplorer": "nbdurable.widgets",
    "run_notebook": "nbdurable.headless.children", "result": "nbdurable.runtime.children",
    "testing": "nbdurable.testing",  # a module: nbd.testing.time_skipping()
}


def current_run_id() -> str | None:
    """The id of the run recording this notebook (None before its first step, or without the extension)."""
    from nbdurable.runtime.session import active_session

    current = active_session()
    return current.run_id if current is not None else None


def load_ipython_extension(shell: Any) -> None:
    """Entry point of ``%load_ext nbdurable``."""
    from nbdurable.kernel_ext import load_ipython_extension as load

    load(shell)


def unload_ipython_extension(shell: Any) -> None:
    """Entry point of ``%unload_ext nbdurable``."""
    from nbdurable.kernel_ext import unload_ipython_extension as unload

    unload(shell)


__all__ = [
    "__version__",
    "load_ipython_extension",
    "unload_ipython_extension",
    "step",
    "run_step",
    "sleep",
    "sleep_until",
    "wait_for_event",
    "send_event",
    "compensate",
    "RetryPolicy",
    "history",
    "sql",
    "current_run_id",
    "RunGraph",
    "HistoryExplorer",
    "testing",
    "run_notebook",
    "result",
    # the errors (nbdurable.errors.__all__)
    "NbdurableError",
    "StoreError",
    "StoreFormatError",
    "CorruptJournalError",
    "ObjectNotFoundError",
    "CorruptObjectError",
    "CatalogLockedError",
    "AuthenticationError",
    "ChangedDuringWriteError",
    "LeaseHeldError",
    "RunNotFoundError",
    "RestoreError",
    "OptionsError",
    "NondeterminismError",
    "NonRetryableError",
    "CompensationError",
    "StepTimeoutError",
    "RequestError",
    "SuspendedError",
    "ExecutorError",
    "RetryAfter",
    "RunSuspended",
    "ChildRunFailed",
    "ChildRunTimeoutError",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbdurable' has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if name == "testing" else getattr(imported, name)  # nbd.testing is a module
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
