"""Headless runs that suspend on a durable sleep or an event wait, and the worker that resumes them:
the real ``nbdurable run``, ``send`` and ``worker`` commands with real kernels, in subprocesses."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from nbdurable.store import Store

from helpers import clean_env, executions, run_cli, start_cli, write_notebook

pytestmark = [pytest.mark.kernel, pytest.mark.slow]  # headless runs that sleep, workers that wait for them

COUNT = "import pathlib\ndef count(what):\n    with open('counter.txt', 'a') as f:\n        f.write(what + '\\n')\n"


def notebook(tmp_path: Path, *cells: str) -> Path:
    return write_notebook(tmp_path / "flow.ipynb", ["import nbdurable as nbd\n" + COUNT + "count('setup')", *cells])


def counted(tmp_path: Path) -> list[str]:
    return executions(tmp_path / "counter.txt")


def texts(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return ["".join(o.get("text", "") for o in cell.outputs) for cell in nb.cells]


def worker_once(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    done = run_cli("worker", "--once", "--store", ".nbdurable", *extra, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done


def sleep_until_due(tmp_path: Path, run_id: str) -> None:
    """Sleep until the suspended run's timer (or event timeout) is due."""
    end = Store.open(tmp_path / ".nbdurable").read_journal(run_id)[-1]
    due = end["wake_at"] or end["waiting_for"]["timeout_at"]
    time.sleep(max(0.0, due - time.time()) + 0.1)


def suspended(tmp_path: Path) -> list[tuple[str, bool, bool]]:
    table = Store.open(tmp_path / ".nbdurable").catalog().query(
        "SELECT run_id, wake_at IS NOT NULL AS timer, waiting_for IS NOT NULL AS event FROM runs "
        "WHERE status = 'suspended'")
    return [tuple(row) for row in table.values.tolist()]


def test_a_headless_sleep_suspends_the_run_and_the_worker_resumes_it_when_due(tmp_path: Path) -> None:
    path = notebook(tmp_path, "r = nbd.run_step('fetch', lambda: count('fetch') or 41)\nnbd.sleep('6s')\n"
                              "print('woke', r + 1)", "count('after')\nprint('done')")
    first = run_cli("run", path.name, "out.ipynb", "--suspend-after", "1", "--no-progress", cwd=tmp_path)
    assert first.returncode == 3, first.stdout + first.stderr
    assert "is sleeping until" in first.stderr and "`nbdurable worker` resumes it" in first.stderr
    assert counted(tmp_path) == ["setup", "fetch"]
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.metadata.nbdurable["status"] == "suspended"
    assert out.cells[1].metadata.nbdurable["status"] == "suspended" and out.cells[1].outputs == []  # no traceback
    [(run_id, timer, event)] = suspended(tmp_path)
    assert timer and not event

    early = worker_once(tmp_path)
    assert "resumed 0 run(s)" in early.stderr and counted(tmp_path) == ["setup", "fetch"]
    sleep_until_due(tmp_path, run_id)
    due = worker_once(tmp_path)
    assert f"run {run_id}: resuming" in due.stderr and "its timer is due" in due.stderr and ": completed" in due.stderr
    assert counted(tmp_path) == ["setup", "fetch", "after"]  # nothing that completed ran twice
    assert texts(tmp_path / "out.ipynb")[1:] == ["woke 42\n", "done\n"]  # the run's own output notebook, completed
    assert nbformat.read(tmp_path / "out.ipynb", as_version=4).metadata.nbdurable["status"] == "completed"


def test_a_headless_event_wait_suspends_until_nbdurable_send_and_the_worker(tmp_path: Path) -> None:
    path = notebook(tmp_path, "approval = nbd.wait_for_event('report.approved', match={'week': 47}, timeout='2d')\n"
                              "count('approved')\nprint('approved by', approval['by'])")
    # the default threshold: 60 s < 2 days
    first = run_cli("run", path.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert first.returncode == 3, first.stdout + first.stderr
    assert "waiting for event 'report.approved' matching {'week': 47}" in first.stderr
    [(run_id, timer, event)] = suspended(tmp_path)
    assert event and not timer
    shown = run_cli("show", run_id, "--store", ".nbdurable", cwd=tmp_path)
    assert "waiting for event 'report.approved' matching {'week': 47} until" in shown.stdout
    assert "↳ nbd.wait_for_event" in shown.stdout

    other = run_cli("send", "report.approved", "--data", '{"week": 46, "by": "bo"}', "--store", ".nbdurable",
                    cwd=tmp_path)
    assert other.returncode == 0 and other.stdout.strip()
    assert "resumed 0 run(s)" in worker_once(tmp_path).stderr  # week 46 does not match

    sent = run_cli("send", "report.approved", "--data", '{"week": 47, "by": "ana"}', "--store", ".nbdurable",
                   cwd=tmp_path)
    due = worker_once(tmp_path)
    assert f"event 'report.approved' arrived ({sent.stdout.strip()})" in due.stderr and ": completed" in due.stderr
    assert counted(tmp_path) == ["setup", "approved"]
    assert texts(tmp_path / "out.ipynb")[1] == "approved by ana\n"
    assert "resumed 0 run(s)" in worker_once(tmp_path).stderr  # nothing left to do

    bad = run_cli("send", "report.approved", "--data", "{week: 47}", "--store", ".nbdurable", cwd=tmp_path)
    assert bad.returncode == 2 and "the event data is not JSON" in bad.stderr


def test_an_event_wait_that_times_out_resumes_with_none(tmp_path: Path) -> None:
    path = notebook(tmp_path, "approval = nbd.wait_for_event('never.sent', timeout='6s')\n"
                              "print('timed out' if approval is None else 'approved')")
    first = run_cli("run", path.name, "out.ipynb", "--suspend-after", "1", "--no-progress", cwd=tmp_path)
    assert first.returncode == 3, first.stdout + first.stderr
    assert "resumed 0 run(s)" in worker_once(tmp_path).stderr
    [(run_id, _, _)] = suspended(tmp_path)
    sleep_until_due(tmp_path, run_id)
    due = worker_once(tmp_path)
    assert "its wait for an event timed out" in due.stderr and ": completed" in due.stderr
    assert texts(tmp_path / "out.ipynb")[1] == "timed out\n"


def test_two_workers_never_resume_the_same_run(tmp_path: Path) -> None:
    path = notebook(tmp_path, "nbd.sleep(2)", "import time\ntime.sleep(2)\ncount('resumed')")
    assert run_cli("run", path.name, "--suspend-after", "1", "--no-progress", cwd=tmp_path).returncode == 3
    [(run_id, _, _)] = suspended(tmp_path)
    sleep_until_due(tmp_path, run_id)
    command = ["worker", "--once", "--store", ".nbdurable"]
    workers = [start_cli(*command, cwd=tmp_path, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [w.communicate(timeout=180)[1] for w in workers]
    assert sorted("resumed 1 run(s)" in log for log in logs) == [False, True], logs
    store = Store.open(tmp_path / ".nbdurable")
    successors = [r for r in store.run_ids() if (store.journal_head(r) or {}).get("resumed_from") == run_id]
    assert len(successors) == 1 and counted(tmp_path) == ["setup", "resumed"]


def test_a_polling_worker_resumes_runs_as_they_fall_due_and_stops_after_max_runs(tmp_path: Path) -> None:
    path = notebook(tmp_path, "nbd.sleep('4s')\ncount('woke')")
    assert run_cli("run", path.name, "--suspend-after", "1", "--no-progress", cwd=tmp_path).returncode == 3
    begun = time.monotonic()
    done = run_cli("worker", "--poll", "0.5", "--max-runs", "1", "--store", ".nbdurable", cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "resumed 1 run(s)" in done.stderr, done.stderr
    assert time.monotonic() - begun < 60 and counted(tmp_path) == ["setup", "woke"]


def test_papermill_reports_a_suspended_run_as_an_error_saying_what_to_do(tmp_path: Path) -> None:
    path = notebook(tmp_path, "nbd.sleep('1h')")
    done = subprocess.run([sys.executable, "-m", "papermill", "--engine", "durable", path.name, "out.ipynb"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=clean_env({"NBDURABLE_SUSPEND_AFTER": "1"}))
    assert done.returncode != 0 and "suspended itself (sleeping until" in done.stderr, done.stderr
    assert "`nbdurable worker` resumes it" in done.stderr
    assert [timer for _, timer, _ in suspended(tmp_path)] == [True]
