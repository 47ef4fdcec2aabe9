"""The example notebooks, executed by real kernels through nbclient, as a user would run them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(path: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def notices(nb: nbformat.NotebookNode) -> list[str]:
    return [o.get("metadata", {}).get("nbdurable", {}).get("notice") for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("metadata", {}).get("nbdurable")]


def test_quickstart_crashes_then_resumes(tmp_path: Path) -> None:
    notebook = tmp_path / "quickstart.ipynb"
    shutil.copyfile(NOTEBOOKS / "quickstart.ipynb", notebook)
    env = {"NBDURABLE_NOTEBOOK": str(notebook), "NBDURABLE_STORE": str(tmp_path / ".nbdurable")}
    with pytest.raises(DeadKernelError):
        execute(notebook, env)
    nb = execute(notebook, env)
    assert notices(nb).count("restored") == 3
    texts = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "100,000 rows loaded" in texts and "slope 3.0 history [[3.0, 0.0]]" in texts
    assert "restored:      3" in texts
