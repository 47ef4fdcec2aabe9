"""The server's tests' infrastructure: ``nbdurable serve``'s application on a real uvicorn on loopback (in a
thread, or ``python -m nbdurable serve`` as a process for the kill tests), and runs written as journals.

``served(store, root)`` yields a ``Served``: its base URL, token and an ``httpx.Client`` sending the token.
``write_run(store, ...)`` writes a finished run's journal with the real record builders (no kernel): what
the catalog, the API and the dashboard read.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from nbdurable.store import Store, records

from browser import free_port, subprocess_env


@dataclass
class Served:
    """A server on loopback."""

    base_url: str
    token: str
    store: Store
    root: Path
    messages: list[str] = field(default_factory=list)  # what the server (and its engine) logged

    def client(self, token: str | None = "default", **kwargs: Any) -> httpx.Client:
        """An HTTP client for the server; ``token`` None: none sent; default: the server's."""
        headers = {} if token is None else {"Authorization": f"Bearer {self.token if token == 'default' else token}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)


@contextlib.contextmanager
def served(store: Store, root: Path, *, engine: Any = None, token: str | None = None) -> Iterator[Served]:
    """``create_app`` on uvicorn in a thread (engine: None unless given), stopped at the end."""
    from nbdurable.server.app import create_app

    token = token or secrets.token_urlsafe(24)
    port = free_port()
    messages: list[str] = []
    app = create_app(store, root, token, engine=engine, log=messages.append)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", token, store, root, messages)
    finally:
        server.should_exit = True
        thread.join(15)


@dataclass
class ServerProcess:
    """``python -m nbdurable serve`` as a process."""

    proc: subprocess.Popen[bytes]
    base_url: str
    token: str
    log: Path

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


def start_server_process(store: Path, root: Path, log: Path, *, extra: tuple[str, ...] = ("--no-engine",),
                         env: dict[str, str] | None = None) -> ServerProcess:
    """Start ``nbdurable serve`` on a free port with ``$NBDURABLE_TOKEN``; returns once it answers."""
    token = secrets.token_urlsafe(24)
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nbdurable", "serve", "--port", str(port), "--root", str(root),
                                 "--store", str(store), *extra], stdout=out, stderr=subprocess.STDOUT,
                                env=subprocess_env(NBDURABLE_TOKEN=token, **(env or {})))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{base}/api/events?limit=0", headers={"Authorization": f"Bearer {token}"}, timeout=2)
            return ServerProcess(proc, base, token, log)
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nbdurable serve did not start: {log.read_text()}") from None
            time.sleep(0.05)


def write_run(store: Store, run_id: str, *, notebook: str = "nb", status: str = "completed", steps: int = 2,
              params: dict[str, Any] | None = None, waiting_for: dict[str, Any] | None = None,
              started: float | None = None) -> str:
    """A run's journal as a headless run writes it (``status`` None: no ``run_end``, a run still going)."""
    t = started if started is not None else time.time()
    with store.new_journal(run_id) as w:
        w.append({**records.run_record(run_id, notebook=notebook, notebook_path=f"/work/{notebook}.ipynb",
                                       kind="headless", params=params or {},
                                       environment={"pid": os.getpid(), "host": "test"}), "ts": t})
        for ordinal in range(1, steps + 1):
            w.append({**records.step_start_record(ordinal, source=f"# step {ordinal}\nx{ordinal} = {ordinal}",
                                                  source_hash=f"{ordinal:016x}"), "ts": t + ordinal})
            w.append({**records.step_end_record(ordinal, status="completed", started_at=t + ordinal,
                                                ended_at=t + ordinal + 0.5, duration=0.5, variables=[], outputs=[]),
                      "ts": t + ordinal + 0.5})
        if status is not None:
            w.append({**records.run_end_record(status, waiting_for=waiting_for,
                                               wake_at=None if waiting_for or status != "suspended" else t + 86400),
                      "ts": t + steps + 1})
    return run_id
