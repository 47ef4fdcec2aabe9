"""``nbdurable serve`` on each store backend (a directory, and PostgreSQL with objects on ``file://``): a run
started over HTTP executes against the server's store and is listed and detailed, the live stream reports
it, and events sent over HTTP (grouped into one commit) are listed. Real kernels, real HTTP on loopback; the
PostgreSQL case skips with how to start a server when none is reachable."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import served
from test_serve_runs import wait_status

from nbdurable.store import Store

from helpers import write_notebook

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(400)]


def test_a_run_started_over_http_is_streamed_listed_and_its_events_kept(any_store: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "hello.ipynb", ["x = 40 + 2", "print(x)"])
    store = Store.open(any_store)
    seen: list[tuple[str, dict[str, Any]]] = []
    with served(store, root) as server:
        hello = threading.Event()
        stop = threading.Event()

        def listen() -> None:
            with server.client() as c, c.stream("GET", "/api/stream", timeout=300) as stream:
                name = ""
                for line in stream.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        seen.append((name, json.loads(line[6:])))
                        hello.set()
                        if stop.is_set() or any(r.get("status") == "completed" for n, d in seen if n == "runs"
                                                for r in d["runs"]):
                            return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        assert hello.wait(30)
        with server.client() as c:
            sent = [c.post("/api/events/shared.tick", json={"n": n}) for n in range(5)]
            assert [a.status_code for a in sent] == [202] * 5
            listed = c.get("/api/events", params={"name": "shared.tick"}).json()["events"]
            assert sorted(e["data"]["n"] for e in listed) == list(range(5))
            keyed = [c.post("/api/events/shared.paid", json={"n": 1}, headers={"Idempotency-Key": "order-17"})
                     for _ in range(2)]
            assert [k.status_code for k in keyed] == [202, 200] and keyed[1].json()["duplicate"] is True
            assert [e["id"] for e in c.get("/api/events", params={"name": "shared.paid"}).json()["events"]] == [
                keyed[0].json()["id"]]
            answer = c.post("/api/runs", json={"notebook": "hello.ipynb"})
            assert answer.status_code == 202, answer.text
            run_id = answer.json()["run_id"]
            body = wait_status(c, run_id, ("completed",))
            assert len(body["graph"]["nodes"]) >= 2
            assert [r["run_id"] for r in c.get("/api/runs").json()["runs"]] == [run_id]
        listener.join(60)
        stop.set()
    assert store.journal_exists(run_id)  # the run wrote to the server's store, whichever it is
    streamed = [r for n, d in seen if n == "runs" for r in d["runs"]]
    assert any(r["run_id"] == run_id and r["status"] == "completed" for r in streamed), seen
    assert any(n == "events" for n, _ in seen)
