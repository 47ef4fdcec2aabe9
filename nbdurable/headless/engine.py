"""The papermill engine ``durable``: ``papermill --engine durable in.ipynb out.ipynb -p …``.

papermill parameterizes the notebook and manages the output document as usual; this engine runs it
through the headless runner, so every cell is a durable step and a failed or killed run resumes when the
same notebook is run again with the same parameters. papermill's own per-cell status metadata is kept
for its users, but nbdurable never reads it (after a kernel kill papermill marks every cell completed).

papermill's options work as with its own engine: ``--execution-timeout`` (per cell), ``--start-timeout``,
``--log-output``, ``--stdout-file``/``--stderr-file``, ``--autosave-cell-every``, the progress bar (code
cells, restored ones included) and ``--report-mode`` (papermill applies it before the engine runs). A cell
ending the notebook with ``sys.exit()``/``sys.exit(0)`` is a successful early end, as papermill has it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbclient.exceptions import CellTimeoutError
from papermill.engines import Engine
from papermill.exceptions import PapermillException, PapermillExecutionError
from papermill.log import logger

from nbdurable.errors import SuspendedError
from nbdurable.headless.result import executes
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
            nb_man.pbar.total = sum(1 for cell in nb.cells if executes(cell))
            nb_man.pbar.refresh()

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
        if result.interrupted:
            raise KeyboardInterrupt
        if result.status == "suspended":
            raise SuspendedError(
                f"run {result.run_id} suspended itself ({result.describe_suspension()})",
                hint="`nbdurable worker` resumes it when it is due (or run the same papermill command again then)",
            )
        hint = (f"Run the same papermill command again to resume{f' run {result.run_id}' if result.run_id else ''}: "
                "the cells that completed are restored.")
        if result.stopped_by == "timeout":  # as papermill's own engine fails, with the way out
            raise CellTimeoutError(f"{(result.error or '').removeprefix('CellTimeoutError: ')} {hint}")
        if result.stopped_by == "kernel_start":
            raise PapermillException(f"{result.error}. {hint}")
        if result.stopped_by == "kernel_died":  # not nbclient's DeadKernelError: papermill prints it whole, exit 138
            raise _papermill_error(nb, result.stopped_at, "DeadKernelError", f"{result.error}. {hint}")
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


def _papermill_error(nb: Any, index: int | None, ename: str, evalue: str) -> PapermillException:
    """One papermill error for a run that stopped without an error output to report."""
    if index is None:  # not in a cell (the kernel died between cells)
        return PapermillException(f"{ename}: {evalue}")
    cell = nb.cells[index]
    return PapermillExecutionError(
        cell_index=index, exec_count=cell.get("execution_count"), source=cell.source, ename=ename, evalue=evalue,
        traceback=[f"{ename}: {evalue}" if evalue else ename],
    )
