"""``nbdurable sweep``: a parameter grid of durable headless runs on local processes and on a real Dask
``LocalCluster``; a rerun resumes only what did not complete; bad input is a clear error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import executions, run_cli, write_notebook

pytestmark = [pytest.mark.kernel]


def grid_notebook(tmp_path: Path) -> tuple[Path, Path]:
    """A notebook with a parameters cell (a, b), counting its cells' executions per combination (and writing
    its runner's pid, the kernel's parent, to runners.txt); the combination a=2, b=20 fails until the file
    ``fixed`` exists."""
    counter = tmp_path / "count.txt"
    nb = write_notebook(tmp_path / "grid.ipynb", [
        "a = 1\nb = 10",
        f"import os\nwith open({str(counter)!r}, 'a') as f:\n    f.write(f'load-{{a}}-{{b}}\\n')\n"
        f"with open({str(tmp_path / 'runners.txt')!r}, 'a') as f:\n    f.write(f'{{os.getppid()}}\\n')\n"
        "data = list(range(a * b))",
        f"import os\nwith open({str(counter)!r}, 'a') as f:\n    f.write(f'fit-{{a}}-{{b}}\\n')\n"
        f"if (a, b) == (2, 20) and not os.path.exists({str(tmp_path / 'fixed')!r}):\n"
        "    raise ValueError('diverged')\nscore = sum(data)",
        "print('score', score)",
    ])
    tag_parameters(nb)
    return nb, counter


def tag_parameters(nb: Path) -> None:
    """Tag the first cell ``parameters`` (papermill injects after it)."""
    import nbformat

    notebook = nbformat.read(nb, as_version=4)
    notebook.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(notebook, nb)


@pytest.mark.slow
def test_a_two_by_two_sweep_with_one_failure_and_a_rerun_that_resumes_only_it(tmp_path: Path) -> None:
    nb, counter = grid_notebook(tmp_path)
    args = ("sweep", nb.name, "-p", "a", "1", "2", "-p", "b", "10", "20", "--workers", "2", "--output-dir", "out")
    first = run_cli(*args, cwd=tmp_path, timeout=300)
    assert first.returncode == 1, first.output
    assert "3 of 4 combinations completed" in first.stdout
    assert "ValueError: diverged" in first.stdout and first.stderr.count("] a=") == 4, "a line per combination"
    rows = {tuple(line.split()[:2]): line.split() for line in first.stdout.splitlines()[1:5]}
    assert {k: v[3] for k, v in rows.items()} == {("1", "10"): "completed", ("1", "20"): "completed",
                                                 ("2", "10"): "completed", ("2", "20"): "failed"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "grid-a=1-b=10.ipynb", "grid-a=1-b=20.ipynb", "grid-a=2-b=10.ipynb", "grid-a=2-b=20.ipynb"]
    (tmp_path / "fixed").touch()
    second = run_cli(*args, cwd=tmp_path, timeout=300)
    assert second.returncode == 0, second.output
    assert "4 of 4 combinations completed" in second.stdout
    assert second.stdout.count("completed before") == 3 and "resumed" in second.stdout
    failed_run = rows[("2", "20")][2]
    assert f"(resumed run {failed_run})" in second.stderr
    runs = executions(counter)
    assert sorted(runs) == sorted([f"{step}-{a}-{b}" for step in ("load", "fit") for a in (1, 2) for b in (10, 20)]
                                  + ["fit-2-20"]), "only the failed combination's failed cell ran again"


@pytest.mark.slow
def test_a_sweep_on_dask_workers(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="pip install 'nbdurable[dask]'")
    nb, counter = grid_notebook(tmp_path)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = run_cli("sweep", nb.name, "-p", "a", "1", "-p", "b", "10", "20", "--dask", cluster.scheduler_address,
                         cwd=tmp_path, timeout=300)
        with distributed.Client(cluster.scheduler_address) as client:
            worker_pids = set(client.run(lambda: __import__("os").getpid()).values())
    assert result.returncode == 0, result.output
    assert "on Dask at" in result.stderr and "2 of 2 combinations completed" in result.stdout
    assert sorted(executions(counter)) == ["fit-1-10", "fit-1-20", "load-1-10", "load-1-20"]
    runners = {int(pid) for pid in executions(tmp_path / "runners.txt")}
    assert runners and runners <= worker_pids, "each combination's runner ran in a Dask worker's process"


@pytest.mark.slow
def test_a_dask_worker_killed_mid_combination_is_retried_and_the_run_resumes(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="pip install 'nbdurable[dask]'")
    import os
    import signal
    import subprocess

    from helpers import start_cli

    nb = write_notebook(tmp_path / "slow.ipynb", [
        "a = 1",
        f"import os, pathlib, time\nwith open({str(tmp_path / 'count.txt')!r}, 'a') as f:\n    f.write('load\\n')",
        f"with open({str(tmp_path / 'count.txt')!r}, 'a') as f:\n    f.write('slow\\n')\n"
        f"pathlib.Path({str(tmp_path / 'runner.pid')!r}).write_text(str(os.getppid()))\n"
        f"time.sleep(0 if pathlib.Path({str(tmp_path / 'runner.pid')!r} + '.killed').exists() else 120)",
        "print('done', a)",
    ])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        proc = start_cli("sweep", nb.name, "-p", "a", "1", "--dask", cluster.scheduler_address, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pid_file = tmp_path / "runner.pid"
        deadline = time.monotonic() + 120
        while not pid_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        (tmp_path / "runner.pid.killed").touch()
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the Dask worker running the combination's runner
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    assert "1 of 1 combinations completed" in out and "(resumed run " in err, out + err
    assert executions(tmp_path / "count.txt") == ["load", "slow", "slow"], "the cells the kernel completed restored"


@pytest.mark.slow
def test_reuse_runs_the_cells_that_do_not_read_the_parameters_once(tmp_path: Path) -> None:
    import json

    nb = write_notebook(tmp_path / "shared.ipynb", [
        "lr = 0.1", "features = list(range(100))\nprint('prepared')", "loss = sum(features) * lr\nprint(loss)"])
    tag_parameters(nb)
    result = run_cli("sweep", nb.name, "-p", "lr", "0.1", "0.01", "0.001", "--workers", "1", "--reuse",
                     "--output-dir", "out", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.output
    statuses = {}
    for out in sorted((tmp_path / "out").iterdir()):
        cells = json.loads(out.read_text())["cells"]
        statuses[out.name] = [c["metadata"]["nbdurable"]["status"] for c in cells if "prepared" in "".join(c["source"])]
    assert sorted(statuses.values()) == [["executed"], ["restored"], ["restored"]], statuses


@pytest.mark.slow
def test_what_a_combinations_runner_says_is_shown_under_its_line(tmp_path: Path) -> None:
    nb = write_notebook(tmp_path / "edited.ipynb", [
        "a = 1", "b = a + 1", f"import os\nassert os.path.exists({str(tmp_path / 'fixed')!r}), 'not yet'"])
    tag_parameters(nb)
    first = run_cli("sweep", nb.name, "-p", "a", "5", "--workers", "1", cwd=tmp_path, timeout=300)
    assert first.returncode == 1 and "AssertionError: not yet" in first.stderr, first.output
    write_notebook(nb, ["a = 1", "b = a + 2", f"import os\nassert os.path.exists({str(tmp_path / 'fixed')!r})"])
    tag_parameters(nb)
    (tmp_path / "fixed").touch()
    second = run_cli("sweep", nb.name, "-p", "a", "5", "--workers", "1", cwd=tmp_path, timeout=300)
    assert second.returncode == 0, second.output
    notices = [line for line in second.stderr.splitlines() if line.startswith("    nbdurable: ")]
    assert notices and any("changed" in line for line in notices), second.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("-p", "lr"), "-p lr has no values"),
    (("-p", "lr", "0.1", "-p"), "-p needs a parameter name and values"),
    (("-p", "lr", "0.1", "-p", "lr", "0.2"), "parameter lr given twice"),
    (("-p", "class", "1"), "-p class: not a valid parameter name"),
    (("--bogus", "-p", "lr", "1"), "unexpected '--bogus' before the first -p"),
    ((), "a sweep needs parameters"),
    (("-p", "lr", "1", "--workers", "2", "--dask", "tcp://127.0.0.1:1"), "--dask and --workers exclude each other"),
])
def test_bad_sweep_input_is_a_usage_error_and_runs_nothing(tmp_path: Path, args: tuple[str, ...],
                                                           message: str) -> None:
    nb, counter = grid_notebook(tmp_path)
    result = run_cli("sweep", nb.name, *args, cwd=tmp_path, in_process=True)
    assert result.returncode == 2 and message in result.stderr and "What to do:" in result.stderr, result.output
    assert not counter.exists() and not (tmp_path / ".nbdurable").exists()


def test_a_file_that_is_no_notebook_is_one_error_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "notes.ipynb").write_text("# not JSON")
    result = run_cli("sweep", "notes.ipynb", "-p", "a", "1", "2", cwd=tmp_path, in_process=True)
    assert result.returncode == 2 and "notes.ipynb is not a Jupyter notebook" in result.stderr, result.output
    assert "sweep:" not in result.stderr and not (tmp_path / ".nbdurable").exists()


@pytest.mark.slow  # 5 s: the connection timeout
def test_an_unreachable_dask_scheduler_is_a_usage_error(tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="pip install 'nbdurable[dask]'")
    nb, counter = grid_notebook(tmp_path)
    started = time.monotonic()
    result = run_cli("sweep", nb.name, "-p", "a", "1", "--dask", "tcp://127.0.0.1:9", cwd=tmp_path, in_process=True)
    assert result.returncode == 2, result.output
    assert "cannot reach a Dask scheduler at 'tcp://127.0.0.1:9'" in result.stderr and "dask scheduler" in result.stderr
    assert time.monotonic() - started < 30 and not counter.exists()
