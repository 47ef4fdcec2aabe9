"""The widgets' static files: ES modules and stylesheets in ``static/``, read and concatenated on demand.

The graph scripts (``GRAPH_SCRIPTS``) are plain functions without import/export, concatenated in front of a
widget's own module and inlined into the HTML report; ``graph.css`` is their stylesheet.
"""

from __future__ import annotations

import functools
import pathlib

STATIC = pathlib.Path(__file__).parent / "static"

GRAPH_SCRIPTS = ("graph_core.js", "graph_layout.js", "graph_draw.js", "graph_details.js", "graph_timeline.js",
                 "graph_view.js")
"""The graph renderers in load order (the shared helpers first, the run view that uses the others last): plain
scripts without import/export, concatenated, so all their functions share one scope. ``static_text("graph")``
stands for them; their stylesheet is ``graph.css``."""

_GROUPS = {"graph": GRAPH_SCRIPTS}


@functools.cache
def static_text(*names: str) -> str:
    """The named files of ``static/`` concatenated; the name ``"graph"`` stands for the GRAPH_SCRIPTS (a
    missing file reads as empty, so a partial checkout still imports; the widget then shows nothing)."""
    parts = []
    for name in names:
        for file in _GROUPS.get(name, (name,)):
            path = STATIC / file
            parts.append(path.read_text(encoding="utf-8") if path.exists() else "")
    return "\n".join(parts)
