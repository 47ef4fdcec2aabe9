"""What nbdurable's own processes do before they import anything heavy.

jsonschema, which nbformat imports, loads ``rfc3987_syntax`` when it is installed (jupyter_events asks for it),
and that compiles some 35 Lark grammars at import: about 1.1 s here, more than the rest of an ``nbdurable``
command's start-up (python-jsonschema/jsonschema#1428). No notebook schema uses the ``iri`` formats it checks,
so nbdurable's processes (the ``nbdurable`` command, the launcher's forkserver) mark it as absent before
jsonschema is imported; jsonschema then has no checker for those formats. Never called on import of the
library: a user's own process keeps its jsonschema as it is.
"""

from __future__ import annotations

import sys

SLOW_OPTIONAL = ("rfc3987_syntax",)


def skip_slow_imports() -> None:
    """In this process, make the optional modules in ``SLOW_OPTIONAL`` fail to import (``ImportError``), unless
    jsonschema, which looks for them, is already imported."""
    if "jsonschema" in sys.modules:
        return
    for name in SLOW_OPTIONAL:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
