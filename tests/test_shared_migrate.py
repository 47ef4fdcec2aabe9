"""``nbdurable migrate``: a directory store with every kind of record copied into PostgreSQL + fsspec
objects, every tag verified; killed half-way (``kill -9``) and run again, the same result; a run killed in
the directory store resumes from the shared one."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import nbformat
import pytest

from nbdurable.store import Store
from nbdurable.store.shared import SharedStore

from helpers import executions, run_cli, start_cli

NOTEBOOKS = Path(__file__).parent / "notebooks"


def _synthetic(store: Store, runs: int) -> None:
    for i in range(runs):
        with store.new_journal(f"run{i:04d}") as w:
            w.append({"t": "run", "notebook": "nb", "params": {}})
            w.append({"t": "step_start", "ordinal": 1})
            w.append({"t": "run_end", "status": "completed"})


def _contents(store: Store) -> dict[str, object]:
    return {"runs": {r: store.read_journal(r) for r in store.run_ids()}, "events": store.events(),
            "cancels": {r: store.cancel_request(r) for r in store.run_ids()}}


@pytest.mark.slow
def test_migrate_is_idempotent_and_resumes_after_kill(pg_store: str, tmp_path: Path) -> None:
    source = Store.open(tmp_path / "local")
    _synthetic(source, 200)
    _, tag = source.write_object("ab" * 16, lambda f: f.write(b"x" * 1000))
    with source.new_journal("withobj") as w:
        w.append({"t": "run", "notebook": "nb"})
        w.append({"t": "step_end", "ordinal": 1, "variables": [
            {"name": "x", "object": "ab" * 16, "format": "pickle", "tag": tag}]})
    source.write_object("cd" * 16, lambda f: f.write(b"garbage"))  # referenced by nobody: not copied
    source.send_event("report.approved", {"week": 47})
    source.request_cancel("run0001", by="ann", reason="stop")
    objects = (tmp_path / "objects").as_uri()
    args = ("migrate", "--from", str(tmp_path / "local"), "--to", pg_store, "--objects", objects)
    proc = start_cli(*args, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while "journals:" not in (line := proc.stderr.readline()):
        assert line, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    target = SharedStore.open(pg_store, objects=objects)
    copied = len(target.run_ids())
    assert 0 < copied < 201, copied  # killed half-way: whole runs only (one transaction each)
    for run_id in target.run_ids():  # what is there is whole
        assert target.read_journal(run_id) == source.read_journal(run_id)
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Copied 201 runs (602 records), 1 events, 1 cancel requests, 1 objects" in again.stdout
    assert _contents(target) == _contents(source)
    assert bytes(target.read_object("ab" * 16, tag)) == b"x" * 1000 and not target.has_object("cd" * 16)
    third = run_cli(*args, cwd=tmp_path)
    assert "0 objects (1 already there, verified)" in third.stdout and _contents(target) == _contents(source)


def test_damaged_records_are_never_copied(pg_store: str, tmp_path: Path) -> None:
    source = Store.open(tmp_path / "local")
    _synthetic(source, 2)
    path = source.journal_path("run0001")
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    result = run_cli("migrate", "--from", str(tmp_path / "local"), "--to", pg_store, "--no-progress", cwd=tmp_path,
                     env={"NBDURABLE_OBJECTS": (tmp_path / "objects").as_uri()})
    assert result.returncode == 1 and "run run0001: line 1 of its journal fails its tag" in result.stderr
    assert SharedStore.open(pg_store).run_ids() == ["run0000"]


@pytest.mark.kernel
@pytest.mark.slow
def test_a_run_killed_in_the_directory_store_resumes_from_the_shared_one(pg_store: str, tmp_path: Path) -> None:
    shutil.copyfile(NOTEBOOKS / "pipeline.ipynb", tmp_path / "pipeline.ipynb")
    local = {"NBDURABLE_STORE": str(tmp_path / ".nbdurable")}
    run = ("run", "pipeline.ipynb", "out.ipynb", "-p", "kill_at", "4", "--no-progress")
    assert run_cli(*run, cwd=tmp_path, env=local).returncode == 1
    done = run_cli("migrate", "--from", ".nbdurable", "--to", pg_store, "--objects", (tmp_path / "obj").as_uri(),
                   cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    resumed = run_cli(*run, cwd=tmp_path, env={"NBDURABLE_STORE": pg_store})
    assert resumed.returncode == 0 and "6 restored" in resumed.stdout, resumed.stdout + resumed.stderr
    assert executions(tmp_path / "counter.txt").count("cell1") == 1
    assert nbformat.read(tmp_path / "out.ipynb", as_version=4).metadata.nbdurable["status"] == "completed"


