"""What many tests share: the ``nbdurable`` command line, execution counters, journal readers.

**The command line: one environment policy.** Every process a test starts (``run_cli``, ``start_cli``,
``conftest.run_session``'s shells, ``kernels.Kernel``, papermill, the browser's JupyterLab) gets
``clean_env(extra)``: this process's environment without any ``NBDURABLE_*`` variable and without
``JPY_SESSION_NAME`` (a developer's own store, key or notebook name must never leak into a test), plus
exactly what the test passes in ``extra`` (which may set ``NBDURABLE_*`` again; a ``None`` value removes
that variable). The authentication key
the tests share comes through ``XDG_CONFIG_HOME``, which ``conftest.pytest_configure`` points at a
temporary directory, so it is inherited like the rest.

**Two ways to run a command, one API:** ``run_cli(*args, cwd=, env=, timeout=, in_process=)``.

- By default a real process, ``python -m nbdurable ARGS`` (``CLI``): for everything that runs a kernel,
  holds a lease, kills or is killed, or whose pid/process identity matters (a live run refused by
  ``check --repair`` must be *another* process). ``start_cli`` is the same command as a ``Popen``, for the
  tests that signal it while it runs.
- ``in_process=True``: click's ``CliRunner`` on ``nbdurable.cli.main`` in this process, with the same
  environment policy (applied to ``os.environ`` for the call) and ``cwd`` (``os.chdir`` for the call):
  about 0.3 s faster per call, for commands whose output and exit code are all the test checks (help,
  usage errors). An exception the command does not handle is reported as a real process would report
  it: exit code 1 and its traceback on stderr; it is also kept in ``CliResult.exception``.

Both return a ``CliResult`` (``returncode``, ``stdout``, ``stderr``, like ``subprocess.CompletedProcess``).

**Execution counters:** ``counting_cell(counter, label, body)`` is a cell that appends ``label`` to the
file ``counter`` each time it executes, then runs ``body``; ``executions(counter)`` is the list of labels
in execution order (``[]`` when nothing ran). A restored cell does not execute, so it leaves no label.

**Journals:** ``journal_records`` reads journals through the product's reader
(``nbdurable.store.read_records``: authenticated lines only, decrypted with ``NBDURABLE_ENCRYPTION_KEY``
when set, a torn last line ignored, a damaged line followed by more raises ``CorruptJournalError``). It
reads the files only: no ``Store.open``, which would create directories and sweep ``tmp/``.

**Dataflow invariant:** ``dataflow_violations(records)`` checks one run's journal against the restore rule
(``nbdurable/runtime/dataflow.py``): every restored top-level step read, at its start, exactly the versions
the session held then, as the journal itself tells them (what the earlier top-level steps committed).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdurable.store import read_records

CLI = [sys.executable, "-m", "nbdurable"]
KILL = "import os; os.kill(os.getpid(), 9)"  # a cell that SIGKILLs its own process (shell or kernel)
# A cell body that kills its kernel the first time it runs (a marker file remembers), and passes after.
DIES_ONCE = ("import pathlib\nif not pathlib.Path('died-once').exists():\n"
             "    pathlib.Path('died-once').touch()\n    " + KILL)


# ----------------------------------------------------------------------------------------- environment


def _dropped(name: str) -> bool:
    return name.startswith("NBDURABLE_") or name == "JPY_SESSION_NAME"


def clean_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a process a test starts: this one's without ``NBDURABLE_*`` and
    ``JPY_SESSION_NAME``, plus ``extra`` (where a ``None`` value removes the variable)."""
    env = {k: v for k, v in os.environ.items() if not _dropped(k)}
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


# ---------------------------------------------------------------------------------------- command line


@dataclass
class CliResult:
    """What a ``nbdurable`` command did (the fields of ``subprocess.CompletedProcess``)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    exception: BaseException | None = None  # in process only: an exception the command did not handle

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, cwd: Path | str | None = None, env: Mapping[str, str | None] | None = None,
            timeout: float = 180, in_process: bool = False) -> CliResult:
    """``nbdurable ARGS`` in ``cwd`` with ``clean_env(env)``: a real process unless ``in_process``."""
    if in_process:
        return _in_process(list(args), cwd, env)
    proc = subprocess.run([*CLI, *args], cwd=cwd, env=clean_env(env), capture_output=True, text=True, timeout=timeout)
    return CliResult(list(args), proc.returncode, proc.stdout, proc.stderr)


def start_cli(*args: str, cwd: Path | str | None = None, env: Mapping[str, str | None] | None = None,
              **popen: Any) -> subprocess.Popen[Any]:
    """``nbdurable ARGS`` started and not waited for (``popen``: stdout, stderr, text, ... for ``Popen``)."""
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=clean_env(env), **popen)


def start_run_until(cwd: Path, notebook: Path, marker: str = "started", *extra: str,
                    env: Mapping[str, str | None] | None = None) -> subprocess.Popen[str]:
    """``nbdurable run NOTEBOOK out.ipynb`` in the background, returned once a cell created ``cwd/marker``."""
    proc = start_cli("run", notebook.name, "out.ipynb", "--no-progress", *extra, cwd=cwd, env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (cwd / marker).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the cell never started"
        time.sleep(0.05)
    return proc


def write_notebook(path: Path, cells: list[str]) -> Path:
    """A notebook of these code cells with the python3 kernelspec, written at ``path``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


@contextlib.contextmanager
def _chdir(path: Path | str | None) -> Iterator[None]:  # contextlib.chdir is Python 3.11+
    if path is None:
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _in_process(args: list[str], cwd: Path | str | None, env: Mapping[str, str | None] | None) -> CliResult:
    from click.testing import CliRunner

    from nbdurable.cli import main

    # click < 8.2 mixes stderr into stdout unless told not to; 8.2+ always keeps both.
    separate = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}
    changes: dict[str, str | None] = {name: None for name in os.environ if _dropped(name)}
    changes.update(env or {})
    with _chdir(cwd):
        result = CliRunner(env=changes, **separate).invoke(main, args, prog_name="nbdurable")
    exception = None if result.exception is None or isinstance(result.exception, SystemExit) else result.exception
    stderr = result.stderr
    if exception is not None:  # what the interpreter prints when an exception ends the process
        assert result.exc_info is not None
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return CliResult(args, result.exit_code, result.stdout, stderr, exception)


# ---------------------------------------------------------------------------------- execution counters


def counting_cell(counter: Path | str, label: str, body: str = "") -> str:
    """A cell whose every execution appends ``label`` (one line) to the file ``counter``, then runs ``body``."""
    return f"with open({str(counter)!r}, 'a') as _f:\n    _f.write({label!r} + '\\n')\n{body}"


def executions(counter: Path | str) -> list[str]:
    """The labels written to ``counter``, in execution order; ``[]`` if nothing was written."""
    path = Path(counter)
    return path.read_text().split() if path.exists() else []


# ------------------------------------------------------------------------------------------- journals


def journal_paths(store: Path) -> list[Path]:
    """The journal files of the store directory ``store``, in run-id (that is, start time) order."""
    return sorted((store / "journals").glob("*.jsonl"))


def journal_records(where: Path, t: str | None = None) -> list[dict[str, Any]]:
    """The records of one journal file, or (``where`` a store directory) of every run of the store in
    run-id order, read by ``nbdurable.store.read_records``; ``t``: only the records of that type."""
    paths = [where] if where.is_file() else journal_paths(where)
    records = [record for path in paths for record in read_records(path)[0]]
    return [r for r in records if t is None or r["t"] == t]


def variable_refs(where: Path) -> dict[str, dict[str, Any]]:
    """Variable name -> the last reference a ``step_end`` journaled for it (``where`` as ``journal_records``)."""
    refs: dict[str, dict[str, Any]] = {}
    for record in journal_records(where, "step_end"):
        refs.update({ref["name"]: ref for ref in record["variables"]})
    return refs


# ----------------------------------------------------------------------------------------- dataflow

# The statuses whose variable references the session adopted as its new versions: an executed cell's delta is
# accepted when it completed, failed or was interrupted (``Durable._commit_executed``), a restored one's applied.
APPLIED_STATUSES = ("completed", "restored", "failed", "interrupted")


def dataflow_violations(records: list[dict[str, Any]]) -> list[str]:
    """What one run's journal ``records`` show of restores that broke the dataflow rule; ``[]`` if none.

    Walks the run's top-level steps in the order they began (a step's commit may come after the next step's
    start: big payloads commit in the background), keeping the version of each name the session knew: nothing
    defined at the start; after each step whose ``step_end`` status is in ``APPLIED_STATUSES``, each of its
    variable references makes ``versions[name]`` its ``object`` key (``op`` "set"; ``"?"``, unknown, if it has
    none) or ``""`` (``op`` "del"); names starting with ``%`` are interpreter state and are skipped. An executed
    cell's delta lists only what it changed, so these are exactly the session's versions. Every step that ended
    ``restored`` must have read (``step_start.inputs.reads``) each name at the version held at its start
    (``""``: not defined; a recorded ``"?"`` equals nothing)."""
    starts = [r for r in records if r.get("t") == "step_start" and r.get("parent") is None]
    ends = {r.get("ordinal"): r for r in records if r.get("t") == "step_end" and r.get("ordinal") is not None}
    versions: dict[str, str] = {}
    found: list[str] = []
    for start in starts:
        ordinal = start.get("ordinal")
        end = ends.get(ordinal)
        if end is None:
            continue  # never ended (the run was killed in it): it changed nothing the journal can vouch for
        if end.get("status") == "restored":
            inputs = start.get("inputs")
            if not isinstance(inputs, dict):
                found.append(f"step {ordinal} restored without the inputs it read")
            else:
                for name, recorded in sorted((inputs.get("reads") or {}).items()):
                    held = versions.get(name, "")
                    if recorded == "?" or recorded != held:
                        found.append(f"step {ordinal} restored with `{name}` read as {recorded or '(not defined)'} "
                                     f"but the session held {held or '(not defined)'}")
        if end.get("status") not in APPLIED_STATUSES:
            continue
        for ref in end.get("variables") or []:
            name = str(ref.get("name", ""))
            if not name or name.startswith("%"):
                continue
            versions[name] = "" if ref.get("op") == "del" else str(ref.get("object") or "?")
    return found


def python_kernelspec(root: Path, name: str, code: str) -> Path:
    """A kernelspec ``name`` under ``root/kernels`` (``JUPYTER_PATH=root`` finds it) whose kernel runs
    ``python -c code`` (a kernel that dies or never answers); returns ``root/kernels``."""
    spec = root / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-c", code, "{connection_file}"],
                                                  "display_name": name, "language": "python"}))
    return spec.parent
