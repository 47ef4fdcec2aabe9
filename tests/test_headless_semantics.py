"""What a headless run means, as papermill users expect it: ``nbdurable run`` and ``papermill --engine durable``.

- ``sys.exit()``/``sys.exit(0)``/``raise SystemExit`` in a cell is a successful early end (papermill's rule): the
  run is journaled ``completed``, the later cells do not run, the next invocation starts a fresh run;
- papermill's options reach the engine: ``--execution-timeout``, ``--start-timeout``, ``--log-output``,
  ``--stdout-file``, ``--autosave-cell-every``, its progress bar, ``--report-mode``; ``nbdurable run`` has the
  two timeouts too;
- the run's parameters are those papermill injected in this invocation, never stale metadata of the input file;
- the error reported is the failing cell's own (its first error output), not one raised after it;
- the output notebook's ``metadata.nbdurable.status`` is the journal's, Ctrl-C included (exit code 130);
- a kernel death under papermill is one papermill error saying how to resume.

Real kernels, the real ``nbdurable`` and ``papermill`` commands in subprocesses, real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from helpers import (
    DIES_ONCE,
    KILL,
    clean_env,
    counting_cell,
    executions,
    journal_records,
    python_kernelspec,
    run_cli,
    start_cli,
)

pytestmark = [pytest.mark.kernel, pytest.mark.slow]  # `nbdurable run` and papermill with real kernels

META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def notebook(path: Path, *sources: str, markdown: bool = False) -> Path:
    """A notebook whose first cell is tagged ``parameters`` (``markdown``: a markdown cell and an empty code
    cell too, which nbclient never sends to the kernel)."""
    cells = [nbformat.v4.new_code_cell(source) for source in sources]
    cells[0].metadata["tags"] = ["parameters"]
    if markdown:
        cells.insert(1, nbformat.v4.new_markdown_cell("# a title"))
        cells.append(nbformat.v4.new_code_cell(""))
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=META), path)
    return path


def papermill(cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "papermill", "--engine", "durable", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=clean_env())


def journal_status(store: Path, run_id: str) -> str:
    """The run's status as its journal has it (its kernel is gone): the run_end record's, else crashed."""
    ends = journal_records(store / "journals" / f"{run_id}.jsonl", "run_end")
    return str(ends[-1]["status"]) if ends else "crashed"


def metadata(path: Path) -> dict[str, Any]:
    return dict(nbformat.read(path, as_version=4).metadata["nbdurable"])


def agrees_with_journal(out: Path, store: Path) -> str:
    """The output notebook's status, checked against the run's journal."""
    meta = metadata(out)
    assert meta["run_id"], meta
    assert meta["status"] == journal_status(store, meta["run_id"]), meta
    return str(meta["status"])


def code_outputs(path: Path) -> list[list[dict[str, Any]]]:
    return [cell.outputs for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


# ------------------------------------------------------------------------------ 1. sys.exit(0): an early end

EXITS = ["sys.exit()", "sys.exit(0)", "raise SystemExit", "sys.exit(None)"]


def exiting_notebook(tmp_path: Path, exit_code: str) -> Path:
    counter = tmp_path / "counter.txt"
    return notebook(tmp_path / "exits.ipynb", "x = 1", counting_cell(counter, "before", "print('before')"),
                    counting_cell(counter, "exit", f"import sys\n{exit_code}"),
                    counting_cell(counter, "after", "print('after')"))


@pytest.mark.parametrize("exit_code", EXITS)
def test_sys_exit_zero_ends_the_run_early_and_successfully(tmp_path: Path, exit_code: str) -> None:
    nb = exiting_notebook(tmp_path, exit_code)
    first = run_cli("run", nb.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.output
    assert "exited early at cell 3" in first.stdout and first.stdout.startswith("completed"), first.stdout
    assert executions(tmp_path / "counter.txt") == ["before", "exit"]
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[2].metadata.nbdurable["exited"] is True and out.cells[3].outputs == []
    assert agrees_with_journal(tmp_path / "out.ipynb", tmp_path / ".nbdurable") == "completed"

    second = run_cli("run", nb.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert second.returncode == 0 and "resumed run" not in second.stdout and "0 restored" in second.stdout
    assert executions(tmp_path / "counter.txt") == ["before", "exit", "before", "exit"]


def test_sys_exit_nonzero_is_a_failure(tmp_path: Path) -> None:
    nb = exiting_notebook(tmp_path, "sys.exit(3)")
    first = run_cli("run", nb.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert first.returncode == 1 and "Error: SystemExit: 3 (cell 3)" in first.stderr, first.output
    assert agrees_with_journal(tmp_path / "out.ipynb", tmp_path / ".nbdurable") == "failed"
    second = run_cli("run", nb.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert second.returncode == 1 and "resumed run" in second.stdout  # the failed run resumes: cell 3 again


def test_papermill_sys_exit_zero_completes_the_run_and_the_next_invocation_starts_fresh(tmp_path: Path) -> None:
    nb = exiting_notebook(tmp_path, "sys.exit(0)")
    first = papermill(tmp_path, nb.name, "out.ipynb")
    assert first.returncode == 0, first.stderr
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert [len(c.outputs) > 0 for c in out.cells] == [False, True, True, False]  # the last cell did not run
    assert out.cells[2].metadata.papermill["status"] == "failed"  # papermill marks a sys.exit(0) cell so itself
    assert agrees_with_journal(tmp_path / "out.ipynb", tmp_path / ".nbdurable") == "completed"

    second = papermill(tmp_path, nb.name, "out.ipynb")
    assert second.returncode == 0, second.stderr
    assert metadata(tmp_path / "out.ipynb")["resumed_from"] is None
    assert executions(tmp_path / "counter.txt") == ["before", "exit", "before", "exit"]


# ------------------------------------------------------------------------------ 2. papermill's options


def slow_notebook(tmp_path: Path) -> Path:
    """Its third cell sleeps 30 s, unless the file ``fast`` exists."""
    counter = tmp_path / "counter.txt"
    return notebook(tmp_path / "slow.ipynb", "x = 1", counting_cell(counter, "quick", "print('quick')"),
                    counting_cell(counter, "slow", "import pathlib, time\n"
                                  "time.sleep(0 if pathlib.Path('fast').exists() else 30)"),
                    counting_cell(counter, "last"))


def test_papermill_execution_timeout_fails_the_cell_and_the_run_resumes(tmp_path: Path) -> None:
    nb = slow_notebook(tmp_path)
    started = time.monotonic()
    timed_out = papermill(tmp_path, nb.name, "out.ipynb", "--execution-timeout", "2")
    assert time.monotonic() - started < 20, "the 30 s cell is stopped at 2 s"
    assert timed_out.returncode == 1 and "CellTimeoutError: A cell timed out" in timed_out.stderr, timed_out.stderr
    assert "Run the same papermill command again to resume" in timed_out.stderr
    assert agrees_with_journal(tmp_path / "out.ipynb", tmp_path / ".nbdurable") == "failed"
    assert nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[2].metadata.nbdurable["status"] == "failed"

    (tmp_path / "fast").touch()
    resumed = papermill(tmp_path, nb.name, "out.ipynb", "--execution-timeout", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert executions(tmp_path / "counter.txt") == ["quick", "slow", "slow", "last"]
    assert agrees_with_journal(tmp_path / "out.ipynb", tmp_path / ".nbdurable") == "completed"


def test_nbdurable_run_execution_timeout(tmp_path: Path) -> None:
    nb = slow_notebook(tmp_path)
    started = time.monotonic()
    timed_out = run_cli("run", nb.name, "out.ipynb", "--execution-timeout", "1.5", "--no-progress", cwd=tmp_path)
    assert time.monotonic() - started < 20
    assert timed_out.returncode == 1 and "CellTimeoutError" in timed_out.stderr and "(cell 3)" in timed_out.stderr
    assert agrees_with_journal(tmp_path / "out.ipynb", tmp_path / ".nbdurable") == "failed"
    (tmp_path / "fast").touch()
    again = run_cli("run", nb.name, "out.ipynb", "--execution-timeout", "1.5", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0 and "resumed run" in again.stdout and "2 restored" in again.stdout, again.output
    assert executions(tmp_path / "counter.txt") == ["quick", "slow", "slow", "last"]


def test_start_timeout(tmp_path: Path) -> None:
    """A kernel that never answers fails the run after --start-timeout (both commands)."""
    python_kernelspec(tmp_path, "mute", "import time; time.sleep(120)")
    nb = notebook(tmp_path / "nb.ipynb", "x = 1", "print(x)")
    env = {"JUPYTER_PATH": str(tmp_path)}
    started = time.monotonic()
    cli = run_cli("run", nb.name, "--kernel", "mute", "--start-timeout", "2", "--no-progress", cwd=tmp_path, env=env)
    assert cli.returncode == 1 and "start-up" in cli.stderr, cli.output
    pm = subprocess.run([sys.executable, "-m", "papermill", "--engine", "durable", nb.name, "out.ipynb", "-k", "mute",
                         "--start-timeout", "2"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                        env=clean_env(env))
    assert pm.returncode == 1 and "start-up" in pm.stderr, pm.stderr
    assert time.monotonic() - started < 45, "two kernels that never start, each given 2 s"


def test_papermill_log_output_stdout_file_progress_bar_and_report_mode(tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    nb = notebook(tmp_path / "nb.ipynb", "flag = 'go.flag'", counting_cell(counter, "one", "print('from cell one')"),
                  "import pathlib, sys\nif not pathlib.Path(flag).exists():\n    raise ValueError('not yet')\n"
                  "print('from cell two')\nprint('warned', file=sys.stderr)\n'the value'", markdown=True)
    code_cells = 3  # the markdown cell and the empty code cell do not count
    failed = papermill(tmp_path, nb.name, "out.ipynb", "--log-output", "--stdout-file", "first.txt")
    assert failed.returncode == 1 and "ValueError: not yet" in failed.stderr
    assert "from cell one" in failed.stderr  # --log-output: the cell's stream, through papermill's logger
    assert (tmp_path / "first.txt").read_text() == "from cell one\n"

    (tmp_path / "go.flag").touch()
    resumed = papermill(tmp_path, nb.name, "out.ipynb", "--log-output", "--stdout-file", "second.txt",
                        "--stderr-file", "errors.txt", "--progress-bar", "--report-mode")
    assert resumed.returncode == 0, resumed.stderr
    assert executions(counter) == ["one"]  # restored, not executed again
    # restored cells count in the bar and in the logged output too
    assert f"100%|██████████| {code_cells}/{code_cells}" in resumed.stderr, resumed.stderr
    assert "from cell one" in resumed.stderr and "'the value'" in resumed.stderr
    assert (tmp_path / "second.txt").read_text() == "from cell one\nfrom cell two\n"
    assert (tmp_path / "errors.txt").read_text() == "warned\n"
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert all(c.metadata["jupyter"]["source_hidden"] for c in out.cells if c.cell_type == "code")


def test_papermill_autosave_cadence_during_a_long_cell(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "nb.ipynb", "x = 1",
                  "import time\nprint('early', flush=True)\ntime.sleep(1.5)\nprint('middle', flush=True)\n"
                  "time.sleep(6)\nopen('done', 'w').close()")
    proc = subprocess.Popen([sys.executable, "-m", "papermill", "--engine", "durable", nb.name, "out.ipynb",
                             "--autosave-cell-every", "1"], cwd=tmp_path, env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen_mid_cell = False
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not seen_mid_cell:
            try:  # papermill writes the file in place: it may be caught half-written
                outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[1].outputs
            except (OSError, ValueError, IndexError):
                outputs = []
            printed = "".join(o.get("text", "") for o in outputs)
            seen_mid_cell = "middle" in printed and not (tmp_path / "done").exists()
            time.sleep(0.1)
        assert seen_mid_cell, "the output notebook is saved during the cell, every second"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------------------------ 3. the parameters of this run


def test_papermill_parameters_are_those_injected_now(tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    notebook(tmp_path / "nb.ipynb", "n = 1", counting_cell(counter, "cell", "print('n is', n)"))
    first = papermill(tmp_path, "nb.ipynb", "first.ipynb", "-p", "n", "5")
    assert first.returncode == 0 and metadata(tmp_path / "first.ipynb")["parameters"] == {"n": 5}

    # first.ipynb holds papermill's metadata and injected cell: run without -p, nothing is injected now
    stale = papermill(tmp_path, "first.ipynb", "stale.ipynb")
    assert stale.returncode == 0, stale.stderr
    meta = metadata(tmp_path / "stale.ipynb")
    assert meta["parameters"] == {} and meta["resumed_from"] is None
    head = journal_records(tmp_path / ".nbdurable" / "journals" / f"{meta['run_id']}.jsonl", "run")[0]
    assert head["params"] == {}

    # the same values injected again (a new injected cell): they are this run's parameters
    again = papermill(tmp_path, "first.ipynb", "again.ipynb", "-p", "n", "5")
    assert again.returncode == 0 and metadata(tmp_path / "again.ipynb")["parameters"] == {"n": 5}
    assert executions(counter) == ["cell", "cell", "cell"]


def test_papermill_cwd_leaves_the_notebook_and_its_store_where_the_input_is(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    notebook(tmp_path / "nb.ipynb", "x = 1", "open('made-here', 'w').close()")
    done = papermill(tmp_path, "nb.ipynb", "out.ipynb", "--cwd", "work")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "work" / "made-here").exists() and not (tmp_path / "work" / ".nbdurable").exists()
    run_id = metadata(tmp_path / "out.ipynb")["run_id"]
    head = journal_records(tmp_path / ".nbdurable" / "journals" / f"{run_id}.jsonl", "run")[0]
    assert head["notebook"] == str((tmp_path / "nb.ipynb").resolve())


# ------------------------------------------------------------------------------ 4. the cell's own error

FAILURES = {
    "line magic": (["x = 1", "%not_a_magic 3"], "UsageError: Line magic function `%not_a_magic` not found."),
    "post_execute callback": (
        ["def boom():\n    raise TypeError('raised after the cell')\n"
         "get_ipython().events.register('post_execute', boom)", "raise ValueError('the cell failed')"],
        "ValueError: the cell failed"),
    "matplotlib figure flush": (
        ["import matplotlib\n%matplotlib inline\nimport matplotlib.pyplot as plt\nimport numpy as np",
         "fig, ax = plt.subplots()\nline, = ax.plot([1, 2], [1, 2])\nline.set_xdata([{}, {}])\n"
         "np.array([1, [2, 3]], dtype=float)"],
        "ValueError: setting an array element with a sequence."),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_the_error_reported_is_the_failing_cells_own(tmp_path: Path, case: str) -> None:
    if case.startswith("matplotlib"):
        pytest.importorskip("matplotlib")
    sources, expected = FAILURES[case]
    nb = notebook(tmp_path / "nb.ipynb", *sources)
    cli = run_cli("run", nb.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    error_line = next(line for line in cli.stderr.splitlines() if line.startswith("Error: "))
    assert cli.returncode == 1 and error_line.startswith(f"Error: {expected}"), cli.stderr
    assert error_line.endswith("(cell 2)")

    pm = papermill(tmp_path, nb.name, "pm.ipynb", "--no-progress-bar")
    assert pm.returncode == 1
    reported = pm.stderr[pm.stderr.rindex("Exception encountered at"):]
    assert expected in reported and "raised after the cell" not in reported and "TypeError" not in reported, reported


def test_run_result_error_is_the_failing_cells_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbdurable.headless.runner import HeadlessRunner

    for name in [n for n in os.environ if n.startswith("NBDURABLE_")]:
        monkeypatch.delenv(name)
    sources, expected = FAILURES["post_execute callback"]
    path = notebook(tmp_path / "nb.ipynb", *sources)
    result = HeadlessRunner(nbformat.read(path, as_version=4), notebook_path=path, store_path=tmp_path / ".nbdurable",
                            params={}, output_path=None).execute()
    assert (result.status, result.error, result.stopped_by, result.stopped_at) == ("failed", expected, "error", 1)


# ------------------------------------------------------------------------------ 5. metadata = journal; Ctrl-C


def test_ctrl_c_to_the_process_group_exits_130_and_the_metadata_says_what_the_journal_says(tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    cells = [counting_cell(counter, f"cell{i}", "import time\ntime.sleep(0.5)") for i in range(1, 9)]
    nb = notebook(tmp_path / "nb.ipynb", "x = 1", *cells)
    args = ["run", nb.name, "out.ipynb", "--no-progress"]
    proc = start_cli(*args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     start_new_session=True)  # its own process group: the kernel gets the SIGINT too, as at a terminal
    deadline = time.monotonic() + 60
    while len(executions(counter)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Interrupted" in stderr and "Run the same command again to resume" in stderr
    status = agrees_with_journal(tmp_path / "out.ipynb", tmp_path / ".nbdurable")
    assert status in ("failed", "interrupted", "crashed")  # resumable, whatever the kernel managed to record

    done = executions(counter)
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0 and "resumed run" in second.stdout, second.output
    assert agrees_with_journal(tmp_path / "out.ipynb", tmp_path / ".nbdurable") == "completed"
    assert all(executions(counter).count(label) <= 2 for label in done)


@pytest.mark.parametrize("kind", ["failed", "crashed"])
def test_the_output_metadata_says_what_the_journal_says(tmp_path: Path, kind: str) -> None:
    body = "raise ValueError('no')" if kind == "failed" else KILL
    nb = notebook(tmp_path / "nb.ipynb", "x = 1", "print(x)", body, "print('never')")
    result = run_cli("run", nb.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert result.returncode == 1
    assert agrees_with_journal(tmp_path / "out.ipynb", tmp_path / ".nbdurable") == kind


def test_help_and_readme_document_the_exit_codes_and_timeouts(tmp_path: Path) -> None:
    helped = run_cli("run", "--help", cwd=tmp_path, in_process=True)
    assert "130 interrupted (Ctrl-C)" in helped.stdout
    assert "--execution-timeout SECONDS" in helped.stdout and "--start-timeout SECONDS" in helped.stdout
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "130 interrupted (Ctrl-C)" in readme and "--execution-timeout SECONDS" in readme


# ------------------------------------------------------------------------------ 6. a kernel death under papermill


def test_papermill_kernel_death_is_one_papermill_error_and_the_same_command_resumes(tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    nb = notebook(tmp_path / "nb.ipynb", "x = 1", counting_cell(counter, "one"),
                  counting_cell(counter, "two", DIES_ONCE), counting_cell(counter, "three"))
    died = papermill(tmp_path, nb.name, "out.ipynb")
    assert died.returncode not in (0, 138), died.stderr
    last = died.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: the kernel died in cell 3") and "Run the same papermill command again" in last
    assert died.returncode == 1 and "Traceback" not in died.stderr  # one line (tests/test_papermill_engine.py)
    assert "nbclient.exceptions.DeadKernelError" not in died.stderr
    assert agrees_with_journal(tmp_path / "out.ipynb", tmp_path / ".nbdurable") == "crashed"

    resumed = papermill(tmp_path, nb.name, "out.ipynb")
    assert resumed.returncode == 0, resumed.stderr
    assert executions(counter) == ["one", "two", "two", "three"]
