"""The time-skipping clock (``runtime/clock.py``, ``nbd.testing``): week-long waits, retry backoffs and step
timeouts tested in seconds, in real IPython shells and real headless runs (``nbdurable run``, ``worker``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import nbformat
import pytest

import nbdurable as nbd
from nbdurable.errors import StepTimeoutError
from nbdurable.runtime.clock import Clock
from nbdurable.store import Store

from conftest import run_session
from helpers import journal_records, run_cli

DAY = 86400.0
SKIP = {"NBDURABLE_TIME_SKIP": "1"}


def _notebook(tmp_path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("import nbdurable as nbd"), *(nbformat.v4.new_code_cell(c) for c in cells)]
    path = tmp_path / "flow.ipynb"
    nbformat.write(nb, path)
    return path


def _children(records: list[dict], name: str) -> list[dict]:
    return [r for r in records if r["t"] == "step_start" and r.get("name") == name]


def _run_start(records: list[dict]) -> float:
    return float(next(r for r in records if r["t"] == "run")["ts"])


# ----- the clock itself --------------------------------------------------------------------------


def test_a_skipping_clock_moves_instead_of_waiting_and_never_goes_back() -> None:
    clock = Clock(skipping=True)
    start, real = clock.now(), time.monotonic()
    clock.sleep(7 * DAY)
    assert clock.now() - start == pytest.approx(7 * DAY, abs=1.0)
    threads = [threading.Thread(target=clock.sleep, args=(3600.0,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.now() - start == pytest.approx(7 * DAY + 7200.0, abs=1.0)  # each wait moved it by its length
    clock.sleep_until(start)  # a time already passed: the clock never goes back
    assert clock.now() - start >= 7 * DAY + 7200.0
    with clock.within(60.0) as deadline, pytest.raises(StepTimeoutError):
        clock.sleep(3600.0)  # a wait past a step timeout stops at the deadline
    assert clock.now() == pytest.approx(deadline, abs=1.0)
    assert time.monotonic() - real < 2.0
    real_clock = Clock()
    before = time.monotonic()
    real_clock.sleep(0.2)
    assert time.monotonic() - before >= 0.2 and real_clock.offset == 0.0


def test_time_skipping_outside_a_durable_cell_and_the_block_restores_real_waits() -> None:
    began = time.monotonic()
    with nbd.testing.time_skipping():
        assert nbd.testing.is_skipping()
        before = nbd.testing.now()
        nbd.sleep("7d")
        assert nbd.testing.now() - before == pytest.approx(7 * DAY, abs=1.0)
    assert not nbd.testing.is_skipping()
    assert time.monotonic() - began < 2.0
    began = time.monotonic()
    nbd.sleep(0.3)  # the real clock again: it waits (from the clock's reading, which stays ahead)
    assert time.monotonic() - began >= 0.3
    assert nbd.testing.now() - time.time() == pytest.approx(7 * DAY, abs=5.0)  # the skipped week stays
    nbd.testing.reset_clock()  # what a test suite does between tests (conftest's autouse fixture)
    assert abs(nbd.testing.now() - time.time()) < 1.0 and not nbd.testing.is_skipping()


# ----- headless: the acceptance notebook, and backoffs and timeouts in a run ------------------------


@pytest.mark.kernel
def test_a_headless_week_of_waits_finishes_in_seconds_on_the_timeout_branch(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        "nbd.sleep('7d')\nprint('slept')",
        "decision = nbd.wait_for_event('approved', timeout='2d')\n"
        "print('timed out' if decision is None else f'approved: {decision}')",
    )
    began = time.monotonic()
    done = run_cli("run", path.name, "out.ipynb", "--no-progress", cwd=tmp_path, env=SKIP)
    took = time.monotonic() - began
    assert done.returncode == 0, done.output  # completed: not suspended (3)
    assert took < 60, f"took {took:.1f} s"
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert "".join(o.get("text", "") for o in out.cells[2].outputs) == "timed out\n"
    records = journal_records(tmp_path / ".nbdurable")
    start = _run_start(records)
    [sleep] = _children(records, "nbd.sleep")
    [wait] = _children(records, "nbd.wait_for_event")
    assert sleep["options"]["wake_at"] - start == pytest.approx(7 * DAY, abs=60)
    assert wait["options"]["timeout_at"] - start == pytest.approx(9 * DAY, abs=60)
    assert next(r for r in records if r["t"] == "run")["time_skipped"] is True
    assert [r["status"] for r in records if r["t"] == "run_end"] == ["completed"]
    wait_end = next(r for r in records if r["t"] == "step_end" and r["ordinal"] == wait["ordinal"])
    assert wait_end["ended_at"] - start == pytest.approx(9 * DAY, abs=60)  # the journal's times are virtual

    run_id = next(r for r in records if r["t"] == "run")["run_id"]
    shown = run_cli("show", run_id, "--store", ".nbdurable", cwd=tmp_path)
    assert shown.returncode == 0 and "time-skipped" in shown.stdout, shown.output
    table = Store.open(tmp_path / ".nbdurable").catalog().query("SELECT time_skipped FROM runs")
    assert table["time_skipped"].tolist() == [True]


@pytest.mark.kernel
def test_headless_sleep_until_backoffs_and_step_timeouts_skip(tmp_path: Path) -> None:
    path = _notebook(
        tmp_path,
        "import datetime\nnbd.sleep_until(datetime.datetime.now() + datetime.timedelta(days=3))\nprint('three days')",
        "tries = []\n"
        "def flaky():\n    tries.append(1)\n    if len(tries) < 3:\n"
        "        raise ConnectionError('down')\n    return 42\n"
        "policy = nbd.RetryPolicy(max_attempts=3, initial_interval='1h', max_interval='1d')\n"
        "r = nbd.run_step('flaky', flaky, retry=policy)\nprint(r)",
        "slow = []\n"
        "def stuck():\n    slow.append(1)\n    if len(slow) == 1:\n"
        "        nbd.testing.sleep(7200)  # past the timeout\n"
        "    return 'ok'\n"
        "print(nbd.run_step('stuck', stuck, timeout='30m', retry=nbd.RetryPolicy(max_attempts=2, initial_interval=1)))",
    )
    began = time.monotonic()
    done = run_cli("run", path.name, "out.ipynb", "--no-progress", cwd=tmp_path, env=SKIP)
    assert done.returncode == 0, done.output
    assert time.monotonic() - began < 60
    records = journal_records(tmp_path / ".nbdurable")
    start = _run_start(records)
    [sleep] = _children(records, "nbd.sleep")
    assert sleep["options"]["wake_at"] - start == pytest.approx(3 * DAY, abs=60)
    attempts = [r for r in records if r["t"] == "attempt"]
    [flaky] = _children(records, "flaky")
    tries = [a for a in attempts if a["ordinal"] == flaky["ordinal"]]
    assert [a["next_delay"] for a in tries] == [3600.0, 7200.0, None]  # the backoffs, recorded and skipped
    assert tries[1]["started_at"] - tries[0]["ended_at"] == pytest.approx(3600, abs=5)
    assert tries[2]["started_at"] - tries[1]["ended_at"] == pytest.approx(7200, abs=5)
    [stuck] = _children(records, "stuck")
    timed = [a for a in attempts if a["ordinal"] == stuck["ordinal"]]
    assert [(a["error"] or {}).get("ename") for a in timed] == ["StepTimeoutError", None]
    assert timed[0]["ended_at"] - timed[0]["started_at"] == pytest.approx(1800, abs=5)  # stopped at its deadline
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert ["".join(o.get("text", "") for o in c.outputs) for c in out.cells[1:]] == ["three days\n", "42\n", "ok\n"]


@pytest.mark.kernel
@pytest.mark.slow
def test_a_skipping_worker_resumes_a_suspended_run_at_once(tmp_path: Path) -> None:
    """A run suspended on the real clock (an event wait of 2 days) is due for a worker on the skipping clock:
    it skips to the timeout, and the resumed run (skipping too) takes the timeout branch."""
    path = _notebook(tmp_path,
                     "r = nbd.wait_for_event('approved', timeout='2d')\nprint('timed out' if r is None else r)")
    first = run_cli("run", path.name, "out.ipynb", "--suspend-after", "1", "--no-progress", cwd=tmp_path)
    assert first.returncode == 3, first.output
    idle = run_cli("worker", "--once", "--store", ".nbdurable", cwd=tmp_path)
    assert "resumed 0 run(s)" in idle.stderr
    due = run_cli("worker", "--once", "--store", ".nbdurable", cwd=tmp_path, env=SKIP)
    assert due.returncode == 0 and "its wait for an event timed out" in due.stderr and ": completed" in due.stderr, \
        due.output
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert "".join(o.get("text", "") for o in out.cells[1].outputs) == "timed out\n"


# ----- interactive: a real IPython shell ------------------------------------------------------------


@pytest.mark.kernel
def test_interactive_time_skipping_block_sleep_event_timeout_and_step_backoff(store_dir: Path) -> None:
    cells = [
        "import nbdurable as nbd, time\nt0 = time.monotonic()\nv0 = nbd.testing.now()",
        "tries = []\ndef flaky():\n    tries.append(1)\n    if len(tries) < 2:\n        raise ConnectionError('down')\n"
        "with nbd.testing.time_skipping():\n    nbd.sleep('7d')\n"
        "    decision = nbd.wait_for_event('approved', timeout='2d')\n"
        "    policy = nbd.RetryPolicy(max_attempts=2, initial_interval='6h', max_interval='1d')\n"
        "    nbd.run_step('flaky', flaky, retry=policy)",
        "real = time.monotonic() - t0",
    ]
    session = run_session(store_dir, cells, probes={"decision": "decision", "real": "real < 30",
                                                    "days": "round((nbd.testing.now() - v0) / 86400, 2)"})
    assert all(c["success"] for c in session.cells), session.stdout
    assert session.probes == {"decision": "None", "real": "True", "days": "9.25"}
    records = journal_records(store_dir)
    assert "time_skipped" not in next(r for r in records if r["t"] == "run")
    assert sum(r["t"] == "time_skip" for r in records) == 1  # entered mid-run: marked once, when it skipped
    start = _run_start(records)
    [sleep] = _children(records, "nbd.sleep")
    [wait] = _children(records, "nbd.wait_for_event")
    assert sleep["options"]["wake_at"] - start == pytest.approx(7 * DAY, abs=60)
    assert wait["options"]["timeout_at"] - start == pytest.approx(9 * DAY, abs=60)
    assert [a["next_delay"] for a in records if a["t"] == "attempt"] == [6 * 3600.0, None]
    table = Store.open(store_dir).catalog().query("SELECT time_skipped FROM runs")
    assert table["time_skipped"].tolist() == [True]


@pytest.mark.kernel
def test_interactive_skipping_from_the_environment_skips_cell_backoffs_and_cell_timeouts(store_dir: Path) -> None:
    cells = [
        "import nbdurable as nbd, time\nt0 = time.monotonic()",
        "%%durable --retries 2 --initial-interval 1h --max-interval 1d\n"
        "fails = globals().get('fails', 0) + 1\nif fails < 3:\n    raise ConnectionError('down')",
        "%%durable --retries 1 --initial-interval 10m --max-interval 1h --timeout 30m\n"
        "slow = globals().get('slow', 0) + 1\nif slow == 1:\n    nbd.testing.sleep(3600)",
        "v1 = nbd.testing.now()\nnbd.sleep_until(v1 + 86400)  # unix seconds on the (skipped-ahead) clock\n"
        "slept = round((nbd.testing.now() - v1) / 86400, 2)",
        "nbd.send_event('approved', {'by': 'ann'})\ngot = nbd.wait_for_event('approved', timeout='2d')",
        "real = time.monotonic() - t0",
    ]
    session = run_session(store_dir, cells, env=SKIP, probes={"real": "real < 30", "slow": "slow", "slept": "slept",
                                                               "got": "got"})
    assert all(c["success"] for c in session.cells), session.stdout
    # sleep_until skipped a day; an event already sent is taken, not skipped past
    assert session.probes == {"real": "True", "slow": "2", "slept": "1.0", "got": "{'by': 'ann'}"}
    records = journal_records(store_dir)
    assert next(r for r in records if r["t"] == "run")["time_skipped"] is True
    attempts = [r for r in records if r["t"] == "attempt"]
    assert [a["next_delay"] for a in attempts[:3]] == [3600.0, 7200.0, None]
    timed = attempts[3:]
    assert [(a["error"] or {}).get("ename") for a in timed] == ["StepTimeoutError", None]
    assert timed[0]["ended_at"] - timed[0]["started_at"] == pytest.approx(1800, abs=5)
    assert timed[1]["started_at"] - timed[0]["ended_at"] == pytest.approx(600, abs=5)
