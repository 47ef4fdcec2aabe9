"""``nbdurable serve`` under load: events accepted per second, the runs list at 10,000 runs, the dashboard's
table in Chromium at 10,000 runs.

Servers run as processes of their own (``python -m nbdurable serve --no-engine`` on loopback), the load
generator here:

- events: ``CLIENTS`` concurrent HTTP/1.1 keep-alive clients (asyncio streams) POST events for ``--seconds``;
  each reply comes after the event is durable (the server's group commit: one fdatasync of its write-ahead
  segment for the events that arrived together). Figures: events/s, p50 and p99 latency.
  Baselines in the same run: the bare durable write (``Store.send_event`` in a loop, one thread: what the
  disk allows per writer) and a bare Starlette endpoint on uvicorn answering 202 without storing (what
  HTTP costs), under the same clients. Target: >= 1,000 events/s.
- runs list: ``GET /api/runs?limit=100`` (filters varied between repeats) on a store of 10,000 runs
  (``bench/catalog.py``'s writer, 5 steps each; ingested once first), against the same query through
  ``Catalog.query`` in this process (no HTTP, no JSON). Target: p50 <= 50 ms.
- dashboard: Debian's Chromium opens ``/?token=…`` and the time from navigation start to the runs table
  drawn (``#nbd-dash[data-rendered-at]``, set by the page after it filled the table) is read; against the
  same page on an empty store. Target: <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT, Figure, emit

CLIENTS = 16
TARGET_EVENTS = 1000.0
TARGET_LIST_MS = 50.0
TARGET_RENDER_MS = 1000.0
CHROMIUM = os.environ.get("NBDURABLE_CHROMIUM", "/usr/bin/chromium")

BARE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
async def post(request):
    await request.body()
    return JSONResponse({"id": "x"}, status_code=202)
app = Starlette(routes=[Route("/api/events/{name}", post, methods=["POST"]),
                        Route("/api/events", lambda r: JSONResponse({}), methods=["GET"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(store: Path, root: Path, token: str, *, bare: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    env = {**os.environ, "NBDURABLE_TOKEN": token}
    args = ([sys.executable, "-c", BARE_APP, str(port)] if bare else
            [sys.executable, "-m", "nbdurable", "serve", "--no-engine", "--port", str(port), "--root", str(root),
             "--store", str(store)])
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{base}/api/events?limit=0", headers={"Authorization": f"Bearer {token}"}, timeout=2)
            return proc, base
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.05)


async def _load(base: str, token: str, seconds: float) -> tuple[float, list[float]]:
    """(events/s, latencies in s) of CLIENTS concurrent keep-alive senders for ``seconds``. A minimal HTTP/1.1
    client on asyncio streams (an HTTP library would spend more of a shared 2-core machine than the server)."""
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def sender(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        n = 0
        try:
            while time.perf_counter() < stop_at:
                body = f'{{"sender": {k}, "n": {n}}}'.encode()
                head = (f"POST /api/events/bench.tick HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                t0 = time.perf_counter()
                writer.write(head + body)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if b" 202 " not in status:
                    raise RuntimeError(f"POST answered {status!r}")
                latencies.append(time.perf_counter() - t0)
                n += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(sender(k) for k in range(CLIENTS)))
    return len(latencies) / (time.perf_counter() - start), latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def bench_events(work: Path, seconds: float) -> list[Figure]:
    from nbdurable.store import Store

    token = secrets.token_urlsafe(24)
    bare_store = Store.open(work / "bare-store")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min(seconds, 3.0):
        bare_store.send_event("bench.tick", {"n": n})
        n += 1
    bare_rate = n / (time.perf_counter() - t0)
    proc, base = _serve(work / "events-store", work, token)
    try:
        asyncio.run(_load(base, token, 1.0))  # warm-up: connections, imports
        rate, lat = asyncio.run(_load(base, token, seconds))
    finally:
        proc.kill()
        proc.wait()
    bare_proc, bare_base = _serve(work, work, token, bare=True)
    try:
        http_rate, http_lat = asyncio.run(_load(bare_base, token, min(seconds, 3.0)))
    finally:
        bare_proc.kill()
        bare_proc.wait()
    return [
        Figure("serve: events accepted/s (durable before 202)", rate, "bare fsync'ed Store.send_event, 1 thread",
               bare_rate, "events/s", f">= {TARGET_EVENTS:,.0f}/s", rate >= TARGET_EVENTS,
               f"{CLIENTS} keep-alive clients, {seconds:g} s; latency p50 {_pct(lat, 0.5):.1f} ms, "
               f"p99 {_pct(lat, 0.99):.1f} ms; bare Starlette 202 (no storing) under the same clients: "
               f"{http_rate:,.0f}/s, p50 {_pct(http_lat, 0.5):.1f} ms"),
    ]


def bench_runs_list(work: Path, repeats: int) -> tuple[list[Figure], Path]:
    from nbdurable.store import Store
    from nbdurable.widgets.history import filters_query

    from bench.catalog import build_store

    root = work / "big-store"
    t0 = time.perf_counter()
    build_store(root, 10_000, 5)
    store = Store.open(root)
    store.catalog().ingest()
    generation = time.perf_counter() - t0
    filters = [{}, {"status": "failed"}, {"notebook": "nb03"}, {"params": "region=eu"}, {"notebook": "nb1*"}]
    direct = []
    for k in range(repeats):
        sql, args = filters_query(filters[k % len(filters)], limit=100)
        t = time.perf_counter()
        store.catalog().query(sql, args)
        direct.append(time.perf_counter() - t)
    token = secrets.token_urlsafe(24)
    proc, base = _serve(root, work, token)
    try:
        over_http = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            c.get("/api/runs")  # warm-up
            for k in range(repeats):
                t = time.perf_counter()
                answer = c.get("/api/runs", params={**filters[k % len(filters)], "limit": 100})
                over_http.append(time.perf_counter() - t)
                assert answer.status_code == 200 and answer.json()["runs"]
    finally:
        proc.kill()
        proc.wait()
    p50 = statistics.median(over_http) * 1000
    return [Figure("serve: GET /api/runs?limit=100 at 10,000 runs (p50)", p50, "same SQL via Catalog.query",
                   statistics.median(direct) * 1000, "ms", f"<= {TARGET_LIST_MS:.0f} ms", p50 <= TARGET_LIST_MS,
                   f"median of {repeats}, filters varied; p99 {_pct(over_http, 0.99):.1f} ms; store written and "
                   f"ingested in {generation:.0f} s (not a figure)")], root


def _render_ms(browser: object, base: str, token: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        context = browser.new_context()  # type: ignore[attr-defined]
        page = context.new_page()
        page.goto(f"{base}/?token={token}")
        page.wait_for_selector("#nbd-dash[data-rendered-at]", timeout=60_000)
        times.append(float(page.get_attribute("#nbd-dash", "data-rendered-at")))
        context.close()
    return times


def bench_dashboard(work: Path, big: Path, repeats: int) -> list[Figure]:
    from playwright.sync_api import sync_playwright

    token = secrets.token_urlsafe(24)
    big_proc, big_base = _serve(big, work, token)
    empty_proc, empty_base = _serve(work / "empty-store", work, token)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                _render_ms(browser, big_base, token, 1)  # warm-up
                full = _render_ms(browser, big_base, token, repeats)
                empty = _render_ms(browser, empty_base, token, repeats)
            finally:
                browser.close()
    finally:
        for proc in (big_proc, empty_proc):
            proc.kill()
            proc.wait()
    value = statistics.median(full)
    return [Figure("serve: dashboard runs table drawn after navigation, 10,000 runs", value,
                   "same page, empty store", statistics.median(empty), "ms", f"<= {TARGET_RENDER_MS:.0f} ms",
                   value <= TARGET_RENDER_MS,
                   f"median of {repeats} fresh tabs in Chromium; the table shows the newest 200 (of 10,000)")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--render-repeats", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nbd-bench-serve-"))
    try:
        figures = bench_events(work, args.seconds)
        listed, big = bench_runs_list(work, args.repeats)
        figures += listed
        figures += bench_dashboard(work, big, args.render_repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(figures)


if __name__ == "__main__":
    main()
