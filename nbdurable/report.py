"""A run as one self-contained HTML file: ``nbdurable report RUN_ID -o run.html``, ``write_report(...)``.

The page needs no network and no server (it opens from ``file://``): the graph renderers
(``widgets/static/graph_*.js``, in the order of ``nbdurable.widgets.GRAPH_SCRIPTS``) and their stylesheet
(``graph.css``) are inlined, and the run's GraphData (see ``nbdurable.widgets.graph``) is embedded as a
``<script type="application/json">`` whose text cannot close its element (``<``, ``>`` and ``&`` are written
as ``\\u003c``... escapes, which JSON reads back as they were). It shows the graph of the steps, the details
of the step clicked (source, variables, error, attempts) and the timeline; ``run.html#s3`` opens with step 3
selected.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbdurable.store import Store

DATA_ELEMENT_ID = "nbd-graph-data"
APP_ELEMENT_ID = "nbd-app"

_PAGE_CSS = """
:root{color-scheme:light dark}
body{margin:0;background:var(--jp-layout-color0,#ffffff);color:var(--jp-ui-font-color1,#1f2328);
  font-family:var(--jp-ui-font-family,system-ui,-apple-system,'Segoe UI',Roboto,sans-serif)}
@media (prefers-color-scheme:dark){:root{
  --jp-layout-color0:#0d1117;--jp-layout-color1:#161b22;--jp-layout-color2:#21262d;
  --jp-ui-font-color1:#e6edf3;--jp-ui-font-color2:#a6b0bb;--jp-ui-font-color3:#7d8590;
  --jp-border-color1:#3d444d;--jp-border-color2:#30363d;--jp-brand-color1:#4493f8;
  --jp-rendermime-error-background:rgba(235,87,87,.16)}}
.nbd-report{max-width:1400px;margin:0 auto;padding:16px 20px 32px;
  --nbd-graph-max-height:78vh;--nbd-details-max-height:78vh;--nbd-gantt-max-height:none}
.nbd-report>h1{font-size:18px;font-weight:600;margin:0 0 2px}
.nbd-report>h1 code{font-size:16px}
.nbd-report-meta{color:var(--jp-ui-font-color2,#57606a);font-size:12px;margin:0 0 12px}
.nbd-report h2{font-size:14px;font-weight:600;margin:8px 0 0}
.nbd-report .nbd-details-box{position:sticky;top:8px}
""".strip()

_BOOT_JS = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("%(data)s").textContent);
  var initial = null;
  try { initial = decodeURIComponent((location.hash || "").slice(1)) || null; } catch (e) { initial = null; }
  var view = nbdMountRunView(document.getElementById("%(app)s"), {
    layout: "stacked",
    onSelect: function (id) {
      try { history.replaceState(null, "", "#" + encodeURIComponent(id)); } catch (e) { /* file:// in some browsers */ }
    }
  });
  view.update(data, initial);
})();
""".strip()


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities to null, numpy scalars to Python numbers, times to ISO strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and not isinstance(value, (bytes, bytearray)):
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            pass
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def script_json(data: Any) -> str:
    """``data`` as JSON that is safe as the text of a ``<script>`` element: no ``</script>``, no ``<!--``,
    nothing an HTML parser reads before JSON does (JSON.parse gives back exactly ``data``)."""
    text = json.dumps(_plain(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def inline_script(code: str) -> str:
    """JavaScript source as the text of an inline ``<script>``: a ``</script`` or ``<!--`` in it (in a string,
    a regular expression or a comment, where ``<\\/`` and ``<\\!`` mean the same) would end or confuse it."""
    code = re.sub(r"</(script)", r"<\\/\1", code, flags=re.IGNORECASE)
    return code.replace("<!--", "<\\!--")


def inline_style(css: str) -> str:
    """A stylesheet as the text of a ``<style>``: a ``</style`` in it (in a string or a comment, where ``<\\/``
    means the same) would end it."""
    return re.sub(r"</(style)", r"<\\/\1", css, flags=re.IGNORECASE)


def report_html(graph: dict[str, Any], *, generated_at: float | None = None) -> str:
    """The self-contained HTML page of a GraphData."""
    from nbdurable.widgets.assets import GRAPH_SCRIPTS, STATIC, static_text

    missing = [name for name in (*GRAPH_SCRIPTS, "graph.css") if not (STATIC / name).is_file()]
    if missing:
        from nbdurable.errors import NbdurableError

        raise NbdurableError(f"the report's renderer (nbdurable/widgets/static/{', '.join(missing)}) is missing",
                             hint="reinstall nbdurable: the package data was not installed")
    core = static_text("graph")
    css = static_text("graph.css")
    run = graph.get("run") or {}
    run_id = str(run.get("run_id") or "")
    notebook = str(run.get("notebook") or "")
    try:
        from importlib.metadata import version

        nbd_version = version("nbdurable")
    except Exception:  # not installed as a distribution (a source checkout)
        nbd_version = "dev"
    when = dt.datetime.fromtimestamp(generated_at if generated_at is not None else dt.datetime.now().timestamp())
    esc = html.escape
    title = f"nbdurable run {run_id}" + (f" \u2014 {notebook}" if notebook else "")
    meta = " \u00b7 ".join(
        part for part in (
            esc(notebook),
            esc(str(run.get("status") or "")),
            f"report generated {esc(when.isoformat(sep=' ', timespec='seconds'))} by nbdurable {esc(nbd_version)}",
        ) if part
    )
    boot = _BOOT_JS % {"data": DATA_ELEMENT_ID, "app": APP_ELEMENT_ID}
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="nbdurable {esc(nbd_version)}">\n'
        f"<title>{esc(title)}</title>\n"
        f"<style>\n{_PAGE_CSS}\n</style>\n"
        f"<style>\n{inline_style(css)}\n</style>\n"
        "</head>\n<body>\n"
        '<main class="nbd-report">\n'
        f"<h1>nbdurable run <code>{esc(run_id)}</code></h1>\n"
        f'<p class="nbd-report-meta">{meta}</p>\n'
        f'<div id="{APP_ELEMENT_ID}"></div>\n'
        "<noscript><p>This report draws the run with JavaScript: enable it to see the graph. The run's data "
        f'is in the page source (the script element "{DATA_ELEMENT_ID}").</p></noscript>\n'
        "</main>\n"
        f'<script type="application/json" id="{DATA_ELEMENT_ID}">{script_json(graph)}</script>\n'
        f"<script>\n{inline_script(core)}\n{boot}\n</script>\n"
        "</body>\n</html>\n"
    )


def write_report(store: Store | str | os.PathLike[str], run_id: str, path: str | os.PathLike[str]) -> Path:
    """Write the HTML report of ``run_id`` (of ``store``: a Store or its directory) to ``path``; returns the
    path. Raises RunNotFoundError when the store has no such run."""
    from nbdurable.store import Store
    from nbdurable.widgets.graph import build_graph

    if not isinstance(store, Store):
        store = Store.open(store, create=False)
    page = report_html(build_graph(store, run_id))
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, target)  # a reader never sees half a report
    finally:
        tmp.unlink(missing_ok=True)
    return target


__all__ = ["inline_script", "inline_style", "report_html", "script_json", "write_report"]
