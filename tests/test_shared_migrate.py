"""``nbdurable migrate``: a directory store with every kind of record copied into PostgreSQL + fsspec
objects, every tag verified; killed half-way (``kill -9``) and run again, the same result; a run killed in
the directory store resumes from the shared one."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import nbformat
import pytest

from nbdurable.store import Store
from nbdurable.store.shared import SharedStore

from helpers import executions, run_cli, start_cli

NOTEBOOKS = Path(__file__).parent / "notebooks"


def _synthetic(store: Store, runs: int) -> None:
    for i in range(runs):
        with store.new_journal(f"run{i:04d}") as w:
            w.append({"t": "run", "notebook": "nb", "params": {}})
            w.append({"t": "step_start", "ordinal": 1})
            w.append({"t": "run_end", "status": "completed"})


def _contents(store: Store) -> dict[str, object]:
    return {"runs": {r: store.read_journal(r) for r in store.run_ids()}, "events": store.events(),
            "cancels": {r: store.cancel_request(r) for r in store.run_ids()}}


@pytest.mark.slow
def test_migrate_is_idempotent_and_resumes_after_kill(pg_store: str, tmp_path: Path) -> None:
    source = Store.open(tmp_path / "local")
    _synthetic(source, 200)
    _, tag = source.write_object("ab" * 16, lambda f: f.write(b"x" * 1000))
    with source.new_journal("withobj") as w:
        w.append({"t": "run", "notebook": "nb"})
        w.append({"t": "step_end", "ordinal": 1, "variables": [
            {"name": "x", "object": "ab" * 16, "format": "pickle", "tag": tag}]})
    source.write_object("cd" * 16, lambda f: f.write(b"garbage"))  # referenced by nobody: not copied
    source.send_event("report.approved", {"week": 47})
    source.request_cancel("run0001", by="ann", reason="stop")
    objects = (tmp_path / "objects").as_uri()
    args = ("migrate", "--from", str(tmp_path / "local"), "--to", pg_store, "--objects", objects)
    proc = start_cli(*args, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while "journals:" not in (line := proc.stderr.readline()):
        assert line, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    target = SharedStore.open(pg_store, objects=objects)
    copied = len(target.run_ids())
    assert 0 < copied < 201, copied  # killed half-way: whole runs only (one transaction each)
    for run_id in target.run_ids():  # what is there is whole
        assert target.read_journal(run_id) == source.read_journal(run_id)
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Copied 201 runs (602 records), 1 events, 1 cancel requests, 1 objects" in again.stdout
    assert _contents(target) == _contents(source)
    assert bytes(target.read_object("ab" * 16, tag)) == b"x" * 1000 and not target.has_object("cd" * 16)
    third = run_cli(*args, cwd=tmp_path)
    assert "0 objects (1 already there, verified)" in third.stdout and _contents(target) == _contents(source)


def _every_kind_of_decision(store: Store) -> dict[str, object]:
    """Schedules, triggers, a queue setting, their cursors, claims of several kinds in each state, an event
    sent with an idempotency key, a flow key's slot (a lease: never copied); returns the event."""
    store.add_schedule({"name": "nightly", "notebook": "n.ipynb", "cron": "0 3 * * *", "paused": False})
    store.advance_schedule_cursor("nightly", 1_765_000_000.5)
    store.add_trigger({"name": "orders", "notebook": "o.ipynb", "on": "order", "created_at": 1.0})
    store.write_trigger_cursor("orders", {"after": 99.0})
    store.set_queue("gpu", 2)
    run = "20261207T000000000-{:06x}".format
    store.claim("submit", "open", {"run_id": run(1), "notebook": "n.ipynb", "queue": "gpu", "priority": 3,
                                   "not_before": 5.0, "flow_key": "trigger:orders:c1", "flow_limit": 1})
    store.claim("slot", "nightly@1", {"run_id": run(2), "notebook": "n.ipynb"})
    store.mark_started("slot", "nightly@1")  # started, not seen to end
    store.claim("event", "orders:e1", {"run_id": run(3), "notebook": "o.ipynb"})
    store.mark_finished("event", "orders:e1")
    store.record_decision("dropped", "orders:e2", {"reason": "rate"})
    lease = store.hold_slot("trigger:orders:c1", 1)
    assert lease is not None
    lease.release()
    event, stored = store.send_event_once("order", {"n": 1}, "key-1")
    assert stored
    return event


def _decisions(store: Store) -> dict[str, object]:
    ident = lambda claims: sorted((c["kind"], c["key"]) for c in claims)  # noqa: E731
    return {"schedules": store.schedules(), "cursor": store.schedule_cursor("nightly"), "triggers": store.triggers(),
            "trigger cursor": store.read_trigger_cursor("orders"), "queues": store.queues(),
            "claims": {kind: store.claims(kind) for kind in ("submit", "slot", "event", "dropped")},
            "open": ident(store.open_claims()), "unfinished": ident(store.unfinished_claims())}


def test_every_kind_of_decision_is_copied_with_its_state(pg_store: str, tmp_path: Path) -> None:
    source = Store.open(tmp_path / "local")
    event = _every_kind_of_decision(source)
    objects = (tmp_path / "objects").as_uri()
    args = ("migrate", "--from", str(tmp_path / "local"), "--to", pg_store, "--objects", objects, "--no-progress")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert ("Copied 4 claims (0 already there), 1 idempotency keys, 5 schedules, triggers, queue settings and "
            "cursors (0 already there, kept)") in first.stdout
    target = SharedStore.open(pg_store, objects=objects)
    assert _decisions(target) == _decisions(source)
    assert _decisions(target)["open"] == [("submit", "open")] and _decisions(target)["unfinished"] == [
        ("slot", "nightly@1")]
    assert target.send_event_once("order", {"n": 2}, "key-1") == (event, False)  # the key names the same event
    assert target.events() == source.events() == [event]
    # the copied queue claim is served by the shared queue's columns: its queue, its not_before, its flow key
    assert target.take_claim(now=4.0) is None
    assert target.take_claim(now=6.0, queues=["default"]) is None
    assert target.take_claim(now=6.0, full_flows={"trigger:orders:c1"}) is None
    taken = target.take_claim(now=6.0, queues=["gpu"])
    assert taken is not None and taken.claim["run_id"] == source.read_claim("submit", "open")["run_id"]

    source.mark_finished("slot", "nightly@1")  # the source moved on; a second migrate brings the state along
    source.set_queue("gpu", 5)  # a definition already in the target is the target's: kept
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Copied 0 claims (4 already there), 1 idempotency keys" in again.stdout
    assert "(5 already there, kept)" in again.stdout
    assert target.unfinished_claims() == [] and target.read_queue("gpu")["concurrency"] == 2


def test_a_claim_of_another_store_is_refused(pg_store: str, tmp_path: Path) -> None:
    source = Store.open(tmp_path / "local")
    source.claim("slot", "nightly@1", {"run_id": "20261207T000000000-000001", "notebook": "n.ipynb"})
    target = SharedStore.open(pg_store, objects=(tmp_path / "objects").as_uri())
    target.claim("slot", "nightly@1", {"run_id": "20261207T000000000-000002", "notebook": "n.ipynb"})
    result = run_cli("migrate", "--from", str(tmp_path / "local"), "--to", pg_store, "--no-progress", cwd=tmp_path)
    assert result.returncode != 0 and "already has a different slot claim 'nightly@1'" in result.stderr
    assert target.read_claim("slot", "nightly@1")["run_id"].endswith("000002")  # the target's stands


def test_damaged_records_are_never_copied(pg_store: str, tmp_path: Path) -> None:
    source = Store.open(tmp_path / "local")
    _synthetic(source, 2)
    path = source.journal_path("run0001")
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    result = run_cli("migrate", "--from", str(tmp_path / "local"), "--to", pg_store, "--no-progress", cwd=tmp_path,
                     env={"NBDURABLE_OBJECTS": (tmp_path / "objects").as_uri()})
    assert result.returncode == 1 and "run run0001: line 1 of its journal fails its tag" in result.stderr
    assert SharedStore.open(pg_store).run_ids() == ["run0000"]


@pytest.mark.kernel
@pytest.mark.slow
def test_a_run_killed_in_the_directory_store_resumes_from_the_shared_one(pg_store: str, tmp_path: Path) -> None:
    shutil.copyfile(NOTEBOOKS / "pipeline.ipynb", tmp_path / "pipeline.ipynb")
    local = {"NBDURABLE_STORE": str(tmp_path / ".nbdurable")}
    run = ("run", "pipeline.ipynb", "out.ipynb", "-p", "kill_at", "4", "--no-progress")
    assert run_cli(*run, cwd=tmp_path, env=local).returncode == 1
    done = run_cli("migrate", "--from", ".nbdurable", "--to", pg_store, "--objects", (tmp_path / "obj").as_uri(),
                   cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    resumed = run_cli(*run, cwd=tmp_path, env={"NBDURABLE_STORE": pg_store})
    assert resumed.returncode == 0 and "6 restored" in resumed.stdout, resumed.stdout + resumed.stderr
    assert executions(tmp_path / "counter.txt").count("cell1") == 1
    assert nbformat.read(tmp_path / "out.ipynb", as_version=4).metadata.nbdurable["status"] == "completed"


