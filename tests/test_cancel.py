"""Cancelling runs (issue 16, item 3): `nbdurable cancel`, `%durable cancel`, `cancel_run`, with real headless
runs, kernels, workers and stores; and the old meaning of `cancelled` (resumable) read as `interrupted`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from nbdurable.headless.params import load_notebook
from nbdurable.headless.runner import HeadlessRunner
from nbdurable.runtime.control import cancel_run
from nbdurable.runtime.replay import find_resumable, journal_status
from nbdurable.runtime.run import DurableRun
from nbdurable.store import Store
from nbdurable.store.catalog.schema import SCHEMA_VERSION

from conftest import run_session
from helpers import executions, journal_records, run_cli, start_cli, start_run_until, write_notebook

COUNT = "def count(what):\n    with open('counter.txt', 'a') as f:\n        f.write(what + '\\n')\n"
# A cell busy in native code that a signal does not stop: SIGINT blocked in the kernel's main thread, then a
# libc sleep (the interrupt is delivered to another thread; the sleep goes on).
STUCK_IN_C = ("import ctypes, signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n"
              "open('started', 'w').close()\nctypes.CDLL(None).sleep(120)")
PY_LOOP = "import time, pathlib\npathlib.Path('started').touch()\nwhile not pathlib.Path('go').exists():\n" \
          "    time.sleep(0.05)\ncount('loopdone')"


def notebook(tmp_path: Path, *cells: str) -> Path:
    return write_notebook(tmp_path / "flow.ipynb", ["import nbdurable as nbd\n" + COUNT + "count('setup')", *cells])


def counted(tmp_path: Path) -> list[str]:
    return executions(tmp_path / "counter.txt")


def start_run(tmp_path: Path, path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`nbdurable run` in the background, returned once its cell wrote `started`."""
    return start_run_until(tmp_path, path, "started", *extra, env=env)


def only_run(tmp_path: Path) -> str:
    [run_id] = Store.open(tmp_path / ".nbdurable").run_ids()
    return run_id


def run_end(tmp_path: Path, run_id: str) -> dict[str, Any]:
    records = journal_records(tmp_path / ".nbdurable" / "journals" / f"{run_id}.jsonl", "run_end")
    return records[-1]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.kernel
@pytest.mark.slow
def test_cancel_stops_a_cell_sleeping_in_python_and_nothing_resumes_the_run_unless_forced(tmp_path: Path) -> None:
    path = notebook(tmp_path, "x = 41", PY_LOOP, "count('last')\nprint('done', x + 1)")
    proc = start_run(tmp_path, path)
    run_id = only_run(tmp_path)
    asked = time.monotonic()
    cancelled = run_cli("cancel", run_id[:12], "--reason", "wrong parameters", "--store", ".nbdurable", cwd=tmp_path)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - asked
    assert cancelled.returncode == 0, cancelled.output
    assert f"run {run_id} is cancelled (by " in cancelled.stdout and "wrong parameters" in cancelled.stdout
    assert proc.returncode == 4, out + err
    assert took < 10, took  # stopped at once (the figure is `python -m bench --only control`)
    assert "Cancelled (cell 3): cancelled by" in err and "wrong parameters" in err and "--force" in err
    end = run_end(tmp_path, run_id)
    assert end["status"] == "cancelled" and end["cancel"]["reason"] == "wrong parameters"
    assert end["cancel"]["by"] and end["cancel"]["requested_at"] <= end["ts"]
    steps = {r["ordinal"]: r["status"] for r in journal_records(tmp_path / ".nbdurable", "step_end")}
    assert steps == {1: "completed", 2: "completed", 3: "interrupted"}
    kernel_pid = journal_records(tmp_path / ".nbdurable", "run")[0]["environment"]["pid"]
    assert gone(kernel_pid)
    assert nbformat.read(tmp_path / "out.ipynb", as_version=4).metadata.nbdurable["status"] == "cancelled"
    shown = run_cli("show", run_id[:10], "--store", ".nbdurable", cwd=tmp_path)
    assert f"run {run_id}  cancelled" in shown.stdout and "cancelled by " in shown.stdout
    assert ": wrong parameters" in shown.stdout
    again = run_cli("cancel", run_id, "--store", ".nbdurable", cwd=tmp_path)
    assert again.returncode == 0 and "was already cancelled" in again.stdout and "wrong parameters" in again.stdout

    # `resume` refuses it; `run` of the same notebook and parameters starts a new run instead of resuming it.
    (tmp_path / "go").touch()
    refused = run_cli("resume", run_id, "--store", ".nbdurable", "--no-progress", cwd=tmp_path)
    assert refused.returncode == 2 and "was cancelled" in refused.stderr and "--force" in refused.stderr
    assert counted(tmp_path) == ["setup"]
    fresh = run_cli("run", path.name, "--no-progress", cwd=tmp_path)
    assert fresh.returncode == 0 and "resumed run" not in fresh.stdout, fresh.output
    assert counted(tmp_path) == ["setup", "setup", "loopdone", "last"]
    forced = run_cli("resume", run_id, "--force", "--store", ".nbdurable", "--no-progress", cwd=tmp_path)
    assert forced.returncode == 0 and f"(resumed run {run_id})" in forced.stdout, forced.output
    assert "2 restored" in forced.stdout  # its completed cells restored, not executed


@pytest.mark.kernel
@pytest.mark.slow
def test_cancel_kills_a_kernel_stuck_in_native_code_after_the_grace_period(tmp_path: Path) -> None:
    path = notebook(tmp_path, STUCK_IN_C, "count('never')")
    proc = start_run(tmp_path, path, env={"NBDURABLE_CANCEL_GRACE": "1"})
    run_id = only_run(tmp_path)
    kernel_pid = journal_records(tmp_path / ".nbdurable", "run")[0]["environment"]["pid"]
    asked = time.monotonic()
    outcome = cancel_run(Store.open(tmp_path / ".nbdurable"), run_id, reason="stuck", by="tester", wait=30)
    out, err = proc.communicate(timeout=30)
    assert outcome.status == "cancelled" and outcome.request["by"] == "tester"
    assert proc.returncode == 4, out + err
    assert time.monotonic() - asked < 15  # grace 1 s, then killed (not the cell's 120 s)
    assert gone(kernel_pid)
    end = run_end(tmp_path, run_id)
    assert end["status"] == "cancelled" and end["cancel"]["by"] == "tester" and end["cancel"]["reason"] == "stuck"
    ended = {r["ordinal"] for r in journal_records(tmp_path / ".nbdurable", "step_end")}
    assert ended == {1}  # the stuck cell never ended: its kernel was killed
    assert counted(tmp_path) == ["setup"]
    assert journal_status(Store.open(tmp_path / ".nbdurable"), run_id)[0] == "cancelled"


@pytest.mark.kernel
@pytest.mark.slow
def test_a_suspended_run_is_cancelled_where_it_stands_and_the_worker_never_resumes_it(tmp_path: Path) -> None:
    path = notebook(tmp_path, "nbd.sleep(2)\ncount('woke')")
    first = run_cli("run", path.name, "--suspend-after", "0", "--no-progress", cwd=tmp_path)
    assert first.returncode == 3, first.output
    run_id = only_run(tmp_path)
    cancelled = run_cli("cancel", run_id, "--reason", "not needed", "--store", ".nbdurable", cwd=tmp_path)
    assert cancelled.returncode == 0 and "is cancelled" in cancelled.stdout, cancelled.output
    ends = journal_records(tmp_path / ".nbdurable" / "journals" / f"{run_id}.jsonl", "run_end")
    assert [e["status"] for e in ends] == ["suspended", "cancelled"]  # journaled where it stood
    time.sleep(2.5)  # its timer is due now
    worker = run_cli("worker", "--once", "--store", ".nbdurable", cwd=tmp_path)
    assert "resumed 0 run(s)" in worker.stderr and counted(tmp_path) == ["setup"]
    runs = Store.open(tmp_path / ".nbdurable").catalog().query("SELECT status, cancel_reason FROM runs")
    assert runs.values.tolist() == [["cancelled", "not needed"]]
    assert run_cli("run", path.name, "--suspend-after", "0", "--no-progress", cwd=tmp_path).returncode == 3
    assert counted(tmp_path) == ["setup", "setup"]  # a new run, from the start


@pytest.mark.kernel
@pytest.mark.slow
def test_a_run_waiting_for_an_event_is_cancelled_and_the_event_resumes_nothing(tmp_path: Path) -> None:
    path = notebook(tmp_path, "a = nbd.wait_for_event('go', timeout='2d')\ncount('got it')")
    assert run_cli("run", path.name, "--no-progress", cwd=tmp_path).returncode == 3
    run_id = only_run(tmp_path)
    store = Store.open(tmp_path / ".nbdurable")
    outcome = cancel_run(store, run_id, by="ops")
    assert outcome.status == "cancelled" and not outcome.already and outcome.request["reason"] is None
    assert run_cli("send", "go", "--store", ".nbdurable", cwd=tmp_path).returncode == 0
    worker = run_cli("worker", "--once", "--store", ".nbdurable", cwd=tmp_path)
    assert "resumed 0 run(s)" in worker.stderr and counted(tmp_path) == ["setup"]
    assert find_resumable(store, str(path.resolve()), {}) == (None, None)


@pytest.mark.kernel
@pytest.mark.slow
def test_the_worker_skips_a_run_whose_cancel_request_came_after_the_catalog_listed_it(tmp_path: Path) -> None:
    path = notebook(tmp_path, "nbd.sleep(1)\ncount('woke')")
    assert run_cli("run", path.name, "--suspend-after", "0", "--no-progress", cwd=tmp_path).returncode == 3
    run_id = only_run(tmp_path)
    store = Store.open(tmp_path / ".nbdurable")
    store.request_cancel(run_id, by="race", reason=None)  # the request only: its run_end is not written yet
    time.sleep(1.2)
    worker = run_cli("worker", "--once", "--store", ".nbdurable", cwd=tmp_path)
    assert f"run {run_id}: cancelled, not resuming it" in worker.stderr and counted(tmp_path) == ["setup"]


def test_cancel_refuses_a_completed_run_and_names_unknown_ones(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    from nbdurable.runtime.run import DurableRun

    run = DurableRun(store, notebook="nb")
    run.finish("completed")
    done = run_cli("cancel", run.run_id, "--store", str(tmp_path / "store"), in_process=True)
    assert done.returncode == 2 and "completed: there is nothing to cancel" in done.stderr
    unknown = run_cli("cancel", "nope", "--store", str(tmp_path / "store"), in_process=True)
    assert unknown.returncode == 2 and "no run 'nope'" in unknown.stderr


def test_a_live_run_ends_cancelled_when_its_process_finishes_it(tmp_path: Path) -> None:
    """The request is durable: a run whose process is busy ends cancelled whenever it finishes, whatever
    status it meant to end with (not for `completed`)."""
    from nbdurable.runtime.run import DurableRun

    store = Store.open(tmp_path / "store")
    run = DurableRun(store, notebook="nb")
    outcome = cancel_run(store, run.run_id, reason="later", by="me")
    assert outcome.status == "requested" and outcome.holder is not None and outcome.holder["pid"] == os.getpid()
    run.finish("failed")
    assert journal_status(store, run.run_id)[0] == "cancelled"
    assert cancel_run(store, run.run_id).already


def test_journals_of_the_old_form_read_cancelled_as_interrupted_and_old_catalogs_rebuild(tmp_path: Path) -> None:
    """Before `interrupted` existed, a run stopped before its end (resumable) was journaled `cancelled` with no
    `cancel` key. Such journals read as `interrupted` (and are resumed); a catalog of the older schema, which
    holds them as `cancelled`, is rebuilt."""
    store = Store.open(tmp_path / "store")
    writer = store.new_journal("20240101T000000000-abcdef")
    for record in (
        {"t": "run", "format": 1, "run_id": "20240101T000000000-abcdef", "notebook": "old.ipynb",
         "notebook_path": None, "kind": "headless", "params": {}, "output_path": None, "resumed_from": None,
         "root_run": "20240101T000000000-abcdef", "environment": {}},
        {"t": "step_start", "ordinal": 1, "name": None, "source": "x = 1", "source_hash": "h1", "options": {},
         "parent": None},
        {"t": "step_end", "ordinal": 1, "status": "completed", "started_at": 1.0, "ended_at": 2.0, "duration": 1.0,
         "variables": [], "outputs": [], "error": None, "restored_from": None},
        {"t": "run_end", "status": "cancelled"},
    ):
        writer.append(record, sync=True)
    writer.close()
    run_id = "20240101T000000000-abcdef"
    assert journal_status(store, run_id)[0] == "interrupted"
    assert find_resumable(store, "old.ipynb", {}) == (run_id, None)
    catalog = store.catalog()
    assert catalog.query("SELECT status FROM runs").values.tolist() == [["interrupted"]]
    # the catalog as the previous schema left it: the run listed `cancelled`
    with catalog.connection(ingest=False) as con:
        con.execute("UPDATE runs SET status = 'cancelled'")
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION - 1)])
    assert catalog.query("SELECT status FROM runs").values.tolist() == [["interrupted"]]
    with catalog.connection(ingest=False) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    listed = run_cli("runs", "--status", "interrupted", "--store", str(tmp_path / "store"), in_process=True)
    assert run_id in listed.stdout


@pytest.mark.kernel
def test_durable_cancel_ends_the_sessions_run_and_the_next_cell_starts_a_new_one(tmp_path: Path) -> None:
    store = tmp_path / "store"
    session = run_session(store, [
        "a = 1",
        "%durable cancel --reason 'exploring something else'",
        "b = a + 1",
        "from nbdurable.runtime.control import cancel_run\nfrom nbdurable.store import Store\nimport nbdurable as nbd\n"
        f"outcome = cancel_run(Store.open({str(store)!r}), nbd.current_run_id(), reason='from outside')",
        "c = b + 1",
    ], probes={"c": "c"})
    assert session.probes["c"] == "3"
    assert "cancelled (exploring something else): nothing resumes it" in session.stdout
    assert "was cancelled by" in session.stdout and "from outside" in session.stdout
    runs = Store.open(store).run_ids()
    assert len(runs) == 3
    ends = [journal_records(store / "journals" / f"{r}.jsonl", "run_end") for r in runs]
    assert ends[0][-1]["status"] == "cancelled" and ends[0][-1]["cancel"]["reason"] == "exploring something else"
    assert ends[1][-1]["status"] == "cancelled" and ends[1][-1]["cancel"]["reason"] == "from outside"
    heads = [journal_records(store / "journals" / f"{r}.jsonl", "run")[0] for r in runs]
    assert heads[1]["resumed_from"] is None  # the cancelled run is not resumed by the next one
    sources = [[s["source"] for s in journal_records(store / "journals" / f"{r}.jsonl", "step_start")] for r in runs]
    assert sources[0] == ["a = 1"] and sources[1][0] == "b = a + 1" and sources[2] == ["c = b + 1"]
    refused = run_session(store, [f"%durable resume {runs[0]}", f"%durable resume {runs[0]} --force"],
                          probes={"a": "a"})
    assert "was cancelled: nothing resumes it unless forced" in refused.stdout and refused.probes["a"] == "1"
    nothing = run_session(store, ["%durable cancel"])
    assert "this session has no run to cancel" in nothing.stdout


def test_cancel_help_documents_the_exit_codes(tmp_path: Path) -> None:
    helped = run_cli("run", "--help", in_process=True)
    assert "4 the run was cancelled" in helped.stdout
    cancel_help = run_cli("cancel", "--help", in_process=True)
    assert "--reason" in cancel_help.stdout and "NBDURABLE_CANCEL_GRACE" in cancel_help.stdout


@pytest.mark.kernel
@pytest.mark.slow
def test_a_crashed_run_killed_with_sigkill_is_cancelled_where_it_stands(tmp_path: Path) -> None:
    path = notebook(tmp_path, "x = 1", PY_LOOP)
    proc = start_run(tmp_path, path)
    run_id = only_run(tmp_path)
    kernel_pid = journal_records(tmp_path / ".nbdurable", "run")[0]["environment"]["pid"]
    os.kill(proc.pid, signal.SIGKILL)  # the runner, then its kernel: nobody ends the run
    os.kill(kernel_pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    store = Store.open(tmp_path / ".nbdurable")
    deadline = time.monotonic() + 30
    while store.is_live(run_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert journal_status(store, run_id)[0] == "crashed"
    outcome = cancel_run(store, run_id, reason="gave up", by="ops")
    assert outcome.status == "cancelled" and journal_status(store, run_id)[0] == "cancelled"
    (tmp_path / "go").touch()
    again = run_cli("run", path.name, "--no-progress", cwd=tmp_path)
    assert again.returncode == 0 and "resumed run" not in again.stdout, again.output


@pytest.mark.kernel
def test_a_run_cancelled_a_moment_before_the_next_run_of_its_notebook_is_not_taken_for_it(tmp_path: Path) -> None:
    """The runner knows its run by the id it chose before the kernel started, never by the newest journal of
    its notebook: a cancelled run that began a moment earlier once passed for it, and its cancel request
    cancelled the new run before its first cell."""
    path = notebook(tmp_path, "x = 1")
    store = Store.open(tmp_path / ".nbdurable")
    old = DurableRun(store, notebook=str(path.resolve()), notebook_path=str(path.resolve()), kind="headless",
                     params={})
    old.finish("failed")
    assert cancel_run(store, old.run_id, reason="gave up", by="ops").status == "cancelled"
    result = HeadlessRunner(load_notebook(path, {}, None), notebook_path=path, store_path=tmp_path / ".nbdurable",
                            params={}, output_path=None).execute()
    assert result.status == "completed", (result.stopped_by, result.error)
    assert result.run_id not in (None, old.run_id) and journal_status(store, result.run_id)[0] == "completed"
    assert counted(tmp_path) == ["setup"]


@pytest.mark.kernel
@pytest.mark.slow
def test_cancelling_a_suspended_run_a_worker_is_resuming_cancels_the_resuming_run(tmp_path: Path) -> None:
    path = notebook(tmp_path, "nbd.sleep(1)", PY_LOOP)
    assert run_cli("run", path.name, "--suspend-after", "0", "--no-progress", cwd=tmp_path).returncode == 3
    suspended_run = only_run(tmp_path)
    time.sleep(1.2)
    worker = start_cli("worker", "--once", "--store", ".nbdurable", cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (tmp_path / "started").exists():
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()
        time.sleep(0.05)
    store = Store.open(tmp_path / ".nbdurable")
    outcome = cancel_run(store, suspended_run, reason="stop the chain", by="ops", wait=30)
    _, log = worker.communicate(timeout=60)
    assert outcome.status == "cancelled" and outcome.run_id != suspended_run, outcome
    assert (store.journal_head(outcome.run_id) or {}).get("resumed_from") == suspended_run
    assert "(the run resuming" in outcome.describe()
    assert journal_status(store, outcome.run_id)[0] == "cancelled"
    assert f"resumed as run {outcome.run_id}: cancelled" in log, log
    assert counted(tmp_path) == ["setup"]
