"""Shared fixtures: a store directory per test, and sessions run in fresh IPython processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nbdurable.testing import reset_clock

from browser import browser_context, lab_server, page  # noqa: F401 - test_browser.py's fixtures, requested by name
from helpers import clean_env

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    """The tests' processes (shells, kernels, the CLI) share an authentication key of their own in a
    temporary config directory, never the user's ``~/.config/nbdurable/key`` (environments given to
    subprocesses drop NBDURABLE_* variables, so the key is placed through XDG_CONFIG_HOME)."""
    global _CONFIG_HOME
    _CONFIG_HOME = os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="nbd-test-config-")
    _compile_package()


_CONFIG_HOME: str | None = None


def pytest_unconfigure(config: pytest.Config) -> None:
    """The key's directory goes with the test process that made it (each xdist worker makes its own)."""
    if _CONFIG_HOME is not None:
        shutil.rmtree(_CONFIG_HOME, ignore_errors=True)


def _compile_package() -> None:
    """nbdurable's bytecode, written once before the tests start their processes.

    An installed package has its bytecode (pip compiles it); this source tree has none, and where
    PYTHONDONTWRITEBYTECODE is set (CI machines, containers) no process writes it: each of the suite's
    thousands of kernels, shells and commands would compile nbdurable's sources again (about 0.1 s for a
    kernel). Compiling writes the files even under that setting; the processes only read them."""
    import compileall

    compileall.compile_dir(str(HERE.parent / "nbdurable"), quiet=1)


@pytest.fixture(autouse=True)
def _real_clock() -> Iterator[None]:
    """Each test starts on the real clock: a test that skipped time in this process leaves its clock ahead
    (``nbd.testing.reset_clock``), and a dispatcher driven by a later test would start delayed runs early."""
    yield
    reset_clock()


@dataclass
class Session:
    """What a shell session in a subprocess did."""

    returncode: int
    cells: list[dict[str, Any]]
    probes: dict[str, str]
    stdout: str

    @property
    def killed(self) -> bool:
        return self.returncode == -9


def run_session(store: Path | None, cells: list[str], *, notebook: str | None = "nb",
                probes: dict[str, str] | None = None, cwd: Path | None = None, env: dict[str, str] | None = None,
                config: dict[str, Any] | None = None,
                workdir: Path | None = None, timeout: float = 120, setup: str | None = None) -> Session:
    """Run cells in a fresh process with a real IPython shell and nbdurable loaded.

    The process's environment is ``helpers.clean_env(env)``; ``store=None`` leaves NBDURABLE_STORE unset (the
    default location or ``config`` decides); ``setup`` is Python run in the user namespace before the cells,
    outside any cell."""
    base = workdir or (store.parent if store else Path.cwd())
    spec_path = base / f"spec-{os.getpid()}-{len(list(base.glob('spec-*')))}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps({"cells": cells, "probes": probes or {}, "config": config or {}, "setup": setup}))
    full_env = clean_env(env)  # helpers.py's policy: no NBDURABLE_*/JPY_SESSION_NAME but what ``env`` sets
    if store is not None:
        full_env["NBDURABLE_STORE"] = str(store)
    if notebook:
        full_env["NBDURABLE_NOTEBOOK"] = notebook
    proc = subprocess.run([sys.executable, str(HERE / "shell_driver.py"), str(spec_path), str(out_path)],
                          env=full_env, cwd=cwd or base, timeout=timeout, capture_output=True, text=True)
    data = json.loads(out_path.read_text()) if out_path.exists() else {"cells": [], "probes": {}, "stdout": ""}
    if proc.returncode not in (0, -9):
        raise AssertionError(f"shell driver failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return Session(proc.returncode, data["cells"], data["probes"], data["stdout"] + proc.stderr)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A fresh store location (created on first use by nbdurable)."""
    return tmp_path / "store"


@pytest.fixture(scope="module")
def pg_db() -> Iterator[str]:
    """A PostgreSQL database of this test module's own (skips with how to start a server if none answers)."""
    from pg import database

    with database() as url:
        yield url


@pytest.fixture
def pg_store(pg_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh shared store's URL (its own schema), objects in a temporary directory (``file://``)."""
    from pg import drop_cache, new_store_url

    url = new_store_url(pg_db)
    monkeypatch.setenv("NBDURABLE_OBJECTS", (tmp_path / "objects").as_uri())
    yield url
    drop_cache(url)


@pytest.fixture(params=["local", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store location on each backend: a directory, and a PostgreSQL store (objects on ``file://``)."""
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    yield request.getfixturevalue("pg_store")
