"""The orchestration store API on both stores (claims, the queue's take, slots, schedules, triggers, queue
settings: one behaviour, a directory or PostgreSQL), and the shared store's queue under concurrent takers:
processes taking from one queue at once (``SELECT ... FOR UPDATE SKIP LOCKED``) take every claim exactly
once; a row that fails its tag is never used. No kernels: fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbdurable.errors import OptionsError
from nbdurable.store import Store

from helpers import clean_env

HERE = Path(__file__).parent


def test_claims_and_the_queue_behave_alike_on_both_stores(any_store: str) -> None:
    store = Store.open(any_store)
    won, first = store.claim("submit", "a", {"run_id": "20261207T000000000-aaaaaa", "notebook": "x", "priority": 1})
    assert won and first["key"] == "a" and first["kind"] == "submit"
    won, standing = store.claim("submit", "a", {"run_id": "20261207T000000000-bbbbbb", "notebook": "y"})
    assert not won and standing["run_id"] == "20261207T000000000-aaaaaa"  # the first claim stands
    store.claim("submit", "b", {"run_id": "20261207T000000001-aaaaaa", "notebook": "x", "priority": 5,
                                "queue": "fast"})
    store.claim("submit", "c", {"run_id": "20261207T000000002-aaaaaa", "notebook": "x",
                                "not_before": time.time() + 600})
    store.record_decision("dropped", "d", {"why": "rate"})
    assert [c["key"] for c in store.open_claims()] == ["a", "b", "c"]  # a decision never enters the queue
    now = time.time()
    assert store.take_claim(now=now, queues=["nowhere"]) is None
    taken = store.take_claim(now=now)
    assert taken is not None and taken.claim["key"] == "b"  # the higher priority first
    assert (taken.token is not None) == any_store.startswith("postgresql")
    lease = store.hold_claim("submit", "b", token=taken.token)  # what the started run's process does
    assert lease is not None
    again = store.take_claim(now=now)
    assert again is not None and again.claim["key"] == "a"  # b is being started: a, and never c (not before)
    held = store.hold_claim("submit", "a", token=again.token)
    assert store.take_claim(now=now) is None
    assert store.take_claim(now=now + 700, exclude={("submit", "c")}) is None
    assert store.claim_state(taken.claim) == "starting"
    lease.release()
    assert store.claim_state(taken.claim) == "orphaned"
    assert store.take_claim(now=now, full_queues={"fast"}) is None  # a full queue is not taken from
    assert store.take_claim(now=now, queues=["fast"]) is not None
    assert held is not None
    held.release()
    store.mark_started("submit", "a")
    assert [c["key"] for c in store.open_claims()] == ["b", "c"]
    assert [c["key"] for c in store.unfinished_claims()] == ["a"]  # a decision is never checked for a run
    store.mark_finished("submit", "a")
    assert store.unfinished_claims() == []
    assert [c["key"] for c in store.claims("submit")] == ["a", "b", "c"]


def test_slots_schedules_triggers_and_queues_behave_alike_on_both_stores(any_store: str) -> None:
    store = Store.open(any_store)
    slots = [store.hold_slot("customer-7", 2) for _ in range(3)]
    assert slots[0] is not None and slots[1] is not None and slots[2] is None
    assert store.slots_busy("customer-7", 2) == 2
    slots[0].release()
    assert store.slots_busy("customer-7", 2) == 1
    store.add_schedule({"name": "nightly", "notebook": "n.ipynb", "paused": False})
    with pytest.raises(OptionsError, match="already exists"):
        store.add_schedule({"name": "nightly", "notebook": "other.ipynb"})
    store.update_schedule({"name": "nightly", "notebook": "n.ipynb", "paused": True})
    assert store.read_schedule("nightly")["paused"] is True and [s["name"] for s in store.schedules()] == ["nightly"]
    assert store.schedule_cursor("nightly") is None
    store.advance_schedule_cursor("nightly", 100.0)
    store.advance_schedule_cursor("nightly", 50.0)  # never back
    assert store.schedule_cursor("nightly") == 100.0
    store.delete_schedule("nightly")
    with pytest.raises(OptionsError, match="no schedule named"):
        store.read_schedule("nightly")
    store.add_trigger({"name": "orders", "on": "order"})
    with pytest.raises(OptionsError, match="exists already"):
        store.add_trigger({"name": "orders", "on": "other"})
    store.update_trigger({"name": "orders", "on": "order", "paused": True})
    assert store.trigger("orders")["paused"] is True
    store.write_trigger_cursor("orders", {"incarnation": 1.0, "after": 5.0})
    assert store.read_trigger_cursor("orders") == {"incarnation": 1.0, "after": 5.0, "name": "orders"}
    store.delete_trigger("orders")
    assert store.triggers() == [] and store.read_trigger_cursor("orders") is None
    assert store.read_queue("nightly") is None
    store.set_queue("nightly", 3)
    store.set_queue("nightly", 2)
    assert [(q["name"], q["concurrency"]) for q in store.queues()] == [("nightly", 2)]
    with pytest.raises(OptionsError):
        store.set_queue("bad name", 1)


_TAKER = """
import json, os, sys, time
from nbdurable.store import Store
store = Store.open(sys.argv[1])
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):  # every taker starts at once: none takes the whole queue alone
    time.sleep(0.005)
mine = []
while True:
    taken = store.take_claim(now=time.time())
    if taken is None:
        break
    mine.append(taken.claim["key"])  # its lease stays taken (until it expires): nobody else takes it
print(json.dumps(mine))
"""


def test_concurrent_takers_take_every_claim_exactly_once(pg_store: str, tmp_path: Path) -> None:
    store = Store.open(pg_store)
    keys = [f"k{i:03d}" for i in range(200)]
    for i, key in enumerate(keys):
        store.claim("submit", key, {"run_id": f"20261207T000000{i:03d}-aaaaaa", "notebook": "x", "priority": i % 3})
    env = clean_env({"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "NBDURABLE_LEASE_TIMEOUT": "120"})
    go = tmp_path / "go"
    takers = [subprocess.Popen([sys.executable, "-c", _TAKER, pg_store, str(go)], env=env, stdout=subprocess.PIPE,
                               text=True) for _ in range(4)]
    for taker in takers:
        assert taker.stdout is not None and taker.stdout.readline().strip() == "ready"
    go.touch()
    taken = [json.loads(p.communicate(timeout=120)[0]) for p in takers]
    everything = [k for mine in taken for k in mine]
    assert sorted(everything) == keys  # each claim by exactly one taker
    assert sum(1 for mine in taken if mine) >= 2, taken  # they took side by side, not one after the other


def test_a_claim_row_failing_its_tag_is_never_used(pg_store: str) -> None:
    import psycopg

    store = Store.open(pg_store)
    store.claim("submit", "forged", {"run_id": "20261207T000000000-aaaaaa", "notebook": "safe.ipynb"})
    with psycopg.connect(pg_store, autocommit=True) as conn:
        conn.execute("UPDATE nbd_claims SET body = convert_to(replace(convert_from(body, 'UTF8'), 'safe', 'evil'), "
                     "'UTF8')")
        conn.execute("INSERT INTO nbd_schedules SELECT 'forged', body, tag FROM nbd_claims")  # a tag of another row
    assert store.read_claim("submit", "forged") is None and store.open_claims() == []
    with pytest.warns(UserWarning, match="fails its authentication tag"):
        assert store.take_claim(now=time.time()) is None
    assert store.schedules() == []
