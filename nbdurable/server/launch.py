"""Runs the server starts: ``nbdurable run`` / ``resume`` / ``rerun`` as processes of their own, each with
the run id chosen here (``$NBDURABLE_RUN_ID``, which the new run takes), so the API answers with it at once.

A launched process's output goes to ``<store>/tmp/serve-<run id>.log``; until its run's journal exists
``GET /api/runs/{id}`` says it is starting, and, if the process ended without creating it, that it failed to
start with the log's last lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdurable.errors import RequestError
from nbdurable.runtime.run import new_run_id
from nbdurable.runtime.session import ENV_RUN_ID, ENV_STORE
from nbdurable.store import Store

LOG_TAIL = 4000  # characters of a failed launch's log in the answer


@dataclass
class Launch:
    """A process started for a run."""

    run_id: str
    what: str
    process: subprocess.Popen[bytes]
    log: Path

    def state(self) -> dict[str, Any]:
        """The launch as ``GET /api/runs/{id}`` shows it before the run's journal exists."""
        code = self.process.poll()
        out: dict[str, Any] = {"run_id": self.run_id, "what": self.what, "pid": self.process.pid,
                               "status": "starting" if code is None else "failed to start", "exit_code": code}
        if code is not None:
            try:
                out["log"] = self.log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL:]
            except OSError:
                out["log"] = ""
        return out


class Launcher:
    """Starts runs of notebooks under ``root`` into ``store``; remembers the processes it started."""

    def __init__(self, store: Store, root: Path) -> None:
        self.store, self.root = store, root.resolve()
        self._launches: dict[str, Launch] = {}
        self._lock = threading.Lock()

    def notebook(self, relative: Any) -> Path:
        """The notebook file ``relative`` names under the root: 400 not a path, 403 outside the root, 404 missing."""
        if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
            raise RequestError("give the notebook as a path relative to the server's root",
                               status=400, hint='e.g. {"notebook": "reports/weekly.ipynb"}')
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise RequestError(f"the notebook {relative!r} is outside the server's root {self.root}",
                               status=403, hint="give a path below the root (`nbdurable serve --root DIR`)")
        if path.suffix != ".ipynb":
            raise RequestError(f"{relative!r} is not a notebook (.ipynb)", status=400)
        if not path.is_file():
            raise RequestError(f"no notebook {relative!r} under the root {self.root}", status=404)
        return path

    def start_run(self, notebook: Path, params: dict[str, Any], *, fresh: bool) -> Launch:
        """``nbdurable run NOTEBOOK`` with ``params`` (a JSON file of them, read as YAML: JSON is YAML)."""
        run_id = new_run_id()
        args = ["run", str(notebook), "--store", self.store.location, "--no-progress"]
        if params:
            file = self.store.path / "tmp" / f"serve-params-{run_id}.json"
            file.write_text(json.dumps(params), encoding="utf-8")
            args += ["-f", str(file)]
        return self._start(run_id, [*args, *(["--fresh"] if fresh else [])], f"run of {notebook.name}",
                           cwd=notebook.parent)

    def resume(self, run_id: str, *, force: bool) -> Launch:
        """``nbdurable resume RUN_ID`` (``--force``: even a cancelled one)."""
        return self._start(new_run_id(), ["resume", run_id, "--store", self.store.location, "--no-progress",
                                          *(["--force"] if force else [])], f"resume of {run_id}")

    def rerun(self, run_id: str, from_cell: int) -> Launch:
        """``nbdurable rerun RUN_ID --from-cell N``."""
        return self._start(new_run_id(), ["rerun", run_id, "--from-cell", str(from_cell), "--store",
                                          self.store.location, "--no-progress"], f"rerun of {run_id}")

    def launched(self, run_id: str) -> Launch | None:
        """The launch of ``run_id``, if this server started it."""
        with self._lock:
            return self._launches.get(run_id)

    def reap(self) -> None:
        """Collect ended processes (no zombies); forget the launches whose run exists."""
        with self._lock:
            for run_id, launch in list(self._launches.items()):
                if launch.process.poll() is not None and self.store.journal_exists(run_id):
                    del self._launches[run_id]

    def _start(self, run_id: str, args: list[str], what: str, *, cwd: Path | None = None) -> Launch:
        self.reap()
        env = {**os.environ, ENV_RUN_ID: run_id, ENV_STORE: self.store.location}
        log = self.store.path / "tmp" / f"serve-{run_id}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "nbdurable", *args], cwd=cwd or self.root, env=env,
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        launch = Launch(run_id, what, process, log)
        with self._lock:
            self._launches[run_id] = launch
        return launch

    def stop(self) -> None:
        """The server stops: its launched runs go on (each is a process of its own, durable as any run)."""
        self.reap()
