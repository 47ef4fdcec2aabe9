"""Everything that runs on a directory store, on the shared store (PostgreSQL, objects on ``file://``): headless
runs killed and resumed, the kernel killed from outside, the papermill engine, an interactive session
killed mid-cell, a suspended run resumed by the worker after ``nbdurable send``, history, SQL and check.
Real ``nbdurable`` commands, real kernels, real ``kill -9``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from nbdurable.store.shared import SharedStore

from conftest import run_session
from helpers import clean_env, counting_cell, executions, run_cli, start_cli, write_notebook

pytestmark = [pytest.mark.kernel, pytest.mark.slow]
NOTEBOOKS = Path(__file__).parent / "notebooks"


def shared(url: str) -> dict[str, str]:
    """The environment naming the shared store (its objects' location is recorded in it)."""
    SharedStore.open(url)  # created here: NBDURABLE_OBJECTS (the fixture's) is recorded for every process
    return {"NBDURABLE_STORE": url}


def test_a_killed_headless_run_resumes_and_check_history_sql_work(pg_store: str, tmp_path: Path) -> None:
    env = shared(pg_store)
    shutil.copyfile(NOTEBOOKS / "pipeline.ipynb", tmp_path / "pipeline.ipynb")
    args = ("run", "pipeline.ipynb", "out.ipynb", "-p", "kill_at", "4", "--no-progress")
    first = run_cli(*args, cwd=tmp_path, env=env)
    assert first.returncode == 1 and "crashed" in first.stdout, first.stdout + first.stderr
    second = run_cli(*args, cwd=tmp_path, env=env)
    assert second.returncode == 0 and "6 restored" in second.stdout, second.stdout + second.stderr
    assert executions(tmp_path / "counter.txt") == ["setup", "cell1", "cell2", "cell3", "cell4", "cell4", "cell5",
                                                    "cell6"]
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.metadata.nbdurable["store"] == SharedStore.open(pg_store).display
    runs = run_cli("runs", cwd=tmp_path, env=env)
    assert runs.returncode == 0 and "completed" in runs.stdout and "crashed" in runs.stdout
    check = run_cli("check", cwd=tmp_path, env=env)
    assert check.returncode == 0 and "Result: ok" in check.stdout, check.stdout + check.stderr
    probe = ("import nbdurable as nbd; h = nbd.history(); print(sorted(h.status));"
             "print(nbd.sql('SELECT count(*) AS n FROM steps WHERE status = \\'restored\\'').n[0])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=clean_env(env), capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split("\n")[:2] == ["['completed', 'crashed']", "6"], done.stdout + done.stderr
    # the widgets' data and the report, from the shared store's catalog
    from nbdurable.report import write_report
    from nbdurable.widgets.graph import build_graph
    from nbdurable.widgets.history import HistoryExplorer

    store = SharedStore.open(pg_store)
    latest = max(store.run_ids())
    graph = build_graph(store, latest)  # type: ignore[arg-type]
    assert [n["status"] for n in graph["nodes"]].count("restored") == 6
    assert write_report(store, latest, tmp_path / "r.html").stat().st_size > 1000  # type: ignore[arg-type]
    explorer = HistoryExplorer(store)  # type: ignore[arg-type]
    assert explorer.total == 2 and not explorer.error


def test_a_password_in_the_url_is_never_shown(pg_store: str, tmp_path: Path) -> None:
    """The server trusts local connections, so a password in the URL is accepted and ignored: the run
    works, and nothing it prints or writes shows the password."""
    secret = "Sup3r-s3cret-pw"
    url = pg_store.replace("postgres@", f"postgres:{secret}@")
    env = shared(url)
    shutil.copyfile(NOTEBOOKS / "pipeline.ipynb", tmp_path / "pipeline.ipynb")
    first = run_cli("run", "pipeline.ipynb", "out.ipynb", "-p", "kill_at", "2", "--no-progress", cwd=tmp_path, env=env)
    second = run_cli("run", "pipeline.ipynb", "out.ipynb", "-p", "kill_at", "2", "--no-progress", cwd=tmp_path,
                     env=env)
    shown = [first.output, second.output, (tmp_path / "out.ipynb").read_text(),
             run_cli("runs", cwd=tmp_path, env=env).output, run_cli("check", cwd=tmp_path, env=env).output,
             run_cli("show", "nope", cwd=tmp_path, env=env).output]
    assert second.returncode == 0 and "postgres:***@" in second.output, second.output
    assert not [text for text in shown if secret in text]


def test_the_kernel_killed_from_outside_resumes(pg_store: str, tmp_path: Path) -> None:
    env = shared(pg_store)
    counter = tmp_path / "count.txt"
    write_notebook(tmp_path / "nb.ipynb", [
        counting_cell(counter, "c1", "x = 1"),
        counting_cell(counter, "c2", "import pathlib, time\npathlib.Path('started').touch()\n"
                      "while not pathlib.Path('go').exists():\n    time.sleep(0.1)\ny = x + 1"),
        counting_cell(counter, "c3", "print(y * 10)"),
    ])
    proc = start_cli("run", "nb.ipynb", "out.ipynb", "--no-progress", cwd=tmp_path, env=env,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    store = SharedStore.open(pg_store)
    [run_id] = store.run_ids()
    holder = store.lease_holder(run_id)
    assert holder is not None
    os.kill(holder["pid"], signal.SIGKILL)  # the kernel: it holds the run's lease
    proc.communicate(timeout=60)
    assert proc.returncode == 1
    (tmp_path / "go").touch()
    second = run_cli("run", "nb.ipynb", "out.ipynb", "--no-progress", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert executions(counter) == ["c1", "c2", "c2", "c3"]


def test_the_papermill_engine_resumes(pg_store: str, tmp_path: Path) -> None:
    env = shared(pg_store)
    shutil.copyfile(NOTEBOOKS / "pipeline.ipynb", tmp_path / "pipeline.ipynb")
    cmd = [sys.executable, "-m", "papermill", "--engine", "durable", "pipeline.ipynb", "out.ipynb", "-p", "kill_at",
           "3"]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180, env=clean_env(env))
    assert first.returncode != 0
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180, env=clean_env(env))
    assert second.returncode == 0, second.stderr
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert [c.metadata.nbdurable["status"] for c in out.cells][:4] == ["restored"] * 4
    assert executions(tmp_path / "counter.txt").count("cell1") == 1


def test_an_interactive_session_killed_mid_cell_resumes(pg_store: str, tmp_path: Path) -> None:
    shared(pg_store)
    counter, marker = tmp_path / "count.txt", tmp_path / "killed-once"
    cells = [
        counting_cell(counter, "c1", "import numpy as np\nx = np.arange(1000)"),
        counting_cell(counter, "c2", f"import os, pathlib\nif not pathlib.Path({str(marker)!r}).exists():\n"
                      f"    pathlib.Path({str(marker)!r}).touch()\n    os.kill(os.getpid(), 9)\ny = int(x.sum())"),
        counting_cell(counter, "c3", "z = y + 1"),
    ]
    first = run_session(pg_store, cells, workdir=tmp_path)  # type: ignore[arg-type]
    assert first.killed and executions(counter) == ["c1", "c2"]
    second = run_session(pg_store, cells, workdir=tmp_path, probes={"z": "z"})  # type: ignore[arg-type]
    assert second.probes == {"z": "499501"}
    assert executions(counter) == ["c1", "c2", "c2", "c3"]
    assert "restored from step" in second.stdout


def test_a_suspended_run_resumed_by_the_worker_after_send(pg_store: str, tmp_path: Path) -> None:
    env = shared(pg_store)
    write_notebook(tmp_path / "flow.ipynb", [
        "import nbdurable as nbd",
        "approval = nbd.wait_for_event('report.approved', match={'week': 47}, timeout='2d')\n"
        "print('approved by', approval['by'])"])
    first = run_cli("run", "flow.ipynb", "out.ipynb", "--no-progress", cwd=tmp_path, env=env)
    assert first.returncode == 3, first.stdout + first.stderr
    sent = run_cli("send", "report.approved", "--data", json.dumps({"week": 47, "by": "ana"}), cwd=tmp_path, env=env)
    assert sent.returncode == 0, sent.stderr
    due = run_cli("worker", "--once", cwd=tmp_path, env=env)
    assert due.returncode == 0 and ": completed" in due.stderr, due.stderr
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert "approved by ana" in "".join(o.get("text", "") for o in out.cells[1].outputs)


def test_the_crash_harness_invariants_hold_on_the_shared_store(pg_db: str, tmp_path: Path) -> None:
    """``crash_harness.py --shared``: runs killed at random (kernel, runner, both), resumed to the end, each
    trial on a shared store of its own: check passes, outputs equal a clean run's, nothing committed ran
    twice, no record lost (the table's unique key refuses a record committed twice), dataflow kept."""
    from crash_harness import soak, summary

    seed = int(os.environ.get("NBDURABLE_CRASH_SEED") or time.time())
    results = soak(4, seed, workers=2, root=tmp_path, shared=pg_db)
    report = summary(results)
    print(report)
    assert sum(len(r.kills) for r in results) >= 2 and sum(r.records for r in results) > 0, report
    assert not [v for r in results for v in r.violations], f"{report}\nreproduce: NBDURABLE_CRASH_SEED={seed}"
