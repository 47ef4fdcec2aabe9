"""Runs started by event triggers, end to end: events sent by `nbdurable send` and by `nbd.send_event` in a
kernel, decided by the trigger pass (``headless/triggers.py``) into claims, started by the dispatcher
(``headless/dispatch.py``) in real processes with real kernels; what ran is read back from the catalog.

Sizes: the concurrency test sends 18 events over 3 keys in CI; ``NBDURABLE_SOAK=1`` sends the issue's 100
(``@pytest.mark.slow``; about 3 minutes on two cores)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from nbdurable.headless.dispatch import Dispatcher
from nbdurable.headless.triggers import TriggerPass, define_trigger
from nbdurable.runtime.flow import FlowControl, parse_rate
from nbdurable.store import Store

from helpers import run_cli

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.xdist_group("trigger_runs")]
BODY = "import time\ntime.sleep(float(event.get('sleep', 0)))\nassert greeting == 'hi', greeting"


def tagged_notebook(path: Path, body: str = BODY, defaults: str = "event = {}\ngreeting = 'hi'") -> Path:
    """A notebook whose first cell, tagged ``parameters``, declares ``event``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(defaults, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path


def drive(store: Store, done: Callable[[], bool], *, timeout: float = 240, max_concurrent: int = 3,
          log_dir: Path | None = None, suspend_after: float | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Tick a trigger pass and a dispatcher (the worker's engine passes) until ``done()`` and the queue is empty."""
    import time

    lines: list[tuple[str, dict[str, Any]]] = []

    def log(event: str, **fields: Any) -> None:
        lines.append((event, fields))

    passer = TriggerPass(store, log)
    dispatcher = Dispatcher(store, log=log, max_concurrent=max_concurrent,
                            log_dir=str(log_dir) if log_dir else None, suspend_after=suspend_after)
    deadline = time.monotonic() + timeout
    while True:
        passer.tick()
        dispatcher.tick()
        if not dispatcher.running and not store.open_claims() and done():
            return lines
        assert time.monotonic() < deadline, lines[-20:]
        time.sleep(0.05)


def triggered_runs(store: Store, trigger: str) -> list[dict[str, Any]]:
    """The runs a trigger started, from the catalog, by start time (unix seconds)."""
    table = store.catalog().query(
        "SELECT run_id, status, trigger, origin, params, epoch(started_at) AS started, epoch(ended_at) AS ended "
        f"FROM runs WHERE trigger = '{trigger}' ORDER BY started_at")
    rows = table.to_dict("records")
    for row in rows:
        row["origin"], row["params"] = json.loads(row["origin"]), json.loads(row["params"])
    return rows


def test_events_from_send_and_from_a_kernel_start_one_run_each(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    nb = tagged_notebook(tmp_path / "on_order.ipynb", "assert event['plan'] == 'pro' and greeting == 'hi'")
    added = run_cli("trigger", "add", "orders", str(nb), "--on", "order", "--match", '{"plan": "pro"}',
                    "-p", "greeting", "hi", "--output-dir", "out", "--store", str(store_dir), cwd=tmp_path,
                    in_process=True)
    assert added.returncode == 0, added.output
    sent = run_cli("send", "order", "--data", '{"plan": "pro", "n": 1}', "--store", str(store_dir), cwd=tmp_path)
    assert sent.returncode == 0, sent.output
    sender = tagged_notebook(tmp_path / "sender.ipynb", "import nbdurable as nbd\n"
                             "nbd.send_event('order', {'plan': 'free', 'n': 2})\n"
                             "nbd.send_event('order', {'plan': 'pro', 'n': 3})", defaults="x = 0")
    ran = run_cli("run", str(sender), "--store", str(store_dir), "--no-progress", cwd=tmp_path)
    assert ran.returncode == 0, ran.output
    store = Store.open(store_dir)
    drive(store, lambda: len(triggered_runs(store, "orders")) >= 2, log_dir=tmp_path)
    runs = triggered_runs(store, "orders")
    assert [r["status"] for r in runs] == ["completed", "completed"], [(tmp_path / f"{r['run_id']}.log").read_text()
                                                                     for r in runs]
    assert sorted(r["params"]["event"]["n"] for r in runs) == [1, 3]  # the free plan did not match
    assert all(r["params"]["greeting"] == "hi" for r in runs)
    events = {e["data"]["n"]: e["id"] for e in store.events(name="order")}
    assert sorted(r["origin"]["event"] for r in runs) == sorted([events[1], events[3]])
    assert sorted(sent.stdout.split()) == [events[1]]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(f"on_order-{r['run_id']}.ipynb" for r in runs)


def _overlaps(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment."""
    points = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])  # an end before a start
    most = current = 0
    for _, delta in points:
        current += delta
        most = max(most, current)
    return most


@pytest.mark.parametrize("events", [
    pytest.param(18, id="ci-18-events"),
    pytest.param(100, id="soak-100-events", marks=[
        pytest.mark.slow,
        pytest.mark.skipif(os.environ.get("NBDURABLE_SOAK") != "1", reason="the issue's 100 events: NBDURABLE_SOAK=1"),
    ]),
])
def test_concurrency_per_key_is_never_exceeded(tmp_path: Path, events: int) -> None:
    store = Store.open(tmp_path / "store")
    nb = tagged_notebook(tmp_path / "job.ipynb")
    store.add_trigger(define_trigger("jobs", nb, on="job", params={"greeting": "hi"},
                                     flow=FlowControl(concurrency=2, key='event["customer"]')))
    for n in range(events):
        store.send_event("job", {"customer": f"c{n // 3 % 3}", "n": n, "sleep": 2})  # in threes: c0 c0 c0 c1 …
    lines = drive(store, lambda: len(triggered_runs(store, "jobs")) >= events, max_concurrent=5,
                  timeout=120 + events * 6)
    runs = triggered_runs(store, "jobs")
    assert len(runs) == events and {r["status"] for r in runs} == {"completed"}
    assert sorted(r["params"]["event"]["n"] for r in runs) == list(range(events))  # each event exactly once
    most = {}
    for customer in ("c0", "c1", "c2"):
        spans = [(r["started"], r["ended"]) for r in runs if r["params"]["event"]["customer"] == customer]
        most[customer] = _overlaps(spans)
    assert max(most.values()) <= 2, most
    assert 2 in most.values(), most  # the limit was reached, so it was what held the runs back
    # a key at its limit keeps its next claim queued in the dispatcher: none was started only to stand down
    assert not any(event == "run_deferred" for event, _ in lines)
    assert {r["origin"]["flow_key"] for r in runs} == {"trigger:jobs:c0", "trigger:jobs:c1", "trigger:jobs:c2"}


def test_higher_priority_triggers_start_first(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    nb = tagged_notebook(tmp_path / "job.ipynb")
    for name, priority in [("low", 0), ("high", 5)]:
        store.add_trigger(define_trigger(name, nb, on="job", params={"greeting": "hi"},
                                         flow=FlowControl(priority=priority)))
    for n in range(2):
        store.send_event("job", {"n": n})
    TriggerPass(store, lambda *a, **k: None).tick()  # all four claimed before any starts
    drive(store, lambda: True, max_concurrent=1)
    runs = store.catalog().query("SELECT trigger FROM runs ORDER BY started_at")
    assert list(runs["trigger"]) == ["high", "high", "low", "low"]


# ----- debounce, rate (drop and delay), idempotency: one scenario, several checks ---------------------


@pytest.fixture(scope="module")
def flow_scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import time

    tmp = tmp_path_factory.mktemp("flow")
    store = Store.open(tmp / "store")
    nb = tagged_notebook(tmp / "job.ipynb")
    triggers = {
        "deb": ("edit", FlowControl(debounce=1.0, key='event["doc"]')),
        "delay": ("hit", FlowControl(rate=parse_rate("1/3s"), rate_mode="delay")),
        "drop": ("hit", FlowControl(rate=parse_rate("1/1m"))),
        "idem": ("pay", FlowControl(idempotency_key='event["payment"]')),
    }
    for name, (on, flow) in triggers.items():
        store.add_trigger(define_trigger(name, nb, on=on, params={"greeting": "hi"}, flow=flow))
    for n in range(3):
        store.send_event("edit", {"doc": "a", "n": n})
        store.send_event("hit", {"n": n})
    for n, payment in enumerate(["p1", "p1", "p2"]):
        store.send_event("pay", {"payment": payment, "n": n})
    time.sleep(0.2)
    expected = {"deb": 1, "delay": 3, "drop": 1, "idem": 2}
    lines = drive(store, lambda: all(len(triggered_runs(store, t)) >= n for t, n in expected.items()))
    yield {"store": store, "lines": lines, "runs": {t: triggered_runs(store, t) for t in expected}}


def test_debounce_runs_once_with_the_last_events_data(flow_scenario: dict[str, Any]) -> None:
    (run,) = flow_scenario["runs"]["deb"]
    assert run["status"] == "completed" and run["params"]["event"] == {"doc": "a", "n": 2}
    assert run["origin"]["debounced"] == 3
    claim = flow_scenario["store"].claims("debounce")[0]
    assert run["started"] >= claim["event_time"] + 1.0  # one quiet period after the last event


def test_rate_delay_starts_runs_no_closer_than_allowed(flow_scenario: dict[str, Any]) -> None:
    # In the events' order: the runs' recorded start times need not be (a run's first record can come later
    # than the next run's when its process is slow to begin, as the first start from a cold forkserver is).
    runs = sorted(flow_scenario["runs"]["delay"], key=lambda r: r["params"]["event"]["n"])
    claims = {c["run_id"]: c for c in flow_scenario["store"].claims("event") if c["trigger"] == "delay"}
    assert [r["status"] for r in runs] == ["completed"] * 3 and [r["params"]["event"]["n"] for r in runs] == [0, 1, 2]
    not_before = [claims[r["run_id"]].get("not_before", claims[r["run_id"]]["decided_at"]) for r in runs]
    assert all(b - a >= 3.0 - 1e-6 for a, b in zip(not_before, not_before[1:], strict=False)), not_before
    assert all(r["started"] >= nb - 0.01 for r, nb in zip(runs, not_before, strict=True))
    assert sum("trigger_delayed" == event for event, _ in flow_scenario["lines"]) == 2


def test_rate_drop_runs_the_first_and_records_the_rest(flow_scenario: dict[str, Any]) -> None:
    (run,) = flow_scenario["runs"]["drop"]
    assert run["params"]["event"]["n"] == 0
    dropped = [d for d in flow_scenario["store"].claims("dropped") if d["trigger"] == "drop"]
    assert len(dropped) == 2 and {d["reason"] for d in dropped} == {"rate"}
    assert sum(1 for event, f in flow_scenario["lines"] if event == "trigger_dropped" and f["trigger"] == "drop") == 2


def test_idempotency_key_runs_each_value_once(flow_scenario: dict[str, Any]) -> None:
    runs = flow_scenario["runs"]["idem"]
    assert sorted((r["params"]["event"]["payment"], r["params"]["event"]["n"]) for r in runs) == [("p1", 0), ("p2", 2)]
    dropped = [d for d in flow_scenario["store"].claims("dropped") if d["trigger"] == "idem"]
    assert [d["reason"] for d in dropped] == ["duplicate"]


def test_a_suspended_run_holds_no_slot_of_its_key(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    nb = tagged_notebook(tmp_path / "job.ipynb", "import nbdurable as nbd\nif event.get('wait'):\n    nbd.sleep('1h')")
    store.add_trigger(define_trigger("jobs", nb, on="job", flow=FlowControl(concurrency=1, key='event["customer"]')))
    store.send_event("job", {"customer": "acme", "wait": True})
    store.send_event("job", {"customer": "acme", "wait": False})
    drive(store, lambda: len(triggered_runs(store, "jobs")) >= 2 and all(
        r["status"] != "running" for r in triggered_runs(store, "jobs")), suspend_after=1.0)
    first, second = triggered_runs(store, "jobs")
    waiting, other = (first, second) if first["params"]["event"]["wait"] else (second, first)
    assert (waiting["status"], other["status"]) == ("suspended", "completed")
    assert second["started"] >= first["ended"]  # one at a time (whichever took the slot first), yet both ran
