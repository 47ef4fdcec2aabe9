"""Big objects commit in the background: a step is durable once its commit record is written, a
change during the write is detected (never stored torn), and crashes in between resume correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nbdurable.capture.namespace import Change
from nbdurable.runtime.checkpoint import ObjectLoader
from nbdurable.runtime.replay import ReplayPlan
from nbdurable.runtime.run import DurableRun
from nbdurable.serialization import serialize
from nbdurable.store import Store

from conftest import run_session


def commit_big(store: Store, arr: np.ndarray, mutate: bool) -> DurableRun:
    run = DurableRun(store, notebook="bg")
    step = run.begin_step(source="arr = big()", source_hash="a" * 32)
    run.end_step(step, status="completed", changes=[Change("arr", "set", serialize(arr), "i1")])
    if mutate:
        arr[-1] = -1.0  # the writer is still far from the end of the array
    run.wait_durable()
    run.finish("completed")
    return run


def step_end(store: Store, run: DurableRun) -> dict:
    return next(r for r in store.read_journal(run.run_id) if r["t"] == "step_end")


def test_unchanged_big_object_commits_in_the_background(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    arr = np.arange(2**25, dtype="float64")  # 256 MiB
    run = commit_big(store, arr, mutate=False)
    record = step_end(store, run)
    assert record["status"] == "completed"
    restored = ObjectLoader(store, {}).load(record["variables"][0], step_label="test")
    assert np.array_equal(restored, arr)
    assert len(ReplayPlan.from_run(store, run.run_id).steps) == 1


def test_change_during_background_write_is_never_stored_torn(tmp_path: Path, capfd) -> None:
    store = Store.open(tmp_path / "store")
    arr = np.arange(2**25, dtype="float64")
    run = commit_big(store, arr, mutate=True)
    record = step_end(store, run)
    assert record["status"] == "failed" and record["error"]["ename"] == "ChangedDuringWriteError"
    assert record["variables"][0]["format"] == "unrestorable"
    assert ReplayPlan.from_run(store, run.run_id).steps == [], "resume must re-execute the step"
    assert list(store.object_keys()) == [], "no object is stored under a key that does not describe it"
    assert "not durable" in capfd.readouterr().err


def test_a_small_step_queued_behind_a_big_one_stores_the_value_it_had(tmp_path: Path) -> None:
    """A step that commits while a big one is still being written waits in line on the background thread;
    the notebook goes on meanwhile and may change its object in place. What is stored under its key is the
    value the step produced (regression: the live array was written later, under the old key)."""
    store = Store.open(tmp_path / "store")
    run = DurableRun(store, notebook="bg")
    big = run.begin_step(source="arr = big()", source_hash="a" * 32)
    run.end_step(big, status="completed", changes=[Change("arr", "set", serialize(np.arange(2**25, dtype="float64")),
                                                          "i1")])
    small = np.ones(2**17)  # 1 MiB: out of line, below the background threshold
    step = run.begin_step(source="small = np.ones(2**17)", source_hash="b" * 32)
    run.end_step(step, status="completed", changes=[Change("small", "set", serialize(small), "i2")])
    small[:] = 2.0  # the next cell, while the big write is still going on
    run.wait_durable()
    run.finish("completed")
    ends = [r for r in store.read_journal(run.run_id) if r["t"] == "step_end"]
    assert [r["status"] for r in ends] == ["completed", "completed"]
    ref = ends[1]["variables"][0]
    assert ref["object"] == serialize(np.ones(2**17)).key
    assert np.array_equal(ObjectLoader(store, {}).load(ref, step_label="test"), np.ones(2**17))


@pytest.mark.slow
def test_kill_right_after_a_big_cell_resumes_correctly(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cells = ["import numpy as np\nbig = np.arange(2**25, dtype='float64')", "big[0] = 7.0", "total = float(big.sum())"]
    first = run_session(store, [*cells[:2], "import os; os.kill(os.getpid(), 9)"])
    assert first.killed
    second = run_session(store, cells, probes={"total": "total", "first": "float(big[0])"})
    expected = float(np.arange(2**25, dtype="float64").sum()) + 7.0
    assert second.probes == {"total": repr(expected), "first": "7.0"}


def test_a_session_closed_at_interpreter_exit_still_commits_its_big_step(tmp_path: Path) -> None:
    """The last cell's big object commits in the background; the shell exits without unloading nbdurable
    (a kernel shut down): the run is closed by ``atexit``, after ``concurrent.futures`` stopped taking work,
    and the object is still written and authenticated (regression: it was recorded as not durable)."""
    import subprocess
    import sys

    from helpers import clean_env

    store = tmp_path / "store"
    script = ("from IPython.core.interactiveshell import InteractiveShell\n"
              "shell = InteractiveShell.instance()\n"
              "shell.run_cell('%load_ext nbdurable')\n"
              "shell.run_cell('import numpy as np\\nbig = np.ones(2**24)')\n")  # 128 MiB: committed in the background
    env = clean_env({"NBDURABLE_STORE": str(store), "NBDURABLE_NOTEBOOK": "exit-nb"})
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    st = Store.open(store)
    run_id = st.run_ids()[-1]
    ends = [r for r in st.read_journal(run_id) if r["t"] == "step_end"]
    assert [r["status"] for r in ends][-1] == "completed", ends
    big = next(ref for ref in ends[-1]["variables"] if ref["name"] == "big")
    assert ObjectLoader(st, {}).load(big, step_label="the last step").nbytes == 2**27


def test_a_frame_step_that_writes_nothing_new_is_not_snapshotted_past_the_memory_available(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step renaming a big frame writes no new column (it takes no background slot), but its snapshot may
    copy the whole frame (pandas 2 without copy-on-write): behind a pending write, with too little memory for
    that copy, it waits for the pending writes and commits in the foreground instead of being snapshotted."""
    import pandas as pd

    from nbdurable.runtime import committer

    store = Store.open(tmp_path / "store")
    run = DurableRun(store, notebook="bg")
    df = pd.DataFrame({c: np.arange(2**20, dtype="float64") * i for i, c in enumerate("abc")})  # 24 MiB
    for name, value in [("arr", np.arange(2**26, dtype="float64")), ("df", df)]:  # 512 MiB: written for a while
        step = run.begin_step(source=f"{name} = make()", source_hash=name[0] * 32)
        run.end_step(step, status="completed", changes=[Change(name, "set", serialize(value), f"i-{name}")])
    assert run._committer.busy
    monkeypatch.setattr(committer, "available_memory", lambda: 0)
    step = run.begin_step(source="df = df.rename(columns={'a': 'z'})", source_hash="c" * 32)
    renamed = serialize(df.rename(columns={"a": "z"}))
    assert run._new_bytes([Change("df", "set", renamed, "i-df2")]) == 0
    run.end_step(step, status="completed", changes=[Change("df", "set", renamed, "i-df2")])
    assert not run._committer.busy  # it waited for the pending writes, then committed
    run.wait_durable()
    run.finish("completed")
    assert [r["status"] for r in store.read_journal(run.run_id) if r["t"] == "step_end"] == ["completed"] * 3

