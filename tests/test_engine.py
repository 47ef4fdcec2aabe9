"""The engine with real kernels: `nbdurable worker` processes firing schedules (each slot exactly one run,
across worker SIGKILLs and two workers on one store), each catch-up policy after six hours without a worker,
and the concurrency limits (--max-concurrent, a schedule's --concurrency) measured from the runs' own times.

Sizes: the cron test runs 12 slots of a 15-minute cron (3 simulated hours on the time-skipping clock) with 3
worker kills; with NBDURABLE_SOAK=1 it runs the full 30 days, 2,880 slots (hours of kernels: not in CI);
NBDURABLE_SOAK_SLOTS=N runs N slots.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

from nbdurable.headless.scheduler import make_schedule
from nbdurable.run_history import history
from nbdurable.runtime.schedules import Timing, slot_iso, slots
from nbdurable.store import Store

from helpers import run_cli, start_cli

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

SKIP = {"NBDURABLE_TIME_SKIP": "1"}
SLOTS = int(os.environ.get("NBDURABLE_SOAK_SLOTS") or (2880 if os.environ.get("NBDURABLE_SOAK") else 12))


def notebook(path: Path, work: float = 0.0) -> Path:
    """A parameterized notebook (``scheduled_at``, tagged `parameters`) whose second cell sleeps ``work`` s."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("scheduled_at = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(f"import time\ntime.sleep({work})\nprint(scheduled_at)")]
    nbformat.write(nb, path)
    return path


def slot_runs(store: Store, schedule: str) -> dict[str, list[str]]:
    """Each slot's new runs (not resumes) of ``schedule``, from the journals' first records."""
    found: dict[str, list[str]] = {}
    for run_id in store.run_ids():
        head = store.journal_head(run_id) or {}
        origin = head.get("origin") or {}
        if origin.get("schedule") == schedule and not head.get("resumed_from"):
            found.setdefault(origin["slot"], []).append(run_id)
    return found


def ended(store: Store, run_id: str) -> str | None:
    ends = [r for r in store.read_journal(run_id) if r.get("t") == "run_end"]
    return ends[-1]["status"] if ends else None


def wait_all_ended(store: Store, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while any(ended(store, r) is None for r in store.run_ids()):
        assert time.monotonic() < deadline, "runs still going"
        time.sleep(0.2)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    points = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    level = peak = 0
    for _, step in points:
        level += step
        peak = max(peak, level)
    return peak


def spans(store: Store, schedule: str | None = None) -> list[tuple[float, float]]:
    where = f"WHERE schedule = '{schedule}'" if schedule else ""
    frame = store.catalog().query(f"SELECT epoch(started_at) AS s, epoch(ended_at) AS e FROM runs {where}")
    return list(zip(frame["s"], frame["e"], strict=True))


def add_past(store: Store, name: str, nb: Path, *, every: float, hours: float, **options) -> None:
    """A schedule created ``hours`` ago that no worker evaluated since: the state six hours of downtime
    leave (its slots since then are missed)."""
    now = time.time()
    if now % every > every - 5 or now % every < 90:  # keep the newest slot clear of now and of the grace
        time.sleep(95 - now % every if now % every < 90 else every - now % every + 95)
    store.add_schedule(make_schedule(name, nb, every=every, created_at=time.time() - hours * 3600, cwd=str(nb.parent),
                                     **options))


@pytest.mark.timeout(120 + SLOTS * 20)
def test_a_cron_over_simulated_days_with_three_worker_kills_runs_every_slot_exactly_once(tmp_path: Path) -> None:
    count = SLOTS
    nb = notebook(tmp_path / "tick.ipynb")
    added = run_cli("schedule", "add", "tick", nb.name, "--cron", "*/15 * * * *", "--store", "store", cwd=tmp_path)
    assert added.returncode == 0, added.output
    store = Store.open(tmp_path / "store")
    created = store.read_schedule("tick")["created_at"]
    timing = Timing(cron="*/15 * * * *")
    wanted = [slot_iso(timing, s) for s in slots(timing, created, created + (count + 1) * 900)][:count]
    rng = random.Random(os.environ.get("NBDURABLE_SEED", "17"))
    kills = sorted(rng.sample(range(1, count - 1), 3))
    command = ["worker", "--poll", "0.1", "--max-concurrent", "2", "--store", "store"]
    worker = start_cli(*command, cwd=tmp_path, env=SKIP, stderr=subprocess.DEVNULL)
    killed = 0
    deadline = time.monotonic() + 60 + count * 18
    try:
        while True:
            runs = slot_runs(store, "tick")
            done = [s for s in wanted if s in runs and all(ended(store, r) == "completed" for r in runs[s])]
            if len(done) == count:
                break
            if kills and len(runs) >= kills[0]:
                time.sleep(rng.uniform(0, 0.5))  # a random moment: claiming, starting, waiting, skipping
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                killed += 1
                kills.pop(0)
                worker = start_cli(*command, cwd=tmp_path, env=SKIP, stderr=subprocess.DEVNULL)
            assert time.monotonic() < deadline, f"{len(done)} of {count} slots done"
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(60)
    wait_all_ended(store)
    runs = slot_runs(store, "tick")
    assert killed == 3
    assert [s for s in wanted if len(runs.get(s, [])) != 1] == []  # each slot of the window: exactly one run
    assert all(len(ids) == 1 for ids in runs.values())  # and none twice beyond it
    assert sorted(runs)[:count] == wanted  # nothing before the first slot, none missing


def test_each_catch_up_policy_after_six_hours_without_a_worker(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "nb.ipynb")
    store = Store.open(tmp_path / "store")
    for policy in ("all", "latest", "none"):
        add_past(store, policy, nb, every=7200, hours=6, catchup=policy)
    now = time.time()
    due = [slot_iso(Timing(every=7200), s) for s in slots(Timing(every=7200), now - 6 * 3600, now)]
    assert len(due) == 3
    first = run_cli("worker", "--once", "--max-concurrent", "4", "--store", "store", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "schedule none: 3 missed slot(s) skipped (--catchup none)" in first.stderr, first.stderr
    assert "schedule latest: 2 missed slot(s) skipped (--catchup latest)" in first.stderr
    assert {name: sorted(slot_runs(store, name)) for name in ("all", "latest", "none")} == \
        {"all": due, "latest": due[-1:], "none": []}
    assert "started 4 new run(s)" in first.stderr
    # the skipping clock takes the next slot: each schedule fires it, "none" included
    second = run_cli("worker", "--once", "--store", "store", cwd=tmp_path, env=SKIP)
    assert second.returncode == 0 and "started 3 new run(s)" in second.stderr, second.stderr
    nxt = slot_iso(Timing(every=7200), slots(Timing(every=7200), now, now + 7200)[0])
    assert {name: sorted(slot_runs(store, name)) for name in ("all", "latest", "none")} == \
        {"all": [*due, nxt], "latest": [due[-1], nxt], "none": [nxt]}
    assert all(len(ids) == 1 for name in ("all", "latest", "none") for ids in slot_runs(store, name).values())
    frame = store.catalog().query("SELECT status, schedule, params FROM runs")
    assert set(frame["status"]) == {"completed"} and len(frame) == 7
    assert all('"scheduled_at"' in p for p in frame["params"])
    latest = history(schedule="latest", store=store)  # the history filters by schedule
    assert sorted(p["scheduled_at"] for p in latest["params"]) == [due[-1], nxt] and set(latest["schedule"]) == {
        "latest"}


def test_two_workers_on_one_store_start_no_slot_twice(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "nb.ipynb", work=0.5)
    store = Store.open(tmp_path / "store")
    add_past(store, "hourly", nb, every=3600, hours=8)
    command = ["worker", "--once", "--max-concurrent", "2", "--log-format", "json", "--store", "store"]
    workers = [start_cli(*command, cwd=tmp_path, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [w.communicate(timeout=300)[1] for w in workers]
    runs = slot_runs(store, "hourly")
    assert len(runs) == 8 and all(len(ids) == 1 for ids in runs.values()), (runs, logs)
    started = [log.count('"event": "run_started"') for log in logs]
    claimed = [log.count('"event": "slot_claimed"') for log in logs]
    assert sum(claimed) == 8 and sum(started) >= 8, (claimed, started)  # a run started twice stands down (75)
    wait_all_ended(store)
    assert {ended(store, r) for ids in runs.values() for r in ids} == {"completed"}


def test_max_concurrent_and_a_schedules_concurrency_are_never_exceeded(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "nb.ipynb", work=2.0)
    store = Store.open(tmp_path / "store")
    add_past(store, "one-at-a-time", nb, every=3600, hours=3, concurrency=1)
    add_past(store, "free", nb, every=3600, hours=4)
    done = run_cli("worker", "--once", "--max-concurrent", "3", "--poll", "0.2", "--store", "store", cwd=tmp_path,
                   timeout=400)
    assert done.returncode == 0, done.stderr
    assert len(slot_runs(store, "one-at-a-time")) == 3 and len(slot_runs(store, "free")) == 4
    everything, limited = spans(store), spans(store, "one-at-a-time")
    assert len(everything) == 7 and len(limited) == 3
    assert max_overlap(everything) <= 3 and max_overlap(limited) == 1, (everything, limited)
    assert max_overlap(everything) >= 2  # the limit is what held them back, not a serial worker


def test_a_worker_killed_with_sigkill_leaves_its_runs_running(tmp_path: Path) -> None:
    nb = tmp_path / "nb.ipynb"
    doc = nbformat.v4.new_notebook()
    doc.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("scheduled_at = None")
    params.metadata["tags"] = ["parameters"]
    doc.cells = [params, nbformat.v4.new_code_cell(
        "import pathlib, time\npathlib.Path('started').touch()\n"
        "while not pathlib.Path('go').exists():\n    time.sleep(0.05)")]
    nbformat.write(doc, nb)
    store = Store.open(tmp_path / "store")
    add_past(store, "slow", nb, every=3600, hours=1)
    worker = start_cli("worker", "--poll", "0.2", "--store", "store", cwd=tmp_path, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    (tmp_path / "go").touch()
    [run_id] = store.run_ids()
    deadline = time.monotonic() + 60
    while ended(store, run_id) is None:
        assert time.monotonic() < deadline, "the run died with its worker"
        time.sleep(0.1)
    assert ended(store, run_id) == "completed"
