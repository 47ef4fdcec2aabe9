"""Which notebook a kernel is running, as far as the frontend tells us.

In order: ``NBDURABLE_NOTEBOOK`` (set by nbdurable's headless engine), Jupyter server's
``JPY_SESSION_NAME``, VS Code's ``__vsc_ipynb_file__`` in the user namespace. Without any of them the
session is unnamed until ``%durable attach NAME``; an unnamed session is resumable only by run id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbdurable.runtime.session import ENV_NOTEBOOK


def notebook_identity(value: str, base: Path | None = None) -> str:
    """A notebook's identity: the absolute path of an existing .ipynb file, else the name as given.

    A name that cannot be a path (``~user`` of an unknown user, a file name too long for the file system)
    is a name: the same text always gives the same identity."""
    try:
        candidate = Path(value).expanduser()
    except RuntimeError:  # ~user/...: no such user, no home directory to expand to
        return value
    if not candidate.is_absolute():
        candidate = (base or Path.cwd()) / candidate
    try:
        is_notebook = candidate.suffix == ".ipynb" or candidate.exists()
    except OSError:  # stat refused the path itself (ENAMETOOLONG, EACCES...): no file we could read
        return value
    return str(candidate.resolve()) if is_notebook else value


def detect_notebook(user_ns: dict[str, Any]) -> str | None:
    """The notebook identity the environment gives, or None."""
    for value in (os.environ.get(ENV_NOTEBOOK), os.environ.get("JPY_SESSION_NAME"), user_ns.get("__vsc_ipynb_file__")):
        if value:
            return notebook_identity(str(value))
    return None
