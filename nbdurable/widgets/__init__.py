"""Widgets (anywidget ES modules, no build step): the run graph, the history explorer, the approval widget.

They listen to runtime events and read the catalog; they never drive execution. The ES modules live in
``static/``: ``graph_core.js`` (plain functions that draw a GraphData) is concatenated in front of each
widget's module, and inlined into the HTML report.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

STATIC = pathlib.Path(__file__).parent / "static"


@functools.cache
def static_text(*names: str) -> str:
    """The named files of ``static/`` concatenated (a missing file reads as empty, so a partial checkout
    still imports; the widget then shows nothing)."""
    parts = []
    for name in names:
        path = STATIC / name
        parts.append(path.read_text(encoding="utf-8") if path.exists() else "")
    return "\n".join(parts)


def __getattr__(name: str) -> Any:
    # Lazily: anywidget/ipywidgets cost an import nobody needs to record steps.
    if name == "RunGraph":
        from .run_graph import RunGraph

        return RunGraph
    if name == "HistoryExplorer":
        from .history import HistoryExplorer

        return HistoryExplorer
    if name == "ApprovalWidget":
        from .approval import ApprovalWidget

        return ApprovalWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
