"""``nbd.RunGraph()`` / ``%durable graph``: the run as a live graph of its cells (anywidget).

Without a run id it follows the notebook's current run: it subscribes a ``LiveGraph`` to the extension's
runtime events, so each step change becomes one ``graph`` update (child-step changes are coalesced). With
a run id it shows that run as the catalog has it. It only listens: closing it unsubscribes.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import anywidget
import traitlets

from nbdurable.errors import OptionsError
from nbdurable.runtime.session import active_session, default_store
from nbdurable.store import Store
from nbdurable.widgets.assets import static_text
from nbdurable.widgets.graph import Graph, LiveGraph, build_graph


class RunGraph(anywidget.AnyWidget):
    """The graph of a run: cells as nodes (status, duration, attempts, time saved), data dependencies as
    edges, child steps per cell; selecting a node shows its source, variables, error and attempts.

    ``RunGraph()`` follows the current run of the notebook live (needs ``%load_ext nbdurable``);
    ``RunGraph(run_id)`` shows any run of the store (``store``: a path or Store; default: the extension's,
    else $NBDURABLE_STORE, else ./.nbdurable)."""

    _esm = static_text("graph", "run_graph.js")
    _css = static_text("graph.css")
    graph = traitlets.Dict().tag(sync=True)
    selected = traitlets.Unicode("").tag(sync=True)

    def __init__(self, run_id: str | None = None, *, store: str | os.PathLike[str] | Store | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._unsubscribe: Any = None
        self._send_lock = threading.Lock()
        self._store = store
        self.on_msg(self._on_custom)
        current = active_session()
        if run_id is not None:
            if not isinstance(run_id, str) or not run_id:
                raise OptionsError(f"RunGraph takes a run id (a string), not {run_id!r}",
                                   hint="nbd.history() lists run ids")
            if current is not None and current.run_id == run_id:
                current.wait_durable()  # this notebook's own run: the catalog reads what the journal holds
            self.graph = build_graph(default_store(store), run_id)  # default: the session's store
            return
        if current is None:
            raise OptionsError(
                "RunGraph() follows the current run of a notebook with nbdurable loaded, and it is not loaded here",
                hint="run `%load_ext nbdurable` first, or pass a run id: nbd.RunGraph(run_id)",
            )
        self.live = LiveGraph(self._publish)
        pending = [c for c in current.planned_cells() if c.action != "control"]
        if current.run_id is not None and current.run_live:
            current.wait_durable()  # the catalog reads the journal: let it hold every step so far
            self.live.load(build_graph(current.store, current.run_id, pending=pending, live=True))
        else:
            self.live.start_run(None, current.notebook, pending)
        self._unsubscribe = current.events.subscribe(self.live)

    def _publish(self, graph: Graph) -> None:
        with self._send_lock:  # nbd.map worker threads emit events too: one update at a time, in order
            self.graph = graph

    def show_run(self, run_id: str) -> None:
        """Show the run ``run_id`` instead (a child run's link in the details: its own graph); a live widget
        stops following the current run."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        current = active_session()
        store = current.store if self._store is None and current is not None else default_store(self._store)
        self.selected = ""
        self.graph = build_graph(store, run_id)

    def _on_custom(self, widget: Any, content: Any, buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "open_run" and isinstance(content.get("run_id"), str):
            try:
                self.show_run(content["run_id"])
            except Exception as exc:  # e.g. a run this store does not have: said in the log, the view stays
                print(f"nbdurable: cannot show run {content['run_id']}: {exc}")

    def close(self) -> None:
        """Stop following the run and close the widget."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        super().close()
