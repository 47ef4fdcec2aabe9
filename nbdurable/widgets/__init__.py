"""Widgets (anywidget ES modules, no build step): the run graph, the history explorer, the approval widget.

They listen to runtime events and read the catalog; they never drive execution. The ES modules live in
``static/``: the graph scripts (``GRAPH_SCRIPTS``: plain functions that draw a GraphData) are concatenated in
front of each widget's module, and inlined into the HTML report; their stylesheet ``graph.css`` is each
widget's ``_css`` (anywidget adds it to the page once per widget class) and a ``<style>`` of the report.
"""

from __future__ import annotations

from typing import Any

from nbdurable.widgets.assets import GRAPH_SCRIPTS, STATIC, static_text

__all__ = ["GRAPH_SCRIPTS", "STATIC", "static_text", "RunGraph", "HistoryExplorer", "ApprovalWidget"]


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
