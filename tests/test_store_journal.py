"""Store.open and journals: real files, real second processes."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbdurable.errors import CorruptJournalError, LeaseHeldError, RunNotFoundError, StoreError, StoreFormatError
from nbdurable.store import JournalWriter, Store, read_records, records
from nbdurable.store.auth import line_tag
from nbdurable.store.journal import encode_line

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Store:
    return Store.open(tmp_path / "store")


def _write_run(store: Store, run_id: str, steps: int = 2) -> JournalWriter:
    w = store.new_journal(run_id)
    w.append(records.run_record(run_id, notebook="nb", notebook_path="/nb.ipynb", kind="headless"))
    for i in range(1, steps + 1):
        w.append(records.step_start_record(i, source=f"x = {i}", source_hash=f"{i:016x}"))
    return w


# ---------------------------------------------------------------------------------------------- Store.open


def test_open_creates_layout_private(tmp_path: pathlib.Path) -> None:
    store = Store.open(tmp_path / "a" / "store")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o700
    for sub in ("journals", "objects", "leases", "tmp"):
        assert (store.path / sub).is_dir()
    assert json.loads((store.path / "FORMAT").read_text()) == {"format": 2, "created_by": "nbdurable"}
    assert Store.open(store.path, create=False) == store  # reopening works


def test_open_missing_without_create(tmp_path: pathlib.Path) -> None:
    with pytest.raises(StoreFormatError) as exc:
        Store.open(tmp_path / "nope", create=False)
    assert exc.value.hint and not (tmp_path / "nope").exists()


def test_open_empty_directory_becomes_store(tmp_path: pathlib.Path) -> None:
    (tmp_path / "empty").mkdir()
    assert (Store.open(tmp_path / "empty").path / "FORMAT").exists()


def test_open_non_store_directory(tmp_path: pathlib.Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreFormatError, match="not an nbdurable store") as exc:
        Store.open(tmp_path)
    assert exc.value.hint
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # nothing written into someone else's directory


def test_open_newer_format(store: Store) -> None:
    (store.path / "FORMAT").write_text(json.dumps({"format": 3, "created_by": "nbdurable"}))
    with pytest.raises(StoreFormatError, match=r"newer nbdurable \(format 3") as exc:
        Store.open(store.path)
    assert "pip install -U nbdurable" in str(exc.value)


def test_open_a_store_without_authentication(store: Store) -> None:
    (store.path / "FORMAT").write_text(json.dumps({"format": 1, "created_by": "nbdurable"}))
    with pytest.raises(StoreFormatError, match="not authenticated") as exc:
        Store.open(store.path)
    assert "start a new store" in str(exc.value)


@pytest.mark.parametrize("content", ["{not json", '{"created_by": "x"}', '{"format": "1"}', "[]"])
def test_open_unreadable_format(store: Store, content: str) -> None:
    (store.path / "FORMAT").write_text(content)
    with pytest.raises(StoreFormatError, match="unreadable"):
        Store.open(store.path)


def test_open_path_is_a_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreFormatError, match="is a file"):
        Store.open(tmp_path / "f")


def test_concurrent_open_of_new_store(tmp_path: pathlib.Path) -> None:
    code = "import sys; from nbdurable.store import Store; Store.open(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")], env=env, stderr=subprocess.PIPE)
             for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()


# ---------------------------------------------------------------------------------------------- journals


def test_round_trip(store: Store) -> None:
    with _write_run(store, "r1") as w:
        t = time.time()
        rec = records.step_end_record(
            1, status="completed", started_at=t, ended_at=t + 1, duration=1.0,
            variables=[{"name": "héllo\t\n", "op": "set", "object": None}],
            outputs=[{"output_type": "stream", "name": "stdout", "text": "a\tb\nc"}],
        )
        assert w.append(rec, sync=True) == 4
        assert rec["seq"] == 4 and isinstance(rec["ts"], float)
        assert w.append({"t": "custom", "ts": 12.5}) == 5
    got = store.read_journal("r1")
    assert [r["seq"] for r in got] == [1, 2, 3, 4, 5]
    assert got[0]["t"] == "run" and got[0]["run_id"] == "r1"
    assert got[3] == rec and got[3]["variables"][0]["name"] == "héllo\t\n"
    assert got[4]["ts"] == 12.5  # a caller's ts is kept
    raw = (store.path / "journals" / "r1.jsonl").read_bytes()
    assert raw.count(b"\n") == 5 and all(line.count(b"\t") == 1 for line in raw.splitlines())
    assert store.journal_exists("r1") and not store.journal_exists("r2")


def test_new_journal_exists(store: Store) -> None:
    _write_run(store, "r1").close()
    with pytest.raises(StoreError, match="already exists") as exc:
        store.new_journal("r1")
    assert exc.value.hint


def test_missing_journal(store: Store) -> None:
    with pytest.raises(RunNotFoundError) as exc:
        store.read_journal("nope")
    assert "nbdurable runs" in str(exc.value)
    with pytest.raises(RunNotFoundError):
        store.append_journal("nope")
    with pytest.raises(RunNotFoundError):
        store.read_journal("../etc/passwd")  # a malformed id cannot name a run


def test_bad_run_id(store: Store) -> None:
    for bad in ("", "../x", "a/b", ".hidden", "x" * 300):
        with pytest.raises(ValueError):
            store.new_journal(bad)
        assert not store.journal_exists(bad)


def test_run_ids_sorted(store: Store) -> None:
    for rid in ("20240102-b", "20240101-a", "20240103-c"):
        store.new_journal(rid).close()
    (store.path / "journals" / "junk.txt").write_text("x")
    assert store.run_ids() == ["20240101-a", "20240102-b", "20240103-c"]


def test_append_journal_continues_seq(store: Store) -> None:
    _write_run(store, "r1").close()
    with store.append_journal("r1") as w:
        assert w.append(records.superseded_record("r2"), sync=True) == 4
    with store.append_journal("r1") as w:
        assert w.append({"t": "note"}) == 5
    assert [r["seq"] for r in store.read_journal("r1")] == [1, 2, 3, 4, 5]


def test_torn_tail_ignored_and_truncated(store: Store) -> None:
    _write_run(store, "r1").close()
    path = store.path / "journals" / "r1.jsonl"
    good = path.read_bytes()
    line = encode_line({"t": "step_start", "ordinal": 3, "seq": 4, "ts": 1.0})
    with open(path, "ab") as f:
        f.write(line[: len(line) // 2])  # a crash in the middle of a write
    assert [r["seq"] for r in store.read_journal("r1")] == [1, 2, 3]
    recs, end, torn = read_records(path)
    assert (len(recs), end, torn) == (3, len(good), True)
    with store.append_journal("r1") as w:
        assert path.read_bytes() == good  # the torn tail is gone before anything is appended
        assert w.append({"t": "note"}) == 4
    assert [r["seq"] for r in store.read_journal("r1")] == [1, 2, 3, 4]


def test_torn_last_line_with_newline_but_bad_check(store: Store) -> None:
    _write_run(store, "r1").close()
    path = store.path / "journals" / "r1.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"t":"step_start","seq":4}\t0000000000000000\n')
    assert len(store.read_journal("r1")) == 3
    assert read_records(path)[2] is True


def test_corrupt_middle_line(store: Store) -> None:
    _write_run(store, "r1", steps=4).close()
    path = store.path / "journals" / "r1.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"x = 2", b"x = 9")  # bit rot in record 3 of 5
    path.write_bytes(b"".join(lines))
    with pytest.raises(CorruptJournalError) as exc:
        store.read_journal("r1")
    err = exc.value
    assert "line 3" in str(err) and str(path) in str(err) and "nbdurable check" in str(err)
    assert err.line == 3  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(err)).hint == err.hint
    with pytest.raises(CorruptJournalError):
        store.append_journal("r1")  # never append after damage
    # Incremental reads from an offset report the absolute line number too.
    offset = len(lines[0]) + len(lines[1])
    with pytest.raises(CorruptJournalError, match="line 3"):
        read_records(path, offset)


def test_authenticated_garbage_is_corrupt_even_last(store: Store) -> None:
    _write_run(store, "r1").close()
    path = store.path / "journals" / "r1.jsonl"
    body = b"[1,2]"
    with open(path, "ab") as f:
        f.write(body + b"\t" + line_tag(body) + b"\n")
    with pytest.raises(CorruptJournalError, match="line 4"):
        store.read_journal("r1")


def test_a_line_written_under_another_key_is_never_parsed(store: Store, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Authentication: records forged without the user's key (or written under another user's key) are
    refused before anything in them is used; mid-file that is damage, as the last line it is a torn tail."""
    _write_run(store, "r1").close()
    path = store.path / "journals" / "r1.jsonl"
    honest = path.read_bytes()
    monkeypatch.setenv("NBDURABLE_KEY_FILE", str(tmp_path / "attacker-key"))
    forged = encode_line({"t": "step_end", "ordinal": 1, "status": "completed",
                          "variables": [{"name": "x", "op": "set"}]})
    monkeypatch.delenv("NBDURABLE_KEY_FILE")
    path.write_bytes(honest + forged)
    assert len(store.read_journal("r1")) == 3  # the forged last line is ignored like a torn write
    path.write_bytes(forged + honest)
    with pytest.raises(CorruptJournalError, match="line 1: fails authentication"):
        store.read_journal("r1")


def test_read_records_incremental(store: Store) -> None:
    w = _write_run(store, "r1")
    path = w.path
    recs, end, torn = read_records(path)
    assert (len(recs), end, torn) == (3, path.stat().st_size, False)
    w.append({"t": "note"})
    w.append({"t": "note"})
    more, end2, _ = read_records(path, end)
    assert [r["seq"] for r in more] == [4, 5] and end2 == path.stat().st_size
    assert read_records(path, end2) == ([], end2, False)
    w.close()


def test_sync_paths(store: Store) -> None:
    w = _write_run(store, "r1")
    assert w.append({"t": "note"}, sync=True) == 4
    w.sync()
    w.close()
    w.close()  # idempotent
    w.sync()  # no-op when closed
    with pytest.raises(StoreError, match="closed"):
        w.append({"t": "note"})


def test_unserializable_record_leaves_no_trace(store: Store) -> None:
    with _write_run(store, "r1") as w:
        rec = {"t": "bad", "x": object()}
        with pytest.raises(TypeError):
            w.append(rec)
        assert rec == {"t": "bad", "x": rec["x"]}
        assert w.append({"t": "ok"}) == 4  # the failed record did not use a seq number
    assert [r["t"] for r in store.read_journal("r1")][-1] == "ok"


def test_append_speed(store: Store) -> None:
    with _write_run(store, "r1") as w:
        times = []
        for i in range(300):
            rec = records.step_start_record(i, source="x = 1", source_hash="0" * 16)
            t = time.perf_counter()
            w.append(rec)
            times.append(time.perf_counter() - t)
    times.sort()
    assert times[len(times) // 2] < 200e-6  # ~5-20 µs measured; generous for a shared CI machine


_HOLDER = """
import sys, time
from nbdurable.store import Store
store = Store.open(sys.argv[1])
lease = store.acquire_lease(sys.argv[2])
print("ready", flush=True)
time.sleep(60)
"""


def test_append_journal_refuses_run_driven_by_live_process(store: Store) -> None:
    _write_run(store, "r1").close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store.path), "r1"], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        with pytest.raises(LeaseHeldError, match=f"pid {proc.pid}"):
            store.append_journal("r1")
    finally:
        proc.kill()
        proc.wait()
    store.append_journal("r1").close()  # the holder is dead: appending is allowed
    with store.acquire_lease("r1"):
        store.append_journal("r1").close()  # this process holds the lease: allowed too


def test_one_open_writer_per_journal_in_process(store: Store) -> None:
    w = _write_run(store, "r1")
    with pytest.raises(StoreError, match="already open"):
        store.append_journal("r1")  # two writers would number records twice
    w.close()
    with store.append_journal("r1") as w2:
        assert w2.append({"t": "note"}) == 4
    del w2
    store.append_journal("r1")  # dropped without close: released when collected
    import gc

    gc.collect()
    store.append_journal("r1").close()


def test_group_commit_flushes_in_the_background_and_close_waits(tmp_path) -> None:
    from nbdurable.store import Store

    store = Store.open(tmp_path / "store")
    writer = store.new_journal("r1")
    for i in range(50):
        writer.append({"t": "step_end", "ordinal": i})
        writer.sync_soon()
    flusher = writer._flusher
    assert flusher is not None and flusher.is_alive()
    writer.close()
    assert not flusher.is_alive(), "close must stop and join the flusher before closing the descriptor"
    assert [r["ordinal"] for r in store.read_journal("r1")] == list(range(50))
