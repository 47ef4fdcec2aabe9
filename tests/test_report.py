"""The HTML report (``nbdurable report``) and the graph renderers it inlines (``widgets/static/graph_*.js``).

A real notebook runs headless twice (a failed run, then its resume): the reports of both runs must be one
self-contained file (no network reference), embed the run's GraphData (run id, node ids, statuses) and keep
hostile text (``</script>``, ``<``, ``&``, quotes) in the data, never in the markup. The JavaScript is checked
with node: syntax (``node --check``), and rendering in the small fake DOM of ``tests/js/fakedom.js`` (no
innerHTML; select, expand, live re-render, timeline, cleanup; the report's own inline script). Chromium
opens the report in the browser tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from nbdurable.report import report_html, script_json
from nbdurable.widgets import GRAPH_SCRIPTS, static_text

from graph_fixture import STATUSES, assert_covers_statuses, sample_graph

# the module's runs: two headless runs of a notebook, made once (so its tests stay on one xdist worker)
pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.xdist_group("report")]

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "nbdurable" / "widgets" / "static"
JS = Path(__file__).parent / "js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")

HOSTILE = "</script><script>window.__pwned = 1</script> & <b>bold</b> \"double\" 'single' <!--"
CELLS = [
    f"import pathlib\nimport nbdurable as nbd\nHOSTILE = {HOSTILE!r}",
    "@nbd.step\ndef work(i):\n    return i * 2\n\nresults = [work(i) for i in range(3)]",
    "FLAKY = pathlib.Path('flaky.txt')\n\n"
    "@nbd.step(retry=nbd.RetryPolicy(max_attempts=3, initial_interval=0))\n"
    "def flaky():\n    n = int(FLAKY.read_text()) if FLAKY.exists() else 0\n    FLAKY.write_text(str(n + 1))\n"
    "    if n < 1:\n        raise ConnectionError('reset </script>')\n    return n\n\nflaky_result = flaky()",
    "total = sum(results) + flaky_result\nprint(total, HOSTILE)",
    "if not pathlib.Path('fixed.flag').exists():\n    raise ValueError('not ready: </script> & <x>')\ndone = True",
    "print('end', total)",
]


def nbd(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBDURABLE_")}
    return subprocess.run([sys.executable, "-m", "nbdurable", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_id_of(proc: subprocess.CompletedProcess[str]) -> str:
    match = re.search(r"^\w+: run ([^\s:]+)", proc.stdout, re.M)
    assert match, proc.stdout + proc.stderr
    return match.group(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A failed headless run (the 5th cell raises) and its resume, which completes."""
    workdir = tmp_path_factory.mktemp("report")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, workdir / "hostile.ipynb")
    first = nbd("run", "hostile.ipynb", "--no-progress", cwd=workdir)
    assert first.returncode == 1, first.stdout + first.stderr
    (workdir / "fixed.flag").touch()
    second = nbd("run", "hostile.ipynb", "--no-progress", cwd=workdir)
    assert second.returncode == 0, second.stdout + second.stderr
    return {"dir": workdir, "failed": run_id_of(first), "completed": run_id_of(second)}


def embedded(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="nbd-graph-data">(.*?)</script>', page, re.S)
    assert match, "no embedded GraphData"
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def assert_self_contained(page: str) -> None:
    markup = re.sub(r'(<script type="application/json" id="nbd-graph-data">).*?(</script>)', r"\1\2", page, flags=re.S)
    assert len(markup) < len(page) - 100  # the data element was found (its text is data: it may say "fetch(")
    assert not re.search(r"""\b(?:src|href|action|poster|srcset)\s*=\s*["']?\s*(?:https?:)?//""", markup, re.I)
    assert not re.search(r"<link\b|<iframe\b|<img\b|@import|url\(|\bfetch\(|XMLHttpRequest|\bimport\s*\(", markup, re.I)
    assert not re.search(r"<script[^>]*\bsrc\s*=", markup, re.I)
    # exactly the two script elements of the template: nothing in the data opened or closed one
    assert len(re.findall(r"<script\b", page, re.I)) == 2
    assert len(re.findall(r"</script", page, re.I)) == 2
    assert "<!--" not in page


def test_report_of_a_failed_run(runs: dict[str, Any]) -> None:
    proc = nbd("report", runs["failed"], "-o", "failed.html", cwd=runs["dir"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = runs["dir"] / "failed.html"
    assert proc.stdout.strip() == str(path.resolve())
    page = path.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert f"<title>nbdurable run {runs['failed']}" in page
    assert "window.__pwned" not in page.replace("window.__pwned = 1\\u003c", "")  # only escaped, inside the data
    data = embedded(page)
    assert data["version"] == 1 and data["run"]["run_id"] == runs["failed"] and data["run"]["status"] == "failed"
    statuses = {n["id"]: n["status"] for n in data["nodes"]}
    assert all(re.fullmatch(r"[sp]\d+", i) for i in statuses)
    for node_id, status in statuses.items():  # node ids and statuses are in the page, escaped as JSON
        assert f'"id":"{node_id}"' in page and f'"status":"{status}"' in page
    assert sorted(set(statuses.values())) == ["completed", "failed"]
    first, steps, flaky, _total, failing = data["nodes"]
    assert f"HOSTILE = {HOSTILE!r}" in first["source"]  # the hostile text comes back intact from the escaped JSON
    assert failing["status"] == "failed" and "</script> & <x>" in failing["error"]["evalue"]
    assert "\x1b" not in json.dumps(data)
    assert steps["children"]["total"] == 3 and [c["status"] for c in steps["child_steps"]] == ["completed"] * 3
    assert flaky["child_steps"][0]["attempts"] == 2  # the flaky step failed once, then passed
    assert {(e["source"], e["target"]) for e in data["edges"]} >= {(steps["id"], _total["id"]),
                                                                   (flaky["id"], _total["id"])}


def test_report_of_a_resumed_run_and_the_default_file_name(runs: dict[str, Any]) -> None:
    proc = nbd("report", runs["completed"], "--store", ".nbdurable", cwd=runs["dir"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = runs["dir"] / f"{runs['completed']}.html"
    assert proc.stdout.strip() == str(path.resolve())
    page = path.read_text(encoding="utf-8")
    assert_self_contained(page)
    data = embedded(page)
    assert data["run"]["run_id"] == runs["completed"] and data["run"]["resumed_from"] == runs["failed"]
    assert [n["status"] for n in data["nodes"]] == ["restored"] * 4 + ["completed"] * 2
    assert all(n["restored_from"]["run_id"] == runs["failed"] for n in data["nodes"][:4])


def test_unknown_run_missing_store_and_bad_output_are_usage_errors(runs: dict[str, Any]) -> None:
    unknown = nbd("report", "no-such-run", "-o", "x.html", cwd=runs["dir"])
    assert unknown.returncode == 2 and "Error: no run 'no-such-run'" in unknown.stderr, unknown.stderr
    prefix = nbd("report", runs["failed"][:8], "-o", "x.html", cwd=runs["dir"])  # as `show`: whole run ids only
    assert prefix.returncode == 2, prefix.stderr
    no_store = nbd("report", runs["failed"], "-o", "x.html", "--store", "nowhere", cwd=runs["dir"])
    assert no_store.returncode == 2 and "no nbdurable store" in no_store.stderr
    bad_dir = nbd("report", runs["failed"], "-o", "missing/dir/x.html", cwd=runs["dir"])
    assert bad_dir.returncode == 2 and "does not exist" in bad_dir.stderr
    assert not (runs["dir"] / "x.html").exists() and not list(runs["dir"].glob(".*.tmp"))


@needs_node
def test_report_script_runs_in_a_fake_dom(runs: dict[str, Any]) -> None:
    path = runs["dir"] / "fake-dom.html"
    assert nbd("report", runs["failed"], "-o", str(path), cwd=runs["dir"]).returncode == 0
    check = subprocess.run([NODE, str(JS / "render_check.js"), "report", str(path)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stderr
    out = json.loads(check.stdout)
    data = embedded(path.read_text(encoding="utf-8"))
    initial = out["initial"]
    assert initial["graph"]["runId"] == runs["failed"] and initial["graph"]["runStatus"] == "failed"
    assert [(n["id"], n["status"]) for n in initial["nodes"]] == [(n["id"], n["status"]) for n in data["nodes"]]
    assert initial["details"]["nodeId"] == "s1"  # the page opened as report.html#s1
    assert f"HOSTILE = {HOSTILE!r}" in initial["details"]["source"]
    assert [b["id"] for b in initial["bars"]] == [n["id"] for n in data["nodes"]]
    assert (out["afterClick"]["details"]["nodeId"] == data["nodes"][0]["id"]
            and out["hashes"] == ["#" + data["nodes"][0]["id"]])


def test_script_json_cannot_close_its_element() -> None:
    value = {"s": HOSTILE + "\u2028\u2029 </SCRIPT > <!-- -->", "nan": float("nan"), "inf": float("inf"),
             "n": [1, 2.5, None]}
    text = script_json(value)
    assert not re.search(r"[<>&\u2028\u2029]", text)
    assert json.loads(text) == {"s": value["s"], "nan": None, "inf": None, "n": [1, 2.5, None]}


def test_report_html_of_the_fixture() -> None:
    data = sample_graph()
    assert_covers_statuses(data)
    page = report_html(data)
    assert_self_contained(page)
    assert embedded(page) == json.loads(json.dumps(data))
    css = (STATIC / "graph.css").read_text(encoding="utf-8")
    assert page.count(css) == 1 and f"<style>\n{css}\n</style>" in page  # the scripts add no style of their own
    assert ("<title>nbdurable run 20240102-030405-abc123 \u2014 "
            "pipelines/&lt;etl&gt; &amp; &quot;co&quot;.ipynb</title>") in page


@needs_node
def test_javascript_is_valid(tmp_path: Path) -> None:
    from nbdurable.widgets.run_graph import RunGraph

    for name in GRAPH_SCRIPTS:
        text = (STATIC / name).read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|export)\b", text, re.M), f"{name} is concatenated: no import/export"
        proc = subprocess.run([NODE, "--check", str(STATIC / name)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    core = static_text("graph")
    assert core == "\n".join((STATIC / name).read_text(encoding="utf-8") for name in GRAPH_SCRIPTS)
    widget = (STATIC / "run_graph.js").read_text(encoding="utf-8")
    assert RunGraph._esm == core + "\n" + widget and RunGraph._css == (STATIC / "graph.css").read_text(encoding="utf-8")
    module = tmp_path / "run_graph_esm.mjs"
    module.write_text(RunGraph._esm, encoding="utf-8")  # what RunGraph sends as _esm
    script = tmp_path / "graph_script.js"
    script.write_text(core, encoding="utf-8")  # what the report inlines as a classic script
    for path in (module, script):
        proc = subprocess.run([NODE, "--check", str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    inline = re.findall(r"<script>\n(.*?)</script>", report_html(sample_graph()), re.S)
    assert len(inline) == 1
    page_script = tmp_path / "report_inline.js"
    page_script.write_text(inline[0], encoding="utf-8")
    proc = subprocess.run([NODE, "--check", str(page_script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@needs_node
def test_renderers_in_a_fake_dom(tmp_path: Path) -> None:
    data = sample_graph()
    fixture = tmp_path / "graph.json"
    fixture.write_text(json.dumps(data), encoding="utf-8")
    scripts = tmp_path / "graph.js"
    scripts.write_text(static_text("graph"), encoding="utf-8")  # the graph scripts, concatenated in load order
    proc = subprocess.run([NODE, str(JS / "render_check.js"), "fixture", str(scripts),
                           str(STATIC / "run_graph.js"), str(fixture)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr  # fakedom.js throws on innerHTML, so this also says: none used
    out = json.loads(proc.stdout)
    initial = out["initial"]
    assert initial["styles"] == 0  # graph.css comes from the widget's _css (the report's <style>), never the scripts
    assert initial["graph"]["runId"] == data["run"]["run_id"] and initial["graph"]["runStatus"] == "failed"
    assert "sleeping until" in initial["graph"]["header"]  # what its first sleeping or waiting node waits for
    nodes = {n["id"]: n for n in initial["nodes"]}
    assert [(n["id"], n["status"]) for n in initial["nodes"]] == [(n["id"], n["status"]) for n in data["nodes"]]
    assert {n["status"] for n in initial["nodes"]} == set(STATUSES)
    assert initial["edges"] == [[e["source"], e["target"]] for e in data["edges"]]
    assert any("results, </script>&" in t for t in initial["edgeTitles"])
    assert "restored \u00b7 saved 12.3 s" in nodes["s0"]["text"]
    assert "\u25b8 3/8 steps" in nodes["s3"]["text"] and "3 attempts" in nodes["s4"]["text"]
    # numbered by cell (the node's position in the run), not by step ordinal; the ordinal is in the details
    assert [n["text"].split(" | ")[0] for n in initial["nodes"]][:10] == [f"#{k}" for k in range(1, 11)]
    assert nodes["p0"]["text"].startswith("#11 |")
    assert "completed \u00b7 1.5 s" in nodes["s1"]["text"] and "1 m 05 s" in nodes["s9"]["text"]
    assert "will restore" in nodes["p0"]["text"] and "will execute" in nodes["p1"]["text"]  # Run All's plan
    assert initial["children"] == [] and initial["details"]["nodeId"] is None
    assert initial["ganttHidden"] is True and len(initial["bars"]) == 10  # rendered, in the hidden Timeline tab

    selected = out["afterSelect"]
    assert out["saved"] == ["s4"] and "nbd-selected" in {n["id"]: n for n in selected["nodes"]}["s4"]["cls"]
    details = selected["details"]
    assert details["nodeId"] == "s4" and details["attempts"] == 3
    assert "\x1b" not in details["text"] and details["traceback"].endswith("ValueError: </script> & <bad>")
    assert details["source"] == data["nodes"][4]["source"]
    assert "Cell#5" in details["text"] and "Step#4" in details["text"]

    child = out["afterChildClick"]  # clicking a child step shows that child
    assert child["selected"] == "s3/101" and child["details"]["nodeId"] == "s3/101"
    assert "nbd-selected" in child["childCls"] and "fetch(1)" in child["details"]["text"]
    assert child["details"]["attempts"] == 3 and "ConnectionError: reset 1 <&>" in child["details"]["text"]
    assert "Child step offetch all" in child["details"]["text"]
    # the cell's child-step table says what each failed attempt was, even when the step finally succeeded
    cell_text = out["cellDetails"]["text"]
    assert "attempt 1: ConnectionError: reset 1 <&>; attempt 2: ConnectionError: reset 2 <&>" in cell_text
    row = out["afterChildRowClick"]
    assert row["selected"] == "s3/103" and row["details"]["nodeId"] == "s3/103"
    assert "TimeoutError: </script> timed out" in row["details"]["text"]

    expanded = out["afterExpand"]
    assert [(c["ordinal"], c["status"]) for c in expanded["children"]] == [
        (str(c["ordinal"]), c["status"]) for c in data["nodes"][3]["child_steps"]]
    failed_child = expanded["children"][3]["text"]  # its tooltip, then its row
    assert "3 attempts" in failed_child and "</script> timed out" in failed_child and "\u00d73" in failed_child

    updated = out["afterUpdate"]  # a live update keeps the selection and the expanded node
    assert {n["id"]: n["status"] for n in updated["nodes"]}["s3"] == "completed"
    assert len(updated["children"]) == 6 and updated["details"]["nodeId"] == "s4"
    assert "nbd-selected" in {n["id"]: n for n in updated["nodes"]}["s4"]["cls"]
    assert out["afterModelSelect"]["details"]["nodeId"] == "s0"

    tab = out["afterTab"]
    assert tab["ganttHidden"] is False
    assert [b["id"] for b in tab["bars"]] == [n["id"] for n in data["nodes"] if n["started_at"] is not None]
    assert {b["id"]: b["status"] for b in tab["bars"]}["s3"] == "completed"  # as the live update said
    assert tab["childBars"] == 6 and tab["ticks"][0] == "0" and tab["ticks"][-1] == "1 m"
    assert out["afterBarClick"] == {"selected": "s1", "details": "s1"}
    assert out["sameSvgAfterNoop"] is True and out["stylesAfterSecondView"] == 0
    assert "No steps yet." in out["emptyText"] and "No step has started yet." in out["emptyText"]
    assert out["afterCleanup"] == {"listeners": 0, "children": 0}
    assert out["formats"] == ["250 ms", "12.3 s", "2 m 05 s", "2 h 01 m", "512 B", "118 MiB", "red link"]
    big = out["big"]
    assert big["nodes"] == 200 and big["bars"] == 200 and big["edges"] == 199 + 39 and big["ms"] < 3000


def test_graph_height_is_not_bounded() -> None:
    """The graph grows to show every node (the report's and the widget's): no max-height on its box, whose
    last node a fixed height cut in half."""
    css = (STATIC / "graph.css").read_text(encoding="utf-8")
    rule = css[css.index(".nbd-graph-scroll{"):]
    rule = rule[:rule.index("}")]
    assert "max-height" not in rule and "height" not in rule.replace("overflow", ""), rule
