"""nbdurable: durable execution for Jupyter notebooks.

``%load_ext nbdurable`` turns every cell into a durable step: recorded in a journal, its state changes
checkpointed, its outputs kept. A crashed or failed notebook resumes at the failed cell with its
namespace and outputs restored.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from nbdurable.errors import (  # noqa: E402
    CatalogLockedError,
    CorruptJournalError,
    CorruptObjectError,
    LeaseHeldError,
    NbdurableError,
    ObjectNotFoundError,
    OptionsError,
    RestoreError,
    RunNotFoundError,
    StoreError,
    StoreFormatError,
)


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
    "NbdurableError",
    "StoreError",
    "StoreFormatError",
    "CorruptJournalError",
    "ObjectNotFoundError",
    "CorruptObjectError",
    "CatalogLockedError",
    "LeaseHeldError",
    "RunNotFoundError",
    "RestoreError",
    "OptionsError",
]
