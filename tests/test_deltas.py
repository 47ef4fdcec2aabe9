"""Sub-object deltas (``runtime/deltas.py``): a changed big array or pickled object stores only the pieces
that changed, and comes back whole after a crash and a resume, in a new process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from nbdurable.errors import ChangedDuringWriteError
from nbdurable.runtime import deltas
from nbdurable.serialization import serialize
from nbdurable.store import Store
from nbdurable.store.maintenance import check_store, collect_garbage

from conftest import run_session
from helpers import KILL, counting_cell, executions, journal_records

MiB = 2**20
# Big payloads commit in the background: the kill must come after the change is durable.
DURABLE_KILL = f"from nbdurable.runtime.session import active_session\nactive_session().wait_durable()\n{KILL}"


def stored_bytes(store: Path) -> int:
    return sum(f.stat().st_size for f in (store / "objects").rglob("*") if f.is_file())


def refs_named(store: Path, name: str) -> list[dict]:
    return [ref for record in journal_records(store, "step_end") for ref in record["variables"]
            if ref.get("name") == name and ref.get("op") == "set"]


def test_a_slice_change_writes_only_the_pieces_it_touched(store_dir: Path) -> None:
    create = "import numpy as np\na = np.arange(16 * 2**20 // 8, dtype='float64')"  # 16 MiB: 4 pieces
    first = run_session(store_dir, [create])
    assert first.returncode == 0, first.stdout
    whole = stored_bytes(store_dir)
    assert whole >= 16 * MiB
    change = "a[100:200] = -1.0"  # inside the first piece
    cells = [create, change]
    crashed = run_session(store_dir, [*cells, DURABLE_KILL])
    assert crashed.killed, crashed.stdout
    delta_bytes = stored_bytes(store_dir) - whole
    assert delta_bytes <= deltas.PIECE + 64 * 1024, delta_bytes  # one piece and a head, not 16 MiB
    (ref,) = [r for r in refs_named(store_dir, "a") if r.get("delta")]
    assert [[i for i, _ in places] for _, _, places in ref["delta"]["buffers"]] == [[0]]  # piece 0 only
    probes = {"a": "(float(a[:100].sum()), float(a[100:200].sum()), float(a[200:].sum()), a.flags.writeable)"}
    second = run_session(store_dir, cells, probes=probes)
    expected = np.arange(16 * MiB // 8, dtype="float64")
    expected[100:200] = -1.0
    assert second.probes["a"] == repr((float(expected[:100].sum()), -100.0, float(expected[200:].sum()), True))
    assert second.stdout.count("nbdurable: restored from step") == 2


def test_an_estimator_with_two_scalars_changed_writes_a_few_bytes(store_dir: Path) -> None:
    cells = [
        "import numpy as np\nclass Model:\n    pass\n"
        "m = Model(); m.coef_ = np.random.default_rng(0).random(8 * 2**20 // 8); m.alpha = 1.0; m.n_iter_ = 3",
    ]
    first = run_session(store_dir, cells)
    assert first.returncode == 0, first.stdout
    whole = stored_bytes(store_dir)
    cells.append("m.alpha = 0.5\nm.n_iter_ = 7")
    crashed = run_session(store_dir, [*cells, DURABLE_KILL])
    assert crashed.killed, crashed.stdout
    assert stored_bytes(store_dir) - whole < 64 * 1024
    probes = {"m": "(m.alpha, m.n_iter_, float(m.coef_.sum()) == float(np.random.default_rng(0).random(2**20).sum()))"}
    second = run_session(store_dir, cells, probes=probes)
    assert second.probes["m"] == "(0.5, 7, True)"


def test_a_container_member_changed_in_place_stores_that_member_only(store_dir: Path) -> None:
    cells = ["import numpy as np\nd = {k: np.full(2**20, i, dtype='float64') for i, k in enumerate('abcd')}",  # 32 MiB
             "d['c'][:10] = 99.0"]
    first = run_session(store_dir, cells[:1])
    assert first.returncode == 0, first.stdout
    whole = stored_bytes(store_dir)
    crashed = run_session(store_dir, [*cells, DURABLE_KILL])
    assert crashed.killed, crashed.stdout
    assert stored_bytes(store_dir) - whole <= deltas.PIECE + 64 * 1024
    second = run_session(store_dir, cells, probes={"d": "[float(v.sum()) for v in d.values()]"})
    assert second.probes["d"] == repr([0.0, 2.0**20, 2.0 * (2**20 - 10) + 990.0, 3.0 * 2**20])


def test_after_a_resume_the_next_change_is_a_delta_of_the_restored_base(store_dir: Path) -> None:
    cells = ["import numpy as np\na = np.zeros(12 * 2**20 // 8)"]
    crashed = run_session(store_dir, [*cells, DURABLE_KILL])
    assert crashed.killed, crashed.stdout
    before = stored_bytes(store_dir)
    resumed = run_session(store_dir, [*cells, "a[-5:] = 7.0"], probes={"a": "float(a.sum())"})
    assert resumed.probes["a"] == "35.0"
    assert stored_bytes(store_dir) - before <= deltas.PIECE + 64 * 1024
    assert [r for r in refs_named(store_dir, "a") if r.get("delta")]


def test_check_and_gc_know_a_deltas_files(store_dir: Path) -> None:
    cells = ["import numpy as np\na = np.ones(8 * 2**20 // 8)", "a[:3] = 0.0"]
    session = run_session(store_dir, cells)
    assert session.returncode == 0, session.stdout
    store = Store.open(store_dir, create=False)
    report = check_store(store)
    assert not report.damage, report.damage
    (ref,) = [r for r in refs_named(store_dir, "a") if r.get("delta")]
    base, patch = ref["delta"]["base"]["object"], ref["delta"]["patch"]["object"]
    collect_garbage(store, keep_last=1, min_age=0)
    assert store.has_object(base) and store.has_object(patch)
    os.unlink(store.object_path(patch))
    damage = check_store(store).damage
    assert any(patch in what and "patch of its delta" in what for what, _ in damage), damage


def test_a_change_after_the_cell_ended_is_never_stored_as_a_delta(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    a = np.zeros(8 * MiB // 8)
    assert deltas.write(store, "a", serialize(a)) is not None
    a[0] = 1.0
    changed = serialize(a)
    a[1] = 1.0  # after the fingerprint: what would be written is not what the key names
    with pytest.raises(ChangedDuringWriteError):
        deltas.write(store, "a", changed)


def test_a_damaged_delta_runs_its_cell_instead_and_heals(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = ["import numpy as np\na = np.zeros(8 * 2**20 // 8)",
             counting_cell(counter, "change", "a[7] = 3.0")]
    crashed = run_session(store_dir, [*cells, DURABLE_KILL])
    assert crashed.killed, crashed.stdout
    (ref,) = [r for r in refs_named(store_dir, "a") if r.get("delta")]
    patch = Store.open(store_dir, create=False).object_path(ref["delta"]["patch"]["object"])
    data = bytearray(patch.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a changed piece: authentication fails, nothing of it is used
    patch.write_bytes(bytes(data))
    resumed = run_session(store_dir, cells, probes={"a": "(float(a.sum()), float(a[7]))"})
    assert resumed.probes["a"] == "(3.0, 3.0)", resumed.stdout
    assert "fails authentication" in resumed.stdout and "variable `a`" in resumed.stdout
    again = run_session(store_dir, cells, probes={"a": "float(a.sum())"})
    assert again.probes["a"] == "3.0"
    assert executions(counter) == ["change", "change"]  # the damaged delta's cell ran once more, then healed


# ------------------------------------------------------------------------------ DataFrames by column

BUILD_FRAME = ("import numpy as np\nimport pandas as pd\nrng = np.random.default_rng(0)\nn = 400_000\n"
               "df = pd.DataFrame({'i': rng.integers(0, 1000, n), 'f': rng.random(n),\n"
               "                   's': pd.Series(rng.integers(0, 9999, n)).map('u{}'.format),\n"
               "                   'd': pd.date_range('2020-01-01', periods=n, freq='min')})")  # ~14 MB
DIGEST = "pd.util.hash_pandas_object(df, index=True).sum(), list(df.columns), str(df.dtypes.to_dict())"


def test_a_frame_changed_in_one_column_stores_that_column(store_dir: Path) -> None:
    first = run_session(store_dir, [BUILD_FRAME])
    assert first.returncode == 0, first.stdout
    (ref,) = refs_named(store_dir, "df")
    assert [label for label, _, _ in ref["frame"]["columns"]] == ["i", "f", "s", "d"]
    whole = stored_bytes(store_dir)
    cells = [BUILD_FRAME, "df['f2'] = df['f'] * 2", "df.rename(columns={'i': 'id'}, inplace=True)",
             "df = df[['d', 'f2', 'id', 's', 'f']]", "df.loc[df['id'] < 10, 'f'] = 0.0"]
    crashed = run_session(store_dir, [*cells, DURABLE_KILL], probes={"digest": DIGEST})
    assert crashed.killed, crashed.stdout
    # f2 and the changed f are new (8 bytes a row each, in Parquet); the rename and the reorder reuse all.
    assert stored_bytes(store_dir) - whole <= 2 * 8 * 400_000 + 256 * 1024
    resumed = run_session(store_dir, cells, probes={"digest": DIGEST})
    expected = run_session(store_dir.parent / "clean", cells, probes={"digest": DIGEST})  # a clean run
    assert resumed.probes["digest"] == expected.probes["digest"], resumed.stdout
    assert resumed.stdout.count("nbdurable: restored from step") == len(cells)


def test_a_commit_is_scheduled_by_the_frame_columns_it_adds(store_dir: Path) -> None:
    """A cell that renames, reorders or drops columns of a big frame gives its commit nothing to write:
    it must not count as a big payload (which waits for a background slot behind the first frame's write)."""
    import pandas as pd

    from nbdurable.runtime import frames

    store = Store.open(store_dir, create=True)
    n = 400_000
    df = pd.DataFrame({"i": np.arange(n), "f": np.linspace(0, 1, n),
                       "s": pd.Series(np.arange(n) % 999).map("u{}".format)})
    whole = serialize(df)
    assert frames.claim(store, whole) == whole.size > frames.MIN_SIZE
    assert frames.claim(store, whole) == 0  # given to a commit already
    assert frames.claim(store, serialize(df.rename(columns={"i": "id"})[["s", "id"]])) == 0
    added = df.assign(g=np.arange(n, dtype="float64") * 2)
    assert frames.claim(store, serialize(added)) == 8 * n  # only the new column
    indexed = added.set_index(pd.Index(np.random.default_rng(0).permutation(n), name="t"))
    assert frames.claim(store, serialize(indexed)) == 8 * n  # only the index
    small = serialize(df.head(10))
    assert frames.claim(store, small) == small.size  # a small frame is one object: all of it is written


def test_sql_reads_a_frame_stored_by_column(store_dir: Path) -> None:
    cells = [BUILD_FRAME, "df = df.set_index('d')\ndf['twice'] = df['i'] * 2"]
    session = run_session(store_dir, cells, probes={"sum": "int(df['twice'].sum())"})
    assert session.returncode == 0, session.stdout
    (ref,) = [r for r in refs_named(store_dir, "df") if r.get("frame", {}).get("index")]
    assert ref["frame"]["index"] is not None
    import nbdurable as nbd

    runs = nbd.history(store=store_dir)
    got = nbd.sql('SELECT sum(twice) AS s, count(*) AS n, min(d) AS first FROM vars.df', store=store_dir,
                  run=str(runs.run_id[0]))
    assert int(got.s[0]) == int(session.probes["sum"]) and int(got.n[0]) == 400_000
    assert str(got["first"][0]).startswith("2020-01-01")


def test_check_and_gc_know_a_frames_columns(store_dir: Path) -> None:
    session = run_session(store_dir, [BUILD_FRAME, "df['g'] = df['i'] % 7"])
    assert session.returncode == 0, session.stdout
    store = Store.open(store_dir, create=False)
    assert not check_store(store).damage
    ref = refs_named(store_dir, "df")[-1]
    keys = [key for _label, key, _tag in ref["frame"]["columns"]]
    collect_garbage(store, keep_last=1, min_age=0)
    assert all(store.has_object(k) for k in keys)
    os.unlink(store.object_path(keys[0]))
    damage = check_store(store).damage
    assert any(keys[0] in what and "column 'i'" in what for what, _ in damage), damage


# ------------------------------------------------------------------ changes through names a cell never uses
# (recorded for the variable changed, and the sharing itself kept through the restore)

@pytest.mark.parametrize("cells, probes, expected", [
    (["import numpy as np\na = np.zeros(6)\nv = a[2:5]", "v[0] = 7.0", "a[3] = 1.0"],
     {"a": "a.tolist()", "v": "v.tolist()", "shared": "bool(np.shares_memory(a, v))"},
     {"a": "[0.0, 0.0, 7.0, 1.0, 0.0, 0.0]", "v": "[7.0, 1.0, 0.0]", "shared": "True"}),  # a view held by another name
    (["import numpy as np\nclass W:\n    def __init__(self, data):\n        self.data = data\n"
      "arr = np.zeros(4)\nw = W(arr)", "w.data[1] = 3.0"],
     {"arr": "arr.tolist()", "same": "w.data is arr"}, {"arr": "[0.0, 3.0, 0.0, 0.0]", "same": "True"}),  # a wrapper
    (["lst = [1, 2]\nd = {'l': lst}", "d['l'].append(3)", "lst.append(4)"],
     {"lst": "lst", "same": "d['l'] is lst"}, {"lst": "[1, 2, 3, 4]", "same": "True"}),  # a container
    (["import numpy as np\nbig = np.zeros(5)\nview = big[1:]\nhold = {'v': view}", "hold['v'][0] = 2.0"],
     {"big": "big.tolist()", "same": "hold['v'] is view and bool(np.shares_memory(big, view))"},
     {"big": "[0.0, 2.0, 0.0, 0.0, 0.0]", "same": "True"}),  # a view inside a container
    (["import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()",
      "plt.title('current')"],
     {"title": "ax.get_title()", "same": "ax.figure is fig and fig.axes[0] is ax"},
     {"title": "'current'", "same": "True"}),  # pyplot's current axes
], ids=["view", "wrapper", "container", "view-in-container", "pyplot"])
def test_a_change_through_another_name_is_recorded(store_dir: Path, cells: list[str], probes: dict[str, str],
                                                   expected: dict[str, str]) -> None:
    crashed = run_session(store_dir, [*cells, KILL])
    assert crashed.killed, crashed.stdout
    resumed = run_session(store_dir, cells, probes=probes)
    assert resumed.probes == expected, resumed.stdout
    assert resumed.stdout.count("nbdurable: restored from step") == len(cells)


def test_storing_a_figure_leaves_pyplot_current_axes_alone(store_dir: Path) -> None:
    """Checking that a figure's pickle loads back must not register the copy with pyplot: the next
    `plt.title` draws on the cell's own axes, as in a clean run."""
    cells = ["import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()",
             "plt.title('hello')"]
    session = run_session(store_dir, cells, probes={"title": "ax.get_title()", "figs": "plt.get_fignums()",
                                                    "current": "plt.gca() is ax"})
    assert session.probes == {"title": "'hello'", "figs": "[1]", "current": "True"}, session.stdout


def test_a_figure_only_read_is_not_stored_again(store_dir: Path) -> None:
    """matplotlib's callback registries advanced a counter at every pickle, so a figure never pickled to the
    same bytes twice and every cell that only read `ax` stored the figure again."""
    cells = ["import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
             "ax.plot([1, 2], [3, 4])", "t1 = ax.get_title()", "t2 = len(ax.lines)", "ax.set_title('x')"]
    session = run_session(store_dir, cells)
    assert session.returncode == 0, session.stdout
    steps = [sorted(ref["name"] for ref in record["variables"] if not ref["name"].startswith("%"))
             for record in journal_records(store_dir, "step_end")]
    assert steps == [["ax", "fig", "matplotlib", "plt"], ["t1"], ["t2"], ["ax", "fig"]], steps


def test_a_big_object_whose_pickle_does_not_load_is_found_when_stored(store_dir: Path, tmp_path: Path) -> None:
    """The trial load covers objects with big buffers too (their small pickle is loaded over views of the
    live arrays): one that does not load back is recorded as not stored, with the reason, and its cell runs
    again on resume instead of a restore that fails."""
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "make",
                           "import numpy as np\nclass Model:\n    def __init__(self):\n"
                           "        self.coef = np.ones(2**20)\n    def __setstate__(self, state):\n"
                           "        raise AttributeError('a model of another version')\nmodel = Model()")]
    crashed = run_session(store_dir, [*cells, KILL])
    assert crashed.killed, crashed.stdout
    (ref,) = refs_named(store_dir, "model")
    assert ref["format"] == "unrestorable" and "does not load back" in ref["reason"], ref
    resumed = run_session(store_dir, cells, probes={"n": "float(model.coef.sum())"})
    assert resumed.probes == {"n": str(float(2**20))}, resumed.stdout
    assert executions(counter) == ["make", "make"]
