"""End-to-end in a real browser: JupyterLab served on loopback, Debian's headless Chromium driven by Playwright.

The first two tests prove the infrastructure and the frontend behaviour the widgets rely on (widget clicks
reach Python; a click reaches Python while a cell blocks, through a kernel subshell). The others check the
nbdurable widgets against the DOM contract (notes: `div.nbd-graph`, `g.nbd-node[data-status]`,
`div.nbd-approval[data-state]`, ...): the run graph's statuses, its live update while a cell runs, the
approval widget releasing a waiting cell, and the HTML report opened from file://.

Screenshots of each go to $NBDURABLE_ARTIFACTS (default tests/artifacts/), and one of the page when a test
fails. Debian's Chromium must be at /usr/bin/chromium: without it these tests fail (never skip) with the
command that installs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from browser import LOAD_TIMEOUT, LabNotebook, LabServer, screenshot, subprocess_env  # fixtures: conftest.py

pytestmark = pytest.mark.timeout(240)
pytestmark = [pytestmark, pytest.mark.browser, pytest.mark.kernel, pytest.mark.slow,  # JupyterLab + Chromium
              pytest.mark.xdist_group("browser")]

OpenNotebook = Callable[[str, list[str]], LabNotebook]


@pytest.fixture
def open_notebook(lab_server: LabServer, page: Any) -> Iterator[OpenNotebook]:
    """``open_notebook(name, cells)``: write the notebook, open it in the test's tab, wait for its kernel.
    The kernels are shut down after the test (a 2-core machine has no room for idle ones)."""

    def open_(name: str, cells: list[str]) -> LabNotebook:
        lab_server.write_notebook(name, cells)
        return LabNotebook(page, lab_server, name).open()

    try:
        yield open_
    finally:
        lab_server.shutdown_kernels()


def graph_in(nb: LabNotebook, cell: int) -> Any:
    """The run graph rendered in a cell's output (``div.nbd-graph``), once visible."""
    return nb.wait_output(cell, "div.nbd-graph", timeout=LOAD_TIMEOUT)


def node_statuses(graph: Any) -> dict[str, str]:
    """{label text: data-status} of every ``g.nbd-node`` in the graph."""
    return dict(graph.evaluate("""g => Array.from(g.querySelectorAll('g.nbd-node')).map(n =>
        [(n.querySelector('.nbd-node-label') || n).textContent.trim(), n.getAttribute('data-status')])"""))


def wait_node_status(graph: Any, label: str, status: str, timeout: float = 30_000) -> Any:
    """The node whose text contains ``label``, once its ``data-status`` is ``status``."""
    node = graph.locator(f'g.nbd-node[data-status="{status}"]', has_text=label).first
    try:
        node.wait_for(state="attached", timeout=timeout)
    except Exception as exc:
        raise AssertionError(f"no node {label!r} with status {status!r}; nodes: {node_statuses(graph)}") from exc
    return node


# ------------------------------------------------------------------------------------------ infrastructure

COUNTER_WIDGET = '''import anywidget, traitlets
class Counter(anywidget.AnyWidget):
    _esm = """export default { render({ model, el }) {
      const b = document.createElement('button'); b.className = 'probe-counter';
      const show = () => { b.textContent = 'count ' + model.get('value'); };
      b.addEventListener('click', () => { model.set('value', model.get('value') + 1); model.save_changes(); });
      model.on('change:value', show); show(); el.appendChild(b); } };"""
    value = traitlets.Int(0).tag(sync=True)
counter = Counter()
counter'''


def test_lab_widget_clicks_reach_python(open_notebook: OpenNotebook, page: Any) -> None:
    """An ipywidgets Button's on_click and an anywidget's trait change, both from a real click, reach the
    kernel; a Python-side trait change re-renders the anywidget."""
    nb = open_notebook("probe_widgets", [
        "import ipywidgets as w\nclicks = []\nbutton = w.Button(description='Click me')\n"
        "button.add_class('probe-button')\nbutton.on_click(lambda b: clicks.append(b.description))\nbutton",
        COUNTER_WIDGET,
        "print('clicks', clicks, 'value', counter.value)",
        "counter.value = 41",
    ])
    nb.run_cell(0)
    nb.wait_output(0, "button.probe-button").click()
    nb.run_cell(1)
    counter = nb.wait_output(1, "button.probe-counter")
    counter.click()
    counter.click()
    page.wait_for_function("() => document.querySelector('button.probe-counter').textContent === 'count 2'")
    nb.run_cell(2)
    nb.wait_output_text(2, "clicks ['Click me'] value 2")
    nb.run_cell(3)  # kernel -> frontend
    page.wait_for_function("() => document.querySelector('button.probe-counter').textContent === 'count 41'")
    nb.screenshot("browser-probe-widgets")


BLOCKING_SETUP = '''import threading, time, ipywidgets as w, anywidget, traitlets
log = []          # (tag, thread name, seconds after the blocking cell started)
T0 = []
def record(tag):
    log.append((tag, threading.current_thread().name, round(time.time() - T0[0], 2) if T0 else None))
class Clicker(anywidget.AnyWidget):
    _esm = """export default { render({ model, el }) { const b = document.createElement('button');
      b.className = 'aw-' + model.get('tag'); b.textContent = 'anywidget ' + model.get('tag');
      b.onclick = () => { model.set('clicks', model.get('clicks') + 1); model.save_changes(); };
      el.appendChild(b); } };"""
    tag = traitlets.Unicode().tag(sync=True)
    clicks = traitlets.Int(0).tag(sync=True)
def honour_frontend_subshell(widget):
    # ipykernel 7 routes a comm's incoming messages back to the subshell that last published on the comm
    # (the main shell, for a widget made in a cell): keep them on the subshell the frontend sent them to.
    if hasattr(widget.comm, "_reply_subshell_for"):
        widget.comm._reply_subshell_for = lambda data, default: default
widgets = []
for tag, fix in (("plain", False), ("routed", True)):
    b = w.Button(description="button " + tag); b.add_class("btn-" + tag)
    b.on_click(lambda _, tag=tag: record("button-" + tag))
    a = Clicker(tag=tag)
    a.observe(lambda change, tag=tag: record("anywidget-" + tag), "clicks")
    if fix:
        honour_frontend_subshell(b); honour_frontend_subshell(a)
    widgets += [b, a]
w.VBox(widgets)'''
BLOCKING_CELL = '''T0.append(time.time())
while {"button-routed", "anywidget-routed"} - {t for t, *_ in log} and time.time() - T0[0] < 20:
    time.sleep(0.05)   # blocks the main thread, as nbd.wait_for_event does
print("DURING", json.dumps(sorted(log)))'''


def test_click_runs_while_cell_blocks(open_notebook: OpenNotebook, page: Any) -> None:
    """While a cell blocks the kernel's main thread, a widget click is handled on a kernel subshell — the
    approval widget depends on it. JupyterLab (>= 4.4) sends comm messages on a per-comm-target subshell
    when the kernel supports subshells (ipykernel >= 7); ipykernel 7.4 then re-routes a comm's incoming
    messages to the subshell that last published on that comm, i.e. the busy main shell for a widget made
    in a cell, unless the widget keeps them on the frontend's subshell (``_reply_subshell_for``). Measured
    here: the re-routed widgets' callbacks ran on a ``subshell-*`` thread within ~0.3 s; the plain ones ran
    on MainThread only after the cell ended. Plain widgets' callbacks must run at the latest then."""
    nb = open_notebook("probe_subshell",
                       ["import json", BLOCKING_SETUP, BLOCKING_CELL, "print('AFTER', json.dumps(sorted(log)))"])
    supports = page.evaluate("""() => { const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        return [k.supportsSubshells, k.commsOverSubshells]; }""")
    assert supports[0] is True, f"the kernel does not report subshell support to JupyterLab: {supports}"
    nb.run_cell(0)
    nb.run_cell(1)
    selectors = ("button.btn-plain", "button.aw-plain", "button.btn-routed", "button.aw-routed")
    for sel in selectors:
        nb.wait_output(1, sel)
    nb.run_cell(2, wait=False)
    page.wait_for_function(
        """() => window.jupyterapp.shell.currentWidget.content.widgets[2].model.executionState === 'running'""")
    for sel in selectors:
        nb.output(1).locator(sel).first.click()
    nb.wait_cell_done(2, timeout=60_000)
    nb.run_cell(3)
    during = json.loads(nb.output_text(2).split("DURING", 1)[1])
    after = json.loads(nb.output_text(3).split("AFTER", 1)[1])
    nb.screenshot("browser-click-while-blocked")
    ran_during = {tag: thread for tag, thread, _ in during}
    for tag in ("button-routed", "anywidget-routed"):
        assert tag in ran_during, f"{tag} did not run while the cell blocked: {during}"
        assert ran_during[tag].startswith("subshell"), f"{tag} ran on {ran_during[tag]}, not a subshell thread"
    assert {t for t, *_ in after} >= {"button-plain", "anywidget-plain", "button-routed", "anywidget-routed"}, after
    sys.stderr.write(f"[browser] clicks during a blocking cell: {during}\n[browser] after it: {after}\n")


# ------------------------------------------------------------------------------------------ nbdurable widgets


def test_run_graph_statuses_and_restore(open_notebook: OpenNotebook, page: Any) -> None:
    """`%durable graph` after cells ran: one node per step with its status (completed, failed); selecting a
    node shows its details; the timeline has a bar per step. After a kernel restart and Run All, the
    completed cells are restored and their nodes say so."""
    nb = open_notebook("graph_statuses", [
        "%load_ext nbdurable",
        "%durable graph",
        "import nbdurable as nbd\nbase = 20",
        "answer = base * 2 + 2",
        "raise ValueError('boom on purpose')",
    ])
    nb.run_cell(0)
    nb.run_cell(1)
    graph = graph_in(nb, 1)
    nb.run_cell(2)
    nb.run_cell(3)
    nb.run_cell(4)
    nb.wait_output_text(4, "boom on purpose")
    completed = wait_node_status(graph, "answer = base * 2 + 2", "completed")
    wait_node_status(graph, "import nbdurable", "completed")
    failed = wait_node_status(graph, "raise ValueError", "failed")
    assert graph.get_attribute("data-run-id"), "div.nbd-graph has no data-run-id"
    # `answer` reads `base`: a data-dependency edge into the node of `answer = ...`.
    assert graph.locator(f'path.nbd-edge[data-target="{completed.get_attribute("data-node-id")}"]').count() >= 1
    nb.screenshot("browser-graph-statuses")

    # Selecting a node shows its source and variables; the failed one its error.
    node_id = completed.get_attribute("data-node-id")
    completed.click()
    details = nb.output(1).locator(f'div.nbd-details[data-node-id="{node_id}"]')
    details.wait_for(state="visible")
    assert "answer = base * 2 + 2" in details.inner_text() and "answer" in details.inner_text()
    failed.click()
    failed_details = nb.output(1).locator(f'div.nbd-details[data-node-id="{failed.get_attribute("data-node-id")}"]')
    failed_details.wait_for(state="visible")
    assert "ValueError" in failed_details.inner_text() and "boom on purpose" in failed_details.inner_text()
    nb.screenshot("browser-graph-details")
    # The timeline (Gantt) tab: one bar per step that started.
    nb.output(1).locator('.nbd-tab[data-tab="gantt"]').click()
    nb.output(1).locator(f'div.nbd-gantt .nbd-bar[data-node-id="{node_id}"][data-status="completed"]').wait_for(
        state="visible")
    nb.screenshot("browser-graph-gantt")

    # Restart, Run All: cells 2-3 restored from the failed run, cell 4 fails again.
    nb.restart_kernel()
    nb.run_all(timeout=LOAD_TIMEOUT)
    graph = graph_in(nb, 1)
    wait_node_status(graph, "answer = base * 2 + 2", "restored")
    wait_node_status(graph, "import nbdurable", "restored")
    wait_node_status(graph, "raise ValueError", "failed")
    nb.screenshot("browser-graph-restored")


SLOW_CELL = "slow_total = 0\nfor i in range(30):\n    time.sleep(0.2)\n    slow_total += i"


def test_run_graph_updates_live(open_notebook: OpenNotebook, page: Any) -> None:
    """A ~6 s cell: its node shows `running` while the cell runs (observed while the frontend still shows
    the cell executing), then `completed`."""
    nb = open_notebook("graph_live", ["%load_ext nbdurable", "%durable graph", "import time", SLOW_CELL])
    nb.run_cell(0)
    nb.run_cell(1)
    graph_in(nb, 1)
    nb.run_cell(2)
    nb.run_cell(3, wait=False)
    # One check, in the page, of both: a running node in the graph and the cell still executing.
    seen = page.wait_for_function("""() => {
        const node = document.querySelector('.jp-OutputArea div.nbd-graph g.nbd-node[data-status="running"]');
        if (!node) return false;
        const cell = window.jupyterapp.shell.currentWidget.content.widgets[3];
        return {id: node.getAttribute('data-node-id'), text: node.textContent, cell: cell.model.executionState}; }""",
                                  timeout=30_000).json_value()
    nb.screenshot("browser-graph-live-running")
    assert seen["cell"] == "running", f"the running node appeared only after the cell finished: {seen}"
    assert "slow_total" in seen["text"], seen
    nb.wait_cell_done(3, timeout=60_000)
    nb.output(1).locator(f'g.nbd-node[data-node-id="{seen["id"]}"][data-status="completed"]').wait_for(state="attached")
    nb.screenshot("browser-graph-live-completed")


APPROVAL_CELL = ('import nbdurable as nbd\n'
                 'decision = nbd.wait_for_event("approval", timeout="5m")\n'
                 'print("received:", __import__("json").dumps(decision, sort_keys=True))')


def test_approval_widget_releases_the_waiting_cell(open_notebook: OpenNotebook, page: Any) -> None:
    """`nbd.wait_for_event("approval")` shows the approval widget; Approve (with a JSON payload) sends the
    event from the kernel's subshell while the cell waits, and the cell receives it."""
    nb = open_notebook("approval", ["%load_ext nbdurable", APPROVAL_CELL])
    nb.run_cell(0)
    nb.run_cell(1, wait=False)
    widget = nb.wait_output(1, 'div.nbd-approval[data-event="approval"][data-state="waiting"]', timeout=LOAD_TIMEOUT)
    assert nb.is_running(1)
    widget.locator("textarea.nbd-payload").fill('{"comment": "ship it"}')
    nb.screenshot("browser-approval-waiting")
    started = time.monotonic()
    widget.locator("button.nbd-approve").click()
    nb.wait_output_text(1, "received:", timeout=60_000)
    released_s = time.monotonic() - started
    nb.wait_cell_done(1)
    text = nb.output_text(1)
    assert '"approved": true' in text and '"comment": "ship it"' in text, text
    nb.output(1).locator('div.nbd-approval[data-state="received"]').wait_for(state="attached")
    nb.screenshot("browser-approval-received")
    sys.stderr.write(f"[browser] approval released the cell {released_s:.2f}s after the click\n")


HISTORY_NOTEBOOK = [
    "%load_ext nbdurable",
    "price = 10\ntotal = price * 3",
    "%durable new",
    "price = 12\ntotal = price * 3",
    "%durable history",
]


def test_history_explorer_filters_shows_a_run_and_compares_two(open_notebook: OpenNotebook, page: Any) -> None:
    """`%durable history`: the runs are listed, a status filter narrows them, a clicked run shows its graph,
    and two ticked runs are compared with the changed step marked."""
    nb = open_notebook("history", HISTORY_NOTEBOOK)
    for index in range(len(HISTORY_NOTEBOOK)):
        nb.run_cell(index)
    explorer = nb.wait_output(4, "div.nbd-history", timeout=LOAD_TIMEOUT)
    rows = explorer.locator("tr.nbd-run")
    rows.nth(1).wait_for(state="attached", timeout=LOAD_TIMEOUT)
    assert rows.count() == 2, "the first run (ended by %durable new) and the running one"
    explorer.locator("select.nbd-filter-status").select_option("completed")
    page.wait_for_function("el => el.querySelectorAll('tr.nbd-run').length === 1", arg=explorer.element_handle(),
                           timeout=LOAD_TIMEOUT)
    explorer.locator("select.nbd-filter-status").select_option("")
    page.wait_for_function("el => el.querySelectorAll('tr.nbd-run').length === 2", arg=explorer.element_handle(),
                           timeout=LOAD_TIMEOUT)
    rows.nth(1).click()
    graph = explorer.locator("div.nbd-history-graph div.nbd-graph")
    graph.locator('g.nbd-node[data-status="completed"]').first.wait_for(state="attached", timeout=LOAD_TIMEOUT)
    assert graph.locator("g.nbd-node").count() == 1
    nb.screenshot("browser-history-run")
    for index in range(2):
        rows.nth(index).locator("input.nbd-compare-pick").check()
    compare = explorer.locator("div.nbd-compare")
    compare.locator('tr.nbd-step-diff[data-differs="true"]').first.wait_for(state="attached", timeout=LOAD_TIMEOUT)
    assert compare.locator('tr.nbd-step-diff[data-differs="true"]').count() == 1, "only the edited cell differs"
    nb.screenshot("browser-history-compare")


def test_history_explorer_forks_a_run_from_a_selected_cell(open_notebook: OpenNotebook, lab_server: LabServer,
                                                          page: Any) -> None:
    """The explorer's Fork button on a selected cell starts `nbdurable fork RUN --from-cell N`: after a refresh
    the fork is listed, says how it ended, and its graph's header names the run it came from."""
    source = lab_server.write_notebook("forkme", ["price = 10", "total = price * 3\nprint('total', total)"])
    store = lab_server.root / "fork-store"  # a store of its own: the server's is shared by the module's tests
    ran = subprocess.run([sys.executable, "-m", "nbdurable", "run", str(source), "--no-progress", "--store",
                          str(store)], env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    nb = open_notebook("explore", [f"import nbdurable as nbd\nnbd.HistoryExplorer(store={str(store)!r})"])
    nb.run_cell(0)
    explorer = nb.wait_output(0, "div.nbd-history", timeout=LOAD_TIMEOUT)
    rows = explorer.locator("tr.nbd-run")
    rows.first.wait_for(state="attached", timeout=LOAD_TIMEOUT)
    assert rows.count() == 1, "the headless run"
    rows.first.click()
    graph = explorer.locator("div.nbd-history-graph div.nbd-graph")
    graph.locator("g.nbd-node").nth(1).wait_for(state="attached", timeout=LOAD_TIMEOUT)
    assert explorer.locator("button.nbd-fork").is_disabled(), "no cell selected yet"
    graph.locator("g.nbd-node").nth(1).click()
    fork = explorer.locator("button.nbd-fork", has_text="Fork from cell 2")
    fork.wait_for(state="visible", timeout=LOAD_TIMEOUT)
    fork.click()
    action = explorer.locator("div.nbd-action")
    action.wait_for(state="visible", timeout=LOAD_TIMEOUT)
    assert "fork of" in action.inner_text() and "from cell 2" in action.inner_text()
    deadline = time.monotonic() + 120
    while "exit " not in action.inner_text() and time.monotonic() < deadline:  # the fork runs its own kernel
        time.sleep(2)
        refresh = explorer.locator("button.nbd-refresh")
        if refresh.is_enabled():
            refresh.click()
    assert "exit 0: completed:" in action.inner_text(), action.inner_text()
    assert rows.count() == 2
    nb.screenshot("browser-history-fork")
    rows.first.click()  # newest first: the fork
    header = explorer.locator("div.nbd-history-graph div.nbd-graph div.nbd-header")
    header.filter(has_text="forked from").wait_for(state="attached", timeout=LOAD_TIMEOUT)
    assert "after cell 1" in header.inner_text()


REPORT_NOTEBOOK = [
    "import nbdurable as nbd\nrows = list(range(10))",
    "total = sum(rows)",
    "@nbd.step\ndef square(x):\n    return x * x\nsquares = [square(r) for r in rows]",
    "print(total, sum(squares))",
]


def test_html_report_renders_from_file(tmp_path: Path, page: Any) -> None:
    """`nbdurable report RUN_ID -o run.html` of a headless run, opened from file://, draws a node per cell
    (no server, no network: everything is inlined)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in REPORT_NOTEBOOK]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "report_nb.ipynb"
    nbformat.write(nb, path)
    store = tmp_path / "store"
    env = subprocess_env()
    cli = [sys.executable, "-m", "nbdurable"]
    run = subprocess.run([*cli, "run", str(path), "--store", str(store), "--no-progress"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    runs = subprocess.run([*cli, "runs", "--store", str(store)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    lines = runs.stdout.splitlines()
    header = next((i for i, line in enumerate(lines) if "run_id" in line.split()), None)
    assert runs.returncode == 0 and header is not None and len(lines) > header + 1, runs.stdout + runs.stderr
    run_id = lines[header + 1].split()[0]
    out = tmp_path / "run.html"
    report = subprocess.run([*cli, "report", run_id, "--store", str(store), "-o", str(out)],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert report.returncode == 0 and out.exists(), report.stdout + report.stderr
    page.goto(out.as_uri(), wait_until="load", timeout=LOAD_TIMEOUT)
    graph = page.locator(f'div.nbd-graph[data-run-id="{run_id}"]').first
    graph.wait_for(state="visible")
    nodes = graph.locator("g.nbd-node")
    nodes.first.wait_for(state="visible")
    assert nodes.count() == len(REPORT_NOTEBOOK), node_statuses(graph)
    assert set(node_statuses(graph).values()) == {"completed"}, node_statuses(graph)
    assert graph.locator("path.nbd-edge[data-source][data-target]").count() >= 3  # rows -> total, squares -> print
    assert page.locator("div.nbd-gantt .nbd-bar[data-node-id]").count() == len(REPORT_NOTEBOOK)
    # The cell with ten child steps: "10/10 steps", expanded by a click to its children.
    parent = graph.locator("g.nbd-node", has_text="def square(x):").first
    assert "10/10" in parent.text_content()
    parent.locator(".nbd-expand").click()
    children = graph.locator('.nbd-child[data-ordinal][data-status="completed"]')
    children.first.wait_for(state="visible")
    assert children.count() == 10
    # The graph grows with its expanded node: the last node stays whole, in a short window too.
    page.set_viewport_size({"width": 1000, "height": 600})
    visible = graph.evaluate("""g => {
      const box = g.querySelector('.nbd-graph-scroll'), nodes = g.querySelectorAll('g.nbd-node');
      const last = nodes[nodes.length - 1].getBoundingClientRect(), b = box.getBoundingClientRect();
      return last.bottom <= b.bottom + 1 && box.scrollHeight <= box.clientHeight + 1;
    }""")
    assert visible, "the report's graph cuts its last node"
    # A click on a node shows its details (source, variables) without any kernel.
    node = graph.locator("g.nbd-node", has_text="total = sum(rows)").first
    node.click()
    details = page.locator(f'div.nbd-details[data-node-id="{node.get_attribute("data-node-id")}"]')
    details.wait_for(state="visible")
    assert "total = sum(rows)" in details.inner_text() and "int" in details.inner_text()
    screenshot(page, "browser-report")  # (the page fixture fails the test if the page reached the network)



LAYOUT_NOTEBOOK = [
    "%load_ext nbdurable",
    "%durable graph",
    "# An expensive load\nimport time\ntime.sleep(0.3)\ndata = list(range(5))",
    ("import nbdurable as nbd\ncalls = []\n"
     "@nbd.step(retry=nbd.RetryPolicy(max_attempts=3, initial_interval='10ms'))\n"
     "def flaky_fetch(i):\n    calls.append(i)\n"
     "    if len(calls) < 3:\n        raise ConnectionError(f'connection reset by peer {len(calls)}')\n    return i\n"
     "fetched = flaky_fetch(1)"),
    "x = 1; y = x + 1",
    "total = sum(data) + fetched",
    "z = y * 2",
    "w = z + total",
    "# The last cell\nfinal = w + 1",
]

# For every details table header: whether it is on one line, its text whole and inside the details panel and
# the table's scroll box; for the graph: whether its last node lies inside the visible part of its container.
LAYOUT_PROBE = """out => {
  const graph = out.querySelector('div.nbd-graph');
  const scroll = graph.querySelector('.nbd-graph-scroll');
  const nodes = Array.from(graph.querySelectorAll('g.nbd-node'));
  const last = nodes[nodes.length - 1].getBoundingClientRect(), box = scroll.getBoundingClientRect();
  const details = out.querySelector('div.nbd-details'), dbox = details.getBoundingClientRect();
  const headers = Array.from(details.querySelectorAll('th')).map(th => {
    const range = document.createRange();
    range.selectNodeContents(th);
    const lines = new Set(Array.from(range.getClientRects()).map(r => Math.round(r.top))).size;
    const r = th.getBoundingClientRect(), tbox = th.closest('.nbd-table-box') || details;
    const t = tbox.getBoundingClientRect();
    return {text: th.textContent, lines: lines, clipped: th.scrollWidth > th.clientWidth + 1
            || r.right > Math.min(dbox.right, t.right) + 1
            || r.left < Math.max(dbox.left, t.left) - 1};
  });
  return {
    nodes: nodes.length,
    header: graph.querySelector('.nbd-header-counts').textContent,
    lastVisible: last.top >= box.top - 1 && last.bottom <= box.bottom + 1
                 && scroll.scrollHeight <= scroll.clientHeight + 1,
    labels: nodes.map(n => n.querySelector('.nbd-node-label').textContent),
    numbers: nodes.map(n => n.querySelector('.nbd-node-ord').textContent),
    headers: headers,
  };
}"""


@pytest.mark.parametrize("width", [1000, 1400])
def test_run_graph_layout_fits_at_common_widths(open_notebook: OpenNotebook, page: Any, width: int) -> None:
    """A 7-step run at 1000 and 1400 px: the graph grows to show its last node whole; nodes are labelled by
    their header comments and numbered by cell; the details panel's table headers are neither clipped nor
    wrapped mid-word; a child step's details list its failed attempts."""
    page.set_viewport_size({"width": width, "height": 900})
    nb = open_notebook(f"graph_layout_{width}", LAYOUT_NOTEBOOK)
    nb.run_cell(0)
    nb.run_cell(1)
    graph = graph_in(nb, 1)
    for k in range(2, len(LAYOUT_NOTEBOOK)):
        nb.run_cell(k)
    wait_node_status(graph, "The last cell", "completed")
    out = nb.output(1)
    # the cell with the retried child step: expanded, the child clicked: its details
    node = graph.locator("g.nbd-node", has_text="import nbdurable as nbd").first
    node.locator(".nbd-node-label").click()
    node.locator(".nbd-expand").click()
    child = graph.locator("g.nbd-child").first
    child.wait_for(state="visible")
    child.click()
    child_details = out.locator(f'div.nbd-details[data-node-id="{child.get_attribute("data-node-id")}"]')
    child_details.wait_for(state="visible")
    text = child_details.inner_text()
    assert "connection reset by peer 1" in text and "connection reset by peer 2" in text, text
    probe_child = out.evaluate(LAYOUT_PROBE)
    node.locator(".nbd-node-label").click()  # back to the cell: its child-step table
    out.locator(f'div.nbd-details[data-node-id="{node.get_attribute("data-node-id")}"]').wait_for(state="visible")
    probe = out.evaluate(LAYOUT_PROBE)
    nb.screenshot(f"browser-graph-layout-{width}")
    out.locator("div.nbd-details table.nbd-detail-children").scroll_into_view_if_needed()
    nb.screenshot(f"browser-graph-layout-details-{width}")
    assert probe["nodes"] == 7 and probe["header"].startswith("7 steps"), probe
    assert probe["lastVisible"], probe
    assert probe["labels"][0] == "An expensive load" and probe["labels"][-1] == "The last cell", probe["labels"]
    assert probe["numbers"] == [f"#{k}" for k in range(1, 8)], probe["numbers"]
    for headers in (probe["headers"], probe_child["headers"]):
        bad = [h for h in headers if h["lines"] != 1 or h["clipped"]]
        assert headers and not bad, bad
    assert {"Duration", "Attempts", "Error"} <= {h["text"] for h in probe["headers"]}, probe["headers"]


EXPLORER_LAYOUT_NOTEBOOK = [
    "import pathlib, subprocess, sys, tempfile, nbformat\n"
    "import nbdurable as nbd\n"
    "work = pathlib.Path(tempfile.mkdtemp()) / 'quarterly-reports-for-the-pricing-team' / 'european-region'\n"
    "work.mkdir(parents=True)\n"
    "cells = [nbformat.v4.new_code_cell('region = \"eu\"\\nmarkup = 1.1', metadata={'tags': ['parameters']}),\n"
    "         nbformat.v4.new_code_cell('base = list(range(1000))'),\n"
    "         nbformat.v4.new_code_cell('import time\\ntime.sleep(0.2)\\ntotal = sum(base)'),\n"
    "         nbformat.v4.new_code_cell('priced = [x * markup for x in base]\\nrevenue = round(sum(priced), 1)'),\n"
    "         nbformat.v4.new_code_cell('summary = {\"region\": region, \"revenue\": revenue}')]\n"
    "pricing = work / 'pricing-model-with-a-rather-long-name.ipynb'\n"
    "nbformat.write(nbformat.v4.new_notebook(cells=cells), pricing)\n"
    "for markup in ('1.1', '1.25'):\n"
    "    subprocess.run([sys.executable, '-m', 'nbdurable', 'run', str(pricing), '--reuse', '--no-progress',\n"
    "                    '-p', 'markup', markup, '-p', 'region', 'european-union-and-associated-states',\n"
    "                    '--store', str(work / '.nbdurable')], check=True, capture_output=True)",
    "nbd.HistoryExplorer(store=work / '.nbdurable')",
]

# Every cell of the explorer's tables (runs, comparison): its text not cut (scrollWidth within clientWidth),
# its box inside the explorer and the output area; no ellipsis without a tooltip; no table wider than its box.
EXPLORER_PROBE = """explorer => {
  const area = explorer.closest('.jp-OutputArea-output') || explorer;
  const box = explorer.getBoundingClientRect(), abox = area.getBoundingClientRect();
  const right = Math.min(box.right, abox.right) + 1;
  const cells = Array.from(explorer.querySelectorAll('table th, table td')).filter(c => c.offsetParent !== null);
  const bad = cells.filter(c => {
    const r = c.getBoundingClientRect(), style = getComputedStyle(c);
    const ellipsis = style.textOverflow === 'ellipsis' && c.scrollWidth > c.clientWidth && !c.title;
    return c.scrollWidth > c.clientWidth + 1 || r.right > right || ellipsis;
  }).map(c => c.textContent);
  const wide = Array.from(explorer.querySelectorAll('table')).filter(t => t.getBoundingClientRect().right > right)
    .map(t => t.className);
  return {cells: cells.length, bad: bad, wide: wide, scrolls: explorer.scrollWidth > explorer.clientWidth + 1,
          notebooks: Array.from(explorer.querySelectorAll('td.nbd-notebook-cell')).map(c => [c.textContent, c.title]),
          steps: Array.from(explorer.querySelectorAll('tr.nbd-run td.nbd-steps-cell')).map(c => c.textContent)};
}"""


@pytest.mark.parametrize("width", [1000, 1400])
def test_history_explorer_fits_beside_the_file_browser(open_notebook: OpenNotebook, page: Any, width: int) -> None:
    """The explorer at 1000 and 1400 px with JupyterLab's file browser open: no clipped cell in the runs table
    or the comparison (their cells wrap), notebooks shown short with the full path as a tooltip, and a filter
    it cannot read (`markup>>1`) is a red error line, not "No runs match"."""
    page.set_viewport_size({"width": width, "height": 900})
    nb = open_notebook(f"explorer_layout_{width}", EXPLORER_LAYOUT_NOTEBOOK)
    page.evaluate("() => window.jupyterapp.commands.execute('filebrowser:activate')")
    page.locator("#filebrowser").wait_for(state="visible", timeout=LOAD_TIMEOUT)
    nb.run_cell(0, timeout=120_000)
    nb.run_cell(1)
    explorer = nb.wait_output(1, "div.nbd-history", timeout=LOAD_TIMEOUT)
    rows = explorer.locator("tr.nbd-run")
    rows.nth(1).wait_for(state="attached", timeout=LOAD_TIMEOUT)
    for index in range(2):
        rows.nth(index).locator("input.nbd-compare-pick").check()
    compare = explorer.locator("div.nbd-compare")
    compare.locator("tr.nbd-var-diff").first.wait_for(state="attached", timeout=LOAD_TIMEOUT)
    probe = explorer.evaluate(EXPLORER_PROBE)
    nb.screenshot(f"browser-history-layout-{width}")
    compare.scroll_into_view_if_needed()
    nb.screenshot(f"browser-history-layout-compare-{width}")
    assert probe["cells"] > 20 and probe["bad"] == [] and probe["wide"] == [] and not probe["scrolls"], probe
    assert any("restored" in text for text in probe["steps"]), probe["steps"]
    for label, title in probe["notebooks"]:
        assert label == "pricing-model-with-a-rather-long-name.ipynb", label
        assert title.startswith("/") and title.endswith("/european-region/pricing-model-with-a-rather-long-name.ipynb")

    explorer.locator("input.nbd-filter-params").fill("markup>>1")
    error = explorer.locator(".nbd-history-error")
    error.wait_for(state="visible", timeout=LOAD_TIMEOUT)
    assert "bad parameter filter 'markup>>1'" in error.inner_text()
    assert error.evaluate("e => getComputedStyle(e).color") == "rgb(179, 38, 30)", "the red error line"
    nb.screenshot(f"browser-history-filter-error-{width}")
