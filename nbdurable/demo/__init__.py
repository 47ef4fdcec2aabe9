"""``nbdurable demo``: run a notebook, kill its kernel mid-cell, run it again, and show what resumed.

The bundled ``demo.ipynb`` is a small pipeline (load, features, train, evaluate). The first run is
killed with SIGKILL while the evaluation cell runs; the second run of the same notebook restores the
finished cells from the store instead of executing them. Without ``--dir`` it runs in a temporary directory,
removed at the end (``temporary_workdir``); the kernels use the ipc transport (``local_kernel_config``).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from nbdurable.kernelspec import local_kernel_config
from nbdurable.runtime.session import ENV_NOTEBOOK, ENV_STORE, NOTICE_METADATA_KEY

DEMO_NOTEBOOK = Path(__file__).with_name("demo.ipynb")
KILL_CELL_MARKER = "the kernel dies here"


@dataclass
class CellReport:
    """How one code cell ran."""

    index: int
    first_line: str
    seconds: float
    how: str  # "executed" | "restored" | "control" (a %-magic cell, not a step)


@dataclass
class DemoReport:
    """Both runs of the demo."""

    workdir: Path
    kept: bool = True  # False: workdir was a temporary directory, removed after the demo
    first: list[CellReport] = field(default_factory=list)
    second: list[CellReport] = field(default_factory=list)
    first_seconds: float = 0.0
    second_seconds: float = 0.0


def _first_line(cell: Any) -> str:
    lines = [line for line in cell.source.splitlines() if line.strip()]
    return (lines[0] if lines else "")[:60]


def _how(cell: Any) -> str:
    if cell.source.lstrip().startswith("%"):
        return "control"
    notices = [o.get("metadata", {}).get(NOTICE_METADATA_KEY, {}).get("notice") for o in cell.get("outputs", [])]
    return "restored" if "restored" in notices else "executed"


class _Timer:
    """Collects per-cell timings from nbclient's hooks and kills the kernel on cue."""

    def __init__(self, echo: Callable[[str], None], kill_index: int | None, kill_after: float) -> None:
        self.echo = echo
        self.kill_index = kill_index
        self.kill_after = kill_after
        self.client: NotebookClient | None = None
        self.reports: list[CellReport] = []
        self._started: dict[int, float] = {}

    def on_start(self, cell: Any, cell_index: int) -> None:
        self._started[cell_index] = time.perf_counter()
        if cell_index == self.kill_index:
            threading.Timer(self.kill_after, self._kill).start()

    def on_executed(self, cell: Any, cell_index: int, execute_reply: Any = None) -> None:
        seconds = time.perf_counter() - self._started.get(cell_index, time.perf_counter())
        report = CellReport(cell_index, _first_line(cell), seconds, _how(cell))
        self.reports.append(report)
        self.echo(f"  cell {cell_index:>2}  {report.how:<9} {seconds:6.2f} s   {report.first_line}")

    def _kill(self) -> None:
        assert self.client is not None and self.client.km is not None
        pid = self.client.km.provisioner.process.pid  # type: ignore[union-attr]
        self.echo(f"  cell {self.kill_index:>2}  KILLED    (SIGKILL to kernel pid {pid})")
        os.kill(pid, signal.SIGKILL)


def _execute(path: Path, timer: _Timer) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        config=local_kernel_config(),
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=timer.on_start,
        on_cell_executed=timer.on_executed,
    )
    timer.client = client
    started = time.perf_counter()
    try:
        client.execute()
    except DeadKernelError:
        pass
    finally:
        nbformat.write(nb, path.with_suffix(".out.ipynb"))
    return time.perf_counter() - started


@contextmanager
def temporary_workdir(workdir: Path | None) -> Iterator[Path]:
    """``workdir`` as given (kept), else a new temporary directory removed on the way out."""
    if workdir is not None:
        yield Path(workdir)
        return
    tmp = Path(tempfile.mkdtemp(prefix="nbdurable-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` (the kernels inherit them), the previous values back afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_demo(workdir: Path, *, echo: Callable[[str], None] = print, kept: bool = True) -> DemoReport:
    """Run the demo in ``workdir`` (``kept``: the caller keeps it; else it is a temporary directory)."""
    workdir.mkdir(parents=True, exist_ok=True)
    notebook = workdir / "demo.ipynb"
    shutil.copyfile(DEMO_NOTEBOOK, notebook)
    nb = nbformat.read(notebook, as_version=4)
    kill_index = next(i for i, c in enumerate(nb.cells) if KILL_CELL_MARKER in c.source)
    with _environment({ENV_NOTEBOOK: str(notebook.resolve()), ENV_STORE: str(workdir / ".nbdurable")}):
        return _both_runs(notebook, kill_index, DemoReport(workdir, kept=kept), echo)


def _both_runs(notebook: Path, kill_index: int, report: DemoReport, echo: Callable[[str], None]) -> DemoReport:
    workdir = report.workdir
    echo(f"nbdurable demo in {workdir}\n\n"
         f"Run 1: executing {notebook.name}; the kernel is killed during cell {kill_index}.")
    first = _Timer(echo, kill_index, kill_after=1.0)
    report.first_seconds = _execute(notebook, first)
    report.first = first.reports
    echo("\nRun 2: the same notebook again, in a new kernel.")
    second = _Timer(echo, None, 0.0)
    report.second_seconds = _execute(notebook, second)
    report.second = second.reports
    return report


def summarize(report: DemoReport) -> str:
    """The closing lines of the demo."""
    restored = [r for r in report.second if r.how == "restored"]
    executed = [r for r in report.second if r.how == "executed"]
    original = sum(r.seconds for r in report.first if r.index in {x.index for x in restored})
    store = report.workdir / ".nbdurable"
    return (
        f"\nResumed: {len(restored)} cells restored in {sum(r.seconds for r in restored):.2f} s "
        f"(they took {original:.2f} s to compute), {len(executed)} executed.\n"
        f"Run 1 took {report.first_seconds:.1f} s before the kill; run 2 took {report.second_seconds:.1f} s, "
        f"kernel start included.\n"
        + (f"Output notebook: {report.workdir / 'demo.out.ipynb'}\n"
           f"Store: {store}  (`nbdurable runs --store {store}` lists both runs)" if report.kept else
           f"Store: {store}, in the demo's temporary directory, removed with it "
           "(`nbdurable demo --dir DIR` keeps the notebook, its output and the store)")
    )
