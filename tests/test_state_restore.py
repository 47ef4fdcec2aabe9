"""Every kind of state a cell can leave, checked after a real restore in a new process.

Each test runs cells in one IPython process that is then killed with SIGKILL (or ends), and runs
them again ("Run All" after a restart) in a new process: completed cells must be restored, not
executed, and the namespace must equal what the cells produced.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Session, run_session
from helpers import KILL, counting_cell, executions, variable_refs


def crash_then_resume(store: Path, cells: list[str], probes: dict[str, str], *,
                      extra: list[str] | None = None) -> Session:
    first = run_session(store, [*cells, KILL])
    assert first.killed, first.stdout
    assert all(c["success"] for c in first.cells), first.cells
    second = run_session(store, [*cells, *(extra or [])], probes=probes)
    assert second.returncode == 0, second.stdout
    return second


def restored_count(session: Session) -> int:
    return session.stdout.count("nbdurable: restored from step")


def test_scalars_strings_and_containers(store_dir: Path) -> None:
    cells = ["a = 41 + 1", "s = 'héllo'", "d = {'k': [1, 2, (3, 4)], 'z': {5}}", "t = (a, s)"]
    probes = {"a": "a", "s": "s", "d": "d", "t": "t"}
    second = crash_then_resume(store_dir, cells, probes)
    assert second.probes == {"a": "42", "s": "'héllo'", "d": "{'k': [1, 2, (3, 4)], 'z': {5}}", "t": "(42, 'héllo')"}
    assert restored_count(second) == 4


def test_ndarray_and_dataframe(store_dir: Path) -> None:
    cells = [
        "import numpy as np, pandas as pd",
        "arr = np.arange(200_000, dtype='float64').reshape(400, 500)",
        "df = pd.DataFrame({'x': range(5000), 'y': [str(i) for i in range(5000)]}).set_index('x')",
    ]
    probes = {"arr": "(arr.shape, float(arr.sum()), arr.flags.writeable)",
              "df": "(df.shape, df.index.name, df['y'].iloc[4999])", "np": "np.__name__"}
    second = crash_then_resume(store_dir, cells, probes)
    assert second.probes["arr"] == f"((400, 500), {float(sum(range(200_000)))}, True)"
    assert second.probes["df"] == "((5000, 1), 'x', '4999')"
    assert second.probes["np"] == "'numpy'"
    assert restored_count(second) == 3


def test_functions_lambdas_classes_and_instances(store_dir: Path) -> None:
    cells = [
        "factor = 3\ndef scale(x):\n    return x * factor",
        "double = lambda x: x * 2",
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
        "    def norm1(self):\n        return abs(self.x) + abs(self.y)",
        "p = Point(3, -4)",
    ]
    probes = {"scale": "scale(5)", "double": "double(21)", "p": "p.norm1()", "isinstance": "isinstance(p, Point)",
              "factor_live": "(globals().__setitem__('factor', 10), scale(5))[1]"}
    second = crash_then_resume(store_dir, cells, probes)
    assert second.probes["scale"] == "15"
    assert second.probes["double"] == "42"
    assert second.probes["p"] == "7"
    assert second.probes["isinstance"] == "True"
    assert second.probes["factor_live"] == "50", "a restored function must read the live namespace"


def test_module_imports(store_dir: Path) -> None:
    cells = ["import numpy as np", "from os import path", "import json, collections.abc"]
    probes = {"np": "np.__name__", "path": "path.join('a', 'b')", "json": "json.dumps([1])",
              "abc": "collections.abc.Mapping.__name__"}
    second = crash_then_resume(store_dir, cells, probes)
    assert second.probes == {"np": "'numpy'", "path": "'a/b'", "json": "'[1]'", "abc": "'Mapping'"}


def test_del_is_restored_as_deleted(store_dir: Path) -> None:
    cells = ["x = 1\ny = 2", "del x"]
    second = crash_then_resume(store_dir, cells, {"x": "'x' in dir()", "y": "y"})
    assert second.probes == {"x": "False", "y": "2"}


def test_aliasing_survives_restore(store_dir: Path) -> None:
    cells = ["a = [1, 2]", "b = a", "c = [1, 2]", "a.append(3)", "import numpy as np\nw = np.zeros(2)\nbest = w"]
    probes = {"alias": "b is a", "not_alias": "c is a", "b": "b", "c": "c", "same_cell": "best is w"}
    second = crash_then_resume(store_dir, cells, probes, extra=["a.append(4)"])
    assert second.probes == {"alias": "True", "not_alias": "False", "b": "[1, 2, 3, 4]", "c": "[1, 2]",
                             "same_cell": "True"}


def test_in_place_mutations(store_dir: Path) -> None:
    cells = [
        "import numpy as np\nitems = []\ntable = {'n': 0}\narr = np.zeros(10)",
        "items.append('by method')",
        "table['n'] += 5",
        "arr[3] = 7.0",
        "def record(v):\n    items.append(v)\n    global total\n    total = len(items)",
        "record('by function')",
    ]
    probes = {"items": "items", "table": "table", "arr": "float(arr[3])", "total": "total"}
    second = crash_then_resume(store_dir, cells, probes)
    assert second.probes == {"items": "['by method', 'by function']", "table": "{'n': 5}", "arr": "7.0", "total": "2"}


def test_unpicklables_are_rebuilt_by_reexecution(store_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    cells = [
        f"import sqlite3\nconn = sqlite3.connect({str(db)!r})\nconn.execute('create table if not exists t(x)')",
        "gen = (i * i for i in range(5))",
        "n = 7",
    ]
    probes = {"conn": "conn.execute('select 1').fetchone()", "gen": "list(gen)", "n": "n"}
    second = crash_then_resume(store_dir, cells, probes)
    assert second.probes == {"conn": "(1,)", "gen": "[0, 1, 4, 9, 16]", "n": "7"}
    assert second.stdout.count("re-executing this cell") == 2
    assert restored_count(second) == 1


def test_secrets_are_never_written(store_dir: Path) -> None:
    secret = "sk-live-1234567890-very-secret"
    cells = [
        "import os\nOPENAI_API_KEY = os.environ['SERVICE_CREDENTIAL']",
        "db_password = OPENAI_API_KEY[::-1]",
        "%durable exclude mine",
        "mine = 'x' + 'hidden-value'",
        "n_chars = len(OPENAI_API_KEY)",
    ]
    env = {"SERVICE_CREDENTIAL": secret}
    first = run_session(store_dir, [*cells, KILL], env=env)
    assert first.killed
    second = run_session(store_dir, cells, env=env,
                         probes={"key": "OPENAI_API_KEY", "pw": "db_password[::-1]", "mine": "mine", "n": "n_chars"})
    assert second.probes == {"key": repr(secret), "pw": repr(secret), "mine": "'xhidden-value'", "n": str(len(secret))}
    assert second.stdout.count("re-executing this cell") == 3
    files = [p for p in store_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for needle in (secret, secret[::-1], "xhidden-value"):
            assert needle.encode() not in data, (needle, path)


def test_an_object_whose_pickle_does_not_load_back_is_rebuilt_by_its_cell(store_dir: Path, tmp_path: Path) -> None:
    """Some objects pickle without complaint and fail to unpickle (bokeh figures): the round trip made when
    it is stored finds it, so the variable is recorded as not stored with the real reason; on resume its
    cell runs again (with a notice naming it) and `%durable resume` restores everything else."""
    counter = tmp_path / "count.txt"
    cells = [
        counting_cell(counter, "make", "class Figure:\n    def __init__(self):\n        self.title = 'sales'\n"
                      "    def __reduce__(self):\n        return (Figure._broken, ())\n"
                      "    @staticmethod\n    def _broken():\n"
                      "        raise AttributeError(\"'PropertyValueList' object has no attribute '_owners'\")\n"
                      "fig = Figure()"),
        counting_cell(counter, "other", "total = 41 + 1"),
    ]
    first = run_session(store_dir, [*cells, KILL])
    assert first.killed
    refs = variable_refs(store_dir)
    assert refs["fig"]["format"] == "unrestorable" and "_owners" in refs["fig"]["reason"]
    resumed = run_session(store_dir, ["%durable resume"], probes={"title": "fig.title", "total": "total"})
    assert resumed.probes == {"title": "'sales'", "total": "42"}, resumed.stdout
    again = run_session(store_dir, cells, probes={"title": "fig.title"})
    assert again.probes == {"title": "'sales'"}
    assert "variable `fig`" in again.stdout and "does not load back" in again.stdout
    assert executions(counter) == ["make", "other", "make", "make"]  # resume and Run All rebuild it; `other` never


def test_the_tracker_finds_a_variables_aliases_by_object_through_every_change_of_its_bindings() -> None:
    """Another variable recorded for the same object is found by its id (an index kept with the bindings,
    not a pass over every variable): aliases share their instance label, a rebound or deleted variable
    leaves the index, and the index never names a variable whose binding is another object."""
    from nbdurable.capture.names import analyze_code
    from nbdurable.capture.namespace import NamespaceTracker

    ns: dict = {}
    tracker = NamespaceTracker(ns)

    def cell(code: str) -> dict[str, str]:
        names = analyze_code(code)
        exec(code, ns)
        changes = tracker.compute_delta(names)
        tracker.accept(changes)
        return {c.name: c.instance for c in changes if c.op == "set"}

    first = cell("a = [1, 2]\nothers = [cell for cell in range(3)]")
    assert cell("b = a") == {"b": first["a"]}, "an alias of a recorded object takes its instance"
    cell("a = [3]")
    c = cell("c = b")
    assert c == {"c": first["a"]}, "b still holds the first list: c is its alias, a is no longer"
    cell("del b")
    assert cell("d = c") == {"d": first["a"]}
    tracker.forget("c")
    tracker.forget("d")
    assert cell("e = others")["e"] == first["others"]
    by_object = tracker.bindings.by_object
    for name, binding in tracker.bindings.items():
        assert name in by_object[binding.obj_id]
    assert sorted(n for names in by_object.values() for n in names) == sorted(tracker.bindings)
    tracker.reset()
    assert by_object == {} and cell("f = a")["f"] != first["a"]
