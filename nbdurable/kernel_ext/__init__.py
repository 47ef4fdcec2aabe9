"""The IPython extension: ``%load_ext nbdurable`` makes every cell a durable step."""

from __future__ import annotations

from typing import Any

from nbdurable.kernel_ext.extension import Durable
from nbdurable.kernel_ext.magics import DurableMagics
from nbdurable.runtime import tracing

_ATTR = "_nbdurable_extension"


def load_ipython_extension(shell: Any) -> None:
    """Register nbdurable in ``shell``: events, input transformers, magics, output capture."""
    if getattr(shell, _ATTR, None) is not None:
        return
    ext = Durable(shell)
    magics = DurableMagics(shell, ext)
    shell.register_magics(magics)
    ext.register()
    untrace = tracing.install(ext.events, ext.store_obj)  # OpenTelemetry spans, when asked for (OTEL_*)
    setattr(shell, _ATTR, (ext, magics, untrace))


def unload_ipython_extension(shell: Any) -> None:
    """Undo everything ``load_ipython_extension`` did, so ``%reload_ext nbdurable`` works."""
    loaded = getattr(shell, _ATTR, None)
    if loaded is None:
        return
    ext, magics, untrace = loaded
    ext.unregister()  # ends the run: its span ends before the tracer goes
    if untrace is not None:
        untrace()
    for kind in ("line", "cell"):
        for name in magics.magics[kind]:
            shell.magics_manager.magics[kind].pop(name, None)
    shell.magics_manager.registry.pop(type(magics).__name__, None)
    setattr(shell, _ATTR, None)


def current_extension(shell: Any) -> Durable | None:
    """The loaded extension of ``shell``, if any."""
    loaded = getattr(shell, _ATTR, None)
    return loaded[0] if loaded else None
