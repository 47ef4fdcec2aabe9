"""The events' group commit (store/event_log.py): batches acknowledged after one sync of a segment, every event
file readable at once, segments checkpointed away, and a writer that died before its checkpoint recovered by
the next ``Store.open`` — the files a power loss would take (missing, torn) written again, a live writer's
segment never touched, a torn last line ignored."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from nbdurable.store import Store
from nbdurable.store.event_log import LOG_DIR, recover_event_log
from nbdurable.store.events import new_event

WRITER = textwrap.dedent("""
    import os, sys, time
    from nbdurable.store import Store
    from nbdurable.store.events import new_event
    store = Store.open(sys.argv[1])
    log = store.open_event_writer()
    for batch in range(int(sys.argv[2])):
        log.write([new_event("tick", {"batch": batch, "i": i}) for i in range(10)])
    print("written", flush=True)
    if sys.argv[3] == "hold":
        time.sleep(60)
    os._exit(0)  # died before any checkpoint: no close()
""")


def segments(store: Store) -> list[str]:
    directory = store.path / LOG_DIR
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_a_batch_is_readable_at_once_and_close_leaves_no_segment(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    log = store.open_event_writer()
    sent = [new_event("order", {"n": n}) for n in range(50)]
    log.write(sent[:20])
    log.write(sent[20:])
    assert [e["data"]["n"] for e in store.events(name="order")] == list(range(50))
    assert len(segments(store)) == 1  # the open segment holds the lines until its checkpoint
    log.close()
    assert segments(store) == []
    assert [e["id"] for e in store.events()] == [e["id"] for e in sent]


def test_segments_rotate_and_are_checkpointed_while_writing(tmp_path: Path, monkeypatch) -> None:
    import nbdurable.store.event_log as event_log

    monkeypatch.setattr(event_log, "ROTATE_EVENTS", 25)
    store = Store.open(tmp_path / "store")
    log = store.open_event_writer()
    for batch in range(10):
        log.write([new_event("tick", {"b": batch, "i": i}) for i in range(10)])
    deadline = time.monotonic() + 30
    while len(segments(store)) > 1 and time.monotonic() < deadline:  # checkpoints run on their own thread
        time.sleep(0.05)
    assert len(segments(store)) <= 1
    log.close()
    assert len(store.events(name="tick")) == 100 and segments(store) == []


def test_a_writer_that_died_has_its_lost_files_written_again_by_the_next_open(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    done = subprocess.run([sys.executable, "-c", WRITER, str(store.path), "3", "exit"], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "written", done.stderr
    assert len(segments(store)) == 1  # never checkpointed
    ids = store.event_ids()
    assert len(ids) == 30
    # What a power loss can do to files that were never fsync'ed: gone, or cut short.
    (store.path / "events" / f"{ids[0]}.json").unlink()
    torn = store.path / "events" / f"{ids[7]}.json"
    torn.write_bytes(torn.read_bytes()[:20])
    assert len(store.event_ids()) == 29 and store.read_event(ids[7]) is None
    reopened = Store.open(store.path)
    assert segments(reopened) == []
    assert reopened.event_ids() == ids and all(reopened.read_event(i) is not None for i in ids)
    assert sorted((e["data"]["batch"], e["data"]["i"]) for e in reopened.events()) == \
        [(b, i) for b in range(3) for i in range(10)]


def test_a_live_writers_segment_is_left_alone(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store.path), "2", "hold"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
        (lost,) = [i for i in store.event_ids()][:1]
        (store.path / "events" / f"{lost}.json").unlink()
        assert recover_event_log(store) == 0  # the writer holds its segment: nothing is recovered under it
        assert len(segments(store)) == 1
    finally:
        writer.kill()
        writer.wait()
    assert recover_event_log(store) == 1  # its lock went with it
    assert store.read_event(lost) is not None and segments(store) == []


def test_a_torn_last_line_is_ignored_and_the_rest_recovered(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    done = subprocess.run([sys.executable, "-c", WRITER, str(store.path), "1", "exit"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (segment,) = segments(store)
    path = store.path / LOG_DIR / segment
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"id": "00000000000000000001-deadbeef", "na')  # an append cut by the crash
    for event_id in store.event_ids():
        (store.path / "events" / f"{event_id}.json").unlink()
    assert recover_event_log(store) == 10
    assert len(store.events(name="tick")) == 10 and segments(store) == []
