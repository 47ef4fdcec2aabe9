"""Restore by dataflow (``runtime/dataflow.py``), in real IPython shells across processes, with a per-cell
execution counter: a cell is restored when a recorded execution ran the same code on the same inputs,
whatever its position; edited cells and the cells reading what they change execute, transitively."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_session
from helpers import KILL, counting_cell, executions, journal_records

# Cell 3 assigns b; 5 and 7 read it, 8 reads what they computed; 4 reads a, 6 only defines a function.
BODIES = ["a = [1, 2, 3]", "x0 = 1", "b = 5", "d = len(a)", "c = b * 2", "def f(x):\n    return x + 1",
          "g = f(b)", "h = c + g + d"]


def notebook(counter: Path, bodies: list[str] = BODIES, labels: list[str] | None = None) -> list[str]:
    labels = labels or [f"c{i + 1}" for i in range(len(bodies))]
    return [counting_cell(counter, label, body) for label, body in zip(labels, bodies, strict=True)]


def since(counter: Path, before: int) -> list[str]:
    return executions(counter)[before:]


def test_scratch_cells_after_resume_keep_everything_restored(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = notebook(counter)
    run_session(store_dir, [*cells, KILL])
    second = run_session(store_dir, ["%durable resume", "a[:3]", "len(dir())", "scratch = a[0]", *cells],
                         probes={"h": "h", "scratch": "scratch"})
    assert since(counter, 8) == [], "a completed cell executed again"
    assert second.probes == {"h": "19", "scratch": "1"}
    assert second.stdout.count("nbdurable: restored from step") == 8


def test_edit_executes_exactly_the_cells_that_read_what_changed(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    run_session(store_dir, notebook(counter))  # a session that ends normally (a kernel restart)
    edited = [*BODIES[:2], "b = 6", *BODIES[3:]]
    labels = [f"c{i + 1}" for i in range(8)]
    labels[2] = "c3edited"
    second = run_session(store_dir, notebook(counter, edited, labels), probes={"h": "h", "c": "c"})
    assert since(counter, 8) == ["c3edited", "c5", "c7", "c8"]
    assert second.probes == {"h": "22", "c": "12"}


def test_edit_that_keeps_the_value_restores_its_readers(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    run_session(store_dir, notebook(counter))
    edited = [*BODIES[:2], "b = 5  # same value, other code", *BODIES[3:]]
    labels = [f"c{i + 1}" for i in range(8)]
    labels[2] = "c3edited"
    run_session(store_dir, notebook(counter, edited, labels))
    assert since(counter, 8) == ["c3edited"]


def test_a_function_edited_executes_every_cell_calling_it(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    bodies = ["def scale(v):\n    return v * 2", "p = scale(1)", "q = 10", "r = scale(q)", "s = p + r"]
    run_session(store_dir, notebook(counter, bodies))
    edited = ["def scale(v):\n    return v * 3", *bodies[1:]]
    second = run_session(store_dir, notebook(counter, edited, ["f2", "c2", "c3", "c4", "c5"]), probes={"s": "s"})
    assert since(counter, 5) == ["f2", "c2", "c4", "c5"]
    assert second.probes == {"s": "33"}


def test_a_global_mutated_through_a_function(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    bodies = ["data = []", "def add(v):\n    data.append(v)", "n = 3", "add(n)", "total = sum(data)",
              "other = 7"]
    run_session(store_dir, notebook(counter, bodies))
    edited = [*bodies[:2], "n = 4", *bodies[3:]]
    second = run_session(store_dir, notebook(counter, edited, ["c1", "c2", "n4", "c4", "c5", "c6"]),
                         probes={"total": "total", "data": "data"})
    # add(n) reads n (changed) and mutates data through add: total reads data, so it executes too
    assert since(counter, 6) == ["n4", "c4", "c5"]
    assert second.probes == {"total": "4", "data": "[4]"}


def test_a_cell_reading_a_file_that_changed_executes(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    data = tmp_path / "data.csv"
    data.write_text("x\n1\n2\n")
    bodies = ["import pandas as pd", f"df = pd.read_csv({str(data)!r})", "total = int(df.x.sum())",
              f"raw = open({str(data)!r}).read()", "unrelated = 5"]
    run_session(store_dir, notebook(counter, bodies))
    run_session(store_dir, notebook(counter, bodies))
    assert since(counter, 5) == [], "nothing changed: everything restores"
    data.write_text("x\n1\n2\n3\n")
    second = run_session(store_dir, notebook(counter, bodies), probes={"total": "total"})
    assert since(counter, 5) == ["c2", "c3", "c4"]
    assert second.probes == {"total": "6"}
    start = journal_records(store_dir, "step_start")[-4]
    assert "inputs" in start


def test_insert_delete_and_move_cells(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = notebook(counter)
    run_session(store_dir, [*cells, KILL])
    inserted = counting_cell(counter, "new", "extra = a[1] * 100")
    # c2 (x0) deleted, a new cell inserted after c4, c6 (def f) moved first
    reordered = [cells[5], cells[0], cells[2], cells[3], inserted, cells[4], cells[6], cells[7]]
    second = run_session(store_dir, reordered, probes={"h": "h", "extra": "extra", "x0": "'x0' in dir()"})
    assert since(counter, 8) == ["new"]
    assert second.probes == {"h": "19", "extra": "200", "x0": "False"}


def test_out_of_order_execution_then_in_order(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = notebook(counter)
    run_session(store_dir, [cells[0], cells[2], cells[5], cells[6], cells[1], cells[4], cells[3], cells[7], KILL])
    second = run_session(store_dir, cells, probes={"h": "h"})
    assert since(counter, 8) == []
    assert second.probes == {"h": "19"}


def test_the_same_cell_run_twice_in_a_session_executes(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = notebook(counter)
    run_session(store_dir, [*cells, KILL])
    run_session(store_dir, [cells[0], cells[0], cells[1]])
    assert since(counter, 8) == ["c1"], "restored once, executed when run again"


def test_a_repeated_cell_restores_each_of_its_executions(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    bump = counting_cell(counter, "bump", "k += 1")
    cells = [counting_cell(counter, "init", "k = 0"), bump, bump, counting_cell(counter, "show", "m = k * 10")]
    run_session(store_dir, [*cells, KILL])
    second = run_session(store_dir, cells, probes={"m": "m"})
    assert since(counter, 4) == []
    assert second.probes == {"m": "20"}


def test_resume_with_a_secret_literal_restores_all_else_and_says_so(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    bodies = ["x = 1", "API_TOKEN = 'sk-live-123'", "y = x + 1", "z = len(API_TOKEN)"]
    cells = notebook(counter, bodies)
    run_session(store_dir, [*cells, KILL])
    second = run_session(store_dir, ["%durable resume"], probes={"x": "x", "y": "y", "z": "z",
                                                                 "token": "'API_TOKEN' in dir()"})
    assert second.probes == {"x": "1", "y": "2", "z": "11", "token": "False"}
    assert "Not restored:" in second.stdout and "secret literal" in second.stdout
    third = run_session(store_dir, ["%durable resume", *cells], probes={"z": "z", "token": "API_TOKEN"})
    assert since(counter, 4) == ["c2"], "only the secret's cell executes, from the notebook's own source"
    assert third.probes == {"z": "11", "token": "'sk-live-123'"}
    assert "sk-live-123" not in "".join(p.read_text() for p in (store_dir / "journals").glob("*.jsonl"))


def test_a_cell_with_dynamic_reads_always_executes(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    bodies = ["a = 2", "b = eval('a * 3')", "c = 1"]
    cells = notebook(counter, bodies)
    run_session(store_dir, [*cells, KILL])
    second = run_session(store_dir, cells, probes={"b": "b"})
    assert since(counter, 3) == ["c2"]
    assert second.probes == {"b": "6"}


def test_plan_says_what_run_all_then_does(store_dir: Path, tmp_path: Path) -> None:
    import nbformat

    counter = tmp_path / "count.txt"
    cells = notebook(counter)
    run_session(store_dir, [*cells, KILL])
    edited = [*BODIES[:2], "b = 6", *BODIES[3:]]
    labels = [f"c{i + 1}" for i in range(8)]
    labels[2] = "c3edited"
    new_cells = notebook(counter, edited, labels)
    path = tmp_path / "nb.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title"),
                                         *[nbformat.v4.new_code_cell(c) for c in new_cells]])
    nbformat.write(nb, path)
    session = run_session(store_dir, [f"%durable plan {path}", *new_cells])
    plan_lines = [line for line in session.stdout.splitlines() if line.startswith("cell ")]
    actions = {int(line.split()[1]) - 1: line.split()[2] for line in plan_lines}
    executed = set(since(counter, 8))
    for index in range(1, len(new_cells) + 1):  # the markdown cell is index 0
        label = labels[index - 1]
        assert actions[index] == ("execute" if label in executed else "restore"), (label, plan_lines)
    assert "it reads `b`, which changed" in session.stdout


def _statuses(path: Path) -> list[str]:
    import nbformat

    return [c.metadata["nbdurable"]["status"] for c in nbformat.read(path, as_version=4).cells
            if c.cell_type == "code"]


@pytest.mark.slow
def test_cross_run_reuse_with_parameters_headless(tmp_path: Path) -> None:
    """A parameter sweep shares the cells that do not read the parameter; each restored step names its
    origin; `plan` says beforehand what the run then does. A cell that writes a file is reused only while the
    file is as it left it (a clean run would write it again): the first run's `log` cell appended to a file
    that a later cell appended to too, so it executes; `report` rewrites its own file, left as it was."""
    import nbformat

    from helpers import run_cli

    params = nbformat.v4.new_code_cell("n = 1")
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[
        params,
        nbformat.v4.new_code_cell("base = list(range(5))"),
        nbformat.v4.new_code_cell("scaled = [v * n for v in base]"),
        nbformat.v4.new_code_cell("mean = sum(base) / len(base)"),
        nbformat.v4.new_code_cell("with open('log.txt', 'a') as f:\n    f.write(f'{mean}\\n')"),
        nbformat.v4.new_code_cell("with open('report.txt', 'w') as f:\n    f.write(str(len(base)))"),
        nbformat.v4.new_code_cell("print(sum(scaled), mean)\nwith open('log.txt', 'a') as f:\n    f.write('end\\n')"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = tmp_path / "sweep.ipynb"
    nbformat.write(nb, path)
    store = tmp_path / "store"
    first = run_cli("run", str(path), str(tmp_path / "o1.ipynb"), "-p", "n", "2", "--store", str(store),
                    "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.output
    plan = run_cli("plan", str(path), "-p", "n", "3", "--reuse", "--store", str(store), "--json", cwd=tmp_path)
    actions = [json.loads(line)["action"] for line in plan.stdout.splitlines() if line.startswith("{")]
    second = run_cli("run", str(path), str(tmp_path / "o2.ipynb"), "-p", "n", "3", "--reuse", "--store",
                     str(store), "--no-progress", cwd=tmp_path)
    assert second.returncode == 0, second.output
    statuses = _statuses(tmp_path / "o2.ipynb")
    # parameters cell (unchanged), injected parameters (new), base, scaled (reads n), mean, log (its file
    # changed since), report (its file as it left it), print (reads scaled)
    assert statuses == ["restored", "executed", "restored", "executed", "restored", "executed", "restored",
                        "executed"], second.output
    out = nbformat.read(tmp_path / "o2.ipynb", as_version=4)
    assert "30 2.0" in "".join(o.get("text", "") for o in out.cells[-1].outputs)
    assert out.cells[2].metadata["nbdurable"]["restored_from"]["run_id"] in first.output
    assert (tmp_path / "log.txt").read_text() == "2.0\nend\n2.0\nend\n"
    # the plan said what the run then did, but for the file the run appended to meanwhile
    assert actions[:4] == ["restore", "execute", "restore", "execute"] and actions[6] == "restore", actions


def test_a_restored_value_that_pickles_differently_is_not_taken_for_changed(store_dir: Path, tmp_path: Path) -> None:
    """A set of strings pickles in another order in another process (hash randomization): read by a cell
    that executes, the restored set must not count as changed, so the cells reading it stay restored."""
    counter = tmp_path / "count.txt"
    bodies = ["tags = {f't{i}' for i in range(200)}", "x = 1", "first = sorted(tags)[0] + str(x)",
              "size = len(tags)"]
    run_session(store_dir, notebook(counter, bodies), env={"PYTHONHASHSEED": "1"})
    edited = [bodies[0], "x = 2", *bodies[2:]]
    second = run_session(store_dir, notebook(counter, edited, ["c1", "x2", "c3", "c4"]),
                         env={"PYTHONHASHSEED": "2"}, probes={"first": "first", "size": "size"})
    assert since(counter, 4) == ["x2", "c3"]
    assert second.probes == {"first": "'t02'", "size": "200"}
    ends = journal_records(store_dir, "step_end")
    executed = [r for r in ends[-4:] if r["status"] == "completed"]
    assert len(executed) == 2 and not any(ref["name"] == "tags" for r in executed for ref in r["variables"])


@pytest.mark.slow
def test_a_restored_early_exit_shows_its_outputs_once(tmp_path: Path) -> None:
    import nbformat

    from helpers import run_cli

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("print('nothing new: stopping here')\nimport sys\nsys.exit(0)"),
        nbformat.v4.new_code_cell("y = 2"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = tmp_path / "exit.ipynb"
    nbformat.write(nb, path)
    store = tmp_path / "store"
    assert run_cli("run", str(path), str(tmp_path / "o1.ipynb"), "--store", str(store), "--no-progress").returncode == 0
    nb.cells[0].source = "x = 2"
    nbformat.write(nb, path)
    again = run_cli("run", str(path), str(tmp_path / "o2.ipynb"), "--reuse", "--store", str(store), "--no-progress")
    assert again.returncode == 0, again.output
    first, second = (nbformat.read(tmp_path / name, as_version=4).cells[1] for name in ("o1.ipynb", "o2.ipynb"))
    assert second.metadata["nbdurable"]["status"] == "restored"
    assert [o.output_type for o in second.outputs] == [o.output_type for o in first.outputs]
