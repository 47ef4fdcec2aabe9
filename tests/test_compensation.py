"""Compensation (sagas, ``runtime/compensation.py``): undoing completed steps in reverse order, each a durable
step that runs once, in real IPython shells and real headless runs, with a real SIGKILL of the kernel
half-way through the compensations."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

import nbdurable as nbd
from nbdurable.errors import CompensationError
from nbdurable.store import Store
from nbdurable.widgets.graph import build_graph

from conftest import run_session
from helpers import executions, journal_records, run_cli, start_run_until

pytestmark = pytest.mark.kernel

SAGA = (
    "import os, signal, pathlib\nimport nbdurable as nbd\n"
    "LOG = pathlib.Path('log.txt')\n"
    "def log(what):\n    with LOG.open('a') as f:\n        f.write(what + '\\n')\n"
    "def undo(result, item, qty=1):\n"
    "    if item == 'hotel' and os.environ.get('KILL_IN_UNDO') and not pathlib.Path('killed').exists():\n"
    "        pathlib.Path('killed').touch()\n        os.kill(os.getpid(), signal.SIGKILL)  # the kernel dies mid-saga\n"
    "    log(f'undo-{item}-{result}-{qty}')\n"
    "def book(item, qty=1):\n    log(f'book-{item}')\n    return f'{item}#{qty}'\n"
    "@nbd.step(compensate=undo)\ndef reserve(item, qty=1):\n    return book(item, qty)\n"
)


def _notebook(tmp_path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(SAGA), *(nbformat.v4.new_code_cell(c) for c in cells)]
    path = tmp_path / "saga.ipynb"
    nbformat.write(nb, path)
    return path


def _compensation_steps(records: list[dict]) -> list[tuple[str, list]]:
    return [(r["name"], r["options"]["compensates"]) for r in records
            if r["t"] == "step_start" and str(r.get("name")).startswith("compensate:")]


FAILING = (
    "def charge():\n    raise ConnectionError('card declined')\n"
    "nbd.run_step('charge', charge, retry=nbd.RetryPolicy(max_attempts=2, initial_interval=0.01))"
)


def test_a_headless_run_that_fails_for_good_undoes_its_steps_in_reverse_order_once(tmp_path: Path) -> None:
    path = _notebook(tmp_path, "flight = reserve('flight')",
                     "hotel = reserve('hotel', qty=2)\ncar = nbd.run_step('car', book, 'car', compensate=undo)",
                     FAILING)
    done = run_cli("run", path.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert done.returncode == 1, done.output
    assert "card declined" in done.output
    assert executions(tmp_path / "log.txt") == [
        "book-flight", "book-hotel", "book-car", "undo-car-car#1-1", "undo-hotel-hotel#2-2", "undo-flight-flight#1-1"]
    records = journal_records(tmp_path / ".nbdurable")
    steps = _compensation_steps(records)
    assert [name for name, _ in steps] == ["compensate:car", "compensate:reserve", "compensate:reserve"]
    booked = [r["ordinal"] for r in records if r["t"] == "step_start" and r.get("name") in ("reserve", "car")]
    assert [undoes[1] for _, undoes in steps] == booked[::-1]  # each undoes its own step, newest first
    assert any(r["t"] == "compensating" and "card declined" in r["reason"] for r in records)
    ends = {r["ordinal"]: r["status"] for r in records if r["t"] == "step_end"}
    assert all(ends[r["ordinal"]] == "completed" for r in records
               if r["t"] == "step_start" and str(r.get("name")).startswith("compensate:"))
    assert [r["status"] for r in records if r["t"] == "run_end"] == ["failed"]
    catalog = Store.open(tmp_path / ".nbdurable").catalog()
    shown = catalog.query("SELECT name, status, parent FROM steps WHERE name LIKE 'compensate:%' ORDER BY ordinal")
    assert shown["status"].tolist() == ["completed"] * 3 and shown["parent"].notna().all()
    run_id = next(r["run_id"] for r in records if r["t"] == "run")
    failed_cell = build_graph(Store.open(tmp_path / ".nbdurable"), run_id)["nodes"][-1]
    assert [c["name"] for c in failed_cell["child_steps"]] == [
        "charge", "compensate:car", "compensate:reserve", "compensate:reserve"]  # in the run graph
    described = run_cli("show", run_id, "--store", ".nbdurable", cwd=tmp_path)
    assert "compensated: 3 compensation step(s)" in described.stdout, described.output

    again = run_cli("run", path.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert again.returncode == 1, again.output
    runs = catalog.query("SELECT run_id, resumed_from FROM runs ORDER BY run_id")
    assert runs["resumed_from"].isna().all()  # a compensated run is over: the next run starts fresh
    assert executions(tmp_path / "log.txt")[6:9] == ["book-flight", "book-hotel", "book-car"]


def test_a_kernel_killed_half_way_through_the_compensations_finishes_them_on_resume_each_once(tmp_path: Path) -> None:
    path = _notebook(tmp_path, "flight = reserve('flight')\nhotel = reserve('hotel')\ncar = reserve('car')", FAILING)
    env = {"KILL_IN_UNDO": "1"}
    first = run_cli("run", path.name, "out.ipynb", "--no-progress", cwd=tmp_path, env=env)
    assert first.returncode != 0 and (tmp_path / "killed").exists(), first.output
    assert executions(tmp_path / "log.txt") == ["book-flight", "book-hotel", "book-car", "undo-car-car#1-1"]
    second = run_cli("run", path.name, "out.ipynb", "--no-progress", cwd=tmp_path, env=env)
    assert second.returncode == 1, second.output
    assert "CompensationError" in second.output
    assert executions(tmp_path / "log.txt") == [
        "book-flight", "book-hotel", "book-car", "undo-car-car#1-1", "undo-hotel-hotel#1-1", "undo-flight-flight#1-1"]
    records = journal_records(tmp_path / ".nbdurable")
    runs = [r for r in records if r["t"] == "run"]
    assert len(runs) == 2 and runs[1]["resumed_from"] == runs[0]["run_id"]
    by_run: dict[str, list[str]] = {}
    current = None
    for r in records:
        if r["t"] == "run":
            current = r["run_id"]
        elif r["t"] == "step_start" and str(r.get("name")).startswith("compensate:"):
            by_run.setdefault(str(current), []).append(r["options"]["compensates"][1])
    booked = [r["ordinal"] for r in records if r["t"] == "step_start" and r.get("name") == "reserve"]
    flight, hotel, car = booked[:3]
    assert by_run[runs[0]["run_id"]] == [car, hotel]  # car's completed; hotel's began when the kernel died
    assert by_run[runs[1]["run_id"]] == [hotel, flight]  # hotel's again (it never ended), then flight's
    third = run_cli("run", path.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert third.returncode == 1
    assert [r.get("resumed_from") for r in journal_records(tmp_path / ".nbdurable", "run")][2] is None


def test_interactive_failures_do_not_compensate_and_nbd_compensate_runs_each_once(store_dir: Path,
                                                                                  tmp_path: Path) -> None:
    cells = [
        f"import os\nos.chdir({str(tmp_path)!r})",
        SAGA,
        "a = reserve('flight')\nb = reserve('hotel')\nraise nbd.NonRetryableError('payment refused')",
        "log('after')",
        "n = nbd.compensate()",
        "m = nbd.compensate()",
    ]
    session = run_session(store_dir, cells, probes={"n": "n", "m": "m"})
    assert [c["success"] for c in session.cells][-6:] == [True, True, False, True, True, True], session.stdout
    assert session.probes == {"n": "2", "m": "0"}
    assert executions(tmp_path / "log.txt") == [
        "book-flight", "book-hotel", "after", "undo-hotel-hotel#1-1", "undo-flight-flight#1-1"]
    records = journal_records(store_dir)
    parents = {r["parent"] for r in records if r["t"] == "step_start" and str(r.get("name")).startswith("compensate:")}
    cell_of_compensate = [r["ordinal"] for r in records if r["t"] == "step_start" and r.get("parent") is None][4]
    assert parents == {cell_of_compensate}


def test_compensate_outside_a_durable_cell_runs_the_undos_in_reverse(tmp_path: Path) -> None:
    done: list[str] = []

    def undo(result: str, item: str) -> None:
        done.append(f"undo {result}")
        if item == "b":
            raise RuntimeError("cannot undo b")

    for item in "abc":
        nbd.run_step("book", lambda i: i.upper(), item, compensate=undo)
    with pytest.raises(CompensationError, match="cannot undo b"):
        nbd.compensate()
    assert done == ["undo C", "undo B", "undo A"]
    assert nbd.compensate() == 0


def test_the_cancel_hook_compensates_between_cells_under_a_step_of_its_own(store_dir: Path, tmp_path: Path) -> None:
    """``Durable.compensate(reason)``: what a cancel runs in the kernel (outside any cell, as a runner's silent
    request would): a top-level ``nbd.compensate`` step holds the compensation steps."""
    cells = [f"import os\nos.chdir({str(tmp_path)!r})", SAGA, "a = reserve('flight')\nb = reserve('hotel')"]
    session = run_session(store_dir, cells, probes={"n": "__nbdurable__.compensate('cancelled by ann')",
                                                    "again": "__nbdurable__.compensate('cancelled by ann')"})
    assert session.probes == {"n": "2", "again": "0"}, session.stdout
    assert executions(tmp_path / "log.txt") == [
        "book-flight", "book-hotel", "undo-hotel-hotel#1-1", "undo-flight-flight#1-1"]
    records = journal_records(store_dir)
    [top] = [r for r in records if r["t"] == "step_start" and r.get("name") == "nbd.compensate"]
    assert top["parent"] is None and top["options"] == {"reason": "cancelled by ann"}
    children = [r for r in records if r["t"] == "step_start" and str(r.get("name")).startswith("compensate:")]
    assert [c["parent"] for c in children] == [top["ordinal"]] * 2
    assert any(r["t"] == "step_end" and r["ordinal"] == top["ordinal"] and r["status"] == "completed" for r in records)


@pytest.mark.slow
def test_a_cancelled_headless_run_undoes_its_completed_steps_once(tmp_path: Path) -> None:
    """A cancel stops the running cell, then the compensations of the completed steps run in reverse order in
    the same kernel, each a durable step, before the run ends `cancelled`."""
    from nbdurable.runtime.control import cancel_run

    wait = ("import time, pathlib\npathlib.Path('started').touch()\n"
            "while True:\n    time.sleep(0.05)")
    path = _notebook(tmp_path, "flight = reserve('flight')", "hotel = reserve('hotel', qty=2)", wait, "print('never')")
    proc = start_run_until(tmp_path, path)
    store = Store.open(tmp_path / ".nbdurable", create=False)
    [run_id] = store.run_ids()
    cancel_run(store, run_id, reason="trip called off", by="test")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, out + err
    assert executions(tmp_path / "log.txt") == ["book-flight", "book-hotel", "undo-hotel-hotel#2-2",
                                                "undo-flight-flight#1-1"]
    records = journal_records(tmp_path / ".nbdurable")
    assert [name for name, _ in _compensation_steps(records)] == ["compensate:reserve", "compensate:reserve"]
    assert [r for r in records if r["t"] == "run_end"][-1]["status"] == "cancelled"


@pytest.mark.slow
def test_a_cancelled_suspended_run_undoes_its_steps_in_a_new_kernel_once(tmp_path: Path) -> None:
    """A suspended run has no kernel: `nbdurable cancel` starts one that restores the run's state, runs the
    compensations (newest first, once), and ends the resuming run cancelled; a second cancel runs nothing."""
    path = _notebook(tmp_path, "flight = reserve('flight')", "hotel = reserve('hotel', qty=2)",
                     "nbd.sleep('1h')", "print('never')")
    first = run_cli("run", path.name, "out.ipynb", "--suspend-after", "0", "--no-progress", cwd=tmp_path)
    assert first.returncode == 3, first.output
    store = Store.open(tmp_path / ".nbdurable", create=False)
    [suspended] = store.run_ids()
    cancelled = run_cli("cancel", suspended, "--reason", "trip called off", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.output
    assert "owes 2 compensation(s)" in cancelled.output and "all ran" in cancelled.output, cancelled.output
    assert executions(tmp_path / "log.txt") == ["book-flight", "book-hotel", "undo-hotel-hotel#2-2",
                                                "undo-flight-flight#1-1"]
    resuming = [r for r in store.run_ids() if r != suspended]
    assert len(resuming) == 1
    ends = [r for r in journal_records(tmp_path / ".nbdurable" / "journals" / f"{resuming[0]}.jsonl", "run_end")]
    assert ends[-1]["status"] == "cancelled" and ends[-1]["cancel"]["reason"] == "trip called off", ends
    again = run_cli("cancel", suspended, cwd=tmp_path)
    assert again.returncode == 0 and "owes" not in again.output, again.output
    assert len(executions(tmp_path / "log.txt")) == 4  # nothing ran twice


@pytest.mark.slow
def test_a_run_whose_kernel_is_killed_by_a_cancel_undoes_its_steps_in_a_new_kernel(tmp_path: Path) -> None:
    """A cell stuck in native code outlives the grace period: its kernel is killed, so `nbdurable run` has a new
    kernel run the compensations before it exits 4."""
    from test_cancel import STUCK_IN_C

    from nbdurable.runtime.control import cancel_run

    path = _notebook(tmp_path, "flight = reserve('flight')", STUCK_IN_C)
    proc = start_run_until(tmp_path, path, env={"NBDURABLE_CANCEL_GRACE": "1"})
    store = Store.open(tmp_path / ".nbdurable", create=False)
    [run_id] = store.run_ids()
    cancel_run(store, run_id, reason="stuck", by="test")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 4, out + err
    assert "owes 1 compensation(s)" in err and "all ran" in err, err
    assert executions(tmp_path / "log.txt") == ["book-flight", "undo-flight-flight#1-1"]


def test_durable_cancel_in_a_session_undoes_its_steps_first(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cells = [SAGA, "flight = reserve('flight')", "hotel = reserve('hotel', qty=2)", "%durable cancel --reason done"]
    session = run_session(store, cells, workdir=tmp_path)
    assert session.returncode == 0 and all(c["success"] for c in session.cells), session.stdout
    assert "2 compensation(s) ran" in session.stdout, session.stdout
    assert executions(tmp_path / "log.txt") == ["book-flight", "book-hotel", "undo-hotel-hotel#2-2",
                                                "undo-flight-flight#1-1"]
