"""`%durable checkout`: a run's state after one of its cells, in real IPython shells across processes; what runs
next is a new run forked from it (journal record and catalog)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from nbdurable.runtime.checkout import load_state
from nbdurable.store import Store
from nbdurable.store.catalog.schema import SCHEMA_VERSION

from conftest import run_session
from helpers import counting_cell, executions
from kernels import Kernel


def _runs(store_dir: Path) -> list[str]:
    return Store.open(store_dir).run_ids()


def _head(store_dir: Path, run_id: str) -> dict:
    return Store.open(store_dir).journal_head(run_id) or {}


def test_checkout_restores_a_cells_state_with_aliases_and_removes_later_names(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "c1", "a = [1, 2]\nb = a"),
             counting_cell(counter, "c2", "a.append(3)\nx = 10"),
             counting_cell(counter, "c3", "del b\ny = 5\nx = 11")]
    run_session(store_dir, cells)
    (first,) = _runs(store_dir)
    second = run_session(store_dir, ["scratch = 1", f"%durable checkout {first[:-2]} --cell 2", "z = x + 1"],
                         probes={"a": "a", "alias": "b is a", "x": "x", "z": "z",
                                 "gone": "[n for n in ('y', 'scratch') if n in globals()]"})
    assert second.probes == {"a": "[1, 2, 3]", "alias": "True", "x": "10", "z": "11", "gone": "[]"}
    # a value mutated after a checkout comes back as recorded from the next checkout (no stale cache)
    again = run_session(store_dir, [f"%durable checkout {first} --cell 2", "a.append(4)",
                                    f"%durable checkout {first} --cell 2"], probes={"a": "a", "alias": "b is a"})
    assert again.probes == {"a": "[1, 2, 3]", "alias": "True"}
    assert executions(counter) == ["c1", "c2", "c3"], "a checkout executes nothing"
    assert f"checked out run {first} after cell 2" in second.stdout
    forks = [r for r in _runs(store_dir) if _head(store_dir, r).get("forked_from")]
    assert len(forks) == 2, "a fork per session that ran a cell after its checkout; a checkout alone makes no run"
    fork = forks[0]
    head = _head(store_dir, fork)
    assert (head["forked_from"], head["forked_at_cell"], head["resumed_from"]) == (first, 2, None)
    runs = Store.open(store_dir).catalog().query("SELECT run_id, status, forked_from, forked_at_cell FROM runs")
    row = runs[runs.run_id == fork].iloc[0]
    assert (row.forked_from, int(row.forked_at_cell), row.status) == (first, 2, "completed")
    steps = Store.open(store_dir).catalog().steps(fork)
    top = steps[steps.parent.isna()]
    assert list(top.status) == ["restored", "restored", "completed"], "the checked-out cells, then `z = x + 1`"
    # outside a kernel: the same state as variables
    state = load_state(Store.open(store_dir), first, cell=2)
    assert state["a"] == [1, 2, 3] and state["b"] is state["a"] and "y" not in state


def test_checkout_of_dataframes_and_interpreter_state(store_dir: Path, tmp_path: Path) -> None:
    cells = ["import os\nimport pandas as pd\ndf = pd.DataFrame({'v': range(5)})",
             "os.environ['NBD_CHECKOUT'] = 'one'\nsmall = df[df.v > 1]",
             "df['w'] = 1\nos.environ['NBD_CHECKOUT'] = 'two'\nsmall = None"]
    run_session(store_dir, cells)
    (first,) = _runs(store_dir)
    second = run_session(store_dir, [f"%durable checkout {first} --cell 2"],
                         probes={"cols": "list(df.columns)", "small": "small.v.tolist()",
                                 "env": "os.environ.get('NBD_CHECKOUT')", "pd": "pd.__name__"})
    assert second.probes == {"cols": "['v']", "small": "[2, 3, 4]", "env": "'one'", "pd": "'pandas'"}


def test_unrestorable_values_reexecute_their_cell_with_a_notice(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "n", "n = 3"),
             counting_cell(counter, "gen", "gen = (i * n for i in range(n))"),
             counting_cell(counter, "after", "m = 7")]
    run_session(store_dir, cells)
    (first,) = _runs(store_dir)
    second = run_session(store_dir, [f"%durable checkout {first} --cell 2"],
                         probes={"gen": "list(gen)", "m": "'m' in globals()"})
    assert second.probes == {"gen": "[0, 3, 6]", "m": "False"}
    assert executions(counter) == ["n", "gen", "after", "gen"], "only the cell of the unstored value runs again"
    assert "re-executing step 2" in second.stdout and "1 re-executed" in second.stdout
    (fork,) = [r for r in _runs(store_dir) if _head(store_dir, r).get("forked_from")]
    steps = Store.open(store_dir).catalog().steps(fork)
    assert list(steps.status) == ["restored", "completed"], "the rebuilt cell is recorded as executed in the fork"


def test_checkout_by_step_name_then_run_all_continues_the_fork(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "load", "data = [1, 2, 3]"),
             "%%durable --name scale\n" + counting_cell(counter, "scale", "data = [d * 10 for d in data]"),
             counting_cell(counter, "total", "total = sum(data)")]
    run_session(store_dir, cells)
    (first,) = _runs(store_dir)
    edited = [*cells[:2], counting_cell(counter, "total2", "total = sum(data) + 1")]
    second = run_session(store_dir, [f"%durable checkout {first} --step scale", *edited],
                         probes={"total": "total"})
    assert second.probes == {"total": "61"}
    assert executions(counter) == ["load", "scale", "total", "total2"], "Run All restores the checked-out cells"
    bad = run_session(store_dir, [f"%durable checkout {first} --cell 9", f"%durable checkout {first} --step nope"])
    assert "has 3 cell(s): there is no cell 9" in bad.stdout
    assert "has no cell named 'nope'" in bad.stdout and "its named cells: scale" in bad.stdout


def test_checkout_of_the_sessions_own_run_and_inside_a_cell_with_code(store_dir: Path) -> None:
    session = run_session(store_dir, ["a = 1", "a = 2\nb = 3", "rid = __nbdurable__.run.run_id",
                                      "%durable checkout {rid} --cell 1", "c = a + 10",
                                      "d = 4\n%durable checkout {rid} --cell 1"],
                          probes={"a": "a", "c": "c", "d": "d", "gone": "[n for n in ('b', 'rid') if n in globals()]"})
    assert session.probes == {"a": "1", "c": "11", "d": "4", "gone": "[]"}
    assert "it cannot run inside a cell with code" in session.stdout
    first, fork = _runs(store_dir)
    assert _head(store_dir, fork)["forked_from"] == first
    statuses = Store.open(store_dir).catalog().query("SELECT run_id, status FROM runs ORDER BY run_id")
    assert list(statuses.status) == ["completed", "failed"], "the own run ended at the checkout; the last cell failed"


@pytest.mark.kernel
def test_checkout_in_a_real_kernel_prints_nothing_of_the_cells_and_the_catalog_rebuilds(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {"NBDURABLE_STORE": str(store), "NBDURABLE_NOTEBOOK": str(tmp_path / "k.ipynb")}
    kernel = Kernel(env, tmp_path)
    try:
        for cell in ["%load_ext nbdurable", "import numpy as np\nprint('building')\nbig = np.arange(2_000_000)",
                     "view = big[::2]\nsame = big\nbig[0] = 7", "big = None"]:
            reply, _ = kernel.execute(cell)
            assert reply["status"] == "ok", reply
        first = Store.open(store).run_ids()[-1]
        reply, outputs = kernel.execute(f"%durable checkout {first} --cell 2")
        assert reply["status"] == "ok", reply
        text = "".join(o.get("text", "") for o in outputs)
        assert "checked out run" in text and "building" not in text, "outputs are not replayed"
        reply, outputs = kernel.execute("print(big[:2], view[:2], same is big)")
        assert "[7 1] [7 2] True" in "".join(o.get("text", "") for o in outputs), outputs
    finally:
        kernel.close()
    # a catalog of the previous schema is rebuilt from the journals, lineage included
    catalog = Store.open(store).catalog()
    catalog.ingest()
    con = duckdb.connect(str(catalog.path))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION - 1)])
    con.execute("DELETE FROM runs")  # only a rebuild from the journals brings them back
    con.close()
    runs = catalog.query("SELECT run_id, forked_from, forked_at_cell FROM runs ORDER BY run_id")
    assert list(runs.forked_from.fillna("")) == ["", first] and int(runs.forked_at_cell.iloc[1]) == 2
