"""The run queue and the worker engine with real kernels: `nbdurable submit` on a directory and a shared store;
100 queued runs through 4 workers on a shared store while one worker (with its runs and their kernels: a lost
machine) is SIGKILLed every 5-10 s; a queue's concurrency across workers, measured from the runs' own
times; a schedule and triggers on a shared store served by two workers, each firing once, a flow key's limit
holding across both while another key's run goes beside; a run whose machine died resumed by a worker already
polling: at once when the dead processes are on its host, after the lease expired when they were on another
machine (a worker in a pid namespace of its own: `unshare --pid`, as root).

CI runs 40 queued runs; NBDURABLE_SOAK=1 the issue's 100 (NBDURABLE_QUEUE_RUNS=N any number, NBDURABLE_SEED picks
the kills). Every run completes exactly once (one fresh run per submitted run; a killed one resumed, never started
again); no cell commits twice: across a run's resume chain each cell's execution is committed once (the
journal's primary key ``(run_id, seq)`` refuses a record written twice), and `nbdurable check` passes."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from nbdurable.store import Store
from nbdurable.store.shared import SharedStore

from helpers import CLI, clean_env, run_cli, start_cli

pytestmark = [pytest.mark.kernel, pytest.mark.slow]
# the 100 runs with NBDURABLE_SOAK=1 (about 8 minutes on a busy 2-core machine: 100 kernel starts); CI runs 40
RUNS = int(os.environ.get("NBDURABLE_QUEUE_RUNS") or (100 if os.environ.get("NBDURABLE_SOAK") else 40))
# a killed worker's claims wait for their leases to expire: short here (a run's own lease is taken over at once
# on its host, its pid being dead); a small pool per process: 4 workers, 8 runs and their kernels on one server
FAST = {"NBDURABLE_LEASE_TIMEOUT": "8", "NBDURABLE_PG_POOL_SIZE": "2"}


def notebook(path: Path, *, work: float = 0.2, cells: int = 3) -> Path:
    """A parameterized notebook (``n``, ``event``) of ``cells`` cells sleeping ``work`` s each."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("n = 0\nevent = None\nscheduled_at = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(f"import time\ntime.sleep({work})\nstep{i} = n + {i}")
                          for i in range(cells))]
    nbformat.write(nb, path)
    return path


def descendants(pid: int) -> list[int]:
    """``pid``'s descendants, parents before children (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def _is_kernel(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ipykernel" in f.read()
    except OSError:
        return False


def _mid_run_worker(store: Store, workers: list[subprocess.Popen[Any]]) -> int | None:
    """The index of a worker one of whose runs committed a cell and has not ended (its kernel holds the run's
    lease), else None."""
    for run_id in store.run_ids():
        records = store.read_journal(run_id)
        holder = store.lease_holder(run_id)
        if holder is None or not any(r.get("t") == "step_end" for r in records) or records[-1].get("t") == "run_end":
            continue
        for i, worker in enumerate(workers):
            if holder["pid"] in descendants(worker.pid):
                return i
    return None


def kill_machine(worker: subprocess.Popen[Any]) -> None:
    """SIGKILL a worker, the runs it started and their kernels, parents first (as a lost machine: no runner
    sees its kernel die)."""
    tree = [worker.pid, *descendants(worker.pid)]
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait()


def logged_worker(log: Path, *args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[Any]:
    """``nbdurable worker ARGS`` logging JSON lines to ``log`` (kept: a worker that exits on its own says why)."""
    with open(log, "w") as log_file:
        return start_cli("worker", *args, "--log-format", "json", cwd=cwd, env=env, stderr=log_file, text=True)


def heads(store: Store) -> dict[str, dict[str, Any]]:
    return {run_id: store.journal_head(run_id) or {} for run_id in store.run_ids()}


def end_status(store: Store, run_id: str) -> str | None:
    if not store.journal_exists(run_id):
        return None
    ends = [r for r in store.read_journal(run_id) if r.get("t") == "run_end"]
    return str(ends[-1]["status"]) if ends else None


def chains(store: Store, submitted: list[str]) -> dict[str, list[str]]:
    """Each submitted run's resume chain (the run, the run resuming it, ...)."""
    following = {h.get("resumed_from"): run_id for run_id, h in heads(store).items() if h.get("resumed_from")}
    found = {}
    for run_id in submitted:
        chain = [run_id]
        while chain[-1] in following:
            chain.append(following[chain[-1]])
        found[run_id] = chain
    return found


def committed_twice(store: Store, chain: list[str]) -> list[str]:
    """Cells (source hashes) whose execution was committed more than once across a resume chain."""
    counts: dict[str, int] = {}
    for run_id in chain:
        started: dict[int, str] = {}
        for record in store.read_journal(run_id):
            if record.get("t") == "step_start" and record.get("parent") is None:
                started[int(record["ordinal"])] = str(record["source_hash"])
            elif record.get("t") == "step_end" and record.get("status") == "completed" and record["ordinal"] in started:
                counts[started[record["ordinal"]]] = counts.get(started[record["ordinal"]], 0) + 1
    return [h for h, n in counts.items() if n > 1]


def max_overlap(spans: list[tuple[float, float]]) -> int:
    points = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    level = peak = 0
    for _, step in points:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("kind", ["local", "postgresql"])
def test_submit_queues_a_run_that_a_worker_of_its_queue_starts(kind: str, tmp_path: Path,
                                                               request: pytest.FixtureRequest) -> None:
    location = str(tmp_path / "store") if kind == "local" else request.getfixturevalue("pg_store")
    if kind == "postgresql":
        SharedStore.open(location)  # its objects' place recorded (the fixture's NBDURABLE_OBJECTS)
    env = {"NBDURABLE_STORE": location}
    notebook(tmp_path / "nb.ipynb", work=0.0, cells=1)
    first = run_cli("submit", "nb.ipynb", "-p", "n", "41", "--queue", "reports", cwd=tmp_path, env=env)
    second = run_cli("submit", "nb.ipynb", "--priority", "5", cwd=tmp_path, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.output + second.output
    reports, default = first.stdout.strip(), second.stdout.strip()
    listed = run_cli("queue", "list", "--json", cwd=tmp_path, env=env)
    assert '"queue": "reports", "concurrency": null, "waiting": 1' in listed.stdout, listed.output
    only = run_cli("worker", "--once", "--queue", "reports", "--poll", "0.2", cwd=tmp_path, env=env, timeout=300)
    assert only.returncode == 0 and "started 1 new run(s)" in only.stderr, only.stderr
    store = Store.open(location)
    assert store.run_ids() == [reports]  # the worker of `reports` left the default queue alone
    head = store.journal_head(reports) or {}
    assert head["params"] == {"n": 41} and head["origin"]["queue"] == "reports" and head["origin"]["submitted"]
    rest = run_cli("worker", "--once", "--poll", "0.2", cwd=tmp_path, env=env, timeout=300)
    assert rest.returncode == 0 and "started 1 new run(s)" in rest.stderr, rest.stderr
    assert sorted(store.run_ids()) == sorted([reports, default])
    assert {end_status(store, r) for r in (reports, default)} == {"completed"}
    assert store.open_claims() == [] and store.unfinished_claims() == []
    assert "no run waits" in run_cli("queue", "list", cwd=tmp_path, env=env).stdout
    assert run_cli("queue", "set", "reports", "--concurrency", "1", cwd=tmp_path, env=env).returncode == 0
    assert run_cli("queue", "list", cwd=tmp_path, env=env).stdout.split("\n")[1].split() == ["reports", "1", "0"]


def _other_machine() -> list[str]:
    """A command prefix that runs a process as on another machine: its own pid namespace, so the leases it
    takes name a process table nobody else can look into (they are taken over only once they expire)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a second machine is simulated with `unshare --pid` (util-linux), which needs root")
    return ["unshare", "--pid", "--fork"]


@pytest.mark.parametrize("kind", ["local", "postgresql", "postgresql, from another machine"])
def test_a_run_whose_machine_died_is_resumed_by_another_worker_from_its_last_committed_cell(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    location = str(tmp_path / "store") if kind == "local" else request.getfixturevalue("pg_store")
    prefix = _other_machine() if "another machine" in kind else []
    if kind != "local":
        SharedStore.open(location)
    env = {"NBDURABLE_STORE": location, **FAST}
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("open('first.txt', 'a').write('x')"),
                nbformat.v4.new_code_cell("import os, time\nopen('second.txt', 'a').write('x')\n"
                                          "while not os.path.exists('go'):\n    time.sleep(0.1)")]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    submitted = run_cli("submit", "nb.ipynb", cwd=tmp_path, env=env)
    assert submitted.returncode == 0, submitted.output
    run_id = submitted.stdout.strip()
    first = subprocess.Popen([*prefix, *CLI, "worker", "--poll", "0.2"], cwd=tmp_path, env=clean_env(env),
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "second.txt").exists():
        assert time.monotonic() < deadline, "the run never reached its second cell"
        time.sleep(0.1)
    log_path = tmp_path / "second.log"  # a second worker, already polling when the first machine dies
    second = logged_worker(log_path, "--poll", "0.2", cwd=tmp_path, env=env)
    while '"event": "worker_started"' not in log_path.read_text():
        assert second.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    kill_machine(first)  # the worker, the run's process and its kernel, mid-cell
    killed_at = time.time()
    (tmp_path / "go").touch()
    store = Store.open(location)
    try:
        while end_status(store, chains(store, [run_id])[run_id][-1]) is None or store.unfinished_claims():
            assert time.monotonic() < deadline + 60, "the run was not recovered (or its claim not finished)"
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGINT)
        second.wait(60)
    log = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    chain = chains(store, [run_id])[run_id]
    assert len(chain) == 2 and end_status(store, chain[1]) == "completed", log
    (recovering,) = [line for line in log if line["event"] == "run_recovering"]
    assert recovering["run_id"] == run_id
    waited = dt.datetime.fromisoformat(recovering["ts"]).timestamp() - killed_at
    lease_timeout = float(FAST["NBDURABLE_LEASE_TIMEOUT"])
    if prefix:  # nobody here could see that machine's processes die: its lease had to expire (heartbeats: 1/3)
        assert waited >= lease_timeout * 2 / 3 - 0.5, waited
    else:  # its dead pid (or released flock) was seen at once
        assert waited < lease_timeout * 2 / 3 - 0.5, waited
    assert (tmp_path / "first.txt").read_text() == "x"  # committed before the kill: restored, not run again
    assert (tmp_path / "second.txt").read_text() == "xx"  # cut short by the kill: executed again
    statuses = [r["status"] for r in store.read_journal(chain[1]) if r.get("t") == "step_end"]
    assert statuses == ["restored", "completed"]
    assert store.unfinished_claims() == [] and store.open_claims() == []


@pytest.mark.timeout(100 + RUNS * 20)
def test_queued_runs_through_four_workers_one_killed_every_few_seconds_complete_exactly_once(
        pg_store: str, tmp_path: Path) -> None:
    SharedStore.open(pg_store)
    env = {"NBDURABLE_STORE": pg_store, **FAST}
    notebook(tmp_path / "nb.ipynb", work=0.5)  # cells long enough for kills to land mid-cell, not only in start-ups
    store = Store.open(pg_store)
    submitted = []
    for i in range(RUNS):  # (as `nbdurable submit` does, without a process per run)
        from nbdurable.runtime.run import new_run_id

        run_id = new_run_id()
        store.claim("submit", run_id, {"run_id": run_id, "notebook": str(tmp_path / "nb.ipynb"), "params": {"n": i},
                                       "origin": {"submitted": True}, "cwd": str(tmp_path)})
        submitted.append(run_id)
    logs: list[Path] = []

    def start_worker() -> subprocess.Popen[Any]:
        logs.append(tmp_path / f"worker{len(logs)}.log")
        return logged_worker(logs[-1], "--poll", "0.3", "--max-concurrent", "2", cwd=tmp_path, env=env)

    workers = [start_worker() for _ in range(4)]
    rng = random.Random(os.environ.get("NBDURABLE_SEED", "19"))
    kills, next_kill = 0, time.monotonic() + rng.uniform(5, 10)
    deadline = time.monotonic() + RUNS * 20  # each kill takes down a worker's runs: 100 runs saw ~105 kills
    try:
        while True:
            ended = sum(1 for chain in chains(store, submitted).values() if end_status(store, chain[-1]) is not None)
            if ended == RUNS:
                break
            exited = [i for i, w in enumerate(workers) if w.poll() is not None]
            assert not exited, [log.read_text()[-2000:] for log in logs]
            assert time.monotonic() < deadline, f"{ended} of {RUNS} runs ended after {kills} kills"
            mid_run = _mid_run_worker(store, workers) if kills == 0 else None
            wanted = ended < RUNS * 0.9 or kills < 3  # (runs got shorter: the last 10% may still need kills)
            if time.monotonic() >= next_kill and wanted and (kills > 0 or mid_run is not None):
                busy = [i for i, w in enumerate(workers) if any(_is_kernel(p) for p in descendants(w.pid))]
                victim = rng.choice(busy or list(range(len(workers))))  # preferably one whose runs execute
                if mid_run is not None:  # the first kill lands mid-run for sure: a worker whose run committed a cell
                    victim = mid_run
                kill_machine(workers[victim])
                kills += 1
                workers[victim] = start_worker()
                next_kill = time.monotonic() + rng.uniform(3, 6)  # (40 runs take ~15 s: at least 3 kills)
            time.sleep(0.2 if kills == 0 else 0.5)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGINT)
        for worker in workers:
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                kill_machine(worker)
    found = chains(store, submitted)
    print(f"{RUNS} runs, {kills} kills, {sum(len(c) > 1 for c in found.values())} resumed after a kill")
    assert kills >= 3
    fresh = [h for h in heads(store).values() if not h.get("resumed_from")]
    assert sorted(h["run_id"] for h in fresh) == sorted(submitted)  # each queued run started once, never again
    assert {r: end_status(store, c[-1]) for r, c in found.items() if end_status(store, c[-1]) != "completed"} == {}
    assert {r: c for r, c in found.items() if committed_twice(store, c)} == {}
    assert sum(len(c) > 1 for c in found.values()) >= 1  # some runs were killed mid-run and resumed
    check = run_cli("check", env=env, cwd=tmp_path, timeout=300)
    assert check.returncode == 0 and "Result: ok" in check.stdout, check.output


def test_a_queues_concurrency_holds_across_workers(pg_store: str, tmp_path: Path) -> None:
    SharedStore.open(pg_store)
    env = {"NBDURABLE_STORE": pg_store, **FAST}
    notebook(tmp_path / "nb.ipynb", work=1.5, cells=1)
    assert run_cli("queue", "set", "limited", "--concurrency", "2", cwd=tmp_path, env=env).returncode == 0
    for i in range(6):
        done = run_cli("submit", "nb.ipynb", "-p", "n", str(i), "--queue", "limited", cwd=tmp_path, env=env)
        assert done.returncode == 0, done.output
    command = ["worker", "--poll", "0.2", "--max-concurrent", "3"]
    workers = [start_cli(*command, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL) for _ in range(3)]
    store = Store.open(pg_store)
    deadline = time.monotonic() + 400
    try:
        while len(store.run_ids()) < 6 or any(end_status(store, r) is None for r in store.run_ids()):
            assert time.monotonic() < deadline, "the queued runs did not end"
            time.sleep(0.5)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGINT)
            worker.wait(60)
    frame = store.catalog().query("SELECT epoch(started_at) AS s, epoch(ended_at) AS e, status FROM runs")
    spans = list(zip(frame["s"], frame["e"], strict=True))
    assert len(spans) == 6 and set(frame["status"]) == {"completed"}
    assert max_overlap(spans) == 2, spans  # never more than the queue's 2 (and the limit, not a worker, held them)


def test_a_schedule_and_triggers_on_a_shared_store_fire_once_each_and_a_key_limit_holds_across_two_workers(
        pg_store: str, tmp_path: Path) -> None:
    SharedStore.open(pg_store)
    env = {"NBDURABLE_STORE": pg_store, **FAST}
    notebook(tmp_path / "nb.ipynb", work=0.0, cells=1)
    notebook(tmp_path / "job.ipynb", work=3.0, cells=1)
    added = run_cli("schedule", "add", "tick", "nb.ipynb", "--every", "3s", cwd=tmp_path, env=env)
    assert added.returncode == 0, added.output
    for trigger in (("orders", "nb.ipynb", "--on", "order"),
                    ("jobs", "job.ipynb", "--on", "job", "--concurrency", "1", "--key", 'event["customer"]')):
        made = run_cli("trigger", "add", *trigger, cwd=tmp_path, env=env)
        assert made.returncode == 0, made.output
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [logged_worker(log, "--poll", "0.3", "--max-concurrent", "2", cwd=tmp_path, env=env) for log in logs]
    store = Store.open(pg_store)

    def origins() -> dict[str, dict[str, Any]]:
        return {r: (store.journal_head(r) or {}).get("origin") or {} for r in store.run_ids()}

    try:
        sent = run_cli("send", "order", "--data", '{"customer": 7}', cwd=tmp_path, env=env)
        assert sent.returncode == 0, sent.output
        for customer in (7, 7, 7, 8):  # three runs of one key, one at a time across both workers; 8 beside them
            store.send_event("job", {"customer": customer})  # at once (a `send` process each would spread them)
        deadline = time.monotonic() + 240
        while sum(1 for r, o in origins().items() if o.get("trigger") == "jobs" and end_status(store, r)) < 4:
            assert time.monotonic() < deadline, "the keyed runs did not end"
            time.sleep(0.5)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGINT)
            worker.wait(60)
    deadline = time.monotonic() + 120
    while any(end_status(store, r) is None for r in store.run_ids()):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    found = origins()
    slots = [o["slot"] for o in found.values() if o.get("schedule") == "tick"]
    triggered = [r for r, o in found.items() if o.get("trigger") == "orders"]
    assert len(slots) >= 2 and len(set(slots)) == len(slots), slots  # each slot once, by one of the two workers
    assert len(triggered) == 1 and (store.journal_head(triggered[0]) or {})["params"]["event"] == {"customer": 7}
    assert {end_status(store, r) for r in store.run_ids()} == {"completed"}
    frame = store.catalog().query("SELECT run_id, epoch(started_at) AS s, epoch(ended_at) AS e FROM runs")
    span = {r: (s, e) for r, s, e in zip(frame["run_id"], frame["s"], frame["e"], strict=True)}
    jobs = {r: (store.journal_head(r) or {})["params"]["event"]["customer"] for r, o in found.items()
            if o.get("trigger") == "jobs"}
    assert sorted(jobs.values()) == [7, 7, 7, 8]
    decisions = [line for log in logs for line in log.read_text().splitlines() if "trigger:jobs" in line]
    assert max_overlap([span[r] for r, c in jobs.items() if c == 7]) == 1, decisions  # the key's limit, across both
    # The other key's run did not wait for the key's chain. (Not "it overlapped one of them": on a loaded
    # machine its run can start and end before a kernel of the first key's run is up; a run's span starts
    # when its kernel records it.)
    (other,) = [r for r, c in jobs.items() if c == 8]
    assert span[other][0] < max(span[r][1] for r, c in jobs.items() if c == 7), decisions
