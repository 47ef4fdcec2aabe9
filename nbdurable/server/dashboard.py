"""The dashboard at ``/``: one page, no build step, no network beyond this server.

The page inlines the widgets' graph scripts (``GRAPH_SCRIPTS``, as the HTML report does) and their
stylesheet, then ``static/dashboard.css`` and ``static/dashboard.js``, which fetches the API with the
token's cookie and follows ``/api/stream``. Its panes: the runs table (the history explorer's filters),
the selected run's graph, details and timeline with Cancel / Resume / Rerun, pending approvals with
Approve / Reject, recent events, schedules and triggers.
"""

from __future__ import annotations

import functools
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from nbdurable._version import __version__
from nbdurable.report import inline_script, inline_style
from nbdurable.widgets.assets import static_text

STATIC = Path(__file__).parent / "static"


@functools.cache
def page() -> str:
    """The dashboard's HTML (built once per process)."""
    graph_css = static_text("graph.css")
    own_css = (STATIC / "dashboard.css").read_text(encoding="utf-8")
    body = (STATIC / "dashboard.html").read_text(encoding="utf-8")
    script = static_text("graph") + "\n" + (STATIC / "dashboard.js").read_text(encoding="utf-8")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="nbdurable {__version__}">\n'
        '<title>nbdurable</title>\n<link rel="icon" href="data:,">\n'
        f"<style>\n{inline_style(graph_css)}\n</style>\n<style>\n{inline_style(own_css)}\n</style>\n"
        f"</head>\n<body>\n{body}\n<script>\n{inline_script(script)}\n</script>\n</body>\n</html>\n"
    )


async def dashboard(request: Request) -> Response:
    """The dashboard page (HTML).
    ---
    summary: Dashboard (HTML)
    responses:
      200: {description: text/html}
    """
    return HTMLResponse(page(), headers={"Cache-Control": "no-store",
                                         "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                                                    "style-src 'unsafe-inline'; img-src 'self' data:"})
