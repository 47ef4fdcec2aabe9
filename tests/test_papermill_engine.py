"""The papermill engine reports like ``nbdurable run``: a progress bar that reaches its total, one summary line,
and a kernel death as one clear error line (exit code 1) that says the same command resumes the run.

Real kernels, the real ``papermill`` command (and papermill's Python API) in subprocesses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import DIES_ONCE, KILL, clean_env, counting_cell, executions

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
RUN_ID = r"\d{8}T\d{9}-[0-9a-f]{6}"


def notebook(path: Path, *sources: str) -> Path:
    """Code cells (the first tagged ``parameters``) with a markdown cell after the first and at the end."""
    cells = [nbformat.v4.new_code_cell(source) for source in sources]
    cells[0].metadata["tags"] = ["parameters"]
    cells.insert(1, nbformat.v4.new_markdown_cell("# a title"))
    cells.append(nbformat.v4.new_markdown_cell("the end"))
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=META), path)
    return path


def papermill(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "papermill", "--engine", "durable", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180, env=clean_env())


def python(cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, env=clean_env())


# papermill's Python API in a Jupyter kernel draws tqdm.notebook's bar (tqdm.auto): a widget whose maximum is
# set when the bar is made. Recorded at close: the widget's value and maximum, the bar's n and total.
JUPYTER_BAR = """
import json, sys
import tqdm.auto, tqdm.notebook
seen = []
class Bar(tqdm.notebook.tqdm):
    def close(self):
        shown = not self.disable  # (close disables the bar)
        super().close()  # draws the bar's last state
        if shown and not seen:
            widget = self.container.children[1]
            seen.append([widget.value, widget.max, self.n, self.total])
tqdm.auto.tqdm = Bar
import papermill
papermill.execute_notebook(sys.argv[1], sys.argv[2], engine_name="durable", progress_bar=True)
print("BAR", json.dumps(seen[0]))
"""


def test_progress_bar_reaches_its_total_in_the_terminal_and_in_jupyter(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "nb.ipynb", "x = 1", "y = x + 1", "z = y + 1")  # 3 code cells of 5
    done = papermill(tmp_path, nb.name, "out.ipynb")
    assert done.returncode == 0, done.stderr
    bars = re.findall(r"\| (\d+)/(\d+) \[", done.stderr)
    assert bars and bars[-1] == ("3", "3"), done.stderr

    api = python(tmp_path, JUPYTER_BAR, nb.name, "api.ipynb")
    assert api.returncode == 0, api.stderr
    value, maximum, n, total = json.loads(api.stdout.split("BAR ", 1)[1])
    assert (n, total) == (3, 3)
    assert (value, maximum) == (3, 3), "the Jupyter bar stopped short of its maximum"


def test_one_summary_line_of_what_executed_and_what_was_restored(tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    nb = notebook(tmp_path / "nb.ipynb", "flag = 'go.flag'", counting_cell(counter, "one"),
                  "import pathlib\nif not pathlib.Path(flag).exists():\n    raise ValueError('not yet')")
    failed = papermill(tmp_path, nb.name, "out.ipynb")
    assert failed.returncode == 1 and "ValueError: not yet" in failed.stderr
    first = re.findall(rf"^nbdurable: failed: run ({RUN_ID}): 2 executed, 0 restored \(saved .+\) in .+; "
                       r"store \.nbdurable$", failed.stderr, re.M)
    assert len(first) == 1, failed.stderr

    (tmp_path / "go.flag").touch()
    resumed = papermill(tmp_path, nb.name, "out.ipynb")
    assert resumed.returncode == 0, resumed.stderr
    assert executions(counter) == ["one"]
    summary = [line for line in resumed.stderr.splitlines() if line.startswith("nbdurable: ")]
    assert len(summary) == 1, resumed.stderr
    assert re.fullmatch(rf"nbdurable: completed: run {RUN_ID} \(resumed run {first[0]}\): 1 executed, 2 restored "
                        r"\(saved .+\) in .+; store \.nbdurable", summary[0]), summary
    assert resumed.stderr.rstrip().endswith(summary[0])  # after the bar, on a line of its own
    assert "without encryption" not in failed.stderr + resumed.stderr, "ipykernel's TCP warning (ipc transport)"


def test_kernel_death_is_one_error_line_exit_code_1_and_the_same_command_resumes(tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    nb = notebook(tmp_path / "nb.ipynb", "x = 1", counting_cell(counter, "one"),
                  counting_cell(counter, "two", DIES_ONCE), counting_cell(counter, "three"))
    died = papermill(tmp_path, nb.name, "out.ipynb")
    assert died.returncode == 1, died.stderr  # papermill's failure code, not its 138 for DeadKernelError
    assert "Traceback" not in died.stderr and "papermill.exceptions" not in died.stderr, died.stderr
    assert "Kernel died while waiting" not in died.stderr, "nbclient's own line, before ours, in the bar"
    last = died.stderr.strip().splitlines()[-1]
    # cell 3 of the code cells is the notebook's 4th cell (after the markdown title)
    match = re.fullmatch(r"Error: the kernel died in cell 4 \(killed, out of memory, or a crash in native code\)\. "
                         rf"Run the same papermill command again: it resumes run ({RUN_ID}), restoring the cells "
                         r"that completed\.", last)
    assert match, died.stderr
    assert re.search(rf"^nbdurable: crashed: run {match[1]}: ", died.stderr, re.M), died.stderr

    resumed = papermill(tmp_path, nb.name, "out.ipynb")
    assert resumed.returncode == 0, resumed.stderr
    assert f"(resumed run {match[1]}): 2 executed, 2 restored" in resumed.stderr, resumed.stderr
    assert executions(counter) == ["one", "two", "two", "three"]


API_DEATH = """
import sys, papermill
from papermill.exceptions import PapermillExecutionError
try:
    papermill.execute_notebook(sys.argv[1], sys.argv[2], engine_name="durable", progress_bar=False)
except PapermillExecutionError as error:
    print("RAISED", error.cell_index, error.ename, str(error))
"""


def test_kernel_death_through_papermills_python_api_is_a_papermill_execution_error(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "nb.ipynb", "x = 1", KILL)
    api = python(tmp_path, API_DEATH, nb.name, "out.ipynb")
    assert api.returncode == 0, api.stderr
    assert api.stdout.startswith("RAISED 2 DeadKernelError the kernel died in cell 3 "), api.stdout
    assert "Run the same papermill command again" in api.stdout
