"""The run graph: built from the catalog for any run, and live from runtime events in a real IPython shell,
its widget messages recorded through a recording comm (no browser)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from nbdurable.errors import OptionsError, RunNotFoundError
from nbdurable.store import Store
from nbdurable.widgets.graph import build_graph, source_reads

from conftest import run_session

HERE = Path(__file__).parent
KILL = "import os; os.kill(os.getpid(), 9)"

# Outside any cell: every widget the session makes opens a recording comm (its messages are kept).
SETUP = (
    f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
    "import anywidget, ipywidgets\n"  # imported first: importing them resets the comm factory
    "from widget_comm import recording_comms\n"
    "_recording = recording_comms()\n"
    "_recording.__enter__()"
)
# The RunGraph that `%durable graph` displayed: the widget behind the extension's event listener.
WIDGET = "get_ipython()._nbdurable_extension[0].events._listeners[0].on_change.__self__"
# What the test reads back: every graph update as (node id, status) lists, plus the last full graph.
SUMMARY = ("__import__('json').dumps({'updates': [[[n['id'], n['status']] for n in u['graph']['nodes']] "
           f"for u in {WIDGET}.comm.updates() if 'graph' in u], 'last': {WIDGET}.graph}})")


def _summary(probe: str) -> dict[str, Any]:
    assert not probe.startswith("!"), probe
    return json.loads(ast.literal_eval(probe))


def _node(graph: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(n for n in graph["nodes"] if n["id"] == node_id)


def test_live_graph_follows_cells_with_one_message_per_step_change(store_dir: Path) -> None:
    session = run_session(store_dir, [
        "import nbdurable as nbd",          # s1
        "%durable graph",                    # a control cell: not a step
        "x = 21",                            # s2
        "y = x * 2\nprint(y)",               # s3
        "@nbd.step\ndef double(i):\n    return i * 2\nz = [double(i) for i in range(30)]",  # s4, children s5..s34
        "1 / 0",                             # s35
        "nbd.sleep(0.3)",                    # s36 (its sleep is the child s37)
    ], probes={"summary": SUMMARY}, setup=SETUP)
    assert [c["success"] for c in session.cells] == [True] * 6 + [False, True]
    data = _summary(session.probes["summary"])
    updates, graph = data["updates"], data["last"]
    ids = [n["id"] for n in graph["nodes"]]
    assert ids == ["s1", "s2", "s3", "s4", "s35", "s36"]  # s1 came from the catalog when the widget opened
    statuses = {n["id"]: n["status"] for n in graph["nodes"]}
    assert statuses["s1"] == statuses["s2"] == statuses["s3"] == statuses["s4"] == "completed"
    sleep_id, failed_id = "s36", "s35"
    assert statuses[failed_id] == "failed" and statuses[sleep_id] == "completed"
    # Every cell was seen running before it completed, and the sleeping cell was seen sleeping.
    seen: dict[str, list[str]] = {}
    for update in updates:
        for node_id, status in update:
            if not seen.setdefault(node_id, []) or seen[node_id][-1] != status:
                seen[node_id].append(status)
    assert seen["s2"] == ["running", "completed"]
    assert seen[sleep_id] == ["running", "sleeping", "running", "completed"]
    # At most one message per step change: 5 cells start and end, 30+1 children start and end, one sleep
    # makes its cell sleeping and then running again. The 30 fast children are coalesced.
    step_changes = 2 * 5 + 2 * 31 + 2
    assert len(updates) <= step_changes
    assert len(updates) < 2 * 5 + 10, "child steps were not coalesced"
    # Details: variables with type and size, children summarized, the error with its traceback, edges.
    s2 = _node(graph, "s2")
    assert [(v["name"], v["type"]) for v in s2["variables"]] == [("x", "builtins.int")]
    assert _node(graph, "s4")["children"] == {"total": 30, "completed": 30}
    assert len(_node(graph, "s4")["child_steps"]) == 30
    error = _node(graph, failed_id)["error"]
    assert error["ename"] == "ZeroDivisionError" and "1 / 0" in error["traceback"] and "\x1b[" not in error["traceback"]
    assert {"source": "s2", "target": "s3", "variables": ["x"]} in graph["edges"]
    assert not any(e["source"] == "s1" for e in graph["edges"]), "an import is not a data dependency"


def test_graph_of_a_past_run_from_the_catalog(store_dir: Path, tmp_path: Path) -> None:
    flaky = tmp_path / "flaky"
    session = run_session(store_dir, [
        "import nbdurable as nbd, pathlib",
        "data = list(range(1000))",
        "total = sum(data)",
        # fails twice, then succeeds: three attempts recorded with their delays
        f"@nbd.step(retry=nbd.RetryPolicy(max_attempts=3, initial_interval=0.01))\n"
        f"def flaky():\n    p = pathlib.Path({str(flaky)!r})\n    n = int(p.read_text()) if p.exists() else 0\n"
        f"    p.write_text(str(n + 1))\n    if n < 2:\n        raise ConnectionError(f'try {{n}}')\n    return n\n"
        "result = flaky()",
        "raise ValueError('<b>not escaped here</b>')",
    ], probes={"run": "get_ipython()._nbdurable_extension[0].run.run_id"})
    run_id = ast.literal_eval(session.probes["run"])
    graph = build_graph(Store.open(store_dir), run_id)
    assert graph["version"] == 1 and graph["run"]["run_id"] == run_id and graph["run"]["notebook"] == "nb"
    assert graph["run"]["live"] is False
    nodes = graph["nodes"]
    assert [n["status"] for n in nodes] == ["completed", "completed", "completed", "completed", "failed"]
    data = nodes[1]
    assert data["variables"][0]["name"] == "data" and data["variables"][0]["type"] == "builtins.list"
    assert data["variables"][0]["size_bytes"] > 1000
    assert data["duration_s"] >= 0 and data["ended_at"] >= data["started_at"]
    assert {"source": "s2", "target": "s3", "variables": ["data"]} in graph["edges"]
    retried = nodes[3]
    assert retried["children"] == {"total": 1, "completed": 1}
    child = retried["child_steps"][0]
    assert child["name"] == "flaky" and child["attempts"] == 3
    assert nodes[4]["error"]["ename"] == "ValueError" and "<b>" in nodes[4]["error"]["evalue"]
    # JSON all the way (the widget trait and the report embed it)
    json.dumps(graph)


def test_restored_cells_show_time_saved_and_origin(store_dir: Path) -> None:
    cells = ["import time", "time.sleep(0.4); a = 1", "b = a + 1"]
    first = run_session(store_dir, [*cells, KILL])
    assert first.killed
    second = run_session(store_dir, [*cells, "c = b + 1"],
                         probes={"run": "get_ipython()._nbdurable_extension[0].run.run_id"})
    graph = build_graph(Store.open(store_dir), ast.literal_eval(second.probes["run"]))
    statuses = [n["status"] for n in graph["nodes"]]
    assert statuses == ["restored", "restored", "restored", "completed"]
    slow = graph["nodes"][1]
    assert slow["restored_from"]["ordinal"] == 2 and slow["restored_from"]["run_id"] != graph["run"]["run_id"]
    assert slow["time_saved_s"] > 0.3
    # its own times: the restore (as the timeline draws it), not the original's 0.4 s
    own = slow["ended_at"] - slow["started_at"]
    assert slow["duration_s"] == pytest.approx(own) and own < 0.3
    assert slow["original_duration_s"] >= 0.4
    assert slow["time_saved_s"] == pytest.approx(slow["original_duration_s"] - own)
    assert graph["run"]["time_saved_s"] > 0.3


def test_live_graph_of_a_resume_shows_pending_then_restored(store_dir: Path) -> None:
    cells = ["a = 1", "b = a + 1", "c = b + 1"]
    run_session(store_dir, [*cells, KILL])
    # After a restart, the graph opened before Run All lists the cells the resume will restore as pending.
    session = run_session(store_dir, ["%durable graph", *cells, "d = c + 1"], probes={"summary": SUMMARY}, setup=SETUP)
    data = _summary(session.probes["summary"])
    first = data["updates"][0] if data["updates"] else None
    assert first == [["p0", "pending"], ["p1", "pending"], ["p2", "pending"]]
    assert all(data["updates"]), "the run starting keeps the pending cells: no update shows an empty graph"
    graph = data["last"]
    assert [n["status"] for n in graph["nodes"]] == ["restored", "restored", "restored", "completed"]
    assert graph["run"]["time_saved_s"] >= 0 and graph["run"]["resumed_from"]


def test_graph_opened_before_run_all_says_what_each_cell_will_do(store_dir: Path, tmp_path: Path) -> None:
    import nbformat

    cells = ["a = 1", "b = a + 1", "c = 7"]
    path = tmp_path / "nb.ipynb"
    run_session(store_dir, cells, notebook=str(path))
    edited = ["a = 2", "b = a + 1", "c = 7"]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in edited]), path)
    session = run_session(store_dir, ["%durable graph"], probes={"summary": SUMMARY}, setup=SETUP,
                          notebook=str(path))
    graph = _summary(session.probes["summary"])["last"]
    plans = [(n["status"], n["plan"]["action"], n["plan"]["reason"]) for n in graph["nodes"]]
    assert plans[0] == ("pending", "execute", "new or edited: no recorded execution of this code")
    assert plans[1][:2] == ("pending", "execute") and "it reads `a`, which changed" in plans[1][2]
    assert plans[2] == ("pending", "restore", "")
    assert graph["nodes"][2]["plan"]["from"]["ordinal"] == 3


def test_source_reads_understands_ipython_syntax() -> None:
    assert set(source_reads("y = x + f(z)\nprint(y)")) == {"x", "f", "z"}  # y: the cell's own
    assert source_reads("%time y = x2 + len(w)") == ("w", "x2")
    assert source_reads("def broken(:") == ()


def test_bad_input_gets_clear_errors(store_dir: Path) -> None:
    store = Store.open(store_dir)
    with pytest.raises(RunNotFoundError, match="no run 'nope'"):
        build_graph(store, "nope")
    code = ("import nbdurable as nbd\n"
            "try:\n    nbd.RunGraph()\nexcept nbd.OptionsError as e:\n    print('ERR', e)\n")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "ERR" in out.stdout and "%load_ext nbdurable" in out.stdout
    assert issubclass(OptionsError, Exception)


def test_closing_the_widget_stops_listening(store_dir: Path) -> None:
    session = run_session(store_dir, ["%durable graph", "x = 1", f"{WIDGET}.close()", "y = 2"],
                          probes={"listeners": "len(get_ipython()._nbdurable_extension[0].events._listeners)"},
                          setup=SETUP)
    assert all(c["success"] for c in session.cells)
    assert session.probes["listeners"] == "0"


def test_node_labels_say_what_the_cell_does() -> None:
    from nbdurable.widgets.graph import label

    assert label(None, "# load\n@nbd.step\ndef fetch(url):\n    ...") == "load"  # the header comment
    assert label(None, "%%durable --retries 3\nx = call()") == "x = call()"
    assert label("train", "x = 1") == "train"
    assert label(None, "# only a comment") == "only a comment" and label(None, "") == "(empty cell)"
    assert label(None, "#!/bin/sh\nx = 1") == "x = 1" and label(None, "#\nx = 1") == "x = 1"
    assert len(label(None, "y = " + "1 + " * 40)) == 60


def test_header_comment_labels_a_cell() -> None:
    from nbdurable.widgets.graph import label

    assert label(None, "# An expensive load\ntime.sleep(2)") == "An expensive load"
    assert label(None, "%%durable --retries 3\n# Fetch the prices\nx = call()") == "Fetch the prices"
    assert label(None, "x = 1  # not a header\n# later") == "x = 1  # not a header"


def test_reads_leave_out_what_the_cell_assigns_first() -> None:
    assert source_reads("x = 1; y = x + 1") == ()
    assert source_reads("x = x + 1") == ("x",)  # reads the x from before, then assigns it
    assert source_reads("def f():\n    return g(a)\nb = f()") == ("a", "g")  # a function's globals count
    assert source_reads("import os\nos.getcwd()") == ()


def test_restored_node_shows_its_own_restore_time_and_what_it_saved() -> None:
    from nbdurable.widgets.graph import graph_from_rows

    run = {"run_id": "r2", "status": "completed"}
    step = {"ordinal": 1, "parent": None, "status": "restored", "source": "import time", "name": None,
            "started_at": "2026-01-01 00:00:00", "ended_at": "2026-01-01 00:00:00.030",
            "duration_s": 2.1, "restored_from_run": "r1", "restored_from_ordinal": 1}
    node = graph_from_rows(run, [step], [], [])["nodes"][0]
    assert node["duration_s"] == pytest.approx(0.03)
    assert node["original_duration_s"] == pytest.approx(2.1) and node["time_saved_s"] == pytest.approx(2.07)


def test_child_steps_keep_each_failed_attempt() -> None:
    from nbdurable.widgets.graph import graph_from_rows

    run = {"run_id": "r", "status": "completed"}
    steps = [{"ordinal": 1, "parent": None, "status": "completed", "source": "fetch()", "name": None},
             {"ordinal": 2, "parent": 1, "status": "completed", "name": "fetch"}]
    attempts = [{"ordinal": 2, "attempt": k, "error_ename": "IOError" if k < 3 else None,
                 "error_evalue": f"flaky {k}" if k < 3 else None, "next_delay_s": 0.1 if k < 3 else None}
                for k in (1, 2, 3)]
    child = graph_from_rows(run, steps, [], attempts)["nodes"][0]["child_steps"][0]
    assert child["attempts"] == 3
    assert [a["error"] for a in child["attempt_log"]] == ["IOError: flaky 1", "IOError: flaky 2", None]
