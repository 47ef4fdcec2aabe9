"""The shared store (PostgreSQL + fsspec objects) against the directory store: the same interface, the same
rules, on a real PostgreSQL server (a database per module, a schema per store) and real object storage
(local files, fsspec's memory file system, S3 served by moto on loopback through s3fs)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from nbdurable.errors import (
    AuthenticationError,
    CorruptJournalError,
    LeaseHeldError,
    ObjectNotFoundError,
    StoreError,
    StoreFormatError,
)
from nbdurable.store import Store
from nbdurable.store.events import new_event
from nbdurable.store.maintenance import check_store, collect_garbage, repair_store
from nbdurable.store.shared import SharedStore
from nbdurable.store.shared.pg import MIGRATIONS, close_pools, migrate, pool, redact

KEY = "ab" * 16


def test_journal_round_trip_and_head(any_store: str) -> None:
    store = Store.open(any_store)
    with store.new_journal("r1") as w:
        w.append({"t": "run", "notebook": "nb"})
        w.append({"t": "step_start", "ordinal": 1}, sync=True)
        w.sync_soon()
        w.sync()
    assert [r["seq"] for r in store.read_journal("r1")] == [1, 2]
    assert store.journal_head("r1")["notebook"] == "nb"  # type: ignore[index]
    assert store.run_ids() == ["r1"] and store.journal_exists("r1") and not store.journal_exists("r2")
    with pytest.raises(StoreError, match="already exists"):
        store.new_journal("r1")
    with store.append_journal("r1") as w:
        assert w.seq == 2
        w.append({"t": "run_end", "status": "completed"})
    assert store.read_journal("r1")[-1]["seq"] == 3
    with pytest.raises(Exception) as missing:
        store.read_journal("nope")
    assert type(missing.value).__name__ == "RunNotFoundError"


def test_lease_is_exclusive_and_released(any_store: str) -> None:
    store = Store.open(any_store)
    store.new_journal("r1").close()
    lease = store.acquire_lease("r1")
    assert store.is_live("r1") and store.lease_holder("r1")["pid"] == os.getpid()  # type: ignore[index]
    with pytest.raises(LeaseHeldError):
        store.acquire_lease("r1")
    store.append_journal("r1").close()  # the holder itself may append
    lease.release()
    assert not store.is_live("r1") and store.lease_holder("r1") is None
    store.acquire_lease("r1").release()


_HOLDER = textwrap.dedent("""
    import sys, time
    from nbdurable.store import Store
    lease = Store.open(sys.argv[1]).acquire_lease("r1")
    print("held", flush=True)
    time.sleep(600)
""")


def test_a_killed_holders_lease_is_taken_over(any_store: str, tmp_path: Path) -> None:
    store = Store.open(any_store)
    store.new_journal("r1").close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, any_store], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert store.is_live("r1")
        with pytest.raises(LeaseHeldError):
            store.append_journal("r1")
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert not store.is_live("r1")
        store.acquire_lease("r1").release()  # at once: its pid is known dead on this host
    finally:
        holder.kill()


def test_an_expired_lease_of_another_host_is_taken_over(pg_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SharedStore.open(pg_store)
    store.new_journal("r1").close()
    store._query("INSERT INTO nbd_leases VALUES ('r1', 't', 1, 'elsewhere', 'another-boot', 0, 0, "
                 "now() + interval '1 hour')")
    with pytest.raises(LeaseHeldError, match="elsewhere"):
        store.acquire_lease("r1")
    assert store.is_live("r1")  # another host, heartbeat fresh: alive whatever its pid
    store._query("UPDATE nbd_leases SET expires_at = now() - interval '1 second'")
    assert not store.is_live("r1")
    store.acquire_lease("r1").release()


def test_lease_heartbeat_keeps_it_alive(pg_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBDURABLE_LEASE_TIMEOUT", "1.5")
    store = SharedStore.open(pg_store)
    lease = store.acquire_lease("r9")
    time.sleep(2.5)  # past the timeout: only the heartbeats (every 0.5 s) keep it
    assert store.is_live("r9")
    lease.release()


def test_objects_are_written_once_and_checked_on_read(any_store: str) -> None:
    store = Store.open(any_store)
    size, tag = store.write_object(KEY, lambda f: f.write(b"payload"))
    assert size == 7 and store.has_object(KEY) and store.object_size(KEY) == 7
    assert bytes(store.read_object(KEY, tag)) == b"payload"
    assert store.write_object(KEY, lambda f: f.write(b"payload")) == (7, tag)
    assert list(store.object_keys()) == [KEY]
    with pytest.raises(AuthenticationError):
        store.read_object(KEY, "0" * 64)
    store.delete_object(KEY)
    with pytest.raises(ObjectNotFoundError):
        store.read_object(KEY, tag)


def test_a_tampered_object_is_never_used(pg_store: str, tmp_path: Path) -> None:
    store = SharedStore.open(pg_store)
    _, tag = store.write_object(KEY, lambda f: f.write(b"good bytes"))
    path = tmp_path / "objects" / "objects" / KEY[:2] / KEY[2:]
    path.write_bytes(b"evil bytes")
    with pytest.raises(AuthenticationError, match="fails authentication"):
        store.read_object(KEY, tag)


def test_a_tampered_journal_row_is_never_used(pg_store: str) -> None:
    store = SharedStore.open(pg_store)
    with store.new_journal("r1") as w:
        for i in range(4):
            w.append({"t": "step_start", "ordinal": i})
    store._query("UPDATE nbd_records SET body = convert_to(replace(convert_from(body, 'UTF8'), 'step_start', "
                 "'step_evil_'), 'UTF8') WHERE seq = 3")
    with pytest.raises(CorruptJournalError, match="record 3"):
        store.read_journal("r1")
    with pytest.raises(CorruptJournalError, match="record 3"):
        store.catalog().ingest()  # the catalog takes nothing from record 3 on
    assert store.catalog().query("SELECT last_seq FROM ingest_state", ingest=False)["last_seq"].tolist() == [2]
    report = check_store(store)
    assert any("line 3" in what for what, _ in report.damage)
    actions, refused = repair_store(store, report)
    assert not refused and "kept in the table nbd_aside" in actions[0]
    assert [r["seq"] for r in store.read_journal("r1")] == [1, 2]
    assert len(store._query("SELECT * FROM nbd_aside")) == 2  # nothing deleted: set aside
    assert not check_store(store).damage


def test_no_record_commits_twice(pg_store: str) -> None:
    store = SharedStore.open(pg_store)
    store.new_journal("r1").close()
    first, second = store.append_journal("r1"), store.append_journal("r1")  # no lease: the table still refuses
    first.append({"t": "run"})
    with pytest.raises(StoreError, match="already committed"):
        second.append({"t": "run"})
    first.close()
    second.close()
    with pytest.raises(StoreError, match=r"duplicate key value violates unique constraint \"nbd_records_pkey\""):
        store._query("INSERT INTO nbd_records (run_id, seq, body, tag) VALUES ('r1', 1, 'x', 'y')")


def test_events_and_cancel_requests(any_store: str) -> None:
    store = Store.open(any_store)
    first = store.send_event("report.approved", {"week": 47})
    time.sleep(0.01)
    second = store.send_event("other", None)
    assert [e["id"] for e in store.events()] == [first["id"], second["id"]]
    assert [e["data"] for e in store.events(name="report.approved")] == [{"week": 47}]
    assert store.event_ids(after=second["sent_at"]) == [second["id"]]
    assert store.read_event(first["id"]) == first and store.read_event("1" * 20 + "-deadbeef") is None
    store.new_journal("r1").close()
    assert not store.cancel_requested("r1")
    request = store.request_cancel("r1", by="ann", reason="wrong data")
    assert store.cancel_requested("r1") and store.request_cancel("r1", by="bob", reason="x") == request


def test_catalog_ingests_rows_incrementally(any_store: str) -> None:
    store = Store.open(any_store)
    with store.new_journal("r1") as w:
        w.append({"t": "run", "notebook": "nb", "params": {}, "kind": "headless"})
    catalog = store.catalog()
    assert catalog.ingest() == 1 and catalog.ingest() == 0
    with store.append_journal("r1") as w:
        w.append({"t": "run_end", "status": "completed"})
    store.send_event("go", 1)
    assert catalog.ingest() == 1
    assert catalog.query("SELECT status FROM runs")["status"].tolist() == ["completed"]
    assert catalog.query("SELECT count(*) AS n FROM events")["n"].tolist() == [1]
    assert catalog.rebuild() == 2


def test_catalog_sees_a_row_committed_after_a_later_one(pg_store: str) -> None:
    """Transaction ids, not commit order: a row whose transaction began first but committed after an
    ingest is still ingested next time."""
    store = SharedStore.open(pg_store)
    store.new_journal("slow").close()
    store.new_journal("fast").close()
    with psycopg.connect(pg_store, autocommit=False) as slow:
        slow.execute("SELECT pg_current_xact_id()")
        with store.append_journal("fast") as w:
            w.append({"t": "run", "notebook": "fast"})
        assert store.catalog().ingest() == 1
        from nbdurable.store.journal import encode_line
        from nbdurable.store.shared.pg_journal import split_line

        body, tag = split_line(encode_line({"t": "run", "notebook": "slow", "seq": 1, "ts": time.time()}))
        slow.execute("INSERT INTO nbd_records (run_id, seq, body, tag) VALUES ('slow', 1, %s, %s)", [body, tag])
        slow.commit()
    assert store.catalog().ingest() == 1
    assert sorted(store.catalog().query("SELECT notebook FROM runs")["notebook"]) == ["fast", "slow"]


def test_gc_on_the_shared_store(pg_store: str) -> None:
    store = SharedStore.open(pg_store)
    _, tag = store.write_object(KEY, lambda f: f.write(b"needed"))
    other = "cd" * 16
    store.write_object(other, lambda f: f.write(b"garbage"))
    with store.new_journal("r1") as w:
        w.append({"t": "run", "notebook": "nb"})
        w.append({"t": "step_end", "ordinal": 1, "variables": [
            {"name": "x", "object": KEY, "format": "pickle", "tag": tag}]})
        w.append({"t": "run_end", "status": "completed"})
    report = collect_garbage(store, keep_last=1, min_age=0)
    assert report.deleted == 1 and store.has_object(KEY) and not store.has_object(other)


def test_migrations_apply_once_under_concurrent_openers(pg_db: str) -> None:
    from pg import new_store_url

    url = new_store_url(pg_db)
    script = f"from nbdurable.store.shared.pg import pool; pool({url!r})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env) for _ in range(4)]
    assert [p.wait(60) for p in procs] == [0] * 4
    with psycopg.connect(url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [v for v, _, _ in MIGRATIONS]
    assert migrate(pool(url), url) == []  # nothing left to apply


def test_a_store_from_a_newer_nbdurable_is_refused(pg_store: str) -> None:
    SharedStore.open(pg_store)
    SharedStore.open(pg_store)._query("INSERT INTO schema_migrations (version, description) VALUES (999, 'future')")
    close_pools()
    with pytest.raises(StoreFormatError, match="newer nbdurable"):
        Store.open(pg_store)


def test_a_new_store_needs_an_objects_location(pg_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pg import new_store_url

    monkeypatch.delenv("NBDURABLE_OBJECTS", raising=False)
    with pytest.raises(StoreFormatError, match="NBDURABLE_OBJECTS"):
        Store.open(new_store_url(pg_db))


def test_the_objects_location_is_recorded_for_later_openers(pg_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = SharedStore.open(pg_store)
    monkeypatch.delenv("NBDURABLE_OBJECTS")
    assert SharedStore.open(pg_store).objects_url == first.objects_url


def test_memory_objects(pg_store: str) -> None:
    store = SharedStore.open(pg_store, objects=f"memory://nbd-{os.getpid()}-{time.time_ns()}")
    _, tag = store.write_object(KEY, lambda f: f.write(b"in memory"))
    assert bytes(store.read_object(KEY, tag)) == b"in memory"
    assert store.object_path(KEY).read_bytes() == b"in memory"  # a local copy, for DuckDB's read_parquet


def test_a_password_never_appears_in_errors_or_logs(pg_db: str, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-Pa55"
    bad = pg_db.replace("postgres@", f"postgres:{secret}@").rsplit("/", 1)[0] + "/no_such_database_here"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError) as info:
        Store.open(bad)
    shown = str(info.value) + (info.value.hint or "") + repr(info.value) + caplog.text
    assert secret not in shown and "***" in shown and "no_such_database_here" in shown
    wrong_port = bad.replace(":5432/", ":1/")
    with pytest.raises(StoreError) as info:
        Store.open(wrong_port)
    assert secret not in str(info.value) + caplog.text
    assert redact("postgresql://u:pw@h/db?password=pw2") == "postgresql://u:***@h/db?password=***"


def test_s3_objects_through_moto(pg_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            import fsspec.config
            import s3fs

            # how a team points s3:// at its endpoint: fsspec's configuration (a file in ~/.config/fsspec, or this)
            monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
            s3fs.S3FileSystem.clear_instance_cache()
            s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("nbd-bucket")
            store = SharedStore.open(pg_store, objects="s3://nbd-bucket/store")
            _, tag = store.write_object(KEY, lambda f: f.write(b"on s3"))
            assert bytes(store.read_object(KEY, tag)) == b"on s3" and list(store.object_keys()) == [KEY]
            assert store.object_mtime(KEY) > 0
            store._fs.pipe_file(store._remote(KEY), b"tampered")
            with pytest.raises(AuthenticationError):
                store.read_object(KEY, tag)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        server.stop()


def test_an_event_writer_stores_batches(any_store: str) -> None:
    store = Store.open(any_store)
    writer = store.open_event_writer()
    batches = [[new_event("tick", {"b": b, "i": i}) for i in range(5)] for b in range(3)]
    for batch in batches:
        writer.write(batch)
    assert [e["data"] for e in store.events(name="tick")] == [{"b": b, "i": i} for b in range(3) for i in range(5)]
    writer.close()
    assert [e["id"] for e in store.events()] == [e["id"] for batch in batches for e in batch]


def test_tampered_event_and_cancel_rows_are_never_used(pg_store: str) -> None:
    store = SharedStore.open(pg_store)
    event = store.send_event("go", {"n": 1})
    store.new_journal("r1").close()
    store.request_cancel("r1", by="ann", reason="x")
    store._query("UPDATE nbd_events SET body = convert_to(replace(convert_from(body, 'UTF8'), '\"n\":1', "
                 "'\"n\":2'), 'UTF8')")
    store._query("UPDATE nbd_cancels SET tag = repeat('0', 64)")
    with pytest.warns(UserWarning, match="damaged event"):
        assert store.events() == []
    assert store.read_event(event["id"]) is None and store.cancel_request("r1") is None
    assert store.catalog().query("SELECT count(*) AS n FROM events")["n"].tolist() == [0]
    assert check_store(store).damaged_events == [event["id"]]


def test_an_encrypted_shared_store(pg_store: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NBDURABLE_ENCRYPTION_KEY", "11" * 32)
    store = SharedStore.open(pg_store)
    with store.new_journal("r1") as w:
        w.append({"t": "run", "notebook": "secret-notebook"})
    _, tag = store.write_object(KEY, lambda f: f.write(b"secret payload"))
    assert b"secret" not in b"".join(b for _, b, _ in store.journal_rows("r1"))
    assert b"secret payload" not in (tmp_path / "objects" / "objects" / KEY[:2] / KEY[2:]).read_bytes()
    assert store.read_journal("r1")[0]["notebook"] == "secret-notebook"
    assert bytes(store.read_object(KEY, tag)) == b"secret payload"
    assert store.catalog().query("SELECT notebook FROM runs")["notebook"].tolist() == ["secret-notebook"]
    monkeypatch.delenv("NBDURABLE_ENCRYPTION_KEY")
    with pytest.raises(StoreFormatError, match="encrypted"):
        SharedStore.open(pg_store)
