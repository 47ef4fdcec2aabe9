"""The DuckDB catalog: ingestion from journals written with the records.py builders, across processes."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any, cast

import duckdb
import pandas as pd
import pytest

from nbdurable.errors import (
    CatalogLockedError,
    CorruptJournalError,
    OptionsError,
    RunNotFoundError,
    StoreError,
    StoreFormatError,
)
from nbdurable.store import Catalog, Store, records

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
T0 = 1_700_000_000.0
TABLES = ("runs", "steps", "variables", "objects", "outputs", "ingest_state")


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Store:
    return Store.open(tmp_path / "store")


def _var(name: str, key: str | None, **extra: Any) -> records.VarRef:
    ref = {"name": name, "op": "set", "object": key, "format": "pickle", "type": "builtins.int", "size": 8,
           "instance": f"i-{name}", **extra}
    return cast(records.VarRef, ref)


def _step(w: Any, ordinal: int, *, status: str = "completed", duration: float = 1.0, parent: int | None = None,
          **kw: Any) -> None:
    w.append(records.step_start_record(ordinal, source=f"x{ordinal} = {ordinal}", source_hash=f"{ordinal:016x}",
                                       parent=parent, options=kw.pop("options", None)))
    start = T0 + ordinal * 10
    end = start + (0.25 if status == "restored" else duration)
    w.append(records.step_end_record(ordinal, status=status, started_at=start, ended_at=end, duration=duration,  # type: ignore[arg-type]
                                     variables=kw.pop("variables", [_var(f"x{ordinal}", f"{ordinal:032x}")]),
                                     outputs=kw.pop("outputs", [{"output_type": "stream", "name": "stdout",
                                                                 "text": f"{ordinal}\n"}]), **kw),
             sync=True)


def _run(store: Store, run_id: str, *, steps: int = 3, final: str | None = "completed", notebook: str = "nb",
         **kw: Any) -> None:
    with store.new_journal(run_id) as w:
        w.append(records.run_record(run_id, notebook=notebook, notebook_path=f"/work/{notebook}.ipynb", kind="headless",
                                    params={"n": 1}, environment={"pid": 123, "host": "h1"}, **kw), sync=True)
        for i in range(1, steps + 1):
            _step(w, i)
        if final:
            w.append(records.run_end_record(final), sync=True)


def _tables(catalog: Catalog) -> dict[str, pd.DataFrame]:
    out = {}
    for table in TABLES:
        df = catalog.query(f"SELECT * FROM {table}", ingest=False)
        out[table] = df.sort_values(list(df.columns[:3])).reset_index(drop=True).astype(str)
    return out


def _assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for table in TABLES:
        pd.testing.assert_frame_equal(a[table], b[table], obj=table)


def test_ingest_builders(store: Store) -> None:
    _run(store, "r1")
    with store.new_journal("r2") as w:
        w.append(records.run_record("r2", notebook="nb", notebook_path="/work/nb.ipynb", kind="interactive",
                                    resumed_from="r1", root_run="r1"))
        _step(w, 1, status="restored", duration=5.0, restored_from={"run_id": "r1", "ordinal": 1})
        _step(w, 2, options={"always": True})
        _step(w, 3, parent=2, variables=[_var("y", "f" * 32, inline="AAAA")])  # an explicit step inside cell 2
        _step(w, 4, status="failed", error={"ename": "ValueError", "evalue": "bad", "traceback": ["line 1", "line 2"]},
              variables=[],
              outputs=[{"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []},
                       {"output_type": "display_data", "data": {"text/plain": "<fig>", "image/png": "iVBOR"},
                        "metadata": {}},
                       {"output_type": "object", "object": "e" * 32}])
        w.append(records.run_end_record("failed"))
    with store.append_journal("r1") as w:
        w.append(records.superseded_record("r2"))
    catalog = store.catalog()
    assert catalog.ingest() == 9 + 10  # r1: run, 3 x 2 steps, run_end, superseded; r2: run, 4 x 2, run_end
    runs = catalog.runs().set_index("run_id")
    assert list(runs.index) == ["r2", "r1"]  # newest first
    r1, r2 = runs.loc["r1"], runs.loc["r2"]
    assert (r1.status, r1.superseded_by, r1.steps_total, r1.steps_executed, r1.pid, r1.host) == (
        "completed", "r2", 3, 3, 123, "h1")
    assert json.loads(r1.params) == {"n": 1} and r1.kind == "headless" and r1.root_run == "r1"
    assert (r2.status, r2.resumed_from, r2.root_run, r2.kind) == ("failed", "r1", "r1", "interactive")
    assert (r2.steps_total, r2.steps_executed, r2.steps_restored, r2.steps_failed) == (3, 1, 1, 1)  # step 3 is a child
    assert r2.time_saved_s == pytest.approx(5.0 - 0.25)
    assert r2.duration_s > 0 and isinstance(r2.started_at, pd.Timestamp)
    steps = catalog.steps("r2").set_index("ordinal")
    assert list(steps.index) == [1, 2, 3, 4]
    assert (steps.loc[1].restored_from_run, steps.loc[1].restored_from_ordinal, steps.loc[1].status) == (
        "r1", 1, "restored")
    assert bool(steps.loc[2].always) and not bool(steps.loc[1].always) and steps.loc[3].parent == 2
    assert (steps.loc[4].error_ename, steps.loc[4].error_evalue, steps.loc[4].error_traceback) == (
        "ValueError", "bad", "line 1\nline 2")
    assert steps.loc[4].duration_s == 1.0 and steps.loc[1].source == "x1 = 1"
    var = catalog.query("SELECT * FROM variables WHERE run_id = ? AND name = ?", ["r2", "y"])
    assert (var.object[0], var.format[0], var.size_bytes[0], var.instance[0]) == ("f" * 32, "pickle", 8, "i-y")
    objs = catalog.query("SELECT * FROM objects ORDER BY object").set_index("object")
    assert bool(objs.loc["f" * 32].inline) and not bool(objs.loc[f"{1:032x}"].inline)
    assert (objs.loc[f"{1:032x}"].first_run, objs.loc[f"{1:032x}"].first_ordinal) == ("r1", 1)  # r2 reused it
    assert "e" * 32 in objs.index
    outs = catalog.query("SELECT * FROM outputs WHERE run_id = 'r2' AND ordinal = 4 ORDER BY idx")
    assert list(outs.output_type) == ["error", "display_data", "object"]
    assert (outs.name[0], outs.text[0]) == ("ValueError", "bad")
    assert list(outs.mime_types[1]) == ["text/plain", "image/png"] and outs.text[1] == "<fig>"
    assert json.loads(outs.data[1])["image/png"] == "iVBOR" and json.loads(outs.data[2]) == {"object": "e" * 32}
    stream = catalog.query("SELECT name, text FROM outputs WHERE run_id = 'r1' AND ordinal = 2")
    assert (stream.name[0], stream.text[0]) == ("stdout", "2\n")


def test_idempotent_reingest(store: Store) -> None:
    _run(store, "r1")
    catalog = store.catalog()
    assert catalog.ingest() == 8
    before = _tables(catalog)
    assert catalog.ingest() == 0
    _assert_same(before, _tables(catalog))
    # Even if the offsets were lost, records already ingested are recognized by their seq.
    con = duckdb.connect(str(catalog.path))
    con.execute("UPDATE ingest_state SET byte_offset = 0")
    con.close()
    assert catalog.ingest() == 0
    _assert_same(before, _tables(catalog))


def test_incremental_ingest_and_torn_tail(store: Store) -> None:
    catalog = store.catalog()
    w = store.new_journal("r1")
    w.append(records.run_record("r1", notebook="nb", notebook_path=None, kind="headless"))
    w.append(records.step_start_record(1, source="x = 1", source_hash="a" * 16))
    assert catalog.ingest() == 2
    row = catalog.steps("r1").iloc[0]
    assert row.status == "running" and row.source == "x = 1" and pd.isna(row.ended_at)
    assert catalog.runs().status[0] == "crashed"  # no lease held: its process is gone
    _step_end = records.step_end_record(1, status="completed", started_at=T0, ended_at=T0 + 2, duration=2.0,
                                        variables=[_var("x", "1" * 32)], outputs=[])
    w.append(_step_end)
    # A torn tail: half of the next line, as a crash mid-write leaves it. It is not ingested yet.
    from nbdurable.store.journal import encode_line

    line = encode_line({**records.run_end_record("completed"), "seq": 4, "ts": T0 + 3})
    with open(w.path, "ab") as f:
        f.write(line[:10])
    assert catalog.ingest() == 1
    row = catalog.steps("r1").iloc[0]
    assert (row.status, row.duration_s, row.source) == ("completed", 2.0, "x = 1")  # step_start fields kept
    assert catalog.query("SELECT count(*) AS n FROM variables").n[0] == 1
    with open(w.path, "ab") as f:
        f.write(line[10:])  # the writer finishes the line
    assert catalog.ingest() == 1
    run = catalog.runs().iloc[0]
    assert (run.status, run.steps_total, run.steps_executed) == ("completed", 1, 1)
    w.close()


def test_rebuild_equals_incremental(store: Store) -> None:
    catalog = store.catalog()
    _run(store, "r1", steps=2)
    catalog.ingest()
    with store.new_journal("r2") as w:
        w.append(records.run_record("r2", notebook="other", notebook_path=None, kind="headless", resumed_from="r1"))
        _step(w, 1)
        catalog.ingest()
        _step(w, 2, status="restored", restored_from={"run_id": "r1", "ordinal": 2})
        _step(w, 1)  # the same ordinal again: the later attempt replaces the first
        catalog.ingest()
        w.append(records.run_end_record("completed"))
    with store.append_journal("r1") as w:
        w.append(records.superseded_record("r2"))
    catalog.ingest()
    incremental = _tables(catalog)
    assert catalog.rebuild() == 7 + 8
    _assert_same(incremental, _tables(catalog))
    # A fresh store directory's catalog (file deleted) gives the same again.
    catalog.path.unlink()
    catalog.ingest()
    _assert_same(incremental, _tables(catalog))


_WRITER = """
import sys, time
from nbdurable.store import Store, records
store = Store.open(sys.argv[1])
lease = store.acquire_lease(sys.argv[2])
with store.new_journal(sys.argv[2]) as w:
    w.append(records.run_record(sys.argv[2], notebook="nb", notebook_path=None, kind="headless"), sync=True)
    w.append(records.step_start_record(1, source="while True: pass", source_hash="0" * 16), sync=True)
print("ready", flush=True)
time.sleep(60)
"""


def test_crashed_writer(store: Store) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(store.path), "r1"], env=ENV, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        catalog = store.catalog()
        catalog.ingest()
        assert catalog.runs().status[0] == "running"  # alive
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert catalog.query("SELECT status FROM runs").status[0] == "crashed"
    assert catalog.steps("r1").status[0] == "running"  # the step never ended
    # A later run resumes it: the superseded record marks it, its status stays crashed.
    with store.append_journal("r1") as w:
        w.append(records.superseded_record("r2"))
    run = catalog.runs().iloc[0]
    assert (run.status, run.superseded_by) == ("crashed", "r2")


def test_crashed_status_revived_by_new_records(store: Store) -> None:
    w = store.new_journal("r1")
    w.append(records.run_record("r1", notebook="nb", notebook_path=None, kind="headless"))
    catalog = store.catalog()
    catalog.ingest()
    assert catalog.runs().status[0] == "crashed"  # journal written before its lease: looks dead
    with store.acquire_lease("r1"):
        _step(w, 1)
        assert catalog.runs().status[0] == "running"
        w.append(records.run_end_record("completed"))
        assert catalog.runs().status[0] == "completed"
    w.close()


_INGESTER = """
import os, sys, time
from nbdurable.store import Store
store = Store.open(sys.argv[1])
catalog = store.catalog()
catalog.ingest()
print("go", flush=True)
n = 0
while not os.path.exists(sys.argv[2]):
    catalog.ingest()
    catalog.runs(limit=5)
    n += 1
print(n, flush=True)
"""

_APPENDER = """
import sys, time
from nbdurable.store import Store, records
store = Store.open(sys.argv[1])
for r in range(int(sys.argv[2])):
    run_id = f"run{r:04d}"
    with store.acquire_lease(run_id), store.new_journal(run_id) as w:
        w.append(records.run_record(run_id, notebook="nb", notebook_path=None, kind="headless"), sync=True)
        for i in range(1, 4):
            w.append(records.step_start_record(i, source="x", source_hash="0" * 16))
            time.sleep(0.01)
            w.append(records.step_end_record(i, status="completed", started_at=time.time(), ended_at=time.time(),
                     duration=0.0, variables=[{"name": "x", "op": "set", "object": f"{r:016x}{i:016x}"}], outputs=[]),
                     sync=True)
        w.append(records.run_end_record("completed"), sync=True)
"""


def test_concurrent_ingesters_and_writer(store: Store, tmp_path: pathlib.Path) -> None:
    stop = tmp_path / "stop"
    runs = 40
    ingesters = [subprocess.Popen([sys.executable, "-c", _INGESTER, str(store.path), str(stop)], env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in ingesters:  # both running before the writer starts
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"go"
    writer = subprocess.run([sys.executable, "-c", _APPENDER, str(store.path), str(runs)], env=ENV, capture_output=True,
                            timeout=120)
    stop.touch()
    loops = []
    for proc in ingesters:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        loops.append(int(out))
    assert writer.returncode == 0, writer.stderr.decode()
    assert min(loops) > 1  # both really ingested concurrently with the writer
    catalog = store.catalog()
    catalog.ingest()
    counts = catalog.query("SELECT (SELECT count(*) FROM runs) r, (SELECT count(*) FROM steps) s, "
                           "(SELECT count(*) FROM variables) v, "
                           "(SELECT count(*) FROM runs WHERE status = 'completed' AND steps_total = 3) ok")
    assert tuple(counts.iloc[0]) == (runs, runs * 3, runs * 3, runs)
    before = _tables(catalog)
    catalog.rebuild()
    _assert_same(before, _tables(catalog))


_DB_HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def _hold_catalog(catalog: Catalog, seconds: float) -> subprocess.Popen[bytes]:
    catalog.ingest()  # create the file
    proc = subprocess.Popen([sys.executable, "-c", _DB_HOLDER, str(catalog.path), str(seconds)], env=ENV,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def test_lock_retry_waits_for_brief_holder(store: Store) -> None:
    _run(store, "r1")
    catalog = store.catalog()
    proc = _hold_catalog(catalog, 0.5)
    try:
        t = time.monotonic()
        assert len(catalog.runs()) == 1
        assert time.monotonic() - t > 0.2  # it waited for the lock rather than failing
    finally:
        proc.wait()


def test_lock_timeout(store: Store) -> None:
    proc = _hold_catalog(store.catalog(), 10)
    try:
        with pytest.raises(CatalogLockedError) as exc:
            Catalog(store, lock_timeout=0.3).ingest()
        assert f"process {proc.pid}" in str(exc.value) and "retry" in (exc.value.hint or "")
    finally:
        proc.kill()
        proc.wait()


_QUEUE_HOLDER = """
import sys, time, pathlib
from nbdurable.store.lease import waiting_file_lock
with waiting_file_lock(pathlib.Path(sys.argv[1]), 5) as ok:
    print("ready", flush=True)
    time.sleep(10)
"""


def test_lock_timeout_behind_nbdurable_process(store: Store) -> None:
    path = store.path / "catalog.lock"
    proc = subprocess.Popen([sys.executable, "-c", _QUEUE_HOLDER, str(path)], env=ENV, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        t = time.monotonic()
        with pytest.raises(CatalogLockedError, match=f"process {proc.pid}"):
            Catalog(store, lock_timeout=0.3).runs()
        assert 0.25 < time.monotonic() - t < 5
    finally:
        proc.kill()
        proc.wait()
    assert len(store.catalog().runs()) == 0  # free again once the holder is gone


def test_corrupt_journal_propagates_after_ingesting_others(store: Store) -> None:
    _run(store, "r1")
    _run(store, "r2")
    path = store.journal_path("r1")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([lines[0], lines[1].replace(b"x1 = 1", b"x1 = 7"), *lines[2:]]))
    catalog = store.catalog()
    with pytest.raises(CorruptJournalError, match="line 2"):
        catalog.ingest()
    assert list(catalog.query("SELECT run_id FROM runs", ingest=False).run_id) == ["r2"]


def test_queries_and_filters(store: Store) -> None:
    _run(store, "r1", notebook="a")
    _run(store, "r2", notebook="b", final="failed")
    _run(store, "r3", notebook="a", final=None)
    catalog = store.catalog()
    assert set(catalog.runs(notebook="a").run_id) == {"r1", "r3"}
    assert list(catalog.runs(notebook="/work/b.ipynb").run_id) == ["r2"]
    assert list(catalog.runs(status="crashed").run_id) == ["r3"]
    assert len(catalog.runs(limit=1)) == 1
    with pytest.raises(OptionsError):
        catalog.runs(status="bogus")
    with pytest.raises(OptionsError):
        catalog.runs(limit=0)
    assert catalog.query("SELECT count(*) AS n FROM steps WHERE run_id = ?", ["r2"]).n[0] == 3
    with pytest.raises(RunNotFoundError, match="nope"):
        catalog.steps("nope")
    with pytest.raises(StoreError, match="catalog query failed") as exc:
        catalog.query("SELECT * FROM no_such_table")
    assert isinstance(exc.value.__cause__, duckdb.Error)
    # After an error the catalog is closed and usable again (no process keeps it open).
    con = duckdb.connect(str(catalog.path))
    con.close()


def test_deleted_journal_disappears(store: Store) -> None:
    _run(store, "r1")
    _run(store, "r2")
    catalog = store.catalog()
    catalog.ingest()
    store.journal_path("r1").unlink()
    catalog.ingest()
    assert list(catalog.query("SELECT run_id FROM runs").run_id) == ["r2"]
    assert set(catalog.query("SELECT DISTINCT run_id FROM steps").run_id) == {"r2"}


def test_schema_versions(store: Store) -> None:
    _run(store, "r1")
    catalog = store.catalog()
    catalog.ingest()
    con = duckdb.connect(str(catalog.path))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreFormatError, match="newer nbdurable"):
        catalog.ingest()
    assert catalog.rebuild() == 8  # rebuild overrides
    con = duckdb.connect(str(catalog.path))
    con.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    con.close()
    assert catalog.ingest() == 8  # an older schema is recreated and refilled from the journals
    assert len(catalog.runs()) == 1


def test_damaged_catalog_file(store: Store) -> None:
    _run(store, "r1")
    catalog = store.catalog()
    catalog.path.write_bytes(b"this is not a duckdb database" * 1000)
    with pytest.raises(StoreError, match="cannot be opened") as exc:
        catalog.ingest()
    assert "rebuil" in (exc.value.hint or "")
    assert catalog.rebuild() == 8
    assert len(catalog.runs()) == 1


def test_threads_of_one_process_share_the_catalog(store: Store) -> None:
    import threading

    _run(store, "r1")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                store.catalog().ingest()
                assert len(store.catalog().runs()) >= 1
                if i == 0:
                    _run(store, f"t{_}-{time.monotonic_ns()}")
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(store.catalog().runs()) == 4
