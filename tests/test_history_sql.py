"""``nbd.history`` and ``nbd.sql`` over stores written by real runs (IPython shells in fresh processes, and
``DurableRun``); the catalog's ``events`` table; DataFrame variables queried where they are stored; and
the cheap freshness check (finished journals and unchanged directories are not looked at again)."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import nbdurable as nbd
from nbdurable.capture.namespace import Change
from nbdurable.errors import OptionsError, RunNotFoundError, StoreError
from nbdurable.runtime.run import DurableRun
from nbdurable.serialization import serialize
from nbdurable.store import Store, records
from nbdurable.store import catalog as catalog_module
from nbdurable.store.catalog import ingest as catalog_ingest  # where the catalog lists and stats journals

from conftest import run_session

pytestmark = pytest.mark.xdist_group("history_sql")  # its tests share a module fixture: one xdist worker

ROWS = 1_000_000  # the big DataFrame: 16 MB of int64 columns, a Parquet object file


def _flaky(counter: Path) -> str:
    return ("%%durable --retries 2 --initial-interval 0\n"
            f"import pathlib\np = pathlib.Path({str(counter)!r})\n"
            "p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
            "if len(p.read_text()) < 2:\n    raise ConnectionError('flaky')\ntries = len(p.read_text())")


@pytest.fixture(scope="module")
def history_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three runs: A (sales, eu, completed: DataFrames, an event, a retried cell), B (sales, us, failed),
    C (other, crashed: killed)."""
    root = tmp_path_factory.mktemp("history")
    store_dir = root / "store"
    a = run_session(store_dir, [
        "import pandas as pd, numpy as np\nimport nbdurable as nbd",
        f"df = pd.DataFrame({{'x': np.arange({ROWS}), 'g': np.arange({ROWS}) % 3}})",
        "small = pd.DataFrame({'a': [1, 2, 3]})",
        "mixed = pd.DataFrame({'o': [1, 'a']})  # object dtype: pickled",
        "gone = pd.DataFrame({'a': [1]})",
        "del gone",
        "print('hello')",
        _flaky(root / "tries"),
        "nbd.send_event('approval', {'week': 46})\nnbd.send_event('ignored')",
        "ev = nbd.wait_for_event('approval', timeout='20s')",
    ], notebook="sales", env={"NBDURABLE_PARAMS": json.dumps({"region": "eu", "week": 46})})
    assert all(c["success"] for c in a.cells), a.cells
    b = run_session(store_dir, [
        "import pandas as pd\nimport nbdurable as nbd",
        "df = pd.DataFrame({'x': [1, 2]})",
        "raise ValueError('bad week')",
    ], notebook="sales", env={"NBDURABLE_PARAMS": json.dumps({"region": "us", "week": 47})},
        probes={"current": "int(nbd.sql('SELECT sum(x) AS s FROM vars.df').s[0])"})
    assert b.probes["current"] == "3", b.probes  # the current run's df, not run A's
    c = run_session(store_dir, [
        "import pandas as pd",
        "df = pd.DataFrame({'x': [10]})",
        "import os\nos.kill(os.getpid(), 9)",
    ], notebook="other")
    assert c.killed
    runs = nbd.history(store=store_dir)
    ids = dict(zip(runs.status, runs.run_id, strict=True))
    return {"dir": store_dir, "a": ids["completed"], "b": ids["failed"], "c": ids["crashed"], "runs": runs}


# ----- history ----------------------------------------------------------------------------------------


def test_history_lists_runs_newest_first_with_decoded_params(history_store: dict[str, Any]) -> None:
    runs = history_store["runs"]
    assert list(runs.run_id) == [history_store[k] for k in "cba"]  # newest first
    assert list(runs.status) == ["crashed", "failed", "completed"]
    row = runs.set_index("run_id").loc[history_store["a"]]
    assert row.params == {"region": "eu", "week": 46} and row.notebook == "sales"
    assert row.steps_total >= 10 and row.steps_failed == 0 and row.duration_s > 0
    assert str(runs.started_at.dt.tz) == "UTC" and runs.started_at.is_monotonic_decreasing
    assert list(runs.columns) == [name for name, _ in catalog_module.COLUMNS["runs"]]


def test_history_filters(history_store: dict[str, Any]) -> None:
    d, a, b, c = (history_store[k] for k in ("dir", "a", "b", "c"))

    def ids(**kw: Any) -> list[str]:
        return list(nbd.history(store=d, **kw).run_id)

    assert ids(notebook="sales") == [b, a]
    assert ids(notebook="other") == [c] and ids(notebook="nope") == []
    assert ids(status="failed") == [b] and ids(status="crashed") == [c] and ids(status="suspended") == []
    assert ids(notebook="sales", status="completed") == [a]
    assert ids(params={"region": "eu"}) == [a] and ids(params={"region": "us", "week": 47}) == [b]
    assert ids(params={"week": 46}) == [a] and ids(params={"week": "46"}) == []  # compared as JSON values
    assert ids(params={"region": "eu", "week": 47}) == [] and ids(params={}) == [c, b, a]
    assert ids(limit=2) == [c, b] and ids(limit=0) == [] and ids(limit=None) == [c, b, a]
    # since/until: durations ago, datetimes (naive = local time), aware timestamps passed back, ISO text, dates
    assert ids(since="1h") == [c, b, a] and ids(until="1h") == []
    assert ids(since=dt.timedelta(hours=1)) == [c, b, a]
    assert ids(since=dt.datetime.now() + dt.timedelta(minutes=5)) == []
    started_b = history_store["runs"].set_index("run_id").started_at[b]
    assert ids(since=started_b) == [c, b] and ids(until=started_b) == [a]
    assert ids(since=started_b.isoformat()) == [c, b]
    assert ids(since=started_b.tz_convert(None).isoformat() + "Z") == [c, b]
    assert ids(since=started_b.to_pydatetime().astimezone().replace(tzinfo=None)) == [c, b]  # naive local
    assert ids(since=dt.date.today() - dt.timedelta(days=1)) == [c, b, a]
    assert ids(since=(dt.date.today() + dt.timedelta(days=2)).isoformat()) == []


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"status": "bogus"}, "unknown run status"),
    ({"limit": -1}, "limit"),
    ({"limit": "10"}, "limit"),
    ({"since": "yesterday-ish"}, "neither a date nor a duration"),
    ({"since": "12"}, "ambiguous"),
    ({"until": 3.5}, "must be a date"),
    ({"since": "-5m"}, "neither a date nor a duration"),
    ({"params": "region=eu"}, "must be a dict"),
    ({"params": {"when": object()}}, "not a JSON value"),
    ({"notebook": 3}, "notebook must be"),
])
def test_history_bad_input(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(OptionsError, match=match) as exc:
        nbd.history(store=tmp_path / "store", **kwargs)
    assert exc.value.hint


def test_history_of_an_empty_store(tmp_path: Path) -> None:
    runs = nbd.history(store=tmp_path / "store")
    assert runs.empty and list(runs.columns) == [name for name, _ in catalog_module.COLUMNS["runs"]]


# ----- sql over each table ----------------------------------------------------------------------------


def test_sql_over_each_table(history_store: dict[str, Any]) -> None:
    d, a, b = history_store["dir"], history_store["a"], history_store["b"]
    q = lambda text, params=None: nbd.sql(text, params, store=d)  # noqa: E731
    assert q("SELECT count(*) AS n FROM runs").n[0] == 3
    steps = q("SELECT ordinal, status, source, error_ename FROM steps WHERE run_id = ? AND parent IS NULL "
              "ORDER BY ordinal", [b])
    assert list(steps.status) == ["completed", "completed", "failed"] and steps.error_ename.iloc[-1] == "ValueError"
    attempts = q("SELECT a.attempt, a.error_ename, a.next_delay_s FROM attempts a JOIN steps s USING (run_id, ordinal) "
                 "WHERE run_id = $run AND source LIKE '%flaky%' ORDER BY attempt", {"run": a})
    assert (list(attempts.attempt) == [1, 2] and attempts.error_ename[0] == "ConnectionError"
            and pd.isna(attempts.error_ename[1]))
    variables = q("SELECT name, op, coalesce(format, '-') FROM variables WHERE run_id = ? ORDER BY ordinal, name", [a])
    found = set(map(tuple, variables.values))
    assert {("df", "set", "parquet"), ("small", "set", "parquet"), ("mixed", "set", "pickle"),
            ("gone", "del", "-")} <= found
    events = q("SELECT * FROM events ORDER BY sent_at")
    assert list(events.name) == ["approval", "ignored"]
    assert json.loads(events.data[0]) == {"week": 46} and pd.isna(events.data[1])
    assert events.consumed_by_run[0] == a and pd.isna(events.consumed_by_run[1]) and events.sent_at.notna().all()
    assert events.sender_pid[0] > 0
    consumed = q("SELECT c.run_id, c.ordinal, c.event_id, s.name FROM consumed c JOIN steps s USING (run_id, ordinal)")
    assert list(consumed.event_id) == [events.id[0]] and consumed.name[0] == "nbd.wait_for_event"
    assert consumed.ordinal[0] == events.consumed_by_ordinal[0]
    objects = q("SELECT o.format, o.inline, o.first_run FROM objects o JOIN variables v USING (object) "
                "WHERE v.name = 'df' AND v.run_id = ?", [a])
    assert (objects.format[0], bool(objects.inline[0]), objects.first_run[0]) == ("parquet", False, a)
    outputs = q("SELECT o.text FROM outputs o JOIN steps s USING (run_id, ordinal) "
                "WHERE s.source LIKE 'print(%' AND o.run_id = ?", [a])
    assert list(outputs.text) == ["hello\n"]


def test_sql_errors(history_store: dict[str, Any]) -> None:
    d = history_store["dir"]
    with pytest.raises(StoreError, match="catalog query failed") as exc:
        nbd.sql("SELECT * FROM no_such_table", store=d)
    for table in ("runs", "steps", "attempts", "variables", "events", "objects", "outputs"):
        assert table in (exc.value.hint or "")
    with pytest.raises(StoreError, match="syntax"):
        nbd.sql("SELEC 1", store=d)
    with pytest.raises(OptionsError):
        nbd.sql("  ", store=d)
    with pytest.raises(OptionsError):
        nbd.sql("SELECT ?", "x", store=d)  # type: ignore[arg-type]
    with pytest.raises(RunNotFoundError, match="nope"):
        nbd.sql("SELECT * FROM vars.df", store=d, run="nope")
    assert nbd.sql("SELECT 1 AS one", store=d).one[0] == 1  # the catalog is usable after errors


def test_ingest_before_each_query(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    assert nbd.sql("SELECT count(*) AS n FROM runs", store=store).n[0] == 0
    run = DurableRun(store, notebook="live", params={"k": 1})
    step = run.begin_step(source="x = 1", source_hash="a" * 32)
    assert nbd.sql("SELECT status FROM steps", store=store).status.tolist() == ["running"]  # a live run's records
    run.end_step(step, status="completed", changes=[Change("x", "set", serialize(1), "i1")])
    run.wait_durable()
    assert nbd.sql("SELECT status FROM steps", store=store).status.tolist() == ["completed"]
    assert nbd.history(store=store).status.tolist() == ["running"]
    run.finish("completed")
    assert nbd.history(store=store).status.tolist() == ["completed"]
    store.send_event("late", {"n": 1})
    assert nbd.sql("SELECT name FROM events", store=store).name.tolist() == ["late"]
    second = DurableRun(store, notebook="live")
    second.finish("cancelled")
    assert nbd.history(store=store).status.tolist() == ["cancelled", "completed"]


# ----- DataFrame variables ----------------------------------------------------------------------------


def test_dataframe_variables_of_a_run(history_store: dict[str, Any]) -> None:
    d, a, b = history_store["dir"], history_store["a"], history_store["b"]
    agg = nbd.sql("SELECT g, count(*) AS n, sum(x) AS s FROM vars.df GROUP BY g ORDER BY g", store=d, run=a)
    expected = pd.DataFrame({"x": range(ROWS)}).assign(g=lambda f: f.x % 3).groupby("g").x.agg(["count", "sum"])
    assert agg.n.tolist() == expected["count"].tolist() and agg.s.tolist() == expected["sum"].tolist()
    assert nbd.sql("SELECT sum(a) AS s FROM vars.small", store=d, run=a).s[0] == 6  # inlined in the journal
    assert nbd.sql("SELECT sum(x) AS s FROM vars.df", store=d, run=b).s[0] == 3  # run B's own df (inline)
    assert nbd.sql("SELECT sum(x) AS s FROM vars.df", store=d).s[0] == 10  # default: the newest run (C)
    joined = nbd.sql("SELECT count(*) AS n FROM vars.df JOIN runs ON runs.run_id = ?", [a], store=d, run=a)
    assert joined.n[0] == ROWS  # catalog tables and variables in one query
    with pytest.raises(StoreError, match="pickled") as exc:
        nbd.sql("SELECT * FROM vars.mixed", store=d, run=a)
    assert exc.value.hint
    with pytest.raises(StoreError, match="gone") as exc:
        nbd.sql("SELECT * FROM vars.gone", store=d, run=a)  # deleted by a later cell
    assert "vars.df" in (exc.value.hint or "") and "vars.small" in (exc.value.hint or "")


def test_dataframe_variable_is_queried_where_it_is_stored(history_store: dict[str, Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The view is over read_parquet of the object file: no Python deserialization, no pandas frame, no
    Arrow table in this process; only the aggregate comes back."""
    import pyarrow.parquet as pq

    from nbdurable.serialization import _parquet

    d, a = history_store["dir"], history_store["a"]
    views = nbd.sql("SELECT view_name, sql FROM duckdb_views() WHERE database_name = 'vars' ORDER BY view_name",
                    store=d, run=a)
    assert list(views.view_name) == ["df"]  # the inlined `small` is decoded only when a query names it
    refs = [ref for record in Store.open(d).read_journal(a) if record.get("t") == "step_end"
            for ref in record["variables"] if ref["name"] == "df"]
    columns = refs[-1]["frame"]["columns"]  # a 16 MB frame is stored column by column: its parts are read
    assert [label for label, _, _ in columns] == ["x", "g"]
    assert all(f"read_parquet('{Store.open(d).object_path(key)}')" in views.sql[0] for _, key, _ in columns)
    assert "POSITIONAL JOIN" in views.sql[0]

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the DataFrame was loaded into the process")

    for target, name in ((_parquet, "deserialize_frame"), (pq, "read_table"), (pq, "ParquetFile"), (pd, "read_parquet"),
                         (Store, "read_object")):
        monkeypatch.setattr(target, name, forbidden)
    tracemalloc.start()
    try:
        result = nbd.sql("SELECT count(*) AS n, sum(x) AS s, max(g) AS m FROM vars.df", store=d, run=a)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (result.n[0], result.s[0], result.m[0]) == (ROWS, ROWS * (ROWS - 1) // 2, 2)
    assert peak < 4_000_000, peak  # the frame is 16 MB; numpy and pandas allocations are traced


def test_dataframe_variables_of_an_encrypted_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_hex(32)
    store_dir = tmp_path / "store"
    session = run_session(store_dir, [
        "import pandas as pd, numpy as np",
        "df = pd.DataFrame({'x': np.arange(100_000)})",
        "small = pd.DataFrame({'a': [1, 2, 3]})",
    ], env={"NBDURABLE_ENCRYPTION_KEY": key})
    assert all(c["success"] for c in session.cells), session.cells
    monkeypatch.setenv("NBDURABLE_ENCRYPTION_KEY", key)
    store = Store.open(store_dir)
    obj = nbd.sql("SELECT object FROM variables WHERE name = 'df'", store=store).object[0]
    assert store.object_path(obj).read_bytes()[:4] == b"NBDE"  # DuckDB could not read it
    assert nbd.sql("SELECT sum(x) AS s FROM vars.df", store=store).s[0] == 100_000 * 99_999 // 2
    assert nbd.sql("SELECT sum(a) AS s FROM vars.small", store=store).s[0] == 6
    assert not (store_dir / "catalog.duckdb").exists()  # no plaintext catalog on disk


# ----- the catalog: events, cheap freshness ------------------------------------------------------------


def _age(directory: Path, seconds: float = 60) -> None:
    """Make a directory's mtime old enough for the catalog to trust it (as if nothing changed for a while)."""
    past = time.time_ns() - int(seconds * 1e9)
    os.utime(directory, ns=(past, past))


def _finished_run(store: Store, run_id: str, *, final: bool = True) -> Any:
    w = store.new_journal(run_id)
    w.append(records.run_record(run_id, notebook="nb", notebook_path=None, kind="headless"), sync=True)
    w.append(records.step_start_record(1, source="x = 1", source_hash="a" * 16))
    w.append(records.step_end_record(1, status="completed", started_at=time.time(), ended_at=time.time(), duration=0.1,
                                     variables=[], outputs=[]), sync=True)
    if final:
        w.append(records.run_end_record("completed"), sync=True)
        w.close()
    return w


def test_events_are_ingested_incrementally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(tmp_path / "store")
    catalog = store.catalog()
    first = store.send_event("a", {"n": 1})
    store.send_event("b", [1, 2])
    catalog.ingest()
    assert catalog.query("SELECT name FROM events ORDER BY id").name.tolist() == ["a", "b"]
    _age(store.path / "events")
    catalog.ingest()  # trusts the directory's mtime from now on
    calls: list[int] = []
    real = Store.event_ids
    monkeypatch.setattr(Store, "event_ids", lambda self, **kw: calls.append(1) or real(self, **kw))
    catalog.ingest()
    assert calls == []  # unchanged directory: not listed
    store.send_event("c", None)
    assert catalog.query("SELECT name FROM events ORDER BY id").name.tolist() == ["a", "b", "c"] and calls == [1]
    (store.path / "events" / f"{first['id']}.json").unlink()
    assert catalog.query("SELECT name FROM events ORDER BY id").name.tolist() == ["b", "c"]
    (store.path / "events" / "00000000000000000001-deadbeef.json").write_bytes(b"not an event\n")  # damaged: skipped
    assert catalog.query("SELECT count(*) AS n FROM events").n[0] == 2
    before = catalog.query("SELECT * FROM events ORDER BY id")
    catalog.rebuild()
    pd.testing.assert_frame_equal(before, catalog.query("SELECT * FROM events ORDER BY id"))


def test_consumer_is_the_first_whatever_the_ingest_order(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    event = store.send_event("go")
    catalog = store.catalog()
    for run_id, delay in (("r2", 5.0), ("r1", 1.0)):  # r2 ingested first but consumed later
        with store.new_journal(run_id) as w:
            w.append(records.run_record(run_id, notebook="nb", notebook_path=None, kind="headless"))
            w.append({**records.consumed_record(3, event["id"], "go"), "ts": event["sent_at"] + delay})
            w.append(records.run_end_record("completed"))
        catalog.ingest()
    row = catalog.query("SELECT consumed_by_run, consumed_by_ordinal FROM events").iloc[0]
    assert (row.consumed_by_run, row.consumed_by_ordinal) == ("r1", 3)
    assert catalog.query("SELECT count(*) AS n FROM consumed").n[0] == 2
    catalog.rebuild()
    assert catalog.query("SELECT consumed_by_run FROM events").consumed_by_run[0] == "r1"


def test_noop_ingest_looks_only_at_unfinished_journals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(tmp_path / "store")
    for i in range(20):
        _finished_run(store, f"done{i:02d}")
    live = _finished_run(store, "live", final=False)
    catalog = store.catalog()
    assert catalog.ingest() == 20 * 4 + 3
    _age(store.path / "journals")
    _age(store.path / "events")
    catalog.ingest()  # records the directories' mtimes
    stats: list[str] = []
    listings: list[str] = []
    real_stat, real_listdir = os.stat, os.listdir
    monkeypatch.setattr(catalog_ingest.os, "stat", lambda p, *a, **k: stats.append(str(p)) or real_stat(p, *a, **k))
    monkeypatch.setattr(catalog_ingest.os, "listdir", lambda p=".": listings.append(str(p)) or real_listdir(p))
    mtime = catalog.path.stat().st_mtime_ns
    assert catalog.ingest() == 0
    journal_stats = [p for p in stats if "/journals/" in p]
    assert journal_stats == [str(store.journal_path("live"))] and listings == []
    # nothing written
    assert catalog.path.stat().st_mtime_ns == mtime and not catalog.path.with_name("catalog.duckdb.wal").exists()
    live.append(records.step_start_record(2, source="y = 2", source_hash="b" * 16), sync=True)
    assert catalog.ingest() == 1 and listings == []  # the unfinished journal grew: seen without listing
    live.append(records.run_end_record("failed"), sync=True)
    live.close()
    assert catalog.runs(limit=100).set_index("run_id").status["live"] == "failed"
    stats.clear()
    catalog.ingest()
    assert [p for p in stats if "/journals/" in p] == []  # every journal is finished now


def test_a_reopened_finished_journal_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(tmp_path / "store")
    _finished_run(store, "r1")
    catalog = store.catalog()
    catalog.ingest()
    _age(store.path / "journals")
    catalog.ingest()  # from now on r1 is finished: not looked at while the directory is unchanged
    with store.append_journal("r1") as w:  # leaves journals/r1.reopened first: the directory changes
        w.append(records.superseded_record("r2"), sync=True)
    assert (store.path / "journals" / "r1.reopened").exists()
    assert catalog.runs().superseded_by[0] == "r2"
    state = catalog.query("SELECT final_offset, reopened FROM ingest_state WHERE run_id = 'r1'", ingest=False)
    assert pd.isna(state.final_offset[0]) and bool(state.reopened[0])
    _age(store.path / "journals")
    _age(store.path / "events")
    catalog.ingest()
    listings: list[str] = []
    real_listdir = os.listdir
    monkeypatch.setattr(catalog_ingest.os, "listdir", lambda p=".": listings.append(str(p)) or real_listdir(p))
    with store.append_journal("r1") as w:  # reopened again: the marker exists, the directory does not change
        w.append(records.superseded_record("r3"), sync=True)
    assert catalog.runs().superseded_by[0] == "r3" and listings == []  # followed without listing


def test_query_many_and_connection(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    _finished_run(store, "r1")
    catalog = store.catalog()
    runs, steps = catalog.query_many([("SELECT run_id FROM runs", None),
                                      ("SELECT ordinal FROM steps WHERE run_id = ?", ["r1"])])
    assert runs.run_id.tolist() == ["r1"] and steps.ordinal.tolist() == [1]
    with catalog.connection() as con:
        assert con.execute("SELECT count(*) FROM steps").fetchall() == [(1,)]
    with catalog.connection(ingest=False) as con:  # the file is attached only inside the block
        con.execute("BEGIN")  # even a transaction left open is closed
    import duckdb

    duckdb.connect(str(catalog.path)).close()  # free again for any other program


def test_sql_documents_every_table_and_column() -> None:
    lines = (nbd.sql.__doc__ or "").splitlines()
    for table in catalog_module.TABLES:
        start = next((i for i, text in enumerate(lines) if text.strip().startswith(table + " ")), None)
        assert start is not None, table
        indent = len(lines[start]) - len(lines[start].lstrip())
        entry = [lines[start]]
        for line in lines[start + 1:]:  # its continuation lines are indented deeper
            if not line.strip() or len(line) - len(line.lstrip()) <= indent:
                break
            entry.append(line)
        words = set(" ".join(entry).replace(",", " ").replace(":", " ").split())
        for column, _ in catalog_module.COLUMNS[table]:
            assert column in words, (table, column)


def test_exported_and_lazy() -> None:
    import subprocess
    import sys

    assert {"history", "sql"} <= set(nbd.__all__) and nbd.history.__module__ == "nbdurable.run_history"
    code = "import sys, nbdurable; print(sorted(m for m in ('duckdb', 'pyarrow', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # `import nbdurable` stays cheap: the catalog's libraries load on first use
