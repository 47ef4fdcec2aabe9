"""The papermill engine ``durable``: ``papermill --engine durable in.ipynb out.ipynb -p …``.

papermill parameterizes the notebook and manages the output document as usual; this engine runs it
through the headless runner, so every cell is a durable step and a failed or killed run resumes when the
same notebook is run again with the same parameters. papermill's own per-cell status metadata is kept
for its users, but nbdurable never reads it (after a kernel kill papermill marks every cell completed).

papermill's options work as with its own engine: ``--execution-timeout`` (per cell), ``--start-timeout``,
``--log-output``, ``--stdout-file``/``--stderr-file``, ``--autosave-cell-every``, the progress bar (code
cells, restored ones included: it reaches its total on success) and ``--report-mode`` (papermill applies it
before the engine runs). A cell ending the notebook with ``sys.exit()``/``sys.exit(0)`` is a successful early
end, as papermill has it.

At the end the engine logs one summary line through papermill's logger (stderr under the ``papermill``
command), as ``nbdurable run`` prints it: the run, how many cells executed and were restored, the time saved.
A kernel that died or never started is one error line under the ``papermill`` command (exit code 1, no
traceback) saying what happened and that the same command resumes the run; called from Python, it is a
``PapermillExecutionError`` (``PapermillException`` when no cell was running) as usual.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from nbclient.exceptions import CellTimeoutError
from papermill.engines import Engine
from papermill.exceptions import PapermillException, PapermillExecutionError
from papermill.log import logger

from nbdurable.errors import SuspendedError
from nbdurable.headless.result import RunResult, duration, executes
from nbdurable.headless.runner import HeadlessRunner
from nbdurable.runtime.session import ENV_REUSE, NOTICE_METADATA_KEY, resolve_store_path

STOPPED = ("failed", "crashed", "interrupted")  # a cell's nbdurable status that papermill records as an exception


class DurableEngine(Engine):  # type: ignore[misc]
    """papermill engine running each cell as a durable step."""

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        log_output: bool = False,
        stdout_file: Any = None,
        stderr_file: Any = None,
        start_timeout: float = 60,
        execution_timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        from nbdurable.headless.params import injected_parameters  # (params imports papermill, which imports us)

        raw_input = kwargs.get("input_path")
        input_name = raw_input if isinstance(raw_input, str) else None
        input_path = _input_file(input_name or "notebook.ipynb")
        params = injected_parameters(nb_man.nb, input_name)
        store = resolve_store_path(notebook=str(input_path))
        nb = nb_man.nb
        started: set[int] = set()
        if nb_man.pbar is not None:  # papermill counts every cell; only code cells run (restored ones too)
            # reset(total=): setting .total alone leaves a Jupyter (tqdm.notebook) bar's maximum at every cell
            nb_man.pbar.reset(total=sum(1 for cell in nb.cells if executes(cell)))

        def log(output: Any) -> None:  # as papermill's PapermillNotebookClient.log_output_message
            if output.get("output_type") == "stream":
                text = "".join(output.get("text", ""))
                name = output.get("name")
                if log_output:
                    (logger.info if name == "stdout" else logger.warning)(text)
                target = stdout_file if name == "stdout" else stderr_file if name == "stderr" else None
                if target is not None:
                    target.write(text)
                    target.flush()
            elif log_output and "text/plain" in output.get("data", {}):
                logger.info("".join(output["data"]["text/plain"]))

        def on_cell_start(index: int) -> None:
            started.add(index)
            nb_man.cell_start(nb.cells[index], index)

        def on_message(index: int, output: Any) -> None:
            nb_man.autosave_cell()
            if output is not None and (log_output or stdout_file or stderr_file) and not _is_notice(output):
                log(output)

        def on_cell(index: int, meta: dict[str, Any]) -> None:
            cell = nb.cells[index]
            if index not in started:  # restored with the leading batch: no messages, its outputs are filled
                nb_man.cell_start(cell, index)
                if log_output or stdout_file or stderr_file:
                    for output in cell.outputs:
                        log(output)
            if meta["status"] in STOPPED or meta.get("exited"):  # papermill marks a sys.exit(0) cell too
                nb_man.cell_exception(cell, cell_index=index)
            nb_man.cell_complete(cell, cell_index=index)

        runner = HeadlessRunner(
            nb, notebook_path=input_path, store_path=store, params=params, output_path=None,
            kernel_name=kernel_name, cwd=Path.cwd(), start_timeout=float(start_timeout or 60),
            reuse=os.environ.get(ENV_REUSE) == "1",
            execution_timeout=execution_timeout or kwargs.get("timeout"),
            on_cell=on_cell, on_cell_start=on_cell_start, on_message=on_message,
        )  # fmt: skip
        result = runner.execute()
        nb_man.cleanup_pbar()  # the bar ends where the run did, then the summary goes on a line of its own
        if result.interrupted:
            raise KeyboardInterrupt
        logger.info(_summary(result, runner.store.display))
        if result.status == "suspended":
            raise SuspendedError(
                f"run {result.run_id} suspended itself ({result.describe_suspension()})",
                hint="`nbdurable worker` resumes it when it is due (or run the same papermill command again then)",
            )
        hint = (f"Run the same papermill command again to resume{f' run {result.run_id}' if result.run_id else ''}: "
                "the cells that completed are restored.")
        if result.stopped_by == "timeout":  # as papermill's own engine fails, with the way out
            raise CellTimeoutError(f"{(result.error or '').removeprefix('CellTimeoutError: ')} {hint}")
        if result.stopped_by in ("kernel_start", "kernel_died"):
            # Not nbclient's DeadKernelError (papermill prints its traceback and exits 138): one line, exit 1.
            raise _kernel_error(nb, result.stopped_at, "DeadKernelError" if result.stopped_by == "kernel_died"
                                else "PapermillException", result.error or "the kernel stopped", result.run_id)
        if result.stopped_by == "error" and result.stopped_at is not None:
            cell = nb.cells[result.stopped_at]
            if not any(o.get("output_type") == "error" for o in cell.outputs):
                # papermill names a failure by the cell's error output; this one printed its error instead
                # (a line magic's UsageError): name it here, or papermill reports an empty CellExecutionError.
                ename, _, evalue = (result.error or "").partition(": ")
                raise _papermill_error(nb, result.stopped_at, ename, evalue)
        # A cell's error output: papermill's raise_for_execution_errors reports it (the failing cell is the
        # last one with outputs) and marks the output notebook, as with its own engine.
        return nb


def _input_file(input_path: str) -> Path:
    """The input notebook's absolute path. papermill runs the engine in ``--cwd`` but reads the input (a
    relative path) from where it was started: its local I/O handler keeps that directory."""
    path = Path(input_path)
    if not path.is_absolute():
        try:
            from papermill.iorw import papermill_io

            base = getattr(papermill_io.get_handler("local"), "_cwd", None)
        except PapermillException:
            base = None
        path = Path(base or os.getcwd()) / path
    return path.resolve()


def _is_notice(output: Any) -> bool:
    meta = output.get("metadata", {}).get(NOTICE_METADATA_KEY)
    return isinstance(meta, dict) and "notice" in meta


def _summary(result: RunResult, store: Path | str) -> str:
    """The run in one line, as ``nbdurable run`` reports it."""
    resumed = f" (resumed run {result.resumed_from})" if result.resumed_from else ""
    exited = (f"; the notebook exited early at cell {result.exited_at + 1} (sys.exit), the cells after it did not run"
              if result.exited_at is not None and result.status == "completed" else "")
    try:
        where = os.path.relpath(store)
    except ValueError:  # another drive (Windows)
        where = str(store)
    where = str(store) if where.startswith("..") or "://" in str(store) else where
    return (f"nbdurable: {result.status}: run {result.run_id}{resumed}: {result.executed} executed, "
            f"{result.restored} restored (saved {duration(result.time_saved)}) in {duration(result.seconds)}"
            f"{exited}; store {where}")


class _KernelStopped(PapermillExecutionError, click.ClickException):  # type: ignore[misc]
    """The kernel died (or never started): a ``PapermillExecutionError`` for papermill's Python API, and for the
    ``papermill`` command (click) one ``Error: …`` line and exit code 1 instead of a traceback."""

    def __init__(self, message: str, cell_index: int, exec_count: Any, source: str, ename: str) -> None:
        click.ClickException.__init__(self, message)  # (PapermillExecutionError's would pass it 6 arguments)
        self.cell_index, self.exec_count, self.source = cell_index, exec_count, source
        self.ename, self.evalue, self.traceback = ename, message, [f"{ename}: {message}"]
        self.args = (message, cell_index, exec_count, source, ename)  # so it pickles

    def __str__(self) -> str:
        return self.message


class _KernelStoppedBetweenCells(PapermillException, click.ClickException):  # type: ignore[misc]
    """As ``_KernelStopped``, when no cell was running."""

    def __init__(self, message: str) -> None:
        click.ClickException.__init__(self, message)

    def __str__(self) -> str:
        return self.message


def _kernel_error(nb: Any, index: int | None, ename: str, error: str, run_id: str | None) -> PapermillException:
    """A run whose kernel died or never started, as one clear line: what happened and the way out."""
    where = f" in cell {index + 1}" if index is not None else ""
    what = error.removeprefix("the kernel died").strip() if error.startswith("the kernel died") else ""
    happened = f"the kernel died{where} {what}".rstrip() if ename == "DeadKernelError" else f"{error}{where}"
    resume = (f"it resumes run {run_id}, restoring the cells that completed" if run_id
              else "the cells that completed are restored")
    message = f"{happened}. Run the same papermill command again: {resume}."
    if index is None:
        return _KernelStoppedBetweenCells(message)
    cell = nb.cells[index]
    return _KernelStopped(message, index, cell.get("execution_count"), cell.source, ename)


def _papermill_error(nb: Any, index: int | None, ename: str, evalue: str) -> PapermillException:
    """One papermill error for a run that stopped without an error output to report."""
    if index is None:  # not in a cell (the kernel died between cells)
        return PapermillException(f"{ename}: {evalue}")
    cell = nb.cells[index]
    return PapermillExecutionError(
        cell_index=index, exec_count=cell.get("execution_count"), source=cell.source, ename=ename, evalue=evalue,
        traceback=[f"{ename}: {evalue}" if evalue else ename],
    )
