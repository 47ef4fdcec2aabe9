"""``nbdurable serve``'s API over real HTTP on loopback (uvicorn in a thread; runs written as journals): every
endpoint, every error of the issue's list, the token rules, and the live stream."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import Served, served, write_run

from nbdurable.errors import OptionsError
from nbdurable.server import auth
from nbdurable.server.body import MAX_BODY
from nbdurable.store import Store

pytestmark = [pytest.mark.timeout(120), pytest.mark.xdist_group("serve_api")]

RUN_A = "20240501T120000000-aaaaaa"
RUN_B = "20240502T120000000-bbbbbb"
RUN_S = "20240503T120000000-cccccc"  # suspended, waiting for an approval


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("root")
    (root / "nb.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    (tmp_path_factory.mktemp("outside") / "evil.ipynb").write_text("{}")
    store = Store.open(root / ".nbdurable")
    write_run(store, RUN_A, notebook="alpha", params={"lr": 0.1}, started=1714564800.0)
    write_run(store, RUN_B, notebook="beta", status="failed", params={"lr": 0.2}, started=1714651200.0)
    write_run(store, RUN_S, notebook="alpha", status="suspended", started=1714737600.0,
              waiting_for={"name": "report.approved", "match": {"week": 47}, "timeout_at": None})
    with served(store, root) as s:
        yield s


@pytest.fixture
def client(server: Served) -> Any:
    with server.client() as c:
        yield c


def test_runs_listed_with_the_explorers_filters(client: httpx.Client) -> None:
    body = client.get("/api/runs").json()
    assert [r["run_id"] for r in body["runs"]] == [RUN_S, RUN_B, RUN_A] and body["total"] == 3
    assert client.get("/api/runs", params={"notebook": "alpha"}).json()["total"] == 2
    assert [r["run_id"] for r in client.get("/api/runs", params={"status": "failed"}).json()["runs"]] == [RUN_B]
    assert [r["run_id"] for r in client.get("/api/runs", params={"params": "lr>0.15"}).json()["runs"]] == [RUN_B]
    assert client.get("/api/runs", params={"since": "2024-05-02", "until": "2024-05-02"}).json()["total"] == 1
    limited = client.get("/api/runs", params={"limit": 1}).json()
    assert len(limited["runs"]) == 1 and limited["total"] == 3
    bad = client.get("/api/runs", params={"status": "sleepy"})
    assert bad.status_code == 400 and "sleepy" in bad.json()["error"] and bad.json()["hint"]
    assert client.get("/api/runs", params={"limit": "many"}).status_code == 400


def test_one_run_with_steps_and_lineage(client: httpx.Client) -> None:
    body = client.get(f"/api/runs/{RUN_A}").json()
    assert body["run"]["run_id"] == RUN_A and body["run"]["status"] == "completed"
    assert [n["ordinal"] for n in body["graph"]["nodes"]] == [1, 2]
    assert body["lineage"]["resumed_by"] == [] and body["lineage"]["forked_from"] is None
    for unknown in ("20990101T000000000-ffffff", "no such run", "..%2F..%2Fetc"):
        answer = client.get(f"/api/runs/{unknown}")
        assert answer.status_code == 404, unknown
        assert answer.json()["status"] == 404


def test_report_is_the_html_report(client: httpx.Client) -> None:
    page = client.get(f"/api/runs/{RUN_A}/report")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert RUN_A in page.text and "nbdMountRunView" in page.text
    assert client.get("/api/runs/20990101T000000000-ffffff/report").status_code == 404


def test_event_is_durable_before_its_reply_and_listed(server: Served, client: httpx.Client) -> None:
    answer = client.post("/api/events/build.done", json={"sha": "abc"})
    assert answer.status_code == 202
    event_id = answer.json()["id"]
    assert (server.store.path / "events" / f"{event_id}.json").is_file()  # on disk when acknowledged
    assert server.store.read_event(event_id)["data"] == {"sha": "abc"}
    empty = client.post("/api/events/ping")
    assert empty.status_code == 202 and server.store.read_event(empty.json()["id"])["data"] is None
    listed = client.get("/api/events", params={"name": "build.done"}).json()["events"]
    assert [e["id"] for e in listed][:1] == [event_id]


def test_idempotency_key_stores_one_event(server: Served, client: httpx.Client) -> None:
    before = len(server.store.event_ids())
    first = client.post("/api/events/order.paid", json={"n": 1}, headers={"Idempotency-Key": "order-17"})
    again = client.post("/api/events/order.paid", json={"n": 1}, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    assert len(server.store.event_ids()) == before + 1
    other = client.post("/api/events/order.paid", json={"n": 1}, headers={"Idempotency-Key": "order-18"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_idempotency_key_under_concurrent_senders(server: Served) -> None:
    ids: list[str] = []

    def send() -> None:
        with server.client() as c:
            ids.append(c.post("/api/events/race", json={}, headers={"Idempotency-Key": "same"}).json()["id"])

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert len(server.store.events(name="race")) == 1


def test_a_claimed_key_whose_event_never_landed_is_filled_by_the_retry(tmp_path: Path) -> None:
    """A sender killed between claiming its key and writing its event acknowledged nothing: the retry stores
    the event under the claimed id (one event per key, never two, never none)."""
    store = Store.open(tmp_path / "s")
    claimed = store.claim_event_key("k-1", "00000000000000000001-deadbeef")
    assert claimed == "00000000000000000001-deadbeef" and store.events() == []
    event, stored = store.send_event_once("x", {"a": 1}, "k-1")
    assert stored and event["id"] == claimed and [e["id"] for e in store.events()] == [claimed]
    assert store.send_event_once("x", {"a": 1}, "k-1") == (event, False)


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_malformed_bodies_are_400_and_store_nothing(server: Served, client: httpx.Client, body: bytes,
                                                    fragment: str) -> None:
    before = server.store.event_ids()
    answer = client.post("/api/events/x", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and fragment in answer.json()["error"]
    assert server.store.event_ids() == before


def test_bad_event_name_is_400(client: httpx.Client) -> None:
    answer = client.post("/api/events/bad name!", json={})
    assert answer.status_code == 400 and "event name" in answer.json()["error"]


def test_oversized_bodies_are_413(server: Served, client: httpx.Client) -> None:
    before = server.store.event_ids()
    big = b'"' + b"x" * MAX_BODY + b'"'
    assert client.post("/api/events/big", content=big).status_code == 413

    def chunks() -> Any:  # no Content-Length: the limit holds while streaming
        for _ in range(MAX_BODY // 65536 + 2):
            yield b" " * 65536

    streamed = client.post("/api/events/big", content=chunks())
    assert streamed.status_code == 413 and "limit" in streamed.json()["error"]
    assert server.store.event_ids() == before


def test_missing_or_wrong_token_is_401_and_nothing_is_stored_or_started(server: Served) -> None:
    before, runs = server.store.event_ids(), server.store.run_ids()
    for token in (None, "wrong-token-of-some-length", server.token + "x"):
        with server.client(token=token) as c:
            for method, path, body in (("POST", "/api/events/x", {}), ("POST", "/api/runs", {"notebook": "nb.ipynb"}),
                                       ("GET", "/api/runs", None), ("GET", "/", None),
                                       ("POST", f"/api/runs/{RUN_S}/cancel", {})):
                answer = c.request(method, path, json=body)
                assert answer.status_code == 401, (token, path)
    with server.client(token=None, cookies={auth.COOKIE: "nope"}) as c:
        assert c.get("/api/runs").status_code == 401
    assert server.store.event_ids() == before and server.store.run_ids() == runs
    assert not server.store.cancel_requested(RUN_S)


def test_token_in_the_url_sets_a_cookie(server: Served) -> None:
    with httpx.Client(base_url=server.base_url, follow_redirects=False) as c:
        first = c.get(f"/?token={server.token}&x=1")
        assert first.status_code == 303 and first.headers["location"] == "/?x=1"
        assert "HttpOnly" in first.headers["set-cookie"] and "SameSite=Strict" in first.headers["set-cookie"]
        page = c.get("/")  # the cookie now authenticates
        assert page.status_code == 200 and "nbdurable" in page.text
        assert c.get("/api/runs").status_code == 200
    with httpx.Client(base_url=server.base_url) as c:
        assert c.get("/?token=wrong").status_code == 401


def test_token_generated_once_and_kept_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv(auth.ENV_TOKEN, raising=False)
    token, source = auth.resolve_token("127.0.0.1")
    path = tmp_path / "nbdurable" / "server-token"
    assert source == str(path) and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.resolve_token("::1")[0] == token  # the same at the next start
    with pytest.raises(OptionsError, match="not loopback"):
        auth.resolve_token("0.0.0.0")
    monkeypatch.setenv(auth.ENV_TOKEN, "explicit-token-long-enough")
    assert auth.resolve_token("0.0.0.0") == ("explicit-token-long-enough", "$NBDURABLE_TOKEN")
    monkeypatch.setenv(auth.ENV_TOKEN, "short")
    with pytest.raises(OptionsError, match="at least"):
        auth.resolve_token("127.0.0.1")


def test_cli_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    from helpers import run_cli

    result = run_cli("serve", "--host", "0.0.0.0", "--root", str(tmp_path), "--store", str(tmp_path / "s"))
    assert result.returncode == 2 and "NBDURABLE_TOKEN" in result.stderr


def test_start_run_rejects_bad_notebooks(server: Served, client: httpx.Client) -> None:
    runs = server.store.run_ids()
    outside = client.post("/api/runs", json={"notebook": "../outside0/evil.ipynb"})
    assert outside.status_code == 403 and "outside" in outside.json()["error"]
    assert client.post("/api/runs", json={"notebook": "/etc/passwd"}).status_code == 403
    assert client.post("/api/runs", json={"notebook": "missing.ipynb"}).status_code == 404
    assert client.post("/api/runs", json={"notebook": 3}).status_code == 400
    assert client.post("/api/runs", json={"notebook": "nb.ipynb", "params": [1]}).status_code == 400
    assert client.post("/api/runs", content=b"{").status_code == 400
    assert client.post("/api/runs", json=["nb.ipynb"]).status_code == 400
    assert server.store.run_ids() == runs


def test_cancel_resume_rerun_errors(server: Served, client: httpx.Client) -> None:
    done = client.post(f"/api/runs/{RUN_A}/cancel", json={"reason": "no"})
    assert done.status_code == 409 and "completed" in done.json()["error"]
    assert client.post(f"/api/runs/{RUN_A}/resume").status_code == 409
    assert client.post("/api/runs/20990101T000000000-ffffff/cancel").status_code == 404
    assert client.post("/api/runs/20990101T000000000-ffffff/resume").status_code == 404
    assert client.post("/api/runs/20990101T000000000-ffffff/rerun").status_code == 404
    assert client.post(f"/api/runs/{RUN_A}/rerun", json={"from_cell": 0}).status_code == 400


def test_cancel_a_stopped_run_then_409(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s")
    run = write_run(store, "20240601T000000000-dddddd", status="failed")
    with served(store, tmp_path) as s, s.client() as c:
        answer = c.post(f"/api/runs/{run}/cancel", json={"reason": "obsolete"})
        assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
        assert store.read_journal(run)[-1]["cancel"]["reason"] == "obsolete"
        again = c.post(f"/api/runs/{run}/cancel")
        assert again.status_code == 409 and "already" in again.json()["error"]
        assert c.post(f"/api/runs/{run}/resume").status_code == 409  # cancelled: only with force
        assert c.get(f"/api/runs/{run}").json()["run"]["status"] == "cancelled"


def test_approvals_listed_and_sent_with_the_waits_match(server: Served, client: httpx.Client) -> None:
    pending = client.get("/api/approvals").json()["approvals"]
    assert [(a["run_id"], a["event"], a["match"]) for a in pending] == [(RUN_S, "report.approved", {"week": 47})]
    answer = client.post("/api/approvals/report.approved", json={"approved": True, "payload": {"by": "ann"}})
    assert answer.status_code == 202 and answer.json()["waiting_runs"] == [RUN_S]
    event = server.store.read_event(answer.json()["id"])
    assert event["name"] == "report.approved" and event["data"] == {"week": 47, "by": "ann", "approved": True}
    assert client.post("/api/approvals/report.approved", json={"approved": "yes"}).status_code == 400
    assert client.post("/api/approvals/report.approved",
                       json={"approved": False, "run_id": RUN_A}).status_code == 404


def test_schedules_triggers_and_openapi(client: httpx.Client) -> None:
    assert client.get("/api/schedules").json() == {"schedules": []}
    assert client.get("/api/triggers").json() == {"triggers": []}
    assert client.post("/api/schedules/nightly/pause").status_code == 404
    assert client.post("/api/schedules/nightly/resume").status_code == 404
    schema = client.get("/api/openapi.json").json()
    paths = schema["paths"]
    for path in ("/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/cancel", "/api/runs/{run_id}/resume",
                 "/api/runs/{run_id}/rerun", "/api/runs/{run_id}/report", "/api/events", "/api/events/{name}",
                 "/api/approvals/{wait}", "/api/schedules", "/api/schedules/{name}/pause", "/api/triggers",
                 "/api/stream"):
        assert path in paths, path
    assert set(paths["/api/runs"]) == {"get", "post"}
    unknown = client.get("/api/nothing")
    assert unknown.status_code == 404 and unknown.json()["status"] == 404


def test_stream_sends_run_changes(server: Served) -> None:
    run_id = "20240701T000000000-eeeeee"
    seen: list[tuple[str, dict[str, Any]]] = []
    with server.client() as c, c.stream("GET", "/api/stream") as stream:
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                seen.append((name or "", json.loads(line[6:])))
                if name == "hello":
                    time.sleep(1.2)  # the watcher's baseline is taken: the new run is a change
                    write_run(server.store, run_id, status="completed")
                if name == "runs" and any(r["run_id"] == run_id for r in seen[-1][1]["runs"]):
                    break
    rows = [r for n, d in seen if n == "runs" for r in d["runs"]]
    assert rows and rows[-1]["status"] == "completed"
    assert {r["run_id"] for r in rows} == {run_id}  # only what changed: not the runs that did not


def test_event_files_of_the_store_unchanged_by_keys(tmp_path: Path) -> None:
    """Idempotency keys live beside the events, never among them (the catalog and `check` read events/)."""
    store = Store.open(tmp_path / "s")
    store.send_event_once("a", 1, "k")
    assert sorted(os.listdir(store.path / "events")) == [f"{store.event_ids()[0]}.json"]
    from nbdurable.store.maintenance import check_store

    assert check_store(store).damage == []


def test_a_launch_that_fails_says_why(tmp_path: Path) -> None:
    """Resume of a run whose notebook is gone: 202 with the new run's id, then GET says it failed to start,
    with the command's own error (no kernel started)."""
    store = Store.open(tmp_path / "s")
    run = write_run(store, "20240601T000000000-eeeeee", status="failed")  # its notebook /work/nb.ipynb is gone
    with served(store, tmp_path) as s, s.client() as c:
        answer = c.post(f"/api/runs/{run}/resume")
        assert answer.status_code == 202 and answer.json()["resumes"] == run
        new = answer.json()["run_id"]
        deadline = time.monotonic() + 60
        while (state := c.get(f"/api/runs/{new}").json()["run"])["status"] == "starting":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert state["status"] == "failed to start" and state["exit_code"] != 0
        assert "nb.ipynb" in state["log"]
        assert not store.journal_path(new).exists()


def test_run_id_from_the_environment_is_taken_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$NBDURABLE_RUN_ID (how the server knows a launched run's id): the process's first run takes it, once;
    an id the store already has, or one not shaped like a run id, is never taken."""
    from nbdurable.runtime.run import DurableRun
    from nbdurable.runtime.session import ENV_RUN_ID

    store = Store.open(tmp_path / "s")
    monkeypatch.setenv(ENV_RUN_ID, "20240101T000000000-abcdef")
    first = DurableRun(store, notebook="nb")
    first.finish("completed")
    second = DurableRun(store, notebook="nb")
    second.finish("completed")
    assert first.run_id == "20240101T000000000-abcdef" and second.run_id != first.run_id
    monkeypatch.setenv(ENV_RUN_ID, first.run_id)  # already in the store
    third = DurableRun(store, notebook="nb")
    third.finish("completed")
    monkeypatch.setenv(ENV_RUN_ID, "../../etc")
    fourth = DurableRun(store, notebook="nb")
    fourth.finish("completed")
    assert len({first.run_id, third.run_id, fourth.run_id}) == 3 and "etc" not in fourth.run_id
