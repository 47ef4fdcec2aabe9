"""``nbdurable serve`` SIGKILLed while events arrive: every event acknowledged (202) is in the store after the
restart, and senders retrying the unacknowledged ones with their idempotency keys leave one event per key."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import start_server_process

from nbdurable.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SENDERS = 4


def test_acknowledged_events_survive_a_kill(tmp_path: Path) -> None:
    store_path, log = tmp_path / "store", tmp_path / "serve.log"
    server = start_server_process(store_path, tmp_path, log)
    printed = log.read_text()
    assert f"dashboard {server.base_url}/?token={server.token}" in printed and "token from $NBDURABLE_TOKEN" in printed
    acked: dict[str, str] = {}  # idempotency key -> event id, for every 202/200 received
    tried: set[str] = set()
    stop = threading.Event()
    lock = threading.Lock()

    def sender(k: int) -> None:
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {server.token}"},
                          timeout=5) as client:
            n = 0
            while not stop.is_set():
                key = f"s{k}-{n}"
                with lock:
                    tried.add(key)
                try:
                    answer = client.post("/api/events/order.paid", json={"sender": k, "n": n},
                                         headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    return  # the server died mid-request: this one was not acknowledged
                if answer.status_code in (200, 202):
                    with lock:
                        acked[key] = answer.json()["id"]
                n += 1

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(SENDERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # mid-stream: requests in flight
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) >= 200, log.read_text()

    store = Store.open(store_path)
    stored = {e["id"]: e for e in store.events(name="order.paid")}
    missing = {key: event_id for key, event_id in acked.items() if event_id not in stored}
    assert missing == {}, f"acknowledged events lost: {missing}"

    restarted = start_server_process(store_path, tmp_path, log)
    try:
        with httpx.Client(base_url=restarted.base_url, headers={"Authorization": f"Bearer {restarted.token}"}) as c:
            for key in sorted(tried):  # every sender retries everything it sent, acknowledged or not
                sender, n = key[1:].split("-")
                answer = c.post("/api/events/order.paid", json={"sender": int(sender), "n": int(n)},
                                headers={"Idempotency-Key": key})
                assert answer.status_code in (200, 202)
                if key in acked:
                    assert answer.status_code == 200 and answer.json()["id"] == acked[key]
    finally:
        restarted.kill()
    events = Store.open(store_path).events(name="order.paid")
    keys = [e["idempotency_key"] for e in events]
    assert sorted(keys) == sorted(tried)  # one event per key: none lost, none twice
