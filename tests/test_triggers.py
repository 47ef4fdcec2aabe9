"""Event triggers without kernels: key expressions and flow-control decisions (``runtime/flow.py``), trigger
definitions in a real store (``store/triggers.py``), the pass that decides events into claims
(``headless/triggers.py``: exactly once across passes and restarts, rate, idempotency, debounce, pauses) and
the ``nbdurable trigger`` commands with bad input. Runs started from these claims: ``test_trigger_runs.py``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nbdurable.errors import OptionsError
from nbdurable.headless.triggers import TriggerPass, define_trigger, pause_trigger, resume_trigger, trigger_counts
from nbdurable.runtime.flow import Bursts, FlowControl, compile_key, key_text, parse_rate, token_choice
from nbdurable.store import Store

from helpers import run_cli, write_notebook

# ----- key expressions and pure decisions -------------------------------------------------------------


def test_key_expressions_evaluate_paths_and_tuples() -> None:
    data = {"customer": "acme", "order": {"lines": [{"sku": "a"}, {"sku": "b"}]}, "n": 3}
    assert compile_key('event["customer"]').evaluate(data) == "acme"
    assert compile_key('event["order"]["lines"][-1]["sku"]').evaluate(data) == "b"
    assert compile_key('event.get("region", "eu")').evaluate(data) == "eu"
    assert compile_key('(event["customer"], event["n"])').evaluate(data) == ("acme", 3)
    assert compile_key('event["missing"]["deeper"]').evaluate(data) is None  # a missing path is None
    assert compile_key('event["order"]["lines"][7]').evaluate(data) is None
    assert compile_key('event["n"]').evaluate([1, 2]) is None  # data that is no dict
    assert key_text("acme") == "acme" and key_text(("acme", 3)) == '["acme",3]' and key_text(None) == "null"


@pytest.mark.parametrize("expr, what", [
    ('__import__("os").system("x")', "__import__"),
    ("event.__class__", "attribute"),
    ('event["a"] + "x"', "binop"),
    ("event[event]", "subscript"),
    ('os["HOME"]', "'os'"),
    ('os.environ["HOME"]', "attribute"),
    ('event.get(event["k"])', ".get takes a constant"),
    ('event.pop("a")', "only .get"),
    ("event[", "not valid Python"),
    ("", "empty"),
    ("lambda: 1", "lambda"),
])
def test_key_expressions_refuse_anything_else(expr: str, what: str) -> None:
    with pytest.raises(OptionsError, match="key expression") as caught:
        compile_key(expr)
    assert what in str(caught.value) and "event[" in (caught.value.hint or "")


def test_rates_parse_and_tokens_decide() -> None:
    assert parse_rate("10/1m") == (10, 60.0) and parse_rate("5/h") == (5, 3600.0) and parse_rate("1/30s") == (1, 30.0)
    for bad in ("10", "0/1m", "x/1m", "10/0s", "3/soon"):
        with pytest.raises(OptionsError):
            parse_rate(bad)
    # two tokens, period 10: both free, then both busy until 10 and 13
    assert token_choice([None, None], 100.0, 10.0, "drop").start_at == 100.0
    assert token_choice([95.0, 98.0], 100.0, 10.0, "drop").start_at is None  # none free now: dropped
    delayed = token_choice([95.0, 98.0], 100.0, 10.0, "delay")
    assert (delayed.token, delayed.start_at) == (0, 105.0)  # the one freeing up first
    assert token_choice([80.0, 98.0], 100.0, 10.0, "drop").token == 0


def test_debounce_bursts_fire_once_quiet_with_the_last_event() -> None:
    bursts = Bursts(5.0)
    assert bursts.add("a", "e1", 100.0, {"v": 1})
    assert not bursts.add("a", "e3", 103.0, {"v": 3})
    assert not bursts.add("a", "e2", 101.0, {"v": 2})  # sent before e3, read after it: e3 stays the last
    assert bursts.add("b", "f1", 104.0, {"v": 9})
    assert bursts.due(107.9) == []
    (key, burst), = bursts.due(108.0)
    assert key == "a" and (burst.event_id, burst.data, burst.count) == ("e3", {"v": 3}, 3)
    assert [k for k, _ in bursts.due(109.0)] == ["b"] and bursts.open == {}
    assert not bursts.add("a", "e0", 99.0, {"v": 0}) and bursts.open == {}  # read late: its burst ran already
    assert bursts.add("a", "e4", 120.0, {"v": 4})  # a new burst


def test_flow_control_refuses_combinations_that_mean_nothing() -> None:
    with pytest.raises(OptionsError, match="--key"):
        FlowControl(key='event["c"]').check()
    with pytest.raises(OptionsError, match="cannot be combined"):
        FlowControl(debounce=5, idempotency_key='event["id"]').check()
    with pytest.raises(OptionsError, match="key expression"):
        FlowControl(concurrency=1, key="event.x").check()
    flow = FlowControl(concurrency=2, key='event["c"]', rate=(3, 60.0), rate_mode="delay", priority=4).check()
    assert FlowControl.from_dict(flow.to_dict()) == flow
    assert flow.describe() == 'concurrency 2 per event["c"], rate 3/60s per event["c"] (delay), priority 4'


# ----- definitions in the store -----------------------------------------------------------------------


@pytest.fixture()
def nb(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "nb.ipynb", ["event = {}", "print(event)"])


def test_definitions_are_durable_unique_and_authenticated(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("orders", nb, on="order.created", match={"plan": "pro"}, params={"x": 1}))
    with pytest.raises(OptionsError, match="exists already"):
        store.add_trigger(define_trigger("orders", nb, on="other"))
    assert [t["name"] for t in Store.open(tmp_path / "store").triggers()] == ["orders"]
    assert pause_trigger(store, "orders") and not pause_trigger(store, "orders")
    assert resume_trigger(store, "orders") and not resume_trigger(store, "orders")
    assert len(store.trigger("orders")["pauses"]) == 1 and store.trigger("orders")["params"] == {"x": 1}
    path = tmp_path / "store" / "triggers" / "orders.trigger"
    path.write_bytes(path.read_bytes().replace(b"order.created", b"order.deleted"))  # edited by hand
    with pytest.warns(UserWarning, match="fails its authentication"):
        assert store.triggers() == []
        with pytest.raises(OptionsError, match="no trigger named 'orders'"):
            store.trigger("orders")
    path.unlink()
    store.add_trigger(define_trigger("b", nb, on="x"))
    store.delete_trigger("b")
    with pytest.raises(OptionsError, match="no trigger named 'b'"):
        store.delete_trigger("b")
    for bad in ("../x", "", "a b"):
        with pytest.raises(OptionsError, match="trigger name"):
            define_trigger(bad, nb, on="x")
    with pytest.raises(OptionsError, match="-p event"):
        define_trigger("c", nb, on="x", params={"event": 1})
    with pytest.raises(OptionsError, match="not an event name"):
        define_trigger("c", nb, on="bad name")
    with pytest.raises(OptionsError, match="JSON object"):
        define_trigger("c", nb, on="x", match=[1])


def test_a_decision_that_starts_no_run_never_enters_the_queue(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    won, _ = store.record_decision("dropped", "t:e1", {"reason": "rate"})
    again, standing = store.record_decision("dropped", "t:e1", {"reason": "other"})
    assert won and not again and standing["reason"] == "rate"
    store.claim("event", "t:e2", {"run_id": "r2"})
    assert [c["key"] for c in store.open_claims()] == ["t:e2"]


# ----- the pass -------------------------------------------------------------------------------------


class Log(list):
    def __call__(self, event: str, **fields: Any) -> None:
        self.append((event, fields))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [f for e, f in self if e == event]


def _runs(store: Store, kind: str = "event") -> list[dict[str, Any]]:
    return store.claims(kind)


def test_matching_events_claim_one_run_each_with_the_events_data(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.send_event("order.created", {"plan": "pro", "id": 0})  # before the trigger: never fires it
    store.add_trigger(define_trigger("pro", nb, on="order.created", match={"plan": "pro"}, params={"k": "v"},
                                     flow=FlowControl(priority=3), output_dir=tmp_path / "out"))
    sent = [store.send_event("order.created", {"plan": plan, "id": i})["id"]
            for i, plan in enumerate(["pro", "free", "pro"], start=1)]
    store.send_event("order.deleted", {"plan": "pro"})
    log = Log()
    assert TriggerPass(store, log).tick() == 2
    claims = _runs(store)
    assert [c["key"] for c in claims] == [f"pro:{sent[0]}", f"pro:{sent[2]}"]
    assert [c["params"] for c in claims] == [{"k": "v", "event": {"plan": "pro", "id": 1}},
                                            {"k": "v", "event": {"plan": "pro", "id": 3}}]
    assert claims[0]["origin"] == {"trigger": "pro", "event": sent[0]} and claims[0]["priority"] == 3
    assert claims[0]["notebook"] == str(nb) and claims[0]["output_path"].startswith(str(tmp_path / "out"))
    assert [f["event_id"] for f in log.of("trigger_fired")] == [sent[0], sent[2]]
    # a second pass, and a pass of a restarted worker, decide nothing again
    assert TriggerPass(store, log).tick() == 0
    assert len(_runs(store)) == 2 and trigger_counts(store, store.trigger("pro"))["runs"] == 2


def test_racing_passes_decide_each_event_exactly_once(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("t", nb, on="ping"))
    passes = [TriggerPass(Store.open(tmp_path / "store"), Log()) for _ in range(4)]
    stop = threading.Event()

    def work(p: TriggerPass) -> None:
        while not stop.is_set():
            p.tick()

    threads = [threading.Thread(target=work, args=(p,)) for p in passes]
    for t in threads:
        t.start()
    ids = [store.send_event("ping", {"n": n})["id"] for n in range(60)]
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    for p in passes:
        p.tick()
    claims = _runs(store)
    assert sorted(c["event_id"] for c in claims) == ids
    assert len({c["run_id"] for c in claims}) == 60
    assert sum(p.decided for p in passes) == 60  # each event claimed by exactly one pass


def test_paused_triggers_never_run_events_sent_during_the_pause(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("t", nb, on="ping"))
    passer = TriggerPass(store, Log())
    before = store.send_event("ping", {"n": 1})["id"]
    pause_trigger(store, "t")
    store.send_event("ping", {"n": 2})
    assert passer.tick() == 0  # paused: nothing decided, not even the event before the pause
    resume_trigger(store, "t")
    after = store.send_event("ping", {"n": 3})["id"]
    assert passer.tick() == 2
    assert [c["event_id"] for c in _runs(store)] == [before, after]


def test_concurrency_key_becomes_the_claims_flow_key(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("t", nb, on="job", flow=FlowControl(concurrency=2, key='event["customer"]')))
    store.add_trigger(define_trigger("u", nb, on="job", flow=FlowControl(concurrency=1)))
    store.send_event("job", {"customer": "acme"})
    store.send_event("job", {"other": 1})
    TriggerPass(store, Log()).tick()
    assert sorted((c["flow_key"], c["flow_limit"]) for c in _runs(store)) == [
        ("trigger:t:acme", 2), ("trigger:t:null", 2), ("trigger:u", 1), ("trigger:u", 1)]


def test_rate_drop_records_the_excess_and_delay_spaces_the_runs(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("drop", nb, on="hit", flow=FlowControl(rate=(2, 60.0))))
    store.add_trigger(define_trigger("delay", nb, on="hit", flow=FlowControl(rate=(2, 60.0), rate_mode="delay")))
    store.add_trigger(define_trigger("perkey", nb, on="hit", flow=FlowControl(rate=(1, 60.0), key='event["k"]')))
    for n in range(5):
        store.send_event("hit", {"n": n, "k": n % 2})
    log = Log()
    passer = TriggerPass(store, log)
    passer.tick()
    runs = {name: [c for c in _runs(store) if c["trigger"] == name] for name in ("drop", "delay", "perkey")}
    assert [c["params"]["event"]["n"] for c in runs["drop"]] == [0, 1]
    assert sorted(d["event_id"] for d in store.claims("dropped") if d["trigger"] == "drop") == sorted(
        e["id"] for e in store.events(name="hit")[2:])
    assert {f["reason"] for f in log.of("trigger_dropped")} == {"rate"}
    assert [c["params"]["event"]["k"] for c in runs["perkey"]] == [0, 1]  # one per key value
    delayed = runs["delay"]
    assert len(delayed) == 5 and not any("not_before" in c for c in delayed[:2])
    starts = sorted(c["not_before"] for c in delayed[2:])
    decided = delayed[0]["decided_at"]
    assert starts[0] == pytest.approx(decided + 60, abs=1) and starts[2] == pytest.approx(decided + 120, abs=1)
    assert trigger_counts(store, store.trigger("delay")) == {"runs": 5, "delayed": 3, "dropped": 0, "duplicates": 0,
                                                             "notebook_missing": 0}
    assert trigger_counts(store, store.trigger("drop")) == {"runs": 2, "delayed": 0, "dropped": 3, "duplicates": 0,
                                                            "notebook_missing": 0}
    # a restarted worker sees the tokens taken: a new event is dropped, not run
    store.send_event("hit", {"n": 9, "k": 0})
    TriggerPass(store, Log()).tick()
    assert len([c for c in _runs(store) if c["trigger"] == "drop"]) == 2
    assert trigger_counts(store, store.trigger("drop"))["dropped"] == 4


def test_idempotency_key_starts_one_run_per_value_per_window(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("t", nb, on="pay", flow=FlowControl(idempotency_key='event["payment"]',
                                                                          idempotency_window=1.0)))
    for n, payment in enumerate(["p1", "p1", "p2", "p1"]):
        store.send_event("pay", {"payment": payment, "n": n})
    store.send_event("pay", {"n": 99})  # no key: no deduplication
    passer = TriggerPass(store, Log())
    passer.tick()
    idem = _runs(store, "idem")
    assert [(c["key"], c["params"]["event"]["n"]) for c in idem] == [("t:p1", 0), ("t:p2", 2)]
    assert [c["params"]["event"]["n"] for c in _runs(store)] == [99]
    duplicates = store.claims("dropped")
    assert len(duplicates) == 2 and {d["of_event"] for d in duplicates} == {idem[0]["event_id"]}
    time.sleep(1.1)  # the window passed: the same value runs again, under a new key
    store.send_event("pay", {"payment": "p1", "n": 5})
    TriggerPass(store, Log()).tick()  # a restarted worker finds the chain of windows
    assert [c["key"] for c in _runs(store, "idem")] == ["t:p1", "t:p2", "t:p1#1"]
    assert trigger_counts(store, store.trigger("t"))["duplicates"] == 2


def test_debounce_claims_once_a_key_went_quiet(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("t", nb, on="edit", flow=FlowControl(debounce=0.6, key='event["doc"]')))
    store.add_trigger(define_trigger("whole", nb, on="edit", flow=FlowControl(debounce=0.6, concurrency=1)))
    passer = TriggerPass(store, Log())
    for n in range(4):
        store.send_event("edit", {"doc": "a", "n": n})
        store.send_event("edit", {"doc": "b", "n": n})
        assert passer.tick() == 0
        time.sleep(0.15)
    last_a = store.events(name="edit")[-2]["id"]
    deadline = time.monotonic() + 5
    while len(_runs(store, "debounce")) < 3:
        passer.tick()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (whole,) = [c for c in _runs(store, "debounce") if c["trigger"] == "whole"]
    assert whole["origin"]["debounced"] == 8 and whole["flow_key"] == "trigger:whole"  # no --key: one burst
    claims = [c for c in _runs(store, "debounce") if c["trigger"] == "t"]
    assert sorted(c["params"]["event"]["doc"] for c in claims) == ["a", "b"]
    assert all(c["params"]["event"]["n"] == 3 and c["origin"]["debounced"] == 4 for c in claims)
    assert f"t:{last_a}" in {c["key"] for c in claims}
    assert claims[0]["decided_at"] - claims[0]["event_time"] >= 0.6
    assert TriggerPass(store, Log()).tick() == 0  # a restart folds the same bursts: the same claims, nothing new
    assert len(_runs(store, "debounce")) == 3


# ----- the command line, bad input ---------------------------------------------------------------------


def test_trigger_commands_and_their_errors(tmp_path: Path, nb: Path) -> None:
    def cli(*args: str) -> Any:
        return run_cli(*args, "--store", str(tmp_path / "store"), cwd=tmp_path, in_process=True)

    ok = cli("trigger", "add", "orders", str(nb), "--on", "order", "--match", '{"plan": "pro"}', "-p", "x", "2",
             "--concurrency", "2", "--key", 'event["customer"]', "--priority", "5")
    assert ok.returncode == 0, ok.output
    assert 'concurrency 2 per event["customer"], priority 5' in ok.stdout
    listed = cli("trigger", "list")
    assert "orders  [active]  on order matching {\"plan\": \"pro\"}" in listed.stdout
    assert "runs 0 (delayed 0), dropped 0, duplicates 0" in listed.stdout
    for args, message in [
        (("add", "orders", str(nb), "--on", "x"), "exists already"),
        (("add", "o2", str(nb), "--on", "x", "--match", "{plan: pro}"), "--match is not JSON"),
        (("add", "o2", str(nb), "--on", "x", "--concurrency", "1", "--key", "event.customer"), "key expression"),
        (("add", "o2", str(nb), "--on", "x", "--idempotency-key", "open('f')"), "key expression"),
        (("add", "o2", str(nb), "--on", "x", "--rate", "ten/1m"), "not a rate"),
        (("add", "o2", str(nb), "--on", "x", "--debounce", "soon"), "not a duration"),
        (("add", "o2", str(nb), "--on", "bad name"), "not an event name"),
        (("pause", "nope"), "no trigger named 'nope' (triggers: orders)"),
        (("resume", "nope"), "no trigger named 'nope'"),
        (("delete", "nope"), "no trigger named 'nope'"),
    ]:
        result = cli("trigger", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.output)
    assert "was not paused" in cli("trigger", "resume", "orders").stdout
    assert "paused" in cli("trigger", "pause", "orders").stdout
    assert "[paused]" in cli("trigger", "list").stdout
    assert cli("trigger", "delete", "orders").returncode == 0
    assert "no triggers" in cli("trigger", "list").stdout
    limited = cli("trigger", "add", "pay", str(nb), "--on", "pay", "--rate", "2/1m", "--rate-mode", "delay",
                  "--idempotency-key", 'event["id"]', "--idempotency-window", "1h")
    assert "rate 2/60s (delay), idempotent on event[\"id\"] for 3600s" in limited.stdout, limited.output
    (row,) = [json.loads(line) for line in cli("trigger", "list", "--json").stdout.splitlines()]
    assert row["flow"]["rate"] == [2, 60.0] and row["flow"]["idempotency_window"] == 3600.0
    assert row["paused"] is False and row["counts"]["runs"] == 0


def test_the_worker_decides_trigger_events(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("t", nb, on="ping"))
    event = store.send_event("ping", {"n": 1})["id"]
    worked = run_cli("worker", "--once", "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert worked.returncode == 0, worked.output
    (claim,) = store.claims("event")
    assert claim["event_id"] == event
    assert f"trigger_fired trigger=t event_id={event} run_id={claim['run_id']} claim=event:t:{event}" in worked.stderr


@pytest.mark.slow
def test_two_workers_killed_at_random_moments_decide_every_event_once(tmp_path: Path, nb: Path) -> None:
    import random
    import signal
    import subprocess

    from helpers import start_cli

    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("t", nb, on="ping"))
    store.add_trigger(define_trigger("i", nb, on="ping", flow=FlowControl(idempotency_key='event["k"]')))
    store.add_trigger(define_trigger("r", nb, on="ping", flow=FlowControl(rate=(5, 3600.0))))
    sent: list[str] = []

    def sender() -> None:
        for n in range(80):
            sent.append(store.send_event("ping", {"n": n, "k": n % 7})["id"])
            time.sleep(0.03)

    thread = threading.Thread(target=sender)
    thread.start()
    rng = random.Random(17)
    args = ("worker", "--poll", "0.1", "--store", str(tmp_path / "store"))
    for _ in range(3):
        workers = [start_cli(*args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for _ in range(2)]
        time.sleep(rng.uniform(0.8, 2.0))
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
    thread.join()
    final = run_cli("worker", "--once", "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert final.returncode == 0, final.output
    claims = [c for c in store.claims("event") if c["trigger"] == "t"]
    assert sorted(c["event_id"] for c in claims) == sorted(sent)  # every event once, none twice
    assert len({c["run_id"] for c in claims}) == len(sent)
    idem = store.claims("idem")
    assert sorted(c["key"] for c in idem) == [f"i:{k}" for k in range(7)]  # one run per key value
    duplicates = [d for d in store.claims("dropped") if d["trigger"] == "i"]
    assert len(duplicates) == len(sent) - 7 and {d["reason"] for d in duplicates} == {"duplicate"}
    # the rate limit: never more than 5 runs (a kill between a token and its claim only wastes the token), and
    # every event decided once: a run or a drop, never both, never neither
    limited = [c["event_id"] for c in store.claims("event") if c["trigger"] == "r"]
    dropped = [d["event_id"] for d in store.claims("dropped") if d["trigger"] == "r"]
    assert 1 <= len(limited) <= 5 and sorted(limited + dropped) == sorted(sent)


def test_a_restarted_pass_starts_from_the_cursor_and_keeps_open_bursts(tmp_path: Path, nb: Path) -> None:
    import shutil

    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("t", nb, on="ping"))
    store.add_trigger(define_trigger("d", nb, on="ping", flow=FlowControl(debounce=60.0)))
    for n in range(3):
        store.send_event("ping", {"n": n})
    last = store.events(name="ping")[-1]
    time.sleep(0.01)
    assert TriggerPass(store, Log(), lag=0, cursor_every=0).tick() == 3
    assert store.read_trigger_cursor("t")["after"] > last["sent_at"]
    assert store.read_trigger_cursor("d")["after"] == pytest.approx(last["sent_at"])  # the open burst's last event
    shutil.rmtree(tmp_path / "store" / "claims" / "event")  # without the cursor, a new pass would claim them again
    assert TriggerPass(store, Log()).tick() == 0 and store.claims("event") == []
    # the debounce trigger's restarted pass folds its open burst again from the last event
    restarted = TriggerPass(store, Log())
    restarted.tick()
    assert [b.event_id for b in restarted._progress[("d", store.trigger("d")["created_at"])].bursts.open.values()] == [
        last["id"]]
    store.delete_trigger("t")
    assert store.read_trigger_cursor("t") is None


def test_an_event_for_a_trigger_whose_notebook_is_gone_is_recorded_not_run(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("t", nb, on="ping"))
    nb.unlink()
    store.send_event("ping", {"n": 1})
    log = Log()
    assert TriggerPass(store, log).tick() == 0
    assert store.open_claims() == [] and [f["reason"] for f in log.of("trigger_dropped")] == ["notebook_missing"]
    assert trigger_counts(store, store.trigger("t"))["notebook_missing"] == 1
    listed = run_cli("trigger", "list", "--store", str(tmp_path / "store"), cwd=tmp_path, in_process=True)
    assert "notebook missing 1" in listed.stdout


def test_two_passes_debounce_one_burst_into_one_claim(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("d", nb, on="edit", flow=FlowControl(debounce=0.3)))
    passes = [TriggerPass(Store.open(tmp_path / "store"), Log()) for _ in range(2)]
    for n in range(3):
        store.send_event("edit", {"n": n})
        passes[n % 2].tick()
    time.sleep(0.4)
    assert sum(p.tick() for p in passes) == 1  # both fold the same burst; its last event's claim stands once
    (claim,) = store.claims("debounce")
    assert claim["params"]["event"] == {"n": 2}


def test_a_damaged_cursor_is_ignored(tmp_path: Path, nb: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.add_trigger(define_trigger("t", nb, on="ping"))
    store.send_event("ping", {"n": 1})
    future = {"name": "t", "incarnation": store.trigger("t")["created_at"], "after": time.time() + 3600}
    store.write_trigger_cursor("t", future)
    path = tmp_path / "store" / "triggers" / "t.cursor"
    path.write_bytes(path.read_bytes().replace(b'"after"', b'"aftex"'))  # planted or damaged: fails its tag
    assert store.read_trigger_cursor("t") is None
    assert TriggerPass(store, Log()).tick() == 1  # read from the trigger's creation, not skipped an hour ahead
