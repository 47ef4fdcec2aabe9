"""The papermill engine ``durable``: ``papermill --engine durable in.ipynb out.ipynb -p …``.

papermill parameterizes the notebook and manages the output document as usual; this engine runs it
through the headless runner, so every cell is a durable step and a failed or killed run resumes when the
same notebook is run again with the same parameters. papermill's own per-cell status metadata is kept
for its users, but nbdurable never reads it (after a kernel kill papermill marks every cell completed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nbclient.exceptions import DeadKernelError
from papermill.engines import Engine

from nbdurable.errors import SuspendedError
from nbdurable.headless.runner import HeadlessRunner


class DurableEngine(Engine):  # type: ignore[misc]
    """papermill engine running each cell as a durable step."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        input_path = Path(kwargs.get("input_path") or "notebook.ipynb")
        params = dict(nb_man.nb.metadata.get("papermill", {}).get("parameters", {}) or {})
        store = Path(os.environ.get("NBDURABLE_STORE") or input_path.resolve().parent / ".nbdurable")
        cells = nb_man.nb.cells

        def on_cell(index: int, meta: dict[str, Any]) -> None:
            cell = cells[index]
            if meta["status"] == "failed":
                nb_man.cell_exception(cell, cell_index=index)
            nb_man.cell_complete(cell, cell_index=index)

        runner = HeadlessRunner(
            nb_man.nb, notebook_path=input_path, store_path=store, params=params, output_path=None,
            kernel_name=kernel_name, cwd=Path.cwd(), on_cell=on_cell,
        )  # fmt: skip
        result = runner.execute()
        if result.status == "crashed":
            raise DeadKernelError(f"{result.error}; run the same papermill command again to resume")
        if result.status == "suspended":
            raise SuspendedError(
                f"run {result.run_id} suspended itself ({result.describe_suspension()})",
                hint="`nbdurable worker` resumes it when it is due (or run the same papermill command again then)",
            )
        return nb_man.nb
