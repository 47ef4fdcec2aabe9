"""Headless resumable runs with real kernels: the CLI and the papermill engine, crashes anywhere.

Every test runs the real ``nbdurable`` command (or ``papermill``) in a subprocess on the notebooks of
``tests/notebooks/``, kills real processes, and checks the counter files the cells write: a completed
cell must never execute twice.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from helpers import clean_env, executions, python_kernelspec, run_cli, start_cli

pytestmark = pytest.mark.kernel  # `nbdurable run`/papermill with real kernels (the --help checks run in process)

NOTEBOOKS = Path(__file__).parent / "notebooks"


def copy_notebook(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copyfile(NOTEBOOKS / name, target)
    return target


def counter(tmp_path: Path) -> list[str]:
    """The labels the notebooks of ``tests/notebooks/`` write to ``counter.txt``, in execution order."""
    return executions(tmp_path / "counter.txt")


def outputs(path: Path) -> list[list[dict[str, Any]]]:
    """Cell outputs without what legitimately differs between runs (execution counts)."""
    nb = nbformat.read(path, as_version=4)
    result = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            result.append([{k: v for k, v in o.items() if k != "execution_count"} for o in cell.outputs])
    return result


@pytest.mark.slow
def test_self_killing_kernel_resumes_and_output_equals_a_clean_run(tmp_path: Path) -> None:
    nb = copy_notebook("pipeline.ipynb", tmp_path)
    first = run_cli("run", nb.name, "out.ipynb", "-p", "kill_at", "4", "--no-progress", cwd=tmp_path)
    assert first.returncode == 1 and "crashed" in first.stdout, first.stdout + first.stderr
    assert counter(tmp_path) == ["setup", "cell1", "cell2", "cell3", "cell4"]
    partial = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert partial.metadata.nbdurable["status"] == "crashed"

    second = run_cli("run", nb.name, "out.ipynb", "-p", "kill_at", "4", "--no-progress", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "6 restored" in second.stdout  # the parameters cell, papermill's injected cell, setup, cells 1-3
    assert counter(tmp_path) == ["setup", "cell1", "cell2", "cell3", "cell4", "cell4", "cell5", "cell6"]
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    statuses = [c.metadata.nbdurable["status"] for c in out.cells]
    assert statuses == ["restored"] * 6 + ["executed"] * 4
    assert out.cells[2].metadata.nbdurable["restored_from"]["run_id"] == partial.metadata.nbdurable["run_id"]

    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    shutil.copyfile(nb, clean_dir / nb.name)
    (clean_dir / "killed-once").touch()
    clean = run_cli("run", nb.name, "out.ipynb", "-p", "kill_at", "4", "--no-progress", cwd=clean_dir)
    assert clean.returncode == 0
    assert outputs(tmp_path / "out.ipynb") == outputs(clean_dir / "out.ipynb")


@pytest.mark.slow
def test_kernel_killed_from_outside_at_a_random_cell(tmp_path: Path) -> None:
    nb = copy_notebook("pipeline.ipynb", tmp_path)
    kill_after = random.Random().randint(1, 5)
    args = ["run", nb.name, "out.ipynb", "-p", "sleep", "0.4", "--no-progress"]
    proc = start_cli(*args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(counter(tmp_path)) < kill_after + 1 and time.time() < deadline:
        time.sleep(0.02)
    lease = next((tmp_path / ".nbdurable" / "leases").glob("*.lease"))
    os.kill(json.loads(lease.read_text())["pid"], signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == 1
    killed_at = counter(tmp_path)[-1]
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    runs = counter(tmp_path)
    for label in ["setup"] + [f"cell{i}" for i in range(1, 7)]:
        assert runs.count(label) == (2 if label == killed_at else 1), (label, killed_at, runs)


@pytest.mark.slow
def test_runner_killed_then_rerun_waits_for_the_orphaned_kernel(tmp_path: Path) -> None:
    nb = copy_notebook("pipeline.ipynb", tmp_path)
    args = ["run", nb.name, "out.ipynb", "-p", "sleep", "0.4", "--no-progress"]
    proc = start_cli(*args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while len(counter(tmp_path)) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    runs = counter(tmp_path)
    assert all(runs.count(f"cell{i}") in (1, 2) for i in range(1, 7)) and runs.count("setup") == 1
    assert sum(runs.count(f"cell{i}") == 2 for i in range(1, 7)) <= 1


@pytest.mark.slow
def test_failing_cell_fixed_then_resumed(tmp_path: Path) -> None:
    nb = copy_notebook("failing.ipynb", tmp_path)
    first = run_cli("run", nb.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert first.returncode == 1 and "input not ready" in first.stderr + first.stdout
    (tmp_path / "fixed.flag").touch()
    second = run_cli("run", nb.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert counter(tmp_path) == ["load", "check", "check"]
    text = "".join(o.get("text", "") for c in nbformat.read(tmp_path / "out.ipynb", 4).cells for o in c.outputs)
    assert "result 45" in text


@pytest.mark.slow
def test_edited_cell_executes_from_the_edit_on(tmp_path: Path) -> None:
    nb_path = copy_notebook("failing.ipynb", tmp_path)
    assert run_cli("run", nb_path.name, "--no-progress", cwd=tmp_path).returncode == 1
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace("raise ValueError('input not ready')", "pass")
    nbformat.write(nb, nb_path)
    second = run_cli("run", nb_path.name, "--no-progress", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert counter(tmp_path) == ["load", "check", "check"]


@pytest.mark.slow
def test_parameters_identify_the_run(tmp_path: Path) -> None:
    nb = copy_notebook("pipeline.ipynb", tmp_path)
    (tmp_path / "params.yaml").write_text("cells: 6\nsleep: 0.0\n")
    killed = run_cli("run", nb.name, "-f", "params.yaml", "-p", "kill_at", "2", "--no-progress", cwd=tmp_path)
    assert killed.returncode == 1
    other = run_cli("run", nb.name, "-f", "params.yaml", "-p", "kill_at", "99", "--no-progress", cwd=tmp_path)
    assert other.returncode == 0 and "0 restored" in other.stdout, "other parameters: an independent run"
    same = run_cli("run", nb.name, "-f", "params.yaml", "-p", "kill_at", "2", "--no-progress", cwd=tmp_path)
    assert same.returncode == 0 and "resumed run" in same.stdout and "4 restored" in same.stdout
    fresh = run_cli("run", nb.name, "-f", "params.yaml", "-p", "kill_at", "2", "--fresh", "--no-progress", cwd=tmp_path)
    assert fresh.returncode == 0 and "0 restored" in fresh.stdout


# Not `slow` on purpose: one `nbdurable run` end to end, the fast loop's headless run (README, Tests).
def test_parameters_for_a_notebook_that_names_no_kernel(tmp_path: Path) -> None:
    """A notebook written by a script has no kernelspec or language: it runs on python3 (as nbclient would)."""
    cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("print('x is', x)")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "bare.ipynb")
    result = run_cli("run", "bare.ipynb", "out.ipynb", "-p", "x", "5", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "x is 5" in json.dumps(outputs(tmp_path / "out.ipynb"))


@pytest.mark.slow
def test_papermill_engine_resumes(tmp_path: Path) -> None:
    nb = copy_notebook("pipeline.ipynb", tmp_path)
    cmd = [sys.executable, "-m", "papermill", "--engine", "durable", nb.name, "out.ipynb", "-p", "kill_at", "3"]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180, env=clean_env())
    assert first.returncode != 0
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180, env=clean_env())
    assert second.returncode == 0, second.stderr
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert [c.metadata.nbdurable["status"] for c in out.cells][:4] == ["restored"] * 4
    assert out.metadata.nbdurable["resumed_from"] and out.metadata.nbdurable["status"] == "completed"
    assert counter(tmp_path).count("cell1") == 1 and counter(tmp_path).count("cell3") == 2


@pytest.mark.slow
def test_sys_exit_in_a_cell(tmp_path: Path) -> None:
    nb = copy_notebook("exits.ipynb", tmp_path)
    assert run_cli("run", nb.name, "--no-progress", cwd=tmp_path).returncode == 1
    (tmp_path / "go.flag").touch()
    second = run_cli("run", nb.name, "out.ipynb", "--no-progress", cwd=tmp_path)
    assert second.returncode == 0 and "2 restored" in second.stdout, second.stdout + second.stderr


@pytest.mark.slow
def test_kernel_dying_during_startup(tmp_path: Path) -> None:
    python_kernelspec(tmp_path, "dies", "import os; os.kill(os.getpid(), 9)")
    nb = copy_notebook("failing.ipynb", tmp_path)
    (tmp_path / "fixed.flag").touch()
    env = {"JUPYTER_PATH": str(tmp_path)}
    first = run_cli("run", nb.name, "--kernel", "dies", "--no-progress", cwd=tmp_path, env=env, timeout=120)
    assert first.returncode == 1 and "start-up" in first.stderr, first.stdout + first.stderr
    second = run_cli("run", nb.name, "--no-progress", cwd=tmp_path)
    assert second.returncode == 0, second.stderr


@pytest.mark.slow
def test_runs_show_resume_and_errors(tmp_path: Path) -> None:
    nb = copy_notebook("failing.ipynb", tmp_path)
    run_cli("run", nb.name, "--no-progress", cwd=tmp_path)
    runs = run_cli("runs", "--notebook", nb.name, cwd=tmp_path)
    assert runs.returncode == 0 and "failed" in runs.stdout
    run_id = runs.stdout.splitlines()[1].split()[0]
    show = run_cli("show", run_id, cwd=tmp_path)
    assert show.returncode == 0 and "failed" in show.stdout and "completed" in show.stdout
    (tmp_path / "fixed.flag").touch()
    resumed = run_cli("resume", run_id, "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0 and f"resumed run {run_id}" in resumed.stdout, resumed.stderr
    assert run_cli("show", "20990101T000000000-abcdef", cwd=tmp_path).returncode == 2
    assert run_cli("resume", "20990101T000000000-abcdef", cwd=tmp_path).returncode == 2
    bad = run_cli("run", nb.name, "-p", "not-a-name", "1", cwd=tmp_path)
    assert bad.returncode == 2 and "not a valid parameter name" in bad.stderr


@pytest.mark.parametrize("command", [["run", "--help"], ["resume", "--help"], ["show", "--help"], ["runs", "--help"],
                                     ["send", "--help"], ["worker", "--help"]])
def test_every_command_has_help(command: list[str], tmp_path: Path) -> None:
    result = run_cli(*command, cwd=tmp_path, in_process=True)
    assert result.returncode == 0 and "Usage:" in result.stdout


@pytest.mark.slow
def test_demo_crashes_and_resumes_quietly_and_removes_its_temporary_directory(tmp_path: Path) -> None:
    # The runtime directory is short (as ~/.local/share/jupyter/runtime is): an ipc socket's path must fit in
    # 107 bytes, or the kernels fall back to TCP with a warning (as they would in a deep tmp_path under xdist).
    tmp, runtime = tmp_path / "tmp", Path(tempfile.mkdtemp(prefix="nbd-rt-"))
    tmp.mkdir()
    demo = run_cli("demo", cwd=tmp_path, timeout=300, env={"TMPDIR": str(tmp), "JUPYTER_RUNTIME_DIR": str(runtime)})
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "KILLED" in demo.stdout and "Resumed: 4 cells restored" in demo.stdout
    assert demo.stderr == "", "no warning from the kernels (ipc transport) or anyone else"
    store = re.search(r"^Store: (\S+), in the demo's temporary directory, removed with it", demo.stdout, re.M)
    assert store and Path(store[1]).parent.parent == tmp, demo.stdout
    assert list(tmp.iterdir()) == [], "the demo's directory (and nbclient's connection files) are gone"
    assert list(runtime.iterdir()) == [], "the kernels' ipc sockets are removed with them"
    runtime.rmdir()


@pytest.mark.slow
def test_ctrl_c_of_the_runner_leaves_a_resumable_run(tmp_path: Path) -> None:
    nb = copy_notebook("pipeline.ipynb", tmp_path)
    args = ["run", nb.name, "out.ipynb", "-p", "sleep", "0.4", "--no-progress"]
    proc = start_cli(*args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while len(counter(tmp_path)) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    done_before = set(counter(tmp_path))
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0 and "resumed run" in second.stdout, second.stdout + second.stderr
    assert counter(tmp_path).count("setup") == 1 and all(counter(tmp_path).count(c) <= 2 for c in done_before)


@pytest.mark.slow
def test_control_cell_splits_the_batch_restore(tmp_path: Path) -> None:
    nb_path = copy_notebook("pipeline.ipynb", tmp_path)
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.insert(4, nbformat.v4.new_code_cell("%durable status"))
    nbformat.write(nb, nb_path)
    killed = run_cli("run", nb_path.name, "out.ipynb", "-p", "kill_at", "4", "--no-progress", cwd=tmp_path)
    assert killed.returncode == 1
    second = run_cli("run", nb_path.name, "out.ipynb", "-p", "kill_at", "4", "--no-progress", cwd=tmp_path)
    assert second.returncode == 0 and "6 restored" in second.stdout, second.stdout + second.stderr
    statuses = [c.metadata.nbdurable["status"] for c in nbformat.read(tmp_path / "out.ipynb", 4).cells]
    # params, injected parameters, setup, cell1, cell2 | the control cell | cell3 | cell4-6, total
    assert statuses == ["restored"] * 5 + ["control"] + ["restored"] + ["executed"] * 4
    assert counter(tmp_path).count("cell3") == 1 and counter(tmp_path).count("cell4") == 2


def test_the_kernel_gets_no_sigint_at_shutdown(tmp_path: Path) -> None:
    """jupyter_client interrupts a kernel before asking it to shut down; landing while ipykernel still handled
    a message, that SIGINT printed "KeyboardInterrupt caught in kernel". The runner's kernels are spared it."""
    marker = tmp_path / "sigint.txt"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import pathlib, signal\n"
        "kernel = get_ipython().kernel\n"  # (ipykernel sets SIGINT's handler around each message: not any more)
        "kernel.pre_handler_hook = kernel.post_handler_hook = lambda: None\n"
        f"signal.signal(signal.SIGINT, lambda *a: pathlib.Path({str(marker)!r}).write_text('interrupted'))")])
    nbformat.write(nb, tmp_path / "nb.ipynb")
    result = run_cli("run", "nb.ipynb", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.output
    time.sleep(0.5)  # (a signal sent at shutdown would be handled before the kernel exits; margin for its write)
    assert not marker.exists(), "the kernel was sent SIGINT on its way out"
    assert "KeyboardInterrupt" not in result.stderr
