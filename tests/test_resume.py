"""Resume semantics in real IPython shells across processes: what is restored, what executes again."""

from __future__ import annotations

from pathlib import Path

from conftest import run_session
from helpers import KILL, counting_cell, executions


def test_kill_mid_cell_then_run_all_executes_only_the_rest(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    marker = tmp_path / "killed-once"
    cells = [
        counting_cell(counter, "c1", "x = 1"),
        counting_cell(counter, "c2", "y = x + 1"),
        counting_cell(counter, "c3", f"import os, pathlib\nif not pathlib.Path({str(marker)!r}).exists():\n"
                      f"    pathlib.Path({str(marker)!r}).touch()\n    os.kill(os.getpid(), 9)\nz = y + 1"),
        counting_cell(counter, "c4", "w = z * 10"),
    ]
    first = run_session(store_dir, cells)
    assert first.killed
    assert executions(counter) == ["c1", "c2", "c3"]
    second = run_session(store_dir, cells, probes={"w": "w", "x": "x"})
    assert second.probes == {"w": "30", "x": "1"}
    assert executions(counter) == ["c1", "c2", "c3", "c3", "c4"], "completed cells must never execute again"
    assert second.stdout.count("nbdurable: restored from step") == 2


def test_edited_cell_executes_and_the_cells_not_reading_it_restore(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, f"c{i}", f"v{i} = {i}") for i in range(1, 5)]
    run_session(store_dir, [*cells, KILL])
    edited = [*cells[:1], counting_cell(counter, "c2edited", "v2 = 20"), *cells[2:]]
    second = run_session(store_dir, edited, probes={"v2": "v2", "v4": "v4"})
    assert second.probes == {"v2": "20", "v4": "4"}
    assert executions(counter) == ["c1", "c2", "c3", "c4", "c2edited"], "c3 and c4 do not read v2"


def test_failed_cell_fixed_resumes_at_the_failed_cell(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "load", "data = list(range(10))"),
             counting_cell(counter, "bad", "result = sum(data) / 0")]
    first = run_session(store_dir, cells)
    assert first.returncode == 0 and not first.cells[-1]["success"]
    fixed = [cells[0], counting_cell(counter, "fixed", "result = sum(data) / 5")]
    second = run_session(store_dir, fixed, probes={"result": "result"})
    assert second.probes == {"result": "9.0"}
    assert executions(counter) == ["load", "bad", "fixed"]


def test_durable_resume_restores_namespace_without_running_cells(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "a", "a = 'alpha'"), counting_cell(counter, "b", "b = a.upper()")]
    run_session(store_dir, [*cells, KILL])
    second = run_session(store_dir, ["%durable resume", "c = b + '!'", cells[0]], probes={"c": "c", "b": "b"})
    assert second.probes == {"c": "'ALPHA!'", "b": "'ALPHA'"}
    assert "restored 2 step(s)" in second.stdout
    # a scratch cell after the resume changes nothing the recorded cells read: they restore again
    assert executions(counter) == ["a", "b"]
    assert second.stdout.count("nbdurable: restored from step") == 1


def test_durable_resume_then_run_all_replays_outputs(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "a", "print('hello from a')"), counting_cell(counter, "b", "b = 2")]
    run_session(store_dir, [*cells, KILL])
    second = run_session(store_dir, ["%durable resume", *cells, "print('after', b)"])
    assert executions(counter) == ["a", "b"]
    assert second.stdout.count("nbdurable: restored from step") == 2
    assert "hello from a" in second.stdout and "after 2" in second.stdout


def test_durable_new_restores_nothing(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "a", "a = 1")]
    run_session(store_dir, [*cells, KILL])
    run_session(store_dir, ["%durable new", *cells])
    assert executions(counter) == ["a", "a"]


def test_control_cells_do_not_shift_steps(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "a", "a = 1"), counting_cell(counter, "b", "b = 2")]
    run_session(store_dir, [cells[0], "%durable status", cells[1], KILL])
    second = run_session(store_dir, cells, probes={"b": "b"})
    assert executions(counter) == ["a", "b"]
    assert second.probes == {"b": "2"}


def test_always_and_named_cells(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [
        "%%durable --always\n" + counting_cell(counter, "always", "conn_like = 'reopened'"),
        "%%durable --name load\n" + counting_cell(counter, "named", "data = [1, 2]"),
        "%%durable --no-state\n" + counting_cell(counter, "plot", "print('drawn')"),
    ]
    run_session(store_dir, [*cells, KILL])
    second = run_session(store_dir, cells, probes={"data": "data", "conn": "conn_like"})
    assert second.probes == {"data": "[1, 2]", "conn": "'reopened'"}
    assert executions(counter) == ["always", "named", "plot", "always"]


def test_magics_and_shell_commands_keep_working(store_dir: Path) -> None:
    cells = ["%time z = 5", "lines = !echo one; echo two", "%%time\nq = z * 2", "files_n = len(lines)"]
    first = run_session(store_dir, [*cells, KILL])
    assert all(c["success"] for c in first.cells), first.cells
    second = run_session(store_dir, cells, probes={"z": "z", "q": "q", "n": "files_n"})
    assert second.probes == {"z": "5", "q": "10", "n": "2"}
    assert second.stdout.count("nbdurable: restored from step") == 4


def test_interrupt_records_an_interrupted_step(store_dir: Path) -> None:
    cells = ["a = 1", "raise KeyboardInterrupt()"]
    run_session(store_dir, cells)
    second = run_session(store_dir, ["a = 1", "b = a + 1"], probes={"b": "b"})
    assert second.probes == {"b": "2"}
    assert second.stdout.count("nbdurable: restored from step") == 1


def test_reload_ext_keeps_working(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "a", "a = 1"), "%reload_ext nbdurable", counting_cell(counter, "b", "b = a + 1")]
    probes = {"hooks": "len([f for f in get_ipython().events.callbacks['post_run_cell'] if 'Durable' in repr(f)])",
              "transformers": "sum('Durable' in repr(t) for t in get_ipython().input_transformers_cleanup)"}
    session = run_session(store_dir, cells, probes=probes)
    assert all(c["success"] for c in session.cells), session.cells
    assert session.probes == {"hooks": "1", "transformers": "1"}


def test_unnamed_session_is_not_resumed_automatically(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "a", "a = 1")]
    run_session(store_dir, [*cells, KILL], notebook=None)
    run_session(store_dir, cells, notebook=None)
    assert executions(counter) == ["a", "a"]
