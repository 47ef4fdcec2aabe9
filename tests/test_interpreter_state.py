"""State a cell leaves outside its variables, through a real crash and restore (real IPython shells).

Cells set interpreter state (seeds, warnings filters, options, the environment, sys.path with a local
module, the working directory, logger levels, module attributes, state magics); the process is SIGKILLed;
a new process runs the same cells (Run All after a restart): they are restored, not executed, and later
cells see the state exactly as a clean run would.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import Session, run_session
from helpers import KILL


def crash_then_resume(store: Path, cells: list[str], probes: dict[str, str], *, cwd: Path | None = None,
                      extra: list[str] | None = None) -> tuple[Session, Session]:
    clean = run_session(store.parent / "clean-store", [*cells, *(extra or [])], probes=probes, cwd=cwd)
    first = run_session(store, [*cells, KILL], cwd=cwd)
    assert first.killed, first.stdout
    assert all(c["success"] for c in first.cells), first.cells
    second = run_session(store, [*cells, *(extra or [])], probes=probes, cwd=cwd)
    assert second.returncode == 0, second.stdout
    assert all(c["success"] for c in second.cells), second.cells
    return clean, second


def restored(session: Session) -> int:
    return session.stdout.count("nbdurable: restored from step")


def test_seeds_warnings_options_environment_and_recursion_limit(store_dir: Path) -> None:
    cells = [
        "import random, sys, warnings, os\nimport numpy as np, pandas as pd",
        "random.seed(7)\nnp.random.seed(11)",
        "warnings.filterwarnings('ignore', category=DeprecationWarning)",
        "pd.set_option('display.max_rows', 7)\nnp.set_printoptions(precision=2)",
        "os.environ['NBD_TEST_SETTING'] = 'on'\nos.environ.pop('NBD_TEST_UNSET', None)",
        "sys.setrecursionlimit(4321)",
        "first_draw = (random.random(), float(np.random.rand()))",
    ]
    probes = {
        "draws": "(random.random(), float(np.random.rand()))",
        "first": "first_draw",
        "warn": "warnings.filters[0][:1] + (warnings.filters[0][2].__name__,)",
        "rows": "pd.get_option('display.max_rows')",
        "precision": "np.get_printoptions()['precision']",
        "env": "(os.environ.get('NBD_TEST_SETTING'), 'NBD_TEST_UNSET' in os.environ)",
        "limit": "sys.getrecursionlimit()",
    }
    clean, second = crash_then_resume(store_dir, cells, probes)
    assert restored(second) == len(cells)
    assert second.probes == clean.probes
    assert ast.literal_eval(second.probes["warn"]) == ("ignore", "DeprecationWarning")
    assert second.probes["rows"] == "7" and second.probes["limit"] == "4321"


def test_sys_path_local_module_and_working_directory(store_dir: Path, tmp_path: Path) -> None:
    """The issue's own notebook: sys.path extended, a side effect, a local module imported from it. The
    restore applies sys.path before importing the module, so nothing runs twice."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "localmod.py").write_text("VALUE = 42\ndef twice(x):\n    return 2 * x\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("hello")
    cells = [
        "import os, sys\nsys.path.insert(0, os.path.abspath('lib'))",
        "with open('side-effects.log', 'a') as f:\n    f.write('cell 2\\n')",
        "import localmod",
        "os.chdir('data')",
        "text = open('input.txt').read()",
    ]
    probes = {"mod": "(localmod.VALUE, localmod.twice(4))", "cwd": "os.path.basename(os.getcwd())",
              "path": "sys.path[0].endswith('lib')", "text": "text"}
    run_session(store_dir, [*cells, KILL], cwd=tmp_path)
    second = run_session(store_dir, cells, probes=probes, cwd=tmp_path)
    assert all(c["success"] for c in second.cells), second.cells
    assert restored(second) == len(cells)
    assert second.probes == {"mod": "(42, 8)", "cwd": "'data'", "path": "True", "text": "'hello'"}
    assert (tmp_path / "side-effects.log").read_text() == "cell 2\n"  # the side effect happened once


@pytest.mark.slow
def test_a_module_that_does_not_import_runs_its_own_cell_with_an_honest_message(store_dir: Path,
                                                                                   tmp_path: Path) -> None:
    """The module's directory disappeared: that one cell's code runs in its place (and fails, saying where
    the module came from); nothing restored before it runs again."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "gonemod.py").write_text("VALUE = 1\n")
    cells = [
        "import os, sys\nsys.path.insert(0, os.path.abspath('lib'))",
        "with open('side-effects.log', 'a') as f:\n    f.write('cell 2\\n')",
        "import gonemod",
    ]
    run_session(store_dir, [*cells, KILL], cwd=tmp_path)
    (lib / "gonemod.py").rename(tmp_path / "elsewhere.py")
    second = run_session(store_dir, cells, cwd=tmp_path)
    assert [c["success"] for c in second.cells] == [True, True, True, False]  # %load_ext, 2 restored, the import
    # the import read lib/gonemod.py (a file input of its cell): gone, the cell executes and says why
    assert "executing this cell: the file" in second.stdout and "gonemod.py` it read changed" in second.stdout
    assert "No module named 'gonemod'" in second.stdout
    assert (tmp_path / "side-effects.log").read_text() == "cell 2\n"


@pytest.mark.slow
def test_logging_levels_and_handlers(store_dir: Path) -> None:
    cells = [
        "import logging, sys\nlogging.basicConfig(level=logging.INFO, format='%(levelname)s:%(name)s:%(message)s')",
        "logging.getLogger('noisy.lib').setLevel(logging.ERROR)",
    ]
    probes = {"root": "logging.getLogger().level", "noisy": "logging.getLogger('noisy.lib').level",
              "handlers": "[(type(h).__name__, h.formatter._fmt) for h in logging.getLogger().handlers]"}
    clean, second = crash_then_resume(store_dir, cells, probes)
    assert restored(second) == len(cells)
    assert second.probes == clean.probes
    assert second.probes["noisy"] == "40"


@pytest.mark.slow
def test_module_attributes_and_state_magics(store_dir: Path) -> None:
    cells = [
        "import json\njson.nbd_marker = {'set': True}",
        "%alias nbd_echo echo",
    ]
    probes = {"attr": "json.nbd_marker", "alias": "get_ipython().alias_manager.is_alias('nbd_echo')"}
    clean, second = crash_then_resume(store_dir, cells, probes)
    assert restored(second) == len(cells)
    assert second.probes == clean.probes == {"attr": "{'set': True}", "alias": "True"}


@pytest.mark.slow
def test_a_secret_environment_variable_is_never_stored(store_dir: Path) -> None:
    """Setting a secret-named variable makes the change unrestorable: the cell runs again, in place."""
    cells = [
        "import os\nos.environ['SERVICE_API_KEY'] = 'sk-' + 'x' * 8\ncounter = 1",
        "after = os.environ['SERVICE_API_KEY'][:3]",
    ]
    run_session(store_dir, [*cells, KILL])
    journal = b"".join(p.read_bytes() for p in (store_dir / "journals").glob("*.jsonl"))
    assert b"sk-xxxxxxxx" not in journal
    second = run_session(store_dir, cells, probes={"after": "after"})
    assert second.probes["after"] == "'sk-'"
    assert "re-executing this cell" in second.stdout


@pytest.mark.slow
def test_sys_exit_zero_is_a_completed_step_and_its_restore_ends_the_notebook_again(store_dir: Path) -> None:
    """`sys.exit(0)` ends a notebook successfully (papermill's rule): the step is completed, not failed; a
    resume that restores it raises the same SystemExit, so what follows it runs exactly as in a clean run."""
    from helpers import journal_records

    cells = ["a = 1", "import sys\nsys.exit(0)"]
    first = run_session(store_dir, [*cells, KILL])
    assert first.killed
    ends = [r for r in journal_records(store_dir, t="step_end")]
    assert [r["status"] for r in ends] == ["completed", "completed"]
    assert ends[1]["error"]["ename"] == "SystemExit"
    second = run_session(store_dir, cells)
    assert "SystemExit" in (second.cells[-1]["error"] or "") and restored(second) == 2
    restored_ends = [r for r in journal_records(store_dir, t="step_end") if r["status"] == "restored"]
    assert [r.get("error", {}) and r["error"]["ename"] for r in restored_ends] == [None, "SystemExit"]


def test_cells_that_change_an_unstorable_object_run_again_after_its_cell_rebuilds_it(store_dir: Path,
                                                                                      tmp_path: Path) -> None:
    """An object that cannot be pickled (it holds a lock; an ipywidget is the common case) is rebuilt by
    re-executing the cell that made it; a later cell that changed it in place did so on the old object, so it
    runs again too (announced), and the state ends up as in a clean run."""
    counter = tmp_path / "count.txt"
    cells = [
        f"import threading\nCOUNTER = {str(counter)!r}\n"
        "class Box:\n    def __init__(self):\n        self.lock, self.items = threading.Lock(), []\nbox = Box()",
        "box.items.append('a')\nopen(COUNTER, 'a').write('2\\n')",
        "plain = 41 + 1\nopen(COUNTER, 'a').write('3\\n')",
    ]
    run_session(store_dir, [*cells, KILL])
    second = run_session(store_dir, cells, probes={"items": "box.items", "plain": "plain"})
    assert second.probes == {"items": "['a']", "plain": "42"}
    assert "executing this cell: it reads `box`, which could not be stored and was rebuilt" in second.stdout
    assert counter.read_text().split() == ["2", "3", "2"]  # cell 3 (reads nothing rebuilt) restored
