"""A run as a graph (``GraphData``): what the run-graph widget, the history explorer and the HTML report show.

A node is a top-level step (a cell); an edge goes from the step that last wrote a variable to a later step
that reads it (the names its source loads). Child steps (``nbd.step`` calls, waits) are summarized on their
cell. Two ways to get one:

- ``build_graph(store, run_id)``: from the catalog (which ingests the journal first), for any run;
- ``LiveGraph``: the graph of the run in progress, kept up to date from the runtime's events (it never
  reads the store on the hot path), starting from the catalog's view of the run when it attaches.

The dict shape (version 1) is documented in ``ARCHITECTURE.md`` and checked by the tests: nodes have
``id`` (``s<ordinal>``, or ``p<k>`` for a cell the resumed run will restore but has not reached), ``status``
(pending, running, completed, restored, failed, retrying, sleeping, waiting, suspended), times in unix
seconds, ``variables``, ``reads``, ``error``, ``attempts``, ``children`` (counts by status) and ``child_steps``
(each with ``attempts``, a count, and ``attempt_log``, its attempts with their errors). A restored node's
``duration_s`` is its own restore time, ``original_duration_s`` the step's duration in the run it came from.
"""

from __future__ import annotations

import builtins
import functools
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from nbdurable.capture.names import analyze_code
from nbdurable.errors import RunNotFoundError
from nbdurable.runtime.events import RuntimeEvent
from nbdurable.runtime.planning import CellPlan
from nbdurable.store import Store

VERSION = 1
MAX_CHILD_STEPS = 500  # child steps listed per node; ``children["total"]`` keeps the true count
SLEEP, WAIT, CHILD = "nbd.sleep", "nbd.wait_for_event", "nbd.run_notebook"
WAITS = (SLEEP, WAIT, CHILD)  # child steps during which their cell waits
_BUILTINS = frozenset(dir(builtins))
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

Graph = dict[str, Any]
Node = dict[str, Any]


# ----------------------------------------------------------------------------------------------------
# Sources


@functools.lru_cache(maxsize=4096)
def source_reads(source: str) -> tuple[str, ...]:
    """The global names a cell's source reads, sorted: the module-level names whose value from before the cell
    it loads (a name the cell assigns before it first reads it is its own, not a read: ``x = 1; y = x + 1``
    reads nothing), the globals its functions and classes refer to, the Python text of magics included
    (``%time y = f(x)``); builtins left out. Flow-sensitive: ``analyze_code(...).reads`` (capture/names.py)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        code = TransformerManager().transform_cell(source)  # type: ignore[no-untyped-call]
    except Exception:  # a cell IPython cannot transform reads nothing we can tell
        return ()
    return tuple(sorted(set(analyze_code(code).reads) - _BUILTINS - {"get_ipython"}))


def label(name: str | None, source: str | None) -> str:
    """How a node is titled: its step name; else a leading comment (the cell's header: ``# An expensive load``
    gives "An expensive load"; ``%%durable`` options may come first); else the first line of its source that
    says something (``%%durable`` options and decorators skipped while a later line remains)."""
    if name:
        return name[:60]
    lines = [line.strip() for line in (source or "").splitlines() if line.strip()]
    for line in lines:
        if line.startswith("%%durable"):
            continue
        if line.startswith("#") and not line.startswith("#!"):
            header = line.lstrip("#").strip()
            if header:
                return _cut(header)
        break
    telling = [line for line in lines if not line.startswith(("#", "%%durable", "@"))]
    for text in telling or lines:
        return _cut(text)
    return "(empty cell)"


def _cut(text: str) -> str:
    return text if len(text) <= 60 else text[:59] + "…"


def _waiting_text(name: str | None, options: dict[str, Any]) -> str | None:
    if name == SLEEP and options.get("wake_at"):
        return "sleeping until " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(options["wake_at"])))
    if name == CHILD:
        return f"waiting for a child run of {str(options.get('notebook') or '?').rsplit('/', 1)[-1]}"
    if name == WAIT:
        text = f"waiting for event {options.get('event')!r}"
        if options.get("match"):
            text += f" matching {json.dumps(options['match'], sort_keys=True)}"
        if options.get("timeout_at"):
            text += " until " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(options["timeout_at"])))
        return text
    return None


def _error_text(error: dict[str, Any] | None) -> str | None:
    if not error or not (error.get("ename") or error.get("evalue")):
        return None
    return f"{error.get('ename') or 'Error'}: {error.get('evalue') or ''}".strip()


def _error(ename: Any, evalue: Any, traceback: Any) -> dict[str, Any] | None:
    if not ename and not evalue:
        return None
    if isinstance(traceback, list):
        traceback = "\n".join(map(str, traceback))
    return {"ename": ename, "evalue": evalue, "traceback": _ANSI.sub("", traceback or "")}


# ----------------------------------------------------------------------------------------------------
# Nodes and edges


def new_node(ordinal: int | None, name: str | None, source: str, status: str, *, node_id: str | None = None) -> Node:
    """A node with every field of the contract."""
    return {
        "id": node_id or f"s{ordinal}", "ordinal": ordinal, "label": label(name, source), "source": source,
        "status": status, "started_at": None, "ended_at": None, "duration_s": None, "time_saved_s": None,
        "restored_from": None, "original_duration_s": None,
        "variables": [], "reads": list(source_reads(source)), "error": None, "attempts": [],
        "children": {"total": 0}, "child_steps": [], "waiting_for": None, "plan": None,
    }


def pending_node(k: int, cell: CellPlan) -> Node:
    """A cell Run All has not reached yet, with what it will do there (``plan``: restore or execute, why)."""
    node = new_node(None, cell.name, cell.source, "pending", node_id=f"p{k}")
    node["plan"] = {"action": cell.action, "reason": cell.reason,
                    "from": dict(cell.step.origin) if cell.step is not None and cell.action == "restore" else None,
                    "saved_s": cell.saved or None}
    return node


def _count_children(node: Node) -> None:
    """Recount a node's child steps by status (``total`` also counts children beyond the listed ones)."""
    counts: dict[str, int] = {"total": max(node["children"].get("total", 0), len(node["child_steps"]))}
    for child in node["child_steps"]:
        counts[child["status"]] = counts.get(child["status"], 0) + 1
    node["children"] = counts


def edges(nodes: list[Node]) -> list[dict[str, Any]]:
    """Data dependencies: from the last earlier node that set a variable to each node that reads it
    (imported modules excepted)."""
    writer: dict[str, str] = {}
    found: dict[tuple[str, str], list[str]] = {}
    for node in nodes:
        for name in node["reads"]:
            source = writer.get(name)
            if source is not None and source != node["id"]:
                found.setdefault((source, node["id"]), []).append(name)
        for var in node["variables"]:
            if var.get("op") == "del":
                writer.pop(var["name"], None)
            elif var.get("format") == "module":
                continue  # an import is not data: edges from the import cell to every user are noise
            elif var.get("name"):
                writer[var["name"]] = node["id"]
    return [{"source": s, "target": t, "variables": sorted(v)} for (s, t), v in found.items()]


def _unix(value: Any) -> float | None:
    """A catalog timestamp (naive UTC, as pandas gives it) to unix seconds."""
    if value is None:
        return None
    try:
        import pandas

        if pandas.isna(value):
            return None
        return float(pandas.Timestamp(value).tz_localize("UTC").timestamp())
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    """A catalog text column: pandas gives a missing one as NaN."""
    return value if isinstance(value, str) else None


def _num(value: Any) -> Any:
    """NaN (pandas' missing number) to None; numpy scalars to Python numbers."""
    if value is None:
        return None
    try:
        import pandas

        if pandas.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value


# ----------------------------------------------------------------------------------------------------
# From the catalog


def build_graph(store: Store, run_id: str, *, pending: list[CellPlan] | None = None, live: bool = False) -> Graph:
    """The graph of ``run_id`` from the catalog (ingesting new journal records first).

    ``pending``: the cells Run All has not reached yet (a live session), shown as pending nodes saying what
    Run All will do with them (``runtime/planning.py``).
    Raises RunNotFoundError for a run the store does not have."""
    runs, steps, variables, attempts, children, callers = store.catalog().query_many([
        ("SELECT * FROM runs WHERE run_id = ?", [run_id]),
        ("SELECT * FROM steps WHERE run_id = ? ORDER BY ordinal", [run_id]),
        ("SELECT ordinal, name, op, type, size_bytes, format FROM variables WHERE run_id = ? ORDER BY ordinal, name",
         [run_id]),
        ("SELECT * FROM attempts WHERE run_id = ? ORDER BY ordinal, attempt", [run_id]),
        (CHILDREN_SQL, [run_id, run_id]),
        (f"SELECT s.run_id, s.ordinal, c.source_hash FROM steps s JOIN steps c ON c.run_id = s.run_id AND c.ordinal = "
         f"s.parent WHERE s.name = 'nbd.run_notebook' AND s.run_id IN (SELECT parent_run FROM ({CHILDREN_SQL}))",
         [run_id, run_id]),
    ])
    if runs.empty:
        raise RunNotFoundError(f"no run {run_id!r} in the store {store.display}",
                               hint="`nbdurable runs` (or nbd.history()) lists the run ids of this store")
    graph = graph_from_rows(runs.to_dict("records")[0], steps.to_dict("records"), variables.to_dict("records"),
                            attempts.to_dict("records"), pending=pending, live=live)
    callers_by = {(str(r["run_id"]), int(r["ordinal"])): str(r["source_hash"]) for r in callers.to_dict("records")}
    add_child_runs(graph, run_id, steps.to_dict("records"), children.to_dict("records"), callers_by)
    return graph


# The child runs (``nbd.run_notebook``) of a run's resume chain: those whose origin names its root; one per child
# (its first run, which its id names), with the status of the newest run of the child's own resume chain.
CHILDREN_SQL = ("SELECT r.run_id, r.notebook, coalesce((SELECT s.status FROM runs s WHERE s.root_run = r.run_id "
                "AND s.run_id <> r.run_id ORDER BY s.run_id DESC LIMIT 1), r.status) AS status, coalesce((SELECT "
                "max(s.run_id) FROM runs s WHERE s.root_run = r.run_id), r.run_id) AS current, r.parent_run, "
                "r.origin FROM runs r WHERE r.resumed_from IS NULL AND (json_extract_string(r.origin, "
                "'$.parent_root') = (SELECT coalesce(root_run, run_id) FROM runs WHERE run_id = ?) "
                "OR r.parent_run = ?) ORDER BY r.run_id")


def add_child_runs(graph: Graph, run_id: str, steps: list[dict[str, Any]], children: list[dict[str, Any]],
                   callers: dict[tuple[str, int], str]) -> None:
    """Draw each child run as a node after the cell that called it (``kind`` ``child_run``, ``child_run`` =
    {run_id, current (the newest run of its resume chain), notebook, status, attempt}), with a ``child`` edge
    from that cell. A child called by an earlier run of the chain hangs from this run's cell with the same code
    (``callers``: (run, call step) -> the calling cell's source hash)."""
    parent_of = {int(r["ordinal"]): int(r["parent"]) for r in steps if _num(r.get("parent")) is not None}
    by_hash = {str(r["source_hash"]): int(r["ordinal"]) for r in steps if _num(r.get("parent")) is None}
    nodes: list[Node] = graph["nodes"]
    for child in children:
        origin = json.loads(child["origin"]) if isinstance(child.get("origin"), str) else {}
        step = _num(origin.get("parent_step"))
        if child.get("parent_run") == run_id and step is not None:
            cell = parent_of.get(int(step))
        else:
            cell = by_hash.get(callers.get((str(child.get("parent_run")), int(step or 0)), ""))
        caller = next((n for n in nodes if n["ordinal"] is not None and n["ordinal"] == cell), None)
        if caller is None:
            continue
        name = str(child.get("notebook") or "").rsplit("/", 1)[-1]
        node = new_node(None, None, "", _str(child.get("status")) or "running", node_id=f"r{child['run_id']}")
        node.update(kind="child_run", label=f"child run: {name}", reads=[],
                    child_run={"run_id": child["run_id"], "current": _str(child.get("current")) or child["run_id"],
                               "notebook": child.get("notebook"),
                               "status": _str(child.get("status")), "attempt": _num(origin.get("attempt"))})
        caller.setdefault("child_runs", []).append(child["run_id"])
        position = nodes.index(caller) + 1
        while position < len(nodes) and nodes[position].get("kind") == "child_run":
            position += 1
        nodes.insert(position, node)
        graph["edges"].append({"source": caller["id"], "target": node["id"], "variables": [], "kind": "child"})


def graph_from_rows(run: dict[str, Any], steps: list[dict[str, Any]], variables: list[dict[str, Any]],
                    attempts: list[dict[str, Any]], *, pending: list[CellPlan] | None = None,
                    live: bool = False) -> Graph:
    """GraphData from catalog rows (the run's row, its steps, variables and attempts)."""
    by_ordinal: dict[int, Node] = {}
    tops: list[Node] = []
    parent_of: dict[int, int] = {}
    for row in steps:
        ordinal = int(row["ordinal"])
        parent = _num(row.get("parent"))
        status = _str(row.get("status")) or "running"
        if parent is not None:
            parent_of[ordinal] = int(parent)
            cell = by_ordinal.get(int(parent))
            if cell is None:
                continue
            child = {"ordinal": ordinal, "name": _str(row.get("name")), "status": status,
                     "started_at": _unix(row.get("started_at")), "ended_at": _unix(row.get("ended_at")),
                     "duration_s": _num(row.get("duration_s")), "attempts": 0, "attempt_log": [],
                     "error": _error_text({"ename": _str(row.get("error_ename")),
                                           "evalue": _str(row.get("error_evalue"))})}
            cell["children"]["total"] = cell["children"].get("total", 0) + 1
            if len(cell["child_steps"]) < MAX_CHILD_STEPS:
                cell["child_steps"].append(child)
            continue
        node = new_node(ordinal, _str(row.get("name")), _str(row.get("source")) or "", status)
        node.update(
            started_at=_unix(row.get("started_at")), ended_at=_unix(row.get("ended_at")),
            duration_s=_num(row.get("duration_s")),
            error=_error(_str(row.get("error_ename")), _str(row.get("error_evalue")), _str(row.get("error_traceback"))),
        )
        if status == "restored":
            node["restored_from"] = {"run_id": _str(row.get("restored_from_run")),
                                     "ordinal": _num(row.get("restored_from_ordinal"))}
            _restored_times(node, node["duration_s"], None)
        by_ordinal[ordinal] = node
        tops.append(node)
    for row in variables:
        owner = by_ordinal.get(int(row["ordinal"]))
        if owner is not None:
            owner["variables"].append({"name": row["name"], "op": _str(row.get("op")), "type": _str(row.get("type")),
                                      "size_bytes": _num(row.get("size_bytes")), "format": _str(row.get("format"))})
    for row in attempts:
        ordinal = int(row["ordinal"])
        attempt = {"attempt": int(row["attempt"]), "started_at": _unix(row.get("started_at")),
                   "ended_at": _unix(row.get("ended_at")), "next_delay_s": _num(row.get("next_delay_s")),
                   "error": _error_text({"ename": _str(row.get("error_ename")),
                                         "evalue": _str(row.get("error_evalue"))})}
        owner = by_ordinal.get(ordinal)
        if owner is not None:
            owner["attempts"].append(attempt)
        elif ordinal in parent_of and (cell := by_ordinal.get(parent_of[ordinal])) is not None:
            for child in cell["child_steps"]:
                if child["ordinal"] == ordinal:
                    child["attempts"] += 1
                    child["attempt_log"].append(attempt)
    for node in tops:
        _count_children(node)
        _derive_status(node)
    for k, planned in enumerate(pending or []):
        tops.append(pending_node(k, planned))
    params = run.get("params")
    waiting = run.get("waiting_for")
    info = {
        "run_id": run["run_id"], "notebook": run.get("notebook"), "kind": run.get("kind"), "status": run.get("status"),
        "params": json.loads(params) if isinstance(params, str) and params else {},
        "started_at": _unix(run.get("started_at")), "ended_at": _unix(run.get("ended_at")),
        "duration_s": _num(run.get("duration_s")), "time_saved_s": _num(run.get("time_saved_s")) or 0.0,
        "resumed_from": run.get("resumed_from"), "wake_at": _unix(run.get("wake_at")),
        "forked_from": run.get("forked_from") if isinstance(run.get("forked_from"), str) else None,
        "forked_at_cell": None if _num(run.get("forked_at_cell")) is None else int(run["forked_at_cell"]),
        "waiting_for": json.loads(waiting) if isinstance(waiting, str) and waiting else None, "live": live,
    }
    return {"version": VERSION, "run": info, "nodes": tops, "edges": edges(tops)}


def _restored_times(node: Node, original: Any, saved: Any) -> None:
    """A restored node's own times: ``duration_s`` is how long the restore took (as the timeline draws it, from
    ``started_at`` to ``ended_at``), ``original_duration_s`` what the step took in the run it came from (the
    journal's duration of a restored step), ``time_saved_s`` the difference (never negative)."""
    original = float(original) if isinstance(original, (int, float)) else None
    node["original_duration_s"] = original
    start, end = node.get("started_at"), node.get("ended_at")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        node["duration_s"] = max(0.0, end - start)
    if saved is None and original is not None and node["duration_s"] is not None:
        saved = max(0.0, original - node["duration_s"])
    node["time_saved_s"] = saved


def _derive_status(node: Node) -> None:
    """A running cell shows what its running children do: sleeping, waiting, or retrying."""
    if node["status"] != "running":
        return
    for child in reversed(node["child_steps"]):
        if child["status"] == "running" and child["name"] in WAITS:
            node["status"] = "sleeping" if child["name"] == SLEEP else "waiting"
            return
    last = node["attempts"][-1] if node["attempts"] else None
    if last is not None and last.get("error") and last.get("next_delay_s") is not None:
        node["status"] = "retrying"


# ----------------------------------------------------------------------------------------------------
# Live


class LiveGraph:
    """The graph of the run in progress, updated from runtime events; ``on_change(graph)`` is called after
    each change (at most once per step change; child-step changes are coalesced to ``child_interval``)."""

    def __init__(self, on_change: Callable[[Graph], None], *, child_interval: float = 0.25) -> None:
        self.on_change = on_change
        self.child_interval = child_interval
        self.graph: Graph = {"version": VERSION, "run": {"run_id": None, "status": None, "live": True}, "nodes": [],
                             "edges": []}
        self._nodes: dict[int, Node] = {}
        self._child_parent: dict[int, int] = {}
        self._lock = threading.RLock()
        self._last_sent = 0.0
        self._dirty = False

    def load(self, graph: Graph) -> None:
        """Start from a graph built from the catalog (the run as it is when the widget attaches)."""
        with self._lock:
            self.graph = graph
            self.graph["run"]["live"] = True
            self._nodes = {n["ordinal"]: n for n in graph["nodes"] if n["ordinal"] is not None}
            self._child_parent = {c["ordinal"]: n["ordinal"] for n in self._nodes.values() for c in n["child_steps"]}
            self._send()

    def start_run(self, run_id: str | None, notebook: str | None, pending: list[CellPlan]) -> None:
        """A run with nothing recorded yet (``run_id`` None: the next run this session starts); ``pending``:
        the notebook's cells, with what Run All will do with each."""
        with self._lock:
            self._reset(run_id, notebook, [pending_node(k, c) for k, c in enumerate(pending)])

    def _reset(self, run_id: str | None, notebook: str | None, nodes: list[Node],
               resumed_from: str | None = None, fork: tuple[Any, Any] = (None, None)) -> None:
        self.graph = {
            "version": VERSION, "edges": [], "nodes": nodes,
            "run": {"run_id": run_id, "notebook": notebook, "kind": "interactive", "status": "running", "params": {},
                    "started_at": time.time(), "ended_at": None, "duration_s": None, "time_saved_s": 0.0,
                    "resumed_from": resumed_from, "wake_at": None, "waiting_for": None, "live": True,
                    "forked_from": fork[0], "forked_at_cell": fork[1]},
        }
        self._nodes, self._child_parent = {}, {}
        self._send()

    def __call__(self, event: RuntimeEvent) -> None:
        """An EventBus listener."""
        with self._lock:
            handler = getattr(self, "_on_" + event.kind, None)
            if handler is not None and (self.graph["run"].get("run_id") in (None, event.run_id)
                                        or event.kind == "run_started"):
                handler(event.run_id, event.data)

    def flush(self) -> None:
        """Send a coalesced child-step change now."""
        with self._lock:
            if self._dirty:
                self._send()

    # -- event handlers ---------------------------------------------------------------------------

    def _on_run_started(self, run_id: str, data: dict[str, Any]) -> None:
        if self.graph["run"].get("run_id") == run_id:
            return
        pending = [n for n in self.graph["nodes"] if n["status"] == "pending"]  # still to come in the new run
        self._reset(run_id, data.get("notebook"), pending, data.get("resumed_from"),
                    (data.get("forked_from"), data.get("forked_at_cell")))

    def _on_step_started(self, run_id: str, data: dict[str, Any]) -> None:
        ordinal, parent = int(data["ordinal"]), data.get("parent")
        if parent is None:
            node = new_node(ordinal, data.get("name"), data.get("source") or "", "running")
            node["started_at"] = data.get("started_at")
            nodes = self.graph["nodes"]
            pending = next((i for i, n in enumerate(nodes) if n["status"] == "pending"), None)
            if pending is not None and nodes[pending]["source"] == node["source"]:
                nodes.pop(pending)  # the planned cell it was
            position = next((i for i, n in enumerate(nodes) if n["status"] == "pending"), len(nodes))
            nodes.insert(position, node)
            self._nodes[ordinal] = node
            self._send()
            return
        cell = self._nodes.get(int(parent))
        if cell is None:
            return
        self._child_parent[ordinal] = cell["ordinal"]
        name = data.get("name")
        child: dict[str, Any] = {
            "ordinal": ordinal, "name": name, "status": "running", "started_at": data.get("started_at"),
            "ended_at": None, "duration_s": None, "attempts": 0, "attempt_log": [], "error": None}
        cell["children"]["total"] = cell["children"].get("total", 0) + 1
        if len(cell["child_steps"]) < MAX_CHILD_STEPS:
            cell["child_steps"].append(child)
        if name in WAITS:
            cell["status"] = "sleeping" if name == SLEEP else "waiting"
            cell["waiting_for"] = _waiting_text(name, data.get("options") or {})
            self._send()  # a cell that starts waiting changes status: a step change
        else:
            self._child_changed(cell)

    def _on_attempt_finished(self, run_id: str, data: dict[str, Any]) -> None:
        ordinal = int(data["ordinal"])
        retrying = bool(data.get("error")) and data.get("next_delay") is not None
        attempt = {"attempt": data.get("attempt"), "started_at": data.get("started_at"),
                   "ended_at": data.get("ended_at"), "error": _error_text(data.get("error")),
                   "next_delay_s": data.get("next_delay")}
        node = self._nodes.get(ordinal)
        if node is not None:
            node["attempts"].append(attempt)
            if retrying:
                node["status"] = "retrying"
            elif node["status"] == "retrying":
                node["status"] = "running"
            self._send()
            return
        cell, child = self._child(ordinal)
        if cell is None:
            return
        if child is not None:
            child["attempts"] += 1
            child.setdefault("attempt_log", []).append(attempt)
            child["status"] = "retrying" if retrying else "running"
        if retrying and cell["status"] == "running":
            cell["status"] = "retrying"
            self._send()
        else:
            self._child_changed(cell)

    def _on_step_finished(self, run_id: str, data: dict[str, Any]) -> None:
        ordinal, status, error = int(data["ordinal"]), str(data.get("status")), data.get("error") or {}
        node = self._nodes.get(ordinal)
        if node is not None:
            node.update(status=status, started_at=data.get("started_at") or node["started_at"],
                        ended_at=data.get("ended_at"), duration_s=data.get("duration"),
                        variables=[v for v in data.get("variables") or [] if v.get("name")],
                        error=_error(error.get("ename"), error.get("evalue"), error.get("traceback")),
                        restored_from=data.get("restored_from"), time_saved_s=data.get("time_saved"), waiting_for=None)
            if status == "restored":
                _restored_times(node, data.get("duration"), data.get("time_saved"))
            _count_children(node)
            if status == "restored" and data.get("time_saved"):
                run = self.graph["run"]
                run["time_saved_s"] = (run.get("time_saved_s") or 0.0) + float(data["time_saved"])
            kept = [e for e in self.graph["edges"] if e.get("kind") == "child"]  # child-run edges (build_graph)
            self.graph["edges"] = edges(self.graph["nodes"]) + kept
            self._send()
            return
        cell, child = self._child(ordinal)
        if cell is None:
            return
        if child is not None:
            child.update(status=status, ended_at=data.get("ended_at"), duration_s=data.get("duration"),
                         error=_error_text(error))
        _count_children(cell)
        if ((cell["status"] in ("sleeping", "waiting") and data.get("name") in WAITS)
                or cell["status"] == "retrying"):
            cell["status"], cell["waiting_for"] = "running", None
            self._send()
        else:
            self._child_changed(cell)

    def _on_run_finished(self, run_id: str, data: dict[str, Any]) -> None:
        run = self.graph["run"]
        run["status"], run["ended_at"] = data.get("status"), time.time()
        if run.get("started_at"):
            run["duration_s"] = run["ended_at"] - run["started_at"]
        self._send()

    def _child(self, ordinal: int) -> tuple[Node | None, dict[str, Any] | None]:
        """The cell a child step belongs to, and its entry in the cell's list (None past MAX_CHILD_STEPS)."""
        cell = self._nodes.get(self._child_parent.get(ordinal, -1))
        if cell is None:
            return None, None
        return cell, next((c for c in reversed(cell["child_steps"]) if c["ordinal"] == ordinal), None)

    # -- sending ----------------------------------------------------------------------------------

    def _child_changed(self, cell: Node) -> None:
        _count_children(cell)
        if time.monotonic() - self._last_sent >= self.child_interval:
            self._send()
        elif not self._dirty:
            self._dirty = True  # sent with the next change, or by the timer
            timer = threading.Timer(self.child_interval, self.flush)
            timer.daemon = True
            timer.start()

    def _send(self) -> None:
        self._dirty = False
        self._last_sent = time.monotonic()
        self.on_change(self.snapshot())

    def snapshot(self) -> Graph:
        """A copy safe to hand to a widget (traitlets compare by value: a new object each time)."""
        copy: Graph = json.loads(json.dumps(self.graph, default=str))
        return copy
