"""The example notebooks, executed by real kernels through nbclient, as a user would run them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from helpers import clean_env

pytestmark = [pytest.mark.kernel, pytest.mark.slow]  # the example notebooks, run whole by nbclient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(path: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """Run the notebook; nbclient's kernel inherits this process's environment, made ``clean_env(env)`` meanwhile."""
    nb = nbformat.read(path, as_version=4)
    old, clean = dict(os.environ), clean_env(env)
    os.environ.clear()
    os.environ.update(clean)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
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


def widget_states(nb: nbformat.NotebookNode) -> dict[str, dict]:
    """The widget models nbclient recorded (model id -> state), as a frontend would have received them."""
    return nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})


def test_widgets_notebook_draws_the_live_run_graph(tmp_path: Path) -> None:
    notebook = tmp_path / "widgets.ipynb"
    shutil.copyfile(NOTEBOOKS / "widgets.ipynb", notebook)
    nb = execute(notebook, {"NBDURABLE_NOTEBOOK": str(notebook), "NBDURABLE_STORE": str(tmp_path / ".nbdurable")})
    graphs = [s["state"]["graph"] for s in widget_states(nb).values() if "graph" in s.get("state", {})]
    assert len(graphs) == 2, "the live graph and the past-run graph"
    live = graphs[0] if graphs[0]["run"]["live"] else graphs[1]
    statuses = [n["status"] for n in live["nodes"]]
    assert statuses and set(statuses) == {"completed"} or statuses[-1] == "running", statuses
    mapped = next(n for n in live["nodes"] if "nbd.map" in n["source"])
    assert mapped["children"]["total"] == 10 and mapped["children"].get("completed") == 10
    flaky = next(c for c in mapped["child_steps"] if c["attempts"] == 3)
    assert flaky["name"] == "fetch_quote"
    assert any(e["variables"] == ["prices"] for e in live["edges"])
    assert (tmp_path / "run-report.html").exists()


def test_approvals_notebook_waits_for_the_event(tmp_path: Path) -> None:
    notebook = tmp_path / "approvals.ipynb"
    shutil.copyfile(NOTEBOOKS / "approvals.ipynb", notebook)
    nb = execute(notebook, {"NBDURABLE_NOTEBOOK": str(notebook), "NBDURABLE_STORE": str(tmp_path / ".nbdurable")})
    texts = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "deploying churn-v2 (approved by ana)" in texts and "timed out" in texts
    approvals = [s["state"] for s in widget_states(nb).values() if "event" in s.get("state", {})]
    assert sorted((a["event"], a["state"]) for a in approvals) == [("model-review", "received"),
                                                                    ("never-sent", "timeout")]
    # The widget is marked as a notice, which output capture never records (a restore shows no dead widget).
    assert "approval" in notices(nb)


def test_history_notebook_queries_past_runs(tmp_path: Path) -> None:
    (tmp_path / "nbs").mkdir()
    (tmp_path / "tmp").mkdir()
    notebook = tmp_path / "nbs" / "history.ipynb"
    shutil.copyfile(NOTEBOOKS / "history.ipynb", notebook)
    nb = execute(notebook, {"NBDURABLE_NOTEBOOK": str(notebook), "TMPDIR": str(tmp_path / "tmp")})
    assert [p.name for p in notebook.parent.iterdir()] == ["history.ipynb"], "nothing written beside the notebook"
    assert list((tmp_path / "tmp").iterdir()) == [], "its temporary directory is removed when the kernel shuts down"
    code = [c for c in nb.cells if c.cell_type == "code"]

    def shown(marker: str) -> str:
        cell = next(c for c in code if marker in c.source)
        return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)

    assert shown("nbdurable run").count("completed: run") == 3
    assert "Kernel is running over TCP" not in shown("nbdurable run"), "no warning of the runner's kernels"
    listing = shown("status='completed'")  # notebook given relative to the working directory
    assert listing.count("'region':") == 3 and listing.count("completed") == 3
    assert "'region': 'us'" in shown("params={'region': 'us'})[[")
    slowest = shown("ORDER BY seconds DESC")
    assert all(region in slowest for region in ("eu", "us", "apac"))
    assert "total" in shown("vars.sales")
    explorers = [s["state"] for s in widget_states(nb).values() if "filters" in s.get("state", {})]
    assert len(explorers) == 1 and len(explorers[0]["runs"]) >= 3
