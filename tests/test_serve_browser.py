"""The dashboard of ``nbdurable serve`` in Debian's Chromium (Playwright, as tests/test_browser.py): runs listed,
a run's graph drawn, a running run updated live from the stream, cancel from the page, approve from the page
(the engine then resumes the run). Screenshots in tests/artifacts/."""

from __future__ import annotations

import functools
import time
from typing import Any

import pytest
from playwright.sync_api import expect
from serve_helpers import Served, served, write_run

from nbdurable.server.engine import WorkerEngine
from nbdurable.store import Store

from browser import screenshot
from helpers import write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(400),
              pytest.mark.xdist_group("serve_browser")]

RUN_TIMEOUT = 180_000  # ms: a headless run's kernel start on a loaded 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("root")
    write_notebook(root / "steps.ipynb", ["import time\ntime.sleep(2)\na = 1", "time.sleep(2)\nb = a + 1",
                                          "time.sleep(2)\nc = b + 1"])
    write_notebook(root / "slow.ipynb", ["import time", "time.sleep(300)"])
    write_notebook(root / "approve.ipynb", ["import nbdurable as nbd",
                                            "decision = nbd.wait_for_event('release.ok', timeout='1h')",
                                            "print(decision)"])
    store = Store.open(root / ".nbdurable")
    for k in range(12):
        write_run(store, f"20240501T1200{k:02d}000-{k:06x}", notebook=f"nb{k % 3}", steps=3,
                  status=("completed", "failed", "suspended")[k % 3], started=1714564800.0 + k * 60)
    with served(store, root, engine=functools.partial(WorkerEngine, poll=0.3)) as s:
        yield s


def open_dashboard(page: Any, server: Served) -> None:
    page.goto(f"{server.base_url}/?token={server.token}")
    page.wait_for_selector("#nbd-dash[data-live='on']")
    page.wait_for_selector("tr[data-run-id]")


def row(page: Any, run_id: str) -> Any:
    return page.locator(f"tr[data-run-id='{run_id}']")


def test_runs_listed_filtered_and_a_graph_drawn(page: Any, server: Served) -> None:
    open_dashboard(page, server)
    assert page.locator("tr[data-run-id]").count() == 12
    page.fill("input[name=notebook]", "nb1")
    expect(page.locator("tr[data-run-id]")).to_have_count(4)
    page.fill("input[name=notebook]", "")
    page.select_option("select[name=status]", "failed")
    expect(page.locator("tr[data-run-id]")).to_have_count(4)
    page.select_option("select[name=status]", "")
    expect(page.locator("tr[data-run-id]")).to_have_count(12)
    page.fill("input[name=since]", "not a date")
    page.wait_for_selector("#nbd-filter-error:not([hidden])")
    assert "bad date" in page.inner_text("#nbd-filter-error")
    page.fill("input[name=since]", "")
    first = "20240501T120000000-000000"
    row(page, first).click()
    page.wait_for_selector(f"#nbd-run[data-run-id='{first}'] div.nbd-graph g.nbd-node")
    assert page.locator("#nbd-run g.nbd-node").count() == 3
    assert page.locator("#nbd-run button[data-action=cancel]").is_disabled()  # completed: nothing to cancel
    screenshot(page, "serve-dashboard-runs")


def test_a_running_run_updates_live(page: Any, server: Served) -> None:
    open_dashboard(page, server)
    with server.client() as c:
        run_id = c.post("/api/runs", json={"notebook": "steps.ipynb"}).json()["run_id"]
    page.wait_for_selector(f"tr[data-run-id='{run_id}'][data-status='running']", timeout=RUN_TIMEOUT)
    row(page, run_id).click()
    page.wait_for_selector("#nbd-run g.nbd-node[data-status='running']", timeout=RUN_TIMEOUT)
    screenshot(page, "serve-dashboard-live-running")
    page.wait_for_selector(f"tr[data-run-id='{run_id}'][data-status='completed']", timeout=RUN_TIMEOUT)
    expect(page.locator("#nbd-run g.nbd-node[data-status='completed']")).to_have_count(3, timeout=RUN_TIMEOUT)
    screenshot(page, "serve-dashboard-live-completed")


def test_cancel_from_the_page(page: Any, server: Served) -> None:
    open_dashboard(page, server)
    with server.client() as c:
        run_id = c.post("/api/runs", json={"notebook": "slow.ipynb"}).json()["run_id"]
    page.wait_for_selector(f"tr[data-run-id='{run_id}'][data-status='running']", timeout=RUN_TIMEOUT)
    row(page, run_id).click()
    page.wait_for_selector("#nbd-run g.nbd-node", timeout=RUN_TIMEOUT)
    deadline = time.monotonic() + 120
    while page.locator("#nbd-run g.nbd-node").count() < 2:  # in its sleeping cell
        assert time.monotonic() < deadline
        time.sleep(0.3)
    page.click("#nbd-run button[data-action=cancel]")
    page.wait_for_selector(f"tr[data-run-id='{run_id}'][data-status='cancelled']", timeout=90_000)
    assert "cancel" in page.inner_text("#nbd-msg")
    screenshot(page, "serve-dashboard-cancelled")


def test_approve_from_the_page(page: Any, server: Served) -> None:
    open_dashboard(page, server)
    with server.client() as c:
        run_id = c.post("/api/runs", json={"notebook": "approve.ipynb"}).json()["run_id"]
    item = f"li[data-approval-run='{run_id}']"
    page.wait_for_selector(item, timeout=RUN_TIMEOUT)
    screenshot(page, "serve-dashboard-approval")
    page.fill(f"{item} input", '{"by": "the page"}')
    page.click(f"{item} button[data-decision=approve]")
    page.wait_for_selector(item, state="detached", timeout=RUN_TIMEOUT)  # resumed: no longer waiting
    store = server.store
    deadline = time.monotonic() + 180
    while True:
        resumed = [r for r in store.run_ids() if (store.journal_head(r) or {}).get("resumed_from") == run_id]
        if resumed:
            break
        assert time.monotonic() < deadline
        time.sleep(0.3)
    page.wait_for_selector(f"tr[data-run-id='{resumed[0]}'][data-status='completed']", timeout=RUN_TIMEOUT)
    event = store.events(name="release.ok")[-1]
    assert event["data"] == {"by": "the page", "approved": True}
    screenshot(page, "serve-dashboard-approved")


def test_dashboard_needs_the_token(page: Any, server: Served) -> None:
    page.context.clear_cookies()
    answer = page.goto(f"{server.base_url}/")
    assert answer is not None and answer.status == 401
    assert "token" in page.inner_text("body")

