"""nbdurable: durable execution for Jupyter notebooks.

``%load_ext nbdurable`` turns every cell into a durable step: recorded in a journal, its state changes
checkpointed, its outputs kept. A crashed or failed notebook resumes at the failed cell with its
namespace and outputs restored.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from nbdurable import errors as _errors  # noqa: E402
from nbdurable.errors import *  # noqa: E402,F403  (the error hierarchy is part of the public API)


from nbdurable.history import history, sql  # noqa: E402  (duckdb and pandas are imported on first call)
from nbdurable.runtime.policy import RetryPolicy  # noqa: E402
from nbdurable.runtime.steps import map, run_step, step  # noqa: E402,A004
from nbdurable.runtime.waits import send_event, sleep, sleep_until, wait_for_event  # noqa: E402


def current_run_id() -> str | None:
    """The id of the run recording this notebook (None before its first step, or without the extension)."""
    from nbdurable.kernel_ext import active_extension

    ext = active_extension()
    return ext.run.run_id if ext is not None and ext.run is not None else None


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
    "map",
    "sleep",
    "sleep_until",
    "wait_for_event",
    "send_event",
    "RetryPolicy",
    "history",
    "sql",
    "current_run_id",
    "RunGraph",
    "HistoryExplorer",
    *_errors.__all__,
]


def __getattr__(name: str) -> Any:
    # The widgets import anywidget/ipywidgets: only when asked for (a kernel recording steps never is).
    if name in ("RunGraph", "HistoryExplorer"):
        from nbdurable import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module 'nbdurable' has no attribute {name!r}")
