"""Runs started by the engine (issue 17's seam): claims that name exactly one run, and the launcher that starts
a run from a warm forkserver with a chosen run id and a recorded origin. Real stores, real kernels."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from nbdurable.errors import OptionsError
from nbdurable.headless.launch import EXIT_CLAIM_HELD, Launcher, LaunchSpec
from nbdurable.runtime.run import new_run_id
from nbdurable.store import Store

from helpers import write_notebook


def test_one_claim_stands_across_racing_claimers(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    results: list[tuple[bool, dict]] = []
    barrier = threading.Barrier(8)

    def claimer(i: int) -> None:
        barrier.wait()
        results.append(store.claim("slot", "nightly@2026-12-06T00:00Z", {"run_id": f"run-{i}"}))

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [claim for won, claim in results if won]
    assert len(winners) == 1
    assert {claim["run_id"] for _, claim in results} == {winners[0]["run_id"]}  # everyone sees the standing one
    assert store.read_claim("slot", "nightly@2026-12-06T00:00Z")["run_id"] == winners[0]["run_id"]
    assert [c["key"] for c in store.claims("slot")] == ["nightly@2026-12-06T00:00Z"]
    assert store.claims("child") == []


def test_a_claim_that_fails_its_tag_is_never_used(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.claim("event", "k1", {"run_id": "r1"})
    path = next((tmp_path / "store" / "claims" / "event").glob("*.claim"))
    path.write_bytes(path.read_bytes().replace(b"r1", b"r2"))
    assert store.read_claim("event", "k1") is None
    assert store.claims("event") == []
    with pytest.raises(OptionsError, match="claim kind"):
        store.claim("../x", "k", {"run_id": "r"})


def test_claim_states_follow_the_starter_and_the_journal(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    run_id = new_run_id()
    _, claim = store.claim("slot", "s1", {"run_id": run_id})
    assert store.claim_state(claim) == "orphaned"  # nobody holds it, no journal: start it again
    lease = store.hold_claim("slot", "s1")
    assert lease is not None
    assert store.hold_claim("slot", "s1") is None  # held in this process too
    lease.release()
    with store.new_journal(run_id):
        pass
    assert store.claim_state(claim) == "started"


@pytest.mark.kernel
def test_launched_run_takes_its_id_and_records_its_origin(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "nb.ipynb", ["# parameters\nx = 1", "y = x * 2\nprint(y)"])
    store_path = tmp_path / "store"
    store = Store.open(store_path)
    run_id = new_run_id()
    store.claim("slot", "s@1", {"run_id": run_id})
    origin = {"schedule": "nightly", "slot": "s@1", "parent_run": None}
    launcher = Launcher()
    launched = launcher.start(LaunchSpec(str(store_path), str(nb), params={"x": 21}, origin=origin, run_id=run_id,
                                         claim=("slot", "s@1"), log_path=str(tmp_path / "run.log")))
    assert launched.wait(120) == 0, (tmp_path / "run.log").read_text()
    head = store.journal_head(run_id)
    assert head is not None and head["origin"] == origin and head["params"] == {"x": 21}
    assert store.claim_state(store.read_claim("slot", "s@1")) == "started"
    row = store.catalog().query(f"SELECT status, schedule, trigger, origin FROM runs WHERE run_id = '{run_id}'")
    assert row.to_dict("records") == [{"status": "completed", "schedule": "nightly", "trigger": None,
                                "origin": '{"parent_run": null, "schedule": "nightly", "slot": "s@1"}'}]
    # a second start of the same claim does nothing: the run exists
    again = launcher.start(LaunchSpec(str(store_path), str(nb), params={"x": 21}, origin=origin, run_id=run_id,
                                      claim=("slot", "s@1")))
    assert again.wait(60) == EXIT_CLAIM_HELD
    assert len(store.run_ids()) == 1


@pytest.mark.kernel
def test_a_resume_of_a_launched_run_keeps_its_origin(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "nb.ipynb", [
        "import os, pathlib\npathlib.Path('pid').write_text(str(os.getpid()))",
        "import time\nwhile not pathlib.Path('go').exists():\n    time.sleep(0.05)",
    ])
    store_path = tmp_path / "store"
    store = Store.open(store_path)
    run_id = new_run_id()
    launcher = Launcher()
    first = launcher.start(LaunchSpec(str(store_path), str(nb), origin={"trigger": "t1"}, run_id=run_id,
                                      cwd=str(tmp_path)))
    deadline = time.monotonic() + 90
    while not (tmp_path / "pid").exists():
        assert first.alive and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)  # the kernel dies mid-run
    first.wait(60)
    (tmp_path / "go").touch()
    second = launcher.start(LaunchSpec(str(store_path), str(nb), resume_run=run_id, cwd=str(tmp_path)))
    assert second.wait(120) == 0
    resumed = [r for r in store.run_ids() if r != run_id]
    assert len(resumed) == 1
    head = store.journal_head(resumed[0])
    assert head["resumed_from"] == run_id and head["origin"] == {"trigger": "t1"}


@pytest.mark.kernel
def test_dispatcher_starts_open_claims_by_priority_within_a_keys_limit(tmp_path: Path) -> None:
    from nbdurable.headless.dispatch import Dispatcher

    nb = write_notebook(tmp_path / "nb.ipynb", ["# parameters\nn = 0", "import time\ntime.sleep(0.5)"])
    store = Store.open(tmp_path / "store")
    ids = {}
    for n, priority in [(1, 0), (2, 5), (3, 0)]:
        ids[n] = new_run_id()
        store.claim("event", f"e{n}", {"run_id": ids[n], "notebook": str(nb), "params": {"n": n},
                                       "origin": {"trigger": "t"}, "priority": priority,
                                       "flow_key": "customer=7", "flow_limit": 1})
    lines: list[tuple[str, dict]] = []
    dispatcher = Dispatcher(store, log=lambda event, **f: lines.append((event, f)), max_concurrent=3)
    deadline = time.monotonic() + 180
    while store.open_claims() or dispatcher.running:
        dispatcher.tick()
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)
    runs = store.catalog().query("SELECT run_id, started_at, ended_at, status, origin FROM runs ORDER BY started_at")
    assert list(runs["status"]) == ["completed"] * 3
    assert list(runs["run_id"])[0] == ids[2]  # the higher priority first
    spans = list(zip(runs["started_at"], runs["ended_at"], strict=True))
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False)), spans  # never two at once
    # the limit held the others back in the queue: none was started only to find every slot taken
    assert [event for event, _ in lines].count("run_started") == 3 and not any(e == "run_deferred" for e, _ in lines)
    assert all('"flow_key": "customer=7"' in o for o in runs["origin"])


def test_a_claim_whose_process_dies_before_its_run_begins_is_retried_with_backoff(tmp_path: Path) -> None:
    from nbdurable.headless.dispatch import Dispatcher

    store = Store.open(tmp_path / "store")
    (tmp_path / "broken.ipynb").write_text("{ not a notebook")
    store.claim("event", "e1", {"run_id": new_run_id(), "notebook": str(tmp_path / "broken.ipynb"), "params": {}})
    lines: list[tuple[str, dict]] = []
    dispatcher = Dispatcher(store, log=lambda event, **f: lines.append((event, f)), max_concurrent=2)
    assert dispatcher.tick() == 1
    dispatcher.drain(60)
    failed = [f for event, f in lines if event == "run_failed_to_start"]
    assert len(failed) == 1 and failed[0]["attempts"] == 1 and failed[0]["retry_in_s"] == 2.0
    assert dispatcher.tick() == 0  # backing off: not started again at once
    assert [c["key"] for c in store.open_claims()] == ["e1"]  # still queued, nothing lost
