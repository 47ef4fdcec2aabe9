"""The dataflow invariant of a run's journal (``helpers.dataflow_violations``): every restored step read exactly
the versions its session held when it began. Checked here on journals of real sessions (a run killed, then
resumed after an edit and an inserted cell) and on journals corrupted by hand; ``crash_harness.py`` checks it on
every run of every crash trial."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from conftest import run_session
from helpers import KILL, dataflow_violations, journal_paths, journal_records

# `a` is deleted by cell 5 and read (as not defined) by cell 6; `b` is what the second session edits.
CELLS = ["a = [1, 2, 3]", "b = 5", "c = b * 2", "d = len(a)", "del a",
         "try:\n    z = a\nexcept NameError:\n    z = 0", "h = c + d + z"]


def _status(records: list[dict[str, Any]]) -> dict[str, str]:
    """Cell source -> how its top-level step ended in this journal."""
    sources = {r["ordinal"]: r["source"] for r in records if r["t"] == "step_start" and r.get("parent") is None}
    return {sources[r["ordinal"]]: r["status"] for r in records if r["t"] == "step_end" and r["ordinal"] in sources}


def _two_runs(store_dir: Path) -> list[list[dict[str, Any]]]:
    """A session killed after its cells, then one after an edit of `b` with a scratch cell inserted."""
    run_session(store_dir, [*CELLS, KILL])
    edited = [CELLS[0], "print(len(a))", "b = 6", *CELLS[2:]]
    second = run_session(store_dir, edited, probes={"h": "h", "z": "z"})
    assert second.probes == {"h": "15", "z": "0"}
    return [journal_records(path) for path in journal_paths(store_dir)]


def test_a_resumed_session_after_an_edit_has_no_dataflow_violation(store_dir: Path) -> None:
    runs = _two_runs(store_dir)
    assert len(runs) == 2
    status = _status(runs[1])
    assert [status[c] for c in (CELLS[0], CELLS[3], CELLS[4], CELLS[5])] == ["restored"] * 4
    assert [status[c] for c in ("print(len(a))", "b = 6", CELLS[2], CELLS[6])] == ["completed"] * 4
    for records in runs:
        assert dataflow_violations(records) == []


def test_a_restore_of_other_versions_is_a_violation(store_dir: Path) -> None:
    records = _two_runs(store_dir)[1]
    corrupted = copy.deepcopy(records)
    start = next(r for r in corrupted if r["t"] == "step_start" and r["source"] == CELLS[3])  # d = len(a): restored
    held = start["inputs"]["reads"]["a"]
    start["inputs"]["reads"]["a"] = "0" * 32
    assert dataflow_violations(corrupted) == [
        f"step {start['ordinal']} restored with `a` read as {'0' * 32} but the session held {held}"]
    # The commit of the cell that deleted `a` lost: the restored try-cell read `a` as not defined, which it was not.
    deleting = next(r["ordinal"] for r in records if r["t"] == "step_start" and r["source"] == CELLS[4])
    dropped = [r for r in records if not (r["t"] == "step_end" and r["ordinal"] == deleting)]
    reader = next(r["ordinal"] for r in records if r["t"] == "step_start" and r["source"] == CELLS[5])
    assert dataflow_violations(dropped) == [
        f"step {reader} restored with `a` read as (not defined) but the session held {held}"]


def test_commit_order_deletions_and_interpreter_state() -> None:
    """Versions follow the order steps began (a background commit's step_end may come after the next start),
    a deletion makes a name undefined, `%` pseudo-variables are not names, unknown versions equal nothing."""

    def start(ordinal: int, reads: dict[str, str]) -> dict[str, Any]:
        return {"t": "step_start", "ordinal": ordinal, "parent": None, "inputs": {"reads": reads, "ambient": {}}}

    def end(ordinal: int, status: str, *refs: tuple[str, str, str | None]) -> dict[str, Any]:
        return {"t": "step_end", "ordinal": ordinal, "status": status,
                "variables": [{"name": n, "op": op, "object": key} for n, op, key in refs]}

    records = [
        start(1, {}), start(2, {"x": "k1"}), end(1, "completed", ("x", "set", "k1"), ("%warnings", "set", "w")),
        end(2, "restored", ("y", "set", "k2")),
        start(3, {"x": "k1", "y": "k2"}), end(3, "restored", ("x", "del", None)),
        start(4, {"x": ""}), end(4, "failed", ("y", "set", "k3")),  # a failed cell's delta is the session's too
        start(5, {"x": "", "y": "k3"}), end(5, "restored"),
        start(6, {"y": "k1"}),  # killed in it: no end, nothing checked
    ]
    assert dataflow_violations(records) == []
    records += [start(7, {"y": "?"}), end(7, "restored"), start(8, {"q": "k9", "%warnings": "w"}), end(8, "restored")]
    assert dataflow_violations(records) == [
        "step 7 restored with `y` read as ? but the session held k3",
        "step 8 restored with `%warnings` read as w but the session held (not defined)",
        "step 8 restored with `q` read as k9 but the session held (not defined)",
    ]
