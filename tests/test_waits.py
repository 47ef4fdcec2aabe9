"""Cell retry policies and timeouts, durable sleep and events in real IPython shells (fresh processes,
killed with SIGKILL where a crash is the point)."""

from __future__ import annotations

import gc
import json
import time
import warnings
from pathlib import Path

import pytest

import nbdurable as nbd
from nbdurable.errors import OptionsError
from nbdurable.runtime.waits import matches
from nbdurable.store import Store

from conftest import run_session
from helpers import journal_records

# ----- %%durable --retries / --timeout -------------------------------------------------------------


def test_a_flaky_cell_succeeds_on_attempt_3_with_each_attempt_recorded(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "tries"
    cell = (
        "%%durable --retries 4 --initial-interval 50ms --backoff 2\n"
        f"import pathlib\np = pathlib.Path({str(counter)!r})\n"
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
        "if len(p.read_text()) < 3:\n    raise ConnectionError('flaky service')\n"
        "answer = len(p.read_text()) * 14\nanswer"
    )
    session = run_session(store_dir, [cell], probes={"answer": "answer", "out": "Out.get(2)"})
    assert session.cells[-1]["success"], session.stdout
    assert session.probes == {"answer": "42", "out": "42"}  # the last expression is shown as the cell's result
    assert "attempt 1 of 5 failed (ConnectionError: flaky service); retrying in 0.05 s" in session.stdout
    attempts = journal_records(store_dir, "attempt")
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["next_delay"] for a in attempts] == [0.05, 0.1, None]
    assert [(a["error"] or {}).get("ename") for a in attempts] == ["ConnectionError", "ConnectionError", None]
    assert attempts[1]["started_at"] - attempts[0]["ended_at"] >= 0.05  # the backoff was waited
    start = next(r for r in journal_records(store_dir, "step_start") if r["source"].startswith("import pathlib"))
    assert start["options"]["retry"]["max_attempts"] == 5 and start["ordinal"] == attempts[0]["ordinal"]
    table = Store.open(store_dir).catalog().query(
        "SELECT attempt, coalesce(error_ename, '-'), coalesce(next_delay_s, -1) FROM attempts ORDER BY attempt")
    assert table.values.tolist() == [[1, "ConnectionError", 0.05], [2, "ConnectionError", 0.1], [3, "-", -1]]


def test_a_cell_timeout_interrupts_each_attempt_and_the_last_error_fails_the_cell(store_dir: Path) -> None:
    cell = ("%%durable --retries 1 --initial-interval 0 --timeout 300ms\nimport time\nstarted = time.time()\n"
            "time.sleep(30)")
    begun = time.monotonic()
    session = run_session(store_dir, [cell])
    assert time.monotonic() - begun < 20
    assert session.cells[-1]["error"].startswith("StepTimeoutError")
    attempts = [(a["attempt"], a["error"]["ename"]) for a in journal_records(store_dir, "attempt")]
    assert attempts == [(1, "StepTimeoutError"), (2, "StepTimeoutError")]
    end = [r for r in journal_records(store_dir, "step_end") if r["ordinal"] == 1][0]
    assert end["status"] == "failed" and end["error"]["ename"] == "StepTimeoutError"


def test_bad_cell_policy_options_are_clear_errors(store_dir: Path) -> None:
    session = run_session(store_dir, ["%%durable --retries 2 --initial-interval soon\nx = 1",
                                      "%%durable --backoff 3\nx = 1"])
    assert "not a duration: 'soon'" in session.cells[1]["error"]
    assert "--backoff needs --retries" in session.cells[2]["error"]
    with pytest.raises(OptionsError):
        nbd.sleep("a while")


# ----- durable sleep ----------------------------------------------------------------------------


@pytest.mark.slow
def test_sleep_across_a_crash_waits_only_the_remaining_time(store_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    cell = (
        "import os, pathlib, threading, time, nbdurable as nbd\n"
        f"if not pathlib.Path({str(marker)!r}).exists():\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "    threading.Timer(1.0, os.kill, (os.getpid(), 9)).start()\n"
        "t0 = time.time()\nnbd.sleep('5s')\nwaited = time.time() - t0\nwoke = time.time()"
    )
    assert run_session(store_dir, [cell]).killed
    second = run_session(store_dir, [cell], probes={"waited": "waited", "woke": "woke"})
    assert second.cells[-1]["success"], second.stdout
    sleep = next(r for r in journal_records(store_dir, "step_start") if r["name"] == "nbd.sleep")
    wake_at = sleep["options"]["wake_at"]
    assert float(second.probes["woke"]) >= wake_at  # the recorded wake-up time was honoured
    assert float(second.probes["waited"]) < 4.0  # but not waited again from the start (5 s)
    assert "sleeping until" in second.stdout


# ----- events -----------------------------------------------------------------------------------


def test_matches_is_a_recursive_dict_subset() -> None:
    assert matches({"week": 47, "by": "ana"}, {"week": 47})
    assert matches({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}})
    assert not matches({"a": {"b": 2}}, {"a": {"b": 1}})
    assert not matches({"week": 46}, {"week": 47}) and not matches(None, {"week": 47})
    assert matches("anything", None) and matches({"a": {}}, {"a": {}})


def test_wait_for_event_takes_each_matching_event_once_and_times_out(store_dir: Path) -> None:
    store = Store.open(store_dir)
    store.send_event("report.approved", {"week": 47, "early": True})  # before the run started: never seen
    cells = [
        "import threading, nbdurable as nbd\n"
        "threading.Timer(0.5, nbd.send_event, ('report.approved', {'week': 46})).start()\n"
        "threading.Timer(0.8, nbd.send_event, ('report.approved', {'week': 47, 'by': 'ana'})).start()\n"
        "first = nbd.wait_for_event('report.approved', match={'week': 47}, timeout='20s')",
        "second = nbd.wait_for_event('report.approved', match={'week': 47}, timeout=0.5)",
        "other = nbd.wait_for_event('report.approved', timeout=1)",
    ]
    session = run_session(store_dir, cells, probes={"first": "first", "second": "second", "other": "other"})
    assert session.probes == {"first": "{'week': 47, 'by': 'ana'}", "second": "None", "other": "{'week': 46}"}
    assert len(journal_records(store_dir, "consumed")) == 2
    assert "waiting for event 'report.approved'" in session.stdout


def test_send_event_rejects_bad_names_and_data(store_dir: Path) -> None:
    store = Store.open(store_dir)
    with pytest.raises(OptionsError, match="not an event name"):
        nbd.send_event("has space", store=store)
    with pytest.raises(OptionsError, match="must be JSON"):
        nbd.send_event("ok", {"when": object()}, store=store)
    assert nbd.send_event("ok", [1, 2], store=store) and json.loads(json.dumps(store.events()[0]["data"])) == [1, 2]


@pytest.mark.kernel
@pytest.mark.slow
def test_interactive_waits_count_down_in_place_and_are_interruptible(tmp_path: Path) -> None:
    from kernels import Kernel

    store_dir = tmp_path / "store"
    kernel = Kernel({"NBDURABLE_STORE": str(store_dir), "NBDURABLE_NOTEBOOK": "waits"}, tmp_path)
    try:
        kernel.execute("%load_ext nbdurable")
        for code, shown in (("import nbdurable as nbd\nnbd.sleep('1m')", "sleeping until"),
                            ("nbd.wait_for_event('never.sent')", "waiting for event 'never.sent'")):
            messages: list[dict] = []
            kernel.interrupt_later(2.5)
            begun = time.monotonic()
            reply = kernel.kc.execute_interactive(code, timeout=60, output_hook=messages.append)
            assert time.monotonic() - begun < 20 and reply["content"]["ename"] == "KeyboardInterrupt"
            displays = [m for m in messages if m["msg_type"] in ("display_data", "update_display_data")]
            approvals = [m for m in displays
                         if m["content"]["metadata"].get("nbdurable", {}).get("notice") == "approval"]
            assert len(approvals) == (1 if "event" in shown else 0)  # an event wait also shows Approve/Reject
            displays = [m for m in displays if m not in approvals]
            assert displays[0]["msg_type"] == "display_data" and shown in displays[0]["content"]["data"]["text/plain"]
            assert any(m["msg_type"] == "update_display_data" for m in displays)  # refreshed in place, not appended
    finally:
        kernel.close()
    with warnings.catch_warnings(record=True) as caught:  # what the test's threads left for the collector
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert not [w for w in caught if "unclosed event loop" in str(w.message)], "an event loop left to the collector"
    sleep = next(r for r in journal_records(store_dir, "step_start") if r["name"] == "nbd.sleep")
    assert sleep["options"]["wake_at"] > time.time()  # recorded before the wait: a resume waits only what is left
    assert not [r for r in journal_records(store_dir, "step_end") if r["ordinal"] == sleep["ordinal"]]  # never ended
