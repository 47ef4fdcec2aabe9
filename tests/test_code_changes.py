"""Code changed under a run (issue 16, item 5): cells before a resumed run's resumption point that changed
since it recorded them are listed (edited, inserted, removed), and `--on-change continue|fail` decides —
in `nbdurable run`/`resume`, the worker and `%durable resume`. Real stores, headless runs, kernels."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from nbdurable.errors import OptionsError
from nbdurable.runtime.cells import source_hash
from nbdurable.runtime.changes import apply_policy, code_changes
from nbdurable.runtime.run import DurableRun
from nbdurable.store import Store

from conftest import run_session
from helpers import executions, run_cli

COUNT = "def count(what):\n    with open('counter.txt', 'a') as f:\n        f.write(what + '\\n')\n"


def recorded_run(tmp_path: Path, cells: list[tuple[str, str]]) -> tuple[Store, str]:
    """A run that recorded these (source, status) top-level steps."""
    store = Store.open(tmp_path / "store")
    run = DurableRun(store, notebook="nb")
    for source, status in cells:
        step = run.begin_step(source=source, source_hash=source_hash(source))
        run.end_step(step, status=status)  # type: ignore[arg-type]
    run.finish("failed")
    return store, run.run_id


def test_edited_inserted_and_removed_cells_before_the_resumption_point_are_listed(tmp_path: Path) -> None:
    store, run_id = recorded_run(tmp_path, [("a = 1", "completed"), ("b = a + 1", "completed"),
                                            ("c = b + 1", "completed"), ("boom()", "failed")])
    same = ["a = 1", "%durable status", None, "b = a + 1", "c = b + 1", "fixed()", "more = 1"]
    assert code_changes(store, run_id, same) == []  # the failed cell fixed, cells added after it: no change
    assert apply_policy(store, run_id, same, "fail") is None

    edited = code_changes(store, run_id, ["a = 1", "b = a + 2", "c = b + 1", "boom()"])
    assert [(c.kind, c.cell, c.step) for c in edited] == [("edited", 1, 2)]
    assert edited[0].describe() == "cell 2 edited (step 2 ran `b = a + 1`, it now reads `b = a + 2`)"
    inserted = code_changes(store, run_id, ["a = 1", "print(a)", "b = a + 1", "c = b + 1", "boom()"])
    assert [(c.kind, c.cell, c.step) for c in inserted] == [("inserted", 1, None)]
    removed = code_changes(store, run_id, ["a = 1", "c = b + 1", "boom()"])
    assert [(c.kind, c.cell, c.step) for c in removed] == [("removed", None, 2)]
    assert "removed (`b = a + 1`)" in removed[0].describe()

    with pytest.raises(OptionsError) as refused:
        apply_policy(store, run_id, ["a = 1", "b = a + 2", "c = b + 1", "boom()"], "fail")
    assert "cell 2 edited" in refused.value.message and "nothing was executed" in refused.value.message
    notice = apply_policy(store, run_id, ["a = 1", "b = a + 2", "c = b + 1", "boom()"], "continue")
    # (cell 1 executes too: these synthetic steps recorded no inputs)
    assert notice is not None and "cell 2 edited" in notice and "2, 3, 4 execute" in notice


def notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("import nbdurable as nbd\n" + COUNT + "count('setup')"),
                *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


@pytest.mark.kernel
@pytest.mark.slow
def test_run_and_resume_apply_on_change_fail_and_continue(tmp_path: Path) -> None:
    fails = "import os\ncount('last')\nassert os.path.exists('fixed'), 'not yet'"
    path = notebook(tmp_path / "flow.ipynb", "a = 1\ncount('a')", "b = a * 2\ncount('b')", "c = 7\ncount('c')", fails)
    first = run_cli("run", path.name, "--no-progress", cwd=tmp_path)
    assert first.returncode == 1, first.output
    [run_id] = Store.open(tmp_path / ".nbdurable").run_ids()
    notebook(path, "a = 5\ncount('a')", "b = a * 2\ncount('b')", "c = 7\ncount('c')", fails)  # cell 2 edited
    (tmp_path / "fixed").touch()

    refused = run_cli("run", path.name, "--on-change", "fail", "--no-progress", cwd=tmp_path)
    assert refused.returncode == 2, refused.output
    assert f"the code changed under run {run_id}" in refused.stderr and "cell 2 edited" in refused.stderr
    assert "nothing was executed" in refused.stderr
    assert executions(tmp_path / "counter.txt") == ["setup", "a", "b", "c", "last"]
    assert Store.open(tmp_path / ".nbdurable").run_ids() == [run_id]  # no run, no kernel
    refused_resume = run_cli("resume", run_id[:12], "--on-change", "fail", "--no-progress", cwd=tmp_path)
    assert refused_resume.returncode == 2 and "cell 2 edited" in refused_resume.stderr

    went_on = run_cli("run", path.name, "--no-progress", cwd=tmp_path)
    assert went_on.returncode == 0, went_on.output
    assert "cell 2 edited" in went_on.stderr and "Continuing (--on-change continue)" in went_on.stderr
    # the edited cell and the one reading what it changed execute; the others are restored
    assert executions(tmp_path / "counter.txt")[5:] == ["a", "b", "last"]


@pytest.mark.kernel
@pytest.mark.slow
def test_the_worker_logs_its_decision_for_a_run_whose_code_changed(tmp_path: Path) -> None:
    path = notebook(tmp_path / "flow.ipynb", "a = 1\ncount('a')", "nbd.sleep(1)\ncount('woke')")
    assert run_cli("run", path.name, "--suspend-after", "0", "--no-progress", cwd=tmp_path).returncode == 3
    [run_id] = Store.open(tmp_path / ".nbdurable").run_ids()
    notebook(path, "print('new')", "a = 1\ncount('a')", "nbd.sleep(1)\ncount('woke')")  # a cell inserted
    import time

    time.sleep(1.2)
    refused = run_cli("worker", "--once", "--on-change", "fail", "--store", ".nbdurable", cwd=tmp_path)
    assert f"run {run_id}: cannot resume it: not resuming: the code changed" in refused.stderr
    assert "cell 2 inserted (`print('new')`)" in refused.stderr and "resumed 0 run(s)" in refused.stderr
    assert executions(tmp_path / "counter.txt") == ["setup", "a"]
    went_on = run_cli("worker", "--once", "--store", ".nbdurable", cwd=tmp_path)
    assert f"run {run_id}: the code changed under run {run_id}" in went_on.stderr
    assert "Continuing (--on-change continue)" in went_on.stderr and ": completed" in went_on.stderr
    assert executions(tmp_path / "counter.txt") == ["setup", "a", "woke"]


@pytest.mark.kernel
def test_durable_resume_lists_the_changes_and_fails_on_request(tmp_path: Path) -> None:
    store = tmp_path / "store"
    path = tmp_path / "nb.ipynb"
    first = ["x = 1", "y = x + 1"]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in first]), path)
    run_session(store, first, notebook=str(path))
    [run_id] = Store.open(store).run_ids()
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in ["x = 2", "y = x + 1"]]),
                   path)
    session = run_session(store, [f"%durable resume {run_id} --on-change fail", f"%durable resume {run_id}"],
                          notebook=str(path), probes={"y": "y"})
    assert "not resuming: the code changed" in session.stdout and "cell 1 edited" in session.stdout
    assert "Continuing (--on-change continue)" in session.stdout and "restored 2 step(s)" in session.stdout
    assert session.probes["y"] == "2"


def test_a_session_loaded_on_an_edited_notebook_says_which_cells_changed(tmp_path: Path) -> None:
    """The resume a session makes at `%load_ext` (the notebook's last run) lists the cells edited, inserted or
    removed since that run recorded them, as `%durable resume` does; Run All then executes just those."""
    store = tmp_path / "store"
    path = tmp_path / "nb.ipynb"
    first = ["x = 1", "y = x + 1", "z = 5"]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in first]), path)
    run_session(store, first, notebook=str(path))
    edited = ["x = 2", "y = x + 1", "z = 5"]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in edited]), path)
    session = run_session(store, edited, notebook=str(path), probes={"y": "y"})
    assert "the code changed under run" in session.stdout and "cell 1 edited" in session.stdout, session.stdout
    assert "cells 1, 2 execute" in session.stdout, session.stdout
    assert session.probes["y"] == "3" and session.stdout.count("restored from step") == 1
