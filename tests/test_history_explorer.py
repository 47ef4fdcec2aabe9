"""The history explorer: real runs in a temporary store, the widget driven through a recording comm."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbdurable.capture.namespace import Change
from nbdurable.runtime.run import DurableRun
from nbdurable.serialization import serialize
from nbdurable.store import Store, records
from nbdurable.widgets import static_text
from nbdurable.widgets.compare import compare, compare_runs, match_steps
from nbdurable.widgets.graph import build_graph
from nbdurable.widgets.history import MAX_RUNS, HistoryExplorer, filters_query, notebook_label, parse_time

from widget_comm import recording_comms

Cell = tuple[str, dict[str, Any]]  # (source, variables it sets)


def record(store: Store, notebook: str, params: dict[str, Any], cells: list[Cell], *, status: str = "completed",
           failed_at: int | None = None) -> str:
    """A real run: one step per cell, its variables serialized and persisted like the kernel does."""
    time.sleep(0.002)  # run ids and start times sort by time
    run = DurableRun(store, notebook=notebook, params=params, kind="headless")
    for i, (source, values) in enumerate(cells, start=1):
        step = run.begin_step(source=source, source_hash=f"{abs(hash(source)):032x}")
        failed = i == failed_at
        run.end_step(step, status="failed" if failed else "completed",
                     changes=[Change(name, "set", serialize(value), f"i-{name}") for name, value in values.items()],
                     error={"ename": "ValueError", "evalue": "boom", "traceback": []} if failed else None)
    run.finish(status)
    return run.run_id


def old_run(store: Store, run_id: str, notebook: str, started: float) -> None:
    """A run dated ``started`` (journal records written directly, with their timestamps)."""
    with store.new_journal(run_id) as w:
        w.append({**records.run_record(run_id, notebook=notebook, notebook_path=None, kind="headless",
                                       params={"lr": 0.5}), "ts": started}, sync=True)
        w.append(records.step_start_record(1, source="a = 1", source_hash="f" * 32), sync=True)
        w.append(records.step_end_record(1, status="completed", started_at=started, ended_at=started + 2, duration=2.0,
                                         variables=[], outputs=[]), sync=True)
        w.append({**records.run_end_record("completed"), "ts": started + 3}, sync=True)


TRAIN = [("x = 1", {"x": 1}), ("y = x * 2", {"y": 2}), ("z = 3", {"z": 3})]
TRAIN_B = [("x = 1", {"x": 1}), ("y = x * 3", {"y": 3}), ("z = 3", {"z": 3})]  # cell 2 edited, so y changed


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "store")


@pytest.fixture
def runs(store: Store) -> dict[str, str]:
    return {
        "a": record(store, "train", {"lr": 0.1, "epochs": 3, "opt": "adam"}, TRAIN),
        "b": record(store, "train", {"lr": 0.2, "epochs": 3, "opt": "adam"}, TRAIN_B),
        "c": record(store, "eval", {"lr": 0.1, "epochs": 10}, [("q = 1", {"q": 1}), ("1 / 0", {})], status="failed",
                    failed_at=2),
    }


@pytest.fixture
def widget(store: Store, runs: dict[str, str]) -> Iterator[HistoryExplorer]:
    with recording_comms():
        w = HistoryExplorer(store=store)
    yield w
    w.close()


def set_filters(w: HistoryExplorer, **filters: str) -> list[str]:
    """Filters changed in the frontend; returns the run ids listed."""
    w.comm.receive({"method": "update", "state": {"filters": filters}})
    return [r["run_id"] for r in w.runs]


# ----------------------------------------------------------------------------------------------------
# Filters


def test_lists_runs_newest_first(widget: HistoryExplorer, runs: dict[str, str]) -> None:
    assert [r["run_id"] for r in widget.runs] == [runs["c"], runs["b"], runs["a"]]
    assert widget.total == 3 and widget.error == "" and widget.notebooks == ["eval", "train"]
    row = widget.runs[0]
    assert set(row) >= {"run_id", "notebook", "status", "started_at", "duration_s", "steps_total", "steps_executed",
                        "steps_restored", "steps_failed", "time_saved_s", "params"}
    assert (row["notebook"], row["status"], row["params"]) == ("eval", "failed", {"lr": 0.1, "epochs": 10})
    assert (row["steps_total"], row["steps_executed"], row["steps_failed"]) == (2, 1, 1)
    assert isinstance(row["started_at"], float) and abs(row["started_at"] - time.time()) < 60
    json.dumps(widget.runs)  # plain JSON: no NaN, no numpy scalars


def test_filters_narrow_the_runs(widget: HistoryExplorer, runs: dict[str, str]) -> None:
    a, b, c = runs["a"], runs["b"], runs["c"]
    assert set_filters(widget, notebook="train") == [b, a]
    assert widget.total == 2
    assert set_filters(widget, notebook="tr*") == [b, a]  # a glob
    assert set_filters(widget, status="failed") == [c]
    assert set_filters(widget, notebook="train", status="failed") == []
    assert widget.total == 0
    assert set_filters(widget, params="lr=0.1") == [c, a]
    assert set_filters(widget, params="lr=0.1, epochs=3") == [a]
    assert set_filters(widget, params="epochs>=5") == [c]
    assert set_filters(widget, params="epochs == 3.0") == [b, a]  # numbers compare as numbers
    assert set_filters(widget, params="opt=adam") == [b, a]  # bare text
    assert set_filters(widget, params='opt="adam", lr!=0.1') == [b]
    assert set_filters(widget, params="opt!=adam") == [c]  # != also matches runs without the parameter
    assert set_filters(widget, params="missing=1") == []
    assert set_filters(widget, since="1h") == [c, b, a]
    assert set_filters(widget, until="1h") == []
    today = dt.date.today()
    assert set_filters(widget, since=today.isoformat(), until=today.isoformat()) == [c, b, a]  # until: the whole day
    assert set_filters(widget, since=(today + dt.timedelta(days=1)).isoformat()) == []
    assert set_filters(widget) == [c, b, a]
    assert widget.error == ""
    # Each change sent the new runs to the frontend.
    assert any("runs" in update and "total" in update for update in widget.comm.updates())


def test_parameter_filters_on_json_values(store: Store) -> None:
    one = record(store, "nb", {"layers": [64, 32], "opt": {"name": "sgd", "beta": "é"}, "seed": None, "amp": True,
                               "model": {"depth": 4}}, [])
    two = record(store, "nb", {"layers": [64], "amp": False, "model": {"depth": 2}}, [])
    with recording_comms():
        w = HistoryExplorer(store=store)
    assert set_filters(w, params="layers=[64, 32]") == [one]
    assert set_filters(w, params='opt={"beta": "é", "name": "sgd"}') == [one]  # key order does not matter
    assert set_filters(w, params="seed=null") == [one]
    assert set_filters(w, params="amp=true") == [one]
    assert set_filters(w, params="amp!=true") == [two]
    assert set_filters(w, params="model.depth<3") == [two]  # nested parameters by dotted name
    assert set_filters(w, params="name='x, y'") == []  # a quoted comma does not split terms
    assert w.error == ""
    w.close()


def test_filters_set_from_python_and_notebook_argument(store: Store, runs: dict[str, str]) -> None:
    with recording_comms():
        w = HistoryExplorer(store=store, notebook="eval")
    assert [r["run_id"] for r in w.runs] == [runs["c"]] and w.filters["notebook"] == "eval"
    w.filters = {"params": "lr=0.2"}
    assert [r["run_id"] for r in w.runs] == [runs["b"]]
    w.close()


def test_date_range(store: Store, runs: dict[str, str]) -> None:
    started = dt.datetime(2024, 1, 15, 12, 0).timestamp()  # local time, as the filters read dates
    old_run(store, "20240115T120000000-abcdef", "train", started)
    with recording_comms():
        w = HistoryExplorer(store=store)
    assert w.total == 4 and w.runs[-1]["run_id"] == "20240115T120000000-abcdef"
    assert set_filters(w, until="2024-01-15") == ["20240115T120000000-abcdef"]
    assert set_filters(w, since="2024-01-15", until="2024-01-15 12:00") == ["20240115T120000000-abcdef"]
    assert set_filters(w, since="2024-01-15 12:00:01", until="2024-12-31") == []
    assert set_filters(w, until="2024-01-14") == []
    assert set_filters(w, since="2024-01-16") == [runs["c"], runs["b"], runs["a"]]
    assert set_filters(w, since=str(started), until=str(started)) == ["20240115T120000000-abcdef"]  # unix seconds
    assert w.error == ""
    w.close()


def test_parse_time() -> None:
    now = 1_700_000_000.0
    assert parse_time("") is None
    assert parse_time("2h", now=now) == dt.datetime(2023, 11, 14, 20, 13, 20)  # naive UTC
    day_end = parse_time("2024-03-01", end=True)
    assert day_end is not None and (day_end - (parse_time("2024-03-01") or day_end)
                                    == dt.timedelta(days=1, microseconds=-1))
    assert parse_time("2024-03-01T10:00:00+00:00") == dt.datetime(2024, 3, 1, 10, 0)


def test_one_query_with_a_limit(store: Store) -> None:
    sql, args = filters_query({"notebook": "nb", "params": "lr=0.1, epochs>3", "since": "7d"})
    assert sql.count("SELECT") == 1 and sql.rstrip().endswith("LIMIT ?") and args[-1] == MAX_RUNS
    assert "count(*) OVER ()" in sql  # the total comes with the page, not from a second query
    for i in range(MAX_RUNS + 5):
        old_run(store, f"2024{i:04d}-run", "nb", 1_700_000_000.0 + i)
    with recording_comms():
        w = HistoryExplorer(store=store)
    assert (len(w.runs), w.total) == (MAX_RUNS, MAX_RUNS + 5)
    assert w.runs[0]["run_id"] == f"2024{MAX_RUNS + 4:04d}-run"  # newest first
    w.close()


@pytest.mark.parametrize("filters, fragment", [
    ({"params": "lr"}, "bad parameter filter 'lr': expected name=value"),
    ({"params": "lr="}, "no value after the operator"),
    ({"params": "=3"}, "bad parameter filter '=3'"),
    ({"params": "flag>true"}, "compares numbers or text"),
    ({"params": "markup>>1"}, "bad parameter filter 'markup>>1': the value '>1' starts with an operator"),
    ({"params": "lr=<3"}, "the value '<3' starts with an operator"),
    ({"status": "exploded"}, "unknown run status 'exploded'"),
    ({"since": "last tuesday"}, "bad date 'last tuesday' for since"),
    ({"until": "2024-13-45"}, "bad date '2024-13-45' for until"),
    ({"since": "2024-02-01", "until": "2024-01-01"}, "is after until"),
])
def test_bad_filters_show_an_error(widget: HistoryExplorer, runs: dict[str, str], filters: dict[str, str],
                                   fragment: str) -> None:
    before = list(widget.runs)
    widget.comm.receive({"method": "update", "state": {"filters": filters}})  # no exception escapes
    assert fragment in widget.error and "Traceback" not in widget.error
    assert widget.runs == before  # the last good list stays
    assert any(update.get("error") for update in widget.comm.updates())
    assert set_filters(widget, notebook="train") == [runs["b"], runs["a"]]
    assert widget.error == ""  # a good filter clears it


def test_refresh_ingests_new_runs(widget: HistoryExplorer, store: Store) -> None:
    assert widget.total == 3
    new = record(store, "train", {"lr": 0.3}, TRAIN)
    widget.comm.click({"type": "refresh"})
    assert widget.total == 4 and widget.runs[0]["run_id"] == new and widget.refreshed_at > 0


# ----------------------------------------------------------------------------------------------------
# One run's graph


def test_selecting_a_run_gives_its_graph(widget: HistoryExplorer, store: Store, runs: dict[str, str]) -> None:
    widget.comm.receive({"method": "update", "state": {"selected_run": runs["c"]}})
    graph = widget.graph
    assert graph == build_graph(store, runs["c"]) and widget.error == ""
    assert graph["run"]["run_id"] == runs["c"] and [n["id"] for n in graph["nodes"]] == ["s1", "s2"]
    assert [n["status"] for n in graph["nodes"]] == ["completed", "failed"]
    assert any(update.get("graph") for update in widget.comm.updates())
    widget.comm.receive({"method": "update", "state": {"selected_node": "s2"}})
    assert widget.selected_node == "s2"
    widget.comm.receive({"method": "update", "state": {"selected_run": runs["a"]}})
    assert widget.graph["run"]["run_id"] == runs["a"] and widget.selected_node == ""  # a new run: no node selected
    widget.selected_run = ""
    assert widget.graph is None and widget.error == ""


def test_a_run_that_disappeared(widget: HistoryExplorer, store: Store, runs: dict[str, str]) -> None:
    widget.comm.receive({"method": "update", "state": {"selected_run": "20990101T000000000-nope"}})
    assert widget.graph is None and "no run '20990101T000000000-nope'" in widget.error
    widget.selected_run = runs["b"]
    assert widget.error == "" and widget.graph is not None
    store.journal_path(runs["b"]).unlink()  # deleted behind the widget's back
    widget.comm.click({"type": "refresh"})
    assert widget.graph is None and f"no run {runs['b']!r}" in widget.error
    assert runs["b"] not in [r["run_id"] for r in widget.runs] and widget.total == 2


# ----------------------------------------------------------------------------------------------------
# Two runs compared


def test_compare_reports_exactly_what_changed(widget: HistoryExplorer, runs: dict[str, str]) -> None:
    widget.comm.receive({"method": "update", "state": {"compare": [runs["a"], runs["b"]]}})
    c = widget.comparison
    assert c is not None and widget.error == ""
    assert (c["a"]["run_id"], c["b"]["run_id"]) == (runs["a"], runs["b"])
    # Parameters side by side: only lr differs.
    assert c["summary"]["params_changed"] == ["lr"]
    assert {p["name"]: (p["a"], p["b"], p["differs"]) for p in c["params"]} == {
        "epochs": (3, 3, False), "lr": (0.1, 0.2, True), "opt": ("adam", "adam", False)}
    # Steps: matched by source hash, then the edited cell by position; only that one differs.
    steps = c["steps"]
    assert [(s["a"]["ordinal"], s["b"]["ordinal"], s["match"], s["change"]) for s in steps] == [
        (1, 1, "source", "same"), (2, 2, "position", "source_changed"), (3, 3, "source", "same")]
    assert [s["differs"] for s in steps] == [False, True, False]
    assert steps[1]["reasons"] == ["source changed"] and "-y = x * 2" in steps[1]["source_diff"]
    assert all(isinstance(s[side]["duration_s"], float) for s in steps for side in "ab")
    assert c["summary"]["steps_differ"] == 1 and c["summary"]["steps_source_changed"] == 1
    # Variables: only y (a new value, so a new content key).
    assert c["summary"]["variables_changed"] == ["y"]
    y = next(v for v in c["variables"] if v["name"] == "y")
    assert y["change"] == "changed" and "object" in y["fields"] and y["a"]["object"] != y["b"]["object"]
    assert [v["name"] for v in c["variables"] if not v["differs"]] == ["x", "z"]
    json.dumps(c)
    # Fewer than two picks: no comparison, no error.
    widget.comm.receive({"method": "update", "state": {"compare": [runs["a"]]}})
    assert widget.comparison is None and widget.error == ""


def test_compare_new_removed_and_status_changed_steps(store: Store) -> None:
    a = record(store, "nb", {}, [("a = 1", {"a": 1}), ("b = 2", {"b": 2}), ("c = 3", {"c": 3}),
                                 ("gone = 1", {"gone": 1})])
    b = record(store, "nb", {}, [("a = 1", {"a": 1}), ("new = 5", {"new": 5}), ("b = 2", {"b": 2}),
                                 ("c = 3", {"c": 3})], status="failed", failed_at=4)
    c = compare_runs(store, a, b)
    assert [(s["change"], s["a"] and s["a"]["ordinal"], s["b"] and s["b"]["ordinal"]) for s in c["steps"]] == [
        ("same", 1, 1), ("only_in_b", None, 2), ("same", 2, 3), ("status_changed", 3, 4), ("only_in_a", 4, None)]
    assert (c["steps"][3]["reasons"] == ["status completed → failed"]
            and c["steps"][3]["b"]["error"] == "ValueError: boom")
    summary = c["summary"]
    assert (summary["steps_differ"], summary["steps_only_in_a"], summary["steps_only_in_b"],
            summary["steps_status_changed"]) == (3, 1, 1, 1)
    assert {v["name"]: v["change"] for v in c["variables"] if v["differs"]} == {"gone": "only_in_a", "new": "only_in_b"}
    assert summary["params_changed"] == []


def test_compare_errors_and_restored_steps(widget: HistoryExplorer, runs: dict[str, str]) -> None:
    widget.comm.receive({"method": "update", "state": {"compare": [runs["a"], "20990101T000000000-gone"]}})
    assert widget.comparison is None and "no run '20990101T000000000-gone'" in widget.error
    widget.comm.receive({"method": "update", "state": {"compare": [runs["a"], runs["b"], runs["c"]]}})
    assert widget.comparison is None and "compare takes two run ids" in widget.error
    widget.compare = [runs["a"], runs["a"]]
    assert widget.error == "" and widget.comparison["summary"]["steps_differ"] == 0
    # A restored step is the same work as the completed one it came from: it does not differ.
    step = {"ordinal": 1, "name": None, "source": "x = 1", "source_hash": "h1", "started_at": 10.0, "ended_at": 12.0,
            "duration_s": 2.0}
    run = {"run_id": "r", "params": "{}", "duration_s": 2.0}
    done = {"run": run, "steps": [{**step, "status": "completed"}], "variables": []}
    restored = {"run": {**run, "run_id": "s"}, "steps": [{**step, "status": "restored", "ended_at": 10.5}],
                "variables": []}
    row = compare(done, restored)["steps"][0]
    assert row["differs"] is False and row["b"]["duration_s"] == 0.5 and row["b"]["time_saved_s"] == 1.5


def test_match_steps_by_name_then_position() -> None:
    a = [{"source_hash": "1"}, {"source_hash": "2", "name": "load"}, {"source_hash": "3"}, {"source_hash": "4"}]
    b = [{"source_hash": "1"}, {"source_hash": "9"}, {"source_hash": "8", "name": "load"}, {"source_hash": "4"}]
    assert match_steps(a, b) == [(0, 0, "source"), (1, 2, "name"), (2, 1, "position"), (3, 3, "source")]
    assert match_steps([], [{"source_hash": "1"}]) == [(None, 0, None)]
    assert match_steps([{"source_hash": None}], [{"source_hash": None}]) == [(0, 0, "position")]


# ----------------------------------------------------------------------------------------------------
# The frontend module


def test_esm_is_the_graph_scripts_then_history_and_parses(tmp_path: Path) -> None:
    esm = HistoryExplorer._esm
    text = esm if isinstance(esm, str) else str(esm)
    assert text == static_text("graph", "history.js")
    static = Path(__file__).parents[1] / "nbdurable/widgets/static"
    history = (static / "history.js").read_text()
    assert text.endswith(history) and "export default" in history
    # The styles: graph.css then history.css, as anywidget's _css (one <style> per widget class), none in the module.
    assert str(HistoryExplorer._css) == (static / "graph.css").read_text() + "\n" + (static / "history.css").read_text()
    assert 'h("style"' not in history and "const CSS" not in history
    for selector in ("nbd-history", "nbd-filter-notebook", "nbd-filter-status", "nbd-filter-params", "nbd-filter-since",
                     "nbd-filter-until", "nbd-run", "nbd-compare-pick", "nbd-history-graph", "nbd-compare",
                     "nbd-step-diff", "nbd-history-error", "data-differs", "data-run-id", "nbd-refresh"):
        assert selector in history, selector
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    module = tmp_path / "history.mjs"
    module.write_text(text)
    proc = subprocess.run([node, "--check", str(module)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_notebooks_are_shown_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert notebook_label(str(tmp_path / "reports" / "q3.ipynb")) == "reports/q3.ipynb"  # below the working dir
    assert notebook_label("/elsewhere/deep/path/train.ipynb") == "train.ipynb"  # the full path is the tooltip
    assert notebook_label("quickstart") == "quickstart" and notebook_label(None) is None


def test_the_origin_filter_finds_runs_by_schedule_trigger_or_parent(store: Store) -> None:
    """Issue 17, item 6: the explorer filters by what started a run (and its rows say it)."""
    started = {}
    for name, origin in [("by_schedule", {"schedule": "nightly", "slot": "s"}), ("by_trigger", {"trigger": "orders"}),
                         ("person", None), ("parent", None)]:
        run = DurableRun(store, notebook=name, kind="headless", origin=origin)
        run.finish("completed")
        started[name] = run.run_id
    child = DurableRun(store, notebook="child", kind="headless",
                       origin={"parent_run": started["parent"], "parent_root": started["parent"], "parent_step": 1})
    child.finish("completed")
    with recording_comms():
        w = HistoryExplorer(store=store)

    def shown(origin: str) -> list[str]:
        w.comm.receive({"method": "update", "state": {"filters": {"origin": origin}}})
        assert w.error == "", w.error
        return [r["notebook"] for r in w.runs]

    assert shown("schedule:nightly") == ["by_schedule"] and shown("trigger:ord*") == ["by_trigger"]
    assert shown("orders") == ["by_trigger"] and shown("nightly") == ["by_schedule"]
    assert shown(f"parent:{started['parent']}") == ["child"]
    assert len(shown("")) == 5
    row = next(r for r in w.runs if r["notebook"] == "by_trigger")
    assert (row["trigger"], row["schedule"], row["parent_run"]) == ("orders", None, None)
    w.comm.receive({"method": "update", "state": {"filters": {"origin": "cron:nightly"}}})
    assert "bad origin filter 'cron:nightly'" in w.error and "schedule:NAME" in w.error
    w.close()
