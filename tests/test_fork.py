"""`nbdurable fork` / `rerun` with real kernels and headless runs: cells before N restored exactly as recorded
(nothing of them executes), N onwards executed; new parameters from N; an edited notebook; lineage in the
journal, the catalog, `show` and the run graph."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from nbdurable.store import Store
from nbdurable.widgets.graph import build_graph

from helpers import executions, run_cli

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def _cell(label: str, body: str, **meta: object) -> nbformat.NotebookNode:
    source = f"with open('counter.txt', 'a') as _f:\n    _f.write({label!r} + '\\n')\n{body}"
    return nbformat.v4.new_code_cell(source, metadata=dict(meta))


def _notebook(path: Path, cells: list[nbformat.NotebookNode]) -> Path:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _pipeline(tmp_path: Path) -> Path:
    return _notebook(tmp_path / "nb.ipynb", [
        nbformat.v4.new_code_cell("scale = 2", metadata={"tags": ["parameters"]}),
        _cell("load", "data = list(range(5))\nprint('loaded', len(data))"),
        _cell("prep", "prepared = [d * scale for d in data]\nalias = prepared"),
        _cell("total", "total = sum(prepared) + 1000 * scale\nprint('total', total)"),
    ])


def _run_ids(tmp_path: Path) -> list[str]:
    return Store.open(tmp_path / ".nbdurable").run_ids()


def _printed(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return ["".join(o.get("text", "")).strip() for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.get("output_type") == "stream"]


def test_fork_with_new_parameters_restores_before_n_and_executes_from_n(tmp_path: Path) -> None:
    nb = _pipeline(tmp_path)
    first = run_cli("run", nb.name, "-p", "scale", "2", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (source,) = _run_ids(tmp_path)
    # cells of the run: 1 parameters, 2 injected parameters, 3 load, 4 prep, 5 total
    forked = run_cli("fork", source[:-2], "out.ipynb", "--from-cell", "4", "-p", "scale", "3", "--no-progress",
                     cwd=tmp_path)
    assert forked.returncode == 0, forked.stderr
    assert f"forked from run {source} after cell 3" in forked.stdout
    assert executions(tmp_path / "counter.txt") == ["load", "prep", "total", "prep", "total"], "load is restored"
    # `data` was restored as recorded; the new scale applies from cell 4 on: prepared = [0, 3, 6, 9, 12]
    assert _printed(tmp_path / "out.ipynb") == ["loaded 5", "total 3030"]
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    injected = [c for c in out.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 2 and "scale = 3" in injected[1].source and "applied from cell 4" in injected[1].source
    fork = _run_ids(tmp_path)[-1]
    head = Store.open(tmp_path / ".nbdurable").journal_head(fork) or {}
    assert (head["forked_from"], head["forked_at_cell"], head["params"]) == (source, 3, {"scale": 3})
    show = run_cli("show", fork, cwd=tmp_path)
    assert f"forked from {source} after cell 3" in show.stdout, show.stdout
    graph = build_graph(Store.open(tmp_path / ".nbdurable"), fork)
    assert graph["run"]["forked_from"] == source and graph["run"]["forked_at_cell"] == 3
    statuses = [n["status"] for n in graph["nodes"]]
    assert statuses == ["restored", "restored", "restored", "completed", "completed", "completed"]
    # the run graph's header says it (the report's own script, in a fake DOM)
    report = run_cli("report", fork, "-o", "fork.html", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    node = shutil.which("node")
    if node is not None:
        js = Path(__file__).parent / "js" / "render_check.js"
        check = subprocess.run([node, str(js), "report", str(tmp_path / "fork.html")], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0, check.stderr
        assert f"forked from {source} after cell 3" in json.loads(check.stdout)["initial"]["graph"]["header"]


def test_fork_of_an_edited_notebook_and_its_refusals(tmp_path: Path) -> None:
    nb = _pipeline(tmp_path)
    assert run_cli("run", nb.name, "--no-progress", cwd=tmp_path).returncode == 0
    (source,) = _run_ids(tmp_path)
    edited = nbformat.read(nb, as_version=4)
    edited.cells[3] = _cell("total2", "total = -sum(prepared)\nprint('total', total)")
    nbformat.write(edited, tmp_path / "edited.ipynb")
    forked = run_cli("fork", source, "out.ipynb", "--from-cell", "4", "--notebook", "edited.ipynb", "--no-progress",
                     cwd=tmp_path)
    assert forked.returncode == 0, forked.stderr
    assert executions(tmp_path / "counter.txt") == ["load", "prep", "total", "total2"]
    assert _printed(tmp_path / "out.ipynb") == ["loaded 5", "total -20"]
    # an edit before N: the recorded state cannot stand for it
    edited.cells[2] = _cell("prep2", "prepared = []\nalias = prepared")
    nbformat.write(edited, tmp_path / "edited.ipynb")
    refused = run_cli("fork", source, "--from-cell", "4", "--notebook", "edited.ipynb", "--no-progress", cwd=tmp_path)
    assert refused.returncode == 2 and "cell 3 of" in refused.stderr and "fork from cell 3" in refused.stderr
    beyond = run_cli("fork", source, "--from-cell", "9", "--no-progress", cwd=tmp_path)
    assert beyond.returncode == 2 and "has 4 cell(s)" in beyond.stderr
    lease = Store.open(tmp_path / ".nbdurable").acquire_lease(source)  # as if its process still recorded it
    try:
        live = run_cli("fork", source, "--from-cell", "2", "--no-progress", cwd=tmp_path)
    finally:
        lease.release()
    assert live.returncode == 2 and "still being recorded" in live.stderr


def test_rerun_runs_the_same_inputs_again_and_from_a_cell(tmp_path: Path) -> None:
    nb = _pipeline(tmp_path)
    assert run_cli("run", nb.name, "out.ipynb", "-p", "scale", "5", "--no-progress", cwd=tmp_path).returncode == 0
    (source,) = _run_ids(tmp_path)
    again = run_cli("rerun", source, "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert executions(tmp_path / "counter.txt") == ["load", "prep", "total"] * 2
    assert _printed(tmp_path / "out.ipynb") == ["loaded 5", "total 5050"], "the run's own output is written again"
    tail = run_cli("rerun", source, "tail.ipynb", "--from-cell", "5", "--no-progress", cwd=tmp_path)
    assert tail.returncode == 0, tail.stderr
    assert executions(tmp_path / "counter.txt")[6:] == ["total"]
    assert _printed(tmp_path / "tail.ipynb") == ["loaded 5", "total 5050"]
    runs = Store.open(tmp_path / ".nbdurable").catalog().query(
        "SELECT forked_from, forked_at_cell, status, params FROM runs ORDER BY run_id")
    assert list(runs.forked_at_cell.fillna(-1).astype(int)) == [-1, 0, 4]
    assert list(runs.forked_from.fillna("")) == ["", source, source] and set(runs.status) == {"completed"}
