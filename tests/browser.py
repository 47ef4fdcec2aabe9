"""Browser tests' infrastructure: a JupyterLab server and Debian's Chromium driven by Playwright.

Fixtures (``conftest.py`` imports them by name, so a test requests them as arguments):

- ``lab_server`` (module): ``jupyter lab`` on a free loopback port with a random token, its root, config,
  data, runtime, settings and workspaces directories temporary (the lab extensions installed in
  ``sys.prefix`` still load), ``NBDURABLE_STORE`` a temporary store, nothing reaching the network.
- ``browser_context`` (module): a headless Chromium (``/usr/bin/chromium``, never a downloaded browser)
  with a fresh profile directory.
- ``page`` (per test): a new tab; closed after the test, with a screenshot when the test failed; the test
  fails if the page requested any address off this machine.

``LabServer.write_notebook`` writes a notebook (kernelspec python3: no kernel dialog) into the server's root;
``LabNotebook`` opens it in a workspace of its own, waits for its kernel, runs cells one at a time the way a
user does (select, Shift+Enter) or all (Run All), restarts the kernel and waits for outputs. ``screenshot(page, name)``
saves ``<name>.png`` into ``$NBDURABLE_ARTIFACTS`` (default ``tests/artifacts/``).

Synchronization is always an explicit wait on a selector or a condition, never a fixed sleep; the
timeouts are generous because CI machines are small (2 cores) and noisy.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest

from helpers import clean_env

HERE = Path(__file__).parent
CHROMIUM = Path(os.environ.get("NBDURABLE_CHROMIUM", "/usr/bin/chromium"))
INSTALL_HINT = (
    "The browser tests need Debian's Chromium at {path} (Playwright drives it; its own browser download is "
    "never used). Run the README's test command, which installs it:\n"
    "  (test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
    "apt-get install -y -qq chromium)) "
    "&& python3 -m pip install -e \".[test]\" && python3 -m pytest -q -n 2 --dist loadgroup\n"
    "(apt-get needs root; elsewhere install the distribution's chromium package, "
    "or point NBDURABLE_CHROMIUM at a Chromium.)"
)
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    "--disable-features=Translate,MediaRouter", "--no-default-browser-check", "--disable-extensions",
]
LOCAL_URL_PREFIXES = ("http://127.0.0.1:", "http://localhost:", "ws://127.0.0.1:", "file:", "data:", "blob:", "about:")
#: Waits (milliseconds): long enough for a kernel start or a first page load on a loaded 2-core machine.
LOAD_TIMEOUT = 90_000
KERNEL_TIMEOUT = 60_000
OUTPUT_TIMEOUT = 30_000
SERVER_START_TIMEOUT = 90.0


def artifacts_dir() -> Path:
    """Where screenshots go: ``$NBDURABLE_ARTIFACTS`` or ``tests/artifacts/`` (git-ignored)."""
    path = Path(os.environ.get("NBDURABLE_ARTIFACTS") or HERE / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(page: Any, name: str, *, full_page: bool = False) -> Path:
    """Save a PNG of the page as ``<artifacts>/<name>.png`` (a test artifact, never an assertion)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "page"
    path = artifacts_dir() / f"{safe}.png"
    page.screenshot(path=str(path), full_page=full_page, timeout=30_000)
    return path


def require_chromium() -> Path:
    """Debian's Chromium, or a test failure that says how to install it (never a silent skip)."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(INSTALL_HINT.format(path=CHROMIUM), pytrace=False)
    return CHROMIUM


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def subprocess_env(**extra: str) -> dict[str, str]:
    """The suite's environment for a child process (``helpers.clean_env``): no NBDURABLE_* from the caller
    (the test key comes through XDG_CONFIG_HOME, which conftest sets), plus ``extra``."""
    return clean_env(extra)


# --------------------------------------------------------------------------------------------- the server


@dataclass
class LabServer:
    """A running ``jupyter lab``: its URL, token, root directory (notebooks go there) and store."""

    proc: subprocess.Popen[bytes]
    port: int
    token: str
    root: Path
    store: Path
    log: Path
    startup_s: float = 0.0
    opened: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET", body: Any = None, timeout: float = 10) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base_url}/api/{path.lstrip('/')}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def write_notebook(self, name: str, cells: Sequence[str | tuple[str, str]], *, kernel: str = "python3") -> Path:
        """Write ``<root>/<name>.ipynb`` with code cells (a ``("markdown", text)`` tuple is a markdown cell).
        The kernelspec metadata names ``kernel`` so no kernel-selection dialog appears."""
        nb = nbformat.v4.new_notebook()
        for cell in cells:
            if isinstance(cell, tuple):
                kind, text = cell
                nb.cells.append(nbformat.v4.new_markdown_cell(text) if kind == "markdown"
                                else nbformat.v4.new_code_cell(text))
            else:
                nb.cells.append(nbformat.v4.new_code_cell(cell))
        nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3 (ipykernel)", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        path = self.root / f"{name}.ipynb"
        nbformat.write(nb, path)
        return path

    def shutdown_kernels(self) -> None:
        """Stop every session's kernel (tests are independent; the 2 cores are not to be shared with idle kernels)."""
        try:
            for session in self.api("sessions"):
                self.api(f"sessions/{session['id']}", method="DELETE", timeout=30)
        except (urllib.error.URLError, OSError, TimeoutError):
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.shutdown_kernels()
            self.proc.send_signal(signal.SIGTERM)  # jupyter_server shuts its kernels down on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_lab_server(base: Path, *, store: Path | None = None) -> LabServer:
    """Start ``jupyter lab`` under ``base`` (root, store, config/data/runtime dirs) and wait for /api/status."""
    root, jconfig, jdata, jruntime = (base / n for n in ("root", "jupyter-config", "jupyter-data", "jupyter-runtime"))
    settings, workspaces = base / "lab-user-settings", base / "lab-workspaces"
    for d in (root, jconfig, jdata, jruntime, settings, workspaces):
        d.mkdir(parents=True, exist_ok=True)
    store = store or base / "store"
    # No news, no update check, no toast asking about them; no notification toasts over the widgets.
    notif = settings / "@jupyterlab" / "apputils-extension"
    notif.mkdir(parents=True, exist_ok=True)
    (notif / "notification.jupyterlab-settings").write_text(json.dumps(
        {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True}))
    token = secrets.token_hex(24)
    env = subprocess_env(
        NBDURABLE_STORE=str(store),
        JUPYTER_CONFIG_DIR=str(jconfig), JUPYTER_DATA_DIR=str(jdata), JUPYTER_RUNTIME_DIR=str(jruntime),
        JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(workspaces),
        JUPYTER_PLATFORM_DIRS="0", PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    env.pop("JUPYTER_PATH", None)  # sys.prefix/share/jupyter (labextensions, kernelspecs) stays on the data path
    log = base / "jupyter-lab.log"
    last_error = ""
    for _attempt in range(3):  # the free port may be taken between choosing it and binding it
        port = free_port()
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
            "--ServerApp.terminals_enabled=False", "--ServerApp.open_browser=False",
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={workspaces}",
            "--LanguageServerManager.autodetect=False",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI containers run as root
        started = time.monotonic()
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        server = LabServer(proc, port, token, root, store, log)
        deadline = started + SERVER_START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                server.api("status", timeout=2)
                server.startup_s = time.monotonic() - started
                return server
            except (urllib.error.URLError, OSError, TimeoutError, json.JSONDecodeError) as exc:
                last_error = repr(exc)
                time.sleep(0.2)  # polling interval of a readiness probe, not a synchronization by time
        server.stop()
        if "Address already in use" not in server.log_tail():
            break
    raise RuntimeError(f"jupyter lab did not become ready ({last_error}):\n{LabServer.log_tail(server)}")


# -------------------------------------------------------------------------------------------- the browser


def launch_browser_context(playwright: Any, profile: Path) -> Any:
    """Headless Debian Chromium with a fresh profile. Playwright refuses ``--user-data-dir`` in ``args``,
    so the profile goes through ``launch_persistent_context``."""
    return playwright.chromium.launch_persistent_context(
        user_data_dir=str(profile), executable_path=str(require_chromium()), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000}, accept_downloads=False, service_workers="block",
    )


# ---------------------------------------------------------------------------------------------- notebooks


class LabNotebook:
    """A notebook opened in JupyterLab in ``page``; cells indexed from 0."""

    def __init__(self, page: Any, server: LabServer, name: str) -> None:
        self.page, self.server, self.name = page, server, name

    # -- opening

    def open(self) -> LabNotebook:
        # A workspace of its own, reset: JupyterLab would otherwise restore the notebooks earlier tests left
        # open in the shared default workspace (and start their kernels).
        workspace = re.sub(r"[^A-Za-z0-9_-]+", "-", self.name)
        self.page.goto(self.server.url(f"lab/workspaces/{workspace}/tree/{self.name}.ipynb?reset"),
                       wait_until="domcontentloaded", timeout=LOAD_TIMEOUT)
        self.page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=LOAD_TIMEOUT)
        self.cells.first.wait_for(state="visible", timeout=LOAD_TIMEOUT)
        self.server.opened.append(self.name)
        self.wait_kernel_idle()
        return self

    def _panel_js(self) -> str:
        return ("(() => { const w = window.jupyterapp.shell.currentWidget;"
                " return w && w.sessionContext ? w : null; })()")

    def kernel_status(self) -> str | None:
        status = self.page.evaluate(f"""() => {{ const w = {self._panel_js()};
            const k = w && w.sessionContext.session && w.sessionContext.session.kernel;
            return k ? k.status : null; }}""")
        return None if status is None else str(status)

    def wait_kernel_idle(self, timeout: float = KERNEL_TIMEOUT) -> None:
        """Wait until the notebook's kernel is connected and idle (the frontend's own view of it)."""
        self.page.wait_for_function(f"""() => {{ const w = {self._panel_js()};
            if (!w || !w.sessionContext.isReady) return false;
            const k = w.sessionContext.session && w.sessionContext.session.kernel;
            return !!k && k.status === 'idle' && k.connectionStatus === 'connected'; }}""", timeout=timeout)

    # -- cells

    @property
    def cells(self) -> Any:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-viewport > .jp-Cell")

    def cell(self, index: int) -> Any:
        return self.cells.nth(index)

    def output(self, index: int) -> Any:
        return self.cell(index).locator(".jp-OutputArea")

    def prompt(self, index: int) -> str:
        return (self.cell(index).locator(".jp-InputArea-prompt").inner_text(timeout=OUTPUT_TIMEOUT) or "").strip()

    def select(self, index: int) -> None:
        """Select the cell in command mode (a click on its input prompt, not into its editor)."""
        cell = self.cell(index)
        cell.scroll_into_view_if_needed(timeout=OUTPUT_TIMEOUT)
        cell.locator(".jp-InputArea-prompt").click(timeout=OUTPUT_TIMEOUT)
        self.page.wait_for_function(f"""() => {{ const w = {self._panel_js()};
            return w && w.content.activeCellIndex === {index}; }}""", timeout=OUTPUT_TIMEOUT)

    def execution_count(self, index: int) -> int | None:
        count = self.page.evaluate(f"""() => {{ const w = {self._panel_js()};
            const c = w && w.content.widgets[{index}];
            return c && c.model.executionCount != null ? c.model.executionCount : null; }}""")
        return None if count is None else int(count)

    def is_running(self, index: int) -> bool:
        """The cell is queued or executing (its prompt shows ``[*]``)."""
        return "*" in self.prompt(index)

    def run_cell(self, index: int, *, wait: bool = True, timeout: float = OUTPUT_TIMEOUT) -> None:
        """Select the cell and press Shift+Enter; with ``wait``, return when it finished (prompt ``[n]``)."""
        before = self.execution_count(index)
        self.select(index)
        self.page.keyboard.press("Shift+Enter")
        # The frontend marks the cell running ([*]) at once; wait until it was sent...
        self.page.wait_for_function(f"""() => {{ const w = {self._panel_js()};
            const c = w && w.content.widgets[{index}];
            return c && (c.model.executionState === 'running'
                         || (c.model.executionCount != null && c.model.executionCount !== {json.dumps(before)})); }}""",
                                    timeout=OUTPUT_TIMEOUT)
        if wait:
            self.wait_cell_done(index, timeout=timeout)

    def wait_cell_done(self, index: int, timeout: float = OUTPUT_TIMEOUT) -> None:
        self.page.wait_for_function(f"""() => {{ const w = {self._panel_js()};
            const c = w && w.content.widgets[{index}];
            return c && c.model.executionState === 'idle' && c.model.executionCount != null; }}""", timeout=timeout)

    def run_all(self, *, timeout: float = OUTPUT_TIMEOUT) -> bool:
        """Run > Run All Cells (the menu's command). Returns when the run ended — its last cell finished,
        or a cell failed and the rest were not run — with whether every cell succeeded."""
        result = self.page.evaluate("""async (ms) => {
            const done = window.jupyterapp.commands.execute('notebook:run-all-cells');
            const late = new Promise((_, reject) => setTimeout(
                () => reject(new Error('Run All still running after ' + ms + ' ms')), ms));
            return await Promise.race([done, late]); }""", timeout)
        self.wait_kernel_idle(timeout=timeout)
        return bool(result)

    def restart_kernel(self) -> None:
        """Restart the kernel without the confirmation dialog (the session context's own restart)."""
        self.page.evaluate(f"""async () => {{ const w = {self._panel_js()};
            await w.sessionContext.session.kernel.restart(); }}""")
        self.wait_kernel_idle()

    def wait_output(self, index: int, selector: str, timeout: float = OUTPUT_TIMEOUT) -> Any:
        """The first element matching ``selector`` in the cell's output, once visible."""
        loc = self.output(index).locator(selector).first
        loc.wait_for(state="visible", timeout=timeout)
        return loc

    def wait_output_text(self, index: int, text: str, timeout: float = OUTPUT_TIMEOUT) -> None:
        self.page.wait_for_function(f"""() => {{ const w = {self._panel_js()};
            const c = w && w.content.widgets[{index}];
            return !!c && c.node.querySelector('.jp-OutputArea')
                && c.node.querySelector('.jp-OutputArea').innerText.includes({json.dumps(text)}); }}""",
                                    timeout=timeout)

    def output_text(self, index: int) -> str:
        return str(self.page.evaluate(f"""() => {{ const w = {self._panel_js()};
            const c = w && w.content.widgets[{index}];
            const o = c && c.node.querySelector('.jp-OutputArea'); return o ? o.innerText : ''; }}"""))

    def screenshot(self, name: str) -> Path:
        return screenshot(self.page, name)


# ----------------------------------------------------------------------------------------------- fixtures


# Module scope, not session: while Playwright's sync API is alive, the main thread has a running asyncio
# loop (asyncio.run() in any later test of the session would fail), and the server's idle kernels would
# take CPU from the tests after these.


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    require_chromium()  # no point starting a server the tests cannot reach
    base = tmp_path_factory.mktemp("lab")
    server = start_lab_server(base)
    sys.stderr.write(f"\n[browser] jupyter lab ready in {server.startup_s:.1f}s on port {server.port}\n")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    profile = Path(tempfile.mkdtemp(prefix="nbd-chromium-"))
    started = time.monotonic()
    with sync_playwright() as pw:
        context = launch_browser_context(pw, profile)
        context.set_default_timeout(OUTPUT_TIMEOUT)
        sys.stderr.write(f"[browser] chromium ready in {time.monotonic() - started:.1f}s\n")
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh tab. When the test fails, its screenshot is saved as ``<test name>-FAILED.png``; the tab's
    console errors are attached to the failure output."""
    stale = artifacts_dir() / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name).strip('_')}-FAILED.png"
    stale.unlink(missing_ok=True)  # a failure screenshot of an earlier run would mislead
    tab = browser_context.new_page()
    console: list[str] = []
    tab.on("console",
           lambda msg: console.append(f"{msg.type}: {msg.text}") if msg.type in ("error", "warning") else None)
    tab.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    outside: list[str] = []  # requests leaving the machine: none allowed (CI has no network, and must not need it)
    tab.on("request", lambda r: outside.append(r.url) if not r.url.startswith(LOCAL_URL_PREFIXES) else None)
    failed_before = request.session.testsfailed
    try:
        yield tab
    finally:
        # The call phase's report is logged before the fixture's teardown: a new failure is this test's.
        if request.session.testsfailed > failed_before:
            try:
                screenshot(tab, f"{request.node.name}-FAILED")
            except Exception as exc:  # a failed screenshot must not hide the test's failure
                sys.stderr.write(f"[browser] failure screenshot failed: {exc}\n")
            if console:
                sys.stderr.write("[browser] console:\n  " + "\n  ".join(console[-40:]) + "\n")
        tab.close()
    assert not outside, f"the page requested addresses off this machine: {outside[:10]}"
