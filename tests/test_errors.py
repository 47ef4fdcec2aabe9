"""Bad input gets a clear error and loses nothing: unknown run ids, corrupt stores, wrong options."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_session


def test_unknown_run_id(store_dir: Path) -> None:
    session = run_session(store_dir, ["%durable resume 20990101T000000000-abcdef"])
    assert not session.cells[-1]["success"]
    assert "RunNotFoundError" in session.cells[-1]["error"] and "%durable runs" in session.cells[-1]["error"]


def test_nothing_to_resume(store_dir: Path) -> None:
    session = run_session(store_dir, ["%durable resume"])
    assert "No unfinished run to resume" in session.cells[-1]["error"]


def test_store_from_a_newer_version_is_refused(store_dir: Path) -> None:
    run_session(store_dir, ["a = 1"])
    (store_dir / "FORMAT").write_text(json.dumps({"format": 99}))
    session = run_session(store_dir, ["a = 1"])
    assert "newer" in session.stdout and "pip install -U nbdurable" in session.stdout
    assert (store_dir / "FORMAT").read_text() == json.dumps({"format": 99}), "a refused store is never touched"


def test_corrupt_journal_record_is_reported(store_dir: Path) -> None:
    run_session(store_dir, ["a = 1", "b = 2", "import os; os.kill(os.getpid(), 9)"])
    journal = next((store_dir / "journals").glob("*.jsonl"))
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"', b"'", 1)
    journal.write_bytes(b"".join(lines))
    session = run_session(store_dir, ["a = 1", "b = a + 1"], probes={"b": "b"})
    assert ("not resuming" in session.stdout and "damaged at line 2" in session.stdout
            and "nbdurable check" in session.stdout)
    assert session.probes == {"b": "2"}, "a damaged journal must not keep the notebook from running"
    assert len(list((store_dir / "journals").glob("*.jsonl"))) == 2, "the damaged journal is kept as it was"


def test_bad_magic_options(store_dir: Path) -> None:
    session = run_session(store_dir, ["%%durable --bogus\nx = 1", "%durable frobnicate", "%durable runs --limit 0",
                                      "y = 2"], probes={"y": "y"})
    errors = [c["error"] or "" for c in session.cells[1:4]]
    assert "unknown option" in errors[0] and "usage" in errors[0].lower()
    assert "unknown subcommand 'frobnicate'" in errors[1]
    assert "--limit must be at least 1" in errors[2]
    assert session.probes == {"y": "2"}
