"""``nbdurable serve`` driving real headless runs (real kernels) over real HTTP on loopback: a run started by
``POST /api/runs`` with parameters; a suspended run released by an event sent over HTTP (approve) and resumed
by the server's engine; rerun; cancel of a live run."""

from __future__ import annotations

import functools
import time
from typing import Any

import httpx
import pytest
from serve_helpers import Served, served

from nbdurable.server.engine import WorkerEngine
from nbdurable.store import Store

from helpers import write_notebook

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(400), pytest.mark.xdist_group("serve_runs")]


def wait_status(client: httpx.Client, run_id: str, statuses: tuple[str, ...], timeout: float = 180) -> dict[str, Any]:
    """GET /api/runs/{id} until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = client.get(f"/api/runs/{run_id}")
        if answer.status_code == 200:
            body = answer.json()
            if body["run"].get("status") in statuses:
                return body
            assert body["run"].get("status") != "failed to start", body["run"].get("log")
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not reach {statuses}: {body.get('run')}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("root")
    nb = write_notebook(root / "hello.ipynb", ["name = 'world'", "greeting = f'hello {name}'\nprint(greeting)"])
    import nbformat

    notebook = nbformat.read(nb, as_version=4)
    notebook.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(notebook, nb)
    write_notebook(root / "approve.ipynb", [
        "import nbdurable as nbd",
        "event = nbd.wait_for_event('deploy.approved', match={'service': 'api'}, timeout='1h')",
        "print('approved' if event['approved'] else 'rejected')",
    ])
    write_notebook(root / "slow.ipynb", ["import time", "time.sleep(120)"])
    store = Store.open(root / ".nbdurable")
    with served(store, root, engine=functools.partial(WorkerEngine, poll=0.3)) as s:
        yield s


def test_post_runs_starts_a_run_with_parameters(server: Served) -> None:
    with server.client() as c:
        answer = c.post("/api/runs", json={"notebook": "hello.ipynb", "params": {"name": "api"}})
        assert answer.status_code == 202
        run_id = answer.json()["run_id"]
        body = wait_status(c, run_id, ("completed",))
        assert body["run"]["params"] == {"name": "api"} and len(body["graph"]["nodes"]) >= 2
        listed = c.get("/api/runs", params={"params": "name=api"}).json()["runs"]
        assert [r["run_id"] for r in listed] == [run_id]
        rerun = c.post(f"/api/runs/{run_id}/rerun", json={"from_cell": 2})
        assert rerun.status_code == 202
        again = wait_status(c, rerun.json()["run_id"], ("completed",))
        assert again["run"]["params"] == {"name": "api"} and again["lineage"]["forked_from"] == run_id


def test_an_approval_over_http_releases_a_suspended_run(server: Served) -> None:
    with server.client() as c:
        run_id = c.post("/api/runs", json={"notebook": "approve.ipynb"}).json()["run_id"]
        wait_status(c, run_id, ("suspended",))
        pending = c.get("/api/approvals").json()["approvals"]
        assert [a["match"] for a in pending if a["run_id"] == run_id] == [{"service": "api"}]
        sent = c.post("/api/approvals/deploy.approved", json={"approved": True}, headers={"Idempotency-Key": "d-1"})
        assert sent.status_code == 202 and sent.json()["data"] == {"service": "api", "approved": True}
        deadline = time.monotonic() + 180
        while not (resumed := c.get(f"/api/runs/{run_id}").json()["lineage"]["resumed_by"]):
            assert time.monotonic() < deadline, "the engine did not resume the run"
            time.sleep(0.3)
        done = wait_status(c, resumed[0], ("completed",))
        assert done["run"]["resumed_from"] == run_id
        assert c.get("/api/approvals").json()["approvals"] == []


def test_cancel_a_live_run(server: Served) -> None:
    with server.client() as c:
        run_id = c.post("/api/runs", json={"notebook": "slow.ipynb"}).json()["run_id"]
        wait_status(c, run_id, ("running",))
        deadline = time.monotonic() + 120
        while len(c.get(f"/api/runs/{run_id}").json()["graph"]["nodes"]) < 2:  # in its sleeping cell
            assert time.monotonic() < deadline
            time.sleep(0.3)
        answer = c.post(f"/api/runs/{run_id}/cancel", json={"reason": "from the test"})
        assert answer.status_code == 200 and answer.json()["status"] in ("requested", "cancelled")
        wait_status(c, run_id, ("cancelled",), timeout=60)
        assert c.post(f"/api/runs/{run_id}/cancel").status_code == 409


def test_an_event_over_http_starts_a_triggered_run_and_schedules_are_listed_and_paused(server: Served) -> None:
    from nbdurable.headless.scheduler import make_schedule
    from nbdurable.headless.triggers import define_trigger

    store = server.store
    root = server.root
    write_notebook(root / "on_order.ipynb", ["event = {}", "print('order', event['id'])"])
    import nbformat

    notebook = nbformat.read(root / "on_order.ipynb", as_version=4)
    notebook.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(notebook, root / "on_order.ipynb")
    store.add_trigger(define_trigger("orders", root / "on_order.ipynb", on="order.created", match={"plan": "pro"}))
    store.add_schedule(make_schedule("nightly", root / "hello.ipynb", cron="0 3 * * *", tz="Europe/Paris"))
    with server.client() as c:
        triggers = c.get("/api/triggers").json()["triggers"]
        assert [(t["name"], t["event"], t["match"], t["paused"]) for t in triggers] == [
            ("orders", "order.created", {"plan": "pro"}, False)]
        schedules = c.get("/api/schedules").json()["schedules"]
        assert [(s["name"], s["paused"]) for s in schedules] == [("nightly", False)]
        assert schedules[0]["next_fire_at"] > time.time() - 86400
        paused = c.post("/api/schedules/nightly/pause", json={})
        assert paused.status_code == 200 and paused.json()["schedule"]["paused"] is True
        assert c.get("/api/schedules").json()["schedules"][0]["next_fire_at"] is None
        assert c.post("/api/schedules/nightly/resume", json={}).json()["schedule"]["paused"] is False
        assert c.post("/api/schedules/nope/pause", json={}).status_code == 404
        c.post("/api/events/order.created", json={"plan": "free", "id": 1})  # does not match
        sent = c.post("/api/events/order.created", json={"plan": "pro", "id": 2})
        assert sent.status_code == 202
        deadline = time.monotonic() + 180
        while True:
            runs = [r for r in c.get("/api/runs").json()["runs"] if r["notebook"].endswith("on_order.ipynb")]
            if runs and runs[0]["status"] == "completed":
                break
            assert time.monotonic() < deadline, (c.get("/api/runs").json(), server.messages)
            time.sleep(0.3)
        assert len(runs) == 1 and runs[0]["params"] == {"event": {"plan": "pro", "id": 2}}
        detail = c.get(f"/api/runs/{runs[0]['run_id']}").json()
        assert detail["lineage"]["origin"]["trigger"] == "orders"
        assert c.get("/api/triggers").json()["triggers"][0]["counts"]["runs"] == 1
