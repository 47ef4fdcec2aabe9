"""`nbdurable check` and `nbdurable gc` on real stores written by the runtime, through the real CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nbdurable.capture.namespace import Change
from nbdurable.runtime.checkpoint import ObjectLoader, load_outputs
from nbdurable.runtime.replay import ReplayPlan
from nbdurable.runtime.run import DurableRun
from nbdurable.serialization import serialize
from nbdurable.store import Store

from helpers import CliResult, run_cli

HOUR_AGO = time.time() - 3600


def record_run(store: Store, notebook: str | None, seed: int, *, resumed_from: str | None = None,
               finish: bool = True) -> DurableRun:
    """A run of two steps: `x` (inline), `arr` (ndarray file); `df` (parquet file), `d` (pickle file) and a
    big output (object file). ``resumed_from``: step 1 is restored from that run, step 2 executes anew."""
    time.sleep(0.002)  # run ids sort by time, to the millisecond
    run = DurableRun(store, notebook=notebook, resumed_from=resumed_from)
    step = run.begin_step(source="x = 1; arr = ...", source_hash="a" * 32)
    if resumed_from:
        run.record_restored(step, ReplayPlan.from_run(store, resumed_from).steps[0])
    else:
        changes = [Change("x", "set", serialize(1), "i1"),
                   Change("arr", "set", serialize(np.arange(100_000.0) + seed), "i2")]
        run.end_step(step, status="completed", changes=changes)
    step = run.begin_step(source="df = ...; d = ...", source_hash="b" * 32)
    frame = pd.DataFrame({"a": np.arange(20_000) + seed})
    changes = [Change("df", "set", serialize(frame), "i3"),
               Change("d", "set", serialize({"k": list(range(seed, seed + 20_000))}), "i4")]
    output = {"output_type": "stream", "name": "stdout", "text": f"{seed}" + "x" * 300_000}
    run.end_step(step, status="completed", changes=changes, outputs=[output])
    if finish:
        run.finish("completed")
    else:
        run.wait_durable()
    return run


def check(store: Store, *args: str) -> CliResult:
    """``nbdurable check`` in a process of its own (a live run's lease is held by this one)."""
    return run_cli("check", "--store", str(store.path), *args)


def step_ends(store: Store, run_id: str) -> list[dict[str, Any]]:
    return [r for r in store.read_journal(run_id) if r["t"] == "step_end"]


def file_refs(store: Store, run_id: str) -> dict[str, str]:
    """Variable name -> object key of the refs of a run that live in object files."""
    return {v["name"]: v["object"] for r in step_ends(store, run_id) for v in r["variables"] if v.get("inline") is None}


def object_keys_named(data: bytes) -> list[str]:
    """The object keys in a journal's lines, ignoring the tags (damaged lines too)."""
    keys = []
    for line in data.split(b"\n"):
        try:
            record = json.loads(line.rsplit(b"\t", 1)[0])
        except ValueError:
            continue
        keys += [v["object"] for v in record.get("variables", []) if v.get("inline") is None and v.get("object")]
    return keys


def object_files(store: Store) -> set[str]:
    return set(store.object_keys())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """Two finished runs of one notebook, catalog ingested."""
    st = Store.open(tmp_path / "store")
    record_run(st, "nb", 1)
    record_run(st, "nb", 2)
    st.catalog().ingest()
    return st


def test_clean_store_passes(store: Store) -> None:
    proc = check(store)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "journals: 2 (12 records, 2 runs), 0 torn tails" in proc.stdout
    # per run: arr (ndarray), df (parquet), d (pickle), the big output; `x` is inline
    assert "objects: 8 referenced: 8 present, 0 missing, 0 damaged; 0 unreferenced" in proc.stdout
    assert "catalog: ok" in proc.stdout and "Result: ok" in proc.stdout


def test_torn_tail_is_a_harmless_warning_and_repair_truncates_it(store: Store) -> None:
    run_id = store.run_ids()[0]
    path = store.journal_path(run_id)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"t":"step_start","ordinal":3,"sou')  # a crash mid-write
    proc = check(store)
    assert proc.returncode == 0, proc.stdout
    assert f"journals/{run_id}.jsonl: torn tail (a crash mid-write), harmless" in proc.stdout
    assert "1 torn tail" in proc.stdout

    proc = check(store, "--repair")
    assert proc.returncode == 0, proc.stdout
    assert f"journals/{run_id}.jsonl: truncated the torn tail (34 bytes)" in proc.stdout
    assert path.stat().st_size == size
    assert proc.stdout.split("After repair:")[1].count("0 torn tails") == 1


@pytest.mark.slow
def test_corrupt_middle_record_is_damage_and_repair_salvages_it(store: Store) -> None:
    run_id = store.run_ids()[1]
    path = store.journal_path(run_id)
    original = path.read_bytes()
    lines = original.split(b"\n")
    lines[2] = lines[2].replace(b'"ordinal":1', b'"ordinal":7')  # the step_end of step 1: its tag now fails
    damaged = b"\n".join(lines)
    path.write_bytes(damaged)

    proc = check(store)
    assert proc.returncode == 1, proc.stdout
    assert (f"journals/{run_id}.jsonl is damaged at line 3 (fails authentication); "
            "the 2 records before it are intact") in proc.stdout
    assert "Result: damaged" in proc.stdout
    gc = run_cli("gc", "--store", str(store.path), "--keep-last", "0")  # gc cannot know what the lost lines need
    assert gc.returncode == 1 and "is damaged at line 3" in gc.stderr and "nbdurable check --repair" in gc.stderr

    proc = check(store, "--repair")
    assert "original is kept as journals/" in proc.stdout and "salvaged the 2 records before it" in proc.stdout
    assert "rebuilt the catalog" in proc.stdout
    assert proc.returncode == 0, proc.stdout  # what remains checks clean
    aside = list(path.parent.glob(f"{run_id}.jsonl.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # never delete user data
    assert path.read_bytes() == b"\n".join(lines[:2]) + b"\n"
    assert [r["t"] for r in store.read_journal(run_id)] == ["run", "step_start"]

    proc = check(store)
    assert proc.returncode == 0, proc.stdout
    assert "journals: 2 (8 records, 2 runs)" in proc.stdout

    # The objects only the damaged lines referred to are not collected: the original journal may still be fixed.
    lost = set(object_keys_named(aside[0].read_bytes()))
    for key in object_files(store):
        os.utime(store.object_path(key), (HOUR_AGO, HOUR_AGO))
    gc = run_cli("gc", "--store", str(store.path), "--keep-last", "0")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert lost and lost <= object_files(store)


def test_missing_and_damaged_objects_are_damage(store: Store) -> None:
    run_id = store.run_ids()[0]
    refs = file_refs(store, run_id)
    store.object_path(refs["arr"]).unlink()
    parquet = store.object_path(refs["df"])
    parquet.write_bytes(parquet.read_bytes()[: parquet.stat().st_size // 2])  # truncated

    proc = check(store)
    assert proc.returncode == 1, proc.stdout
    assert (f"object {refs['arr']} (ndarray) is missing: variable `arr` of step 1 of run {run_id} needs it"
            in proc.stdout)
    assert f"object {refs['df']} (parquet) is not a whole Parquet file" in proc.stdout
    assert f"variable `df` of step 2 of run {run_id}" in proc.stdout
    assert "8 referenced: 6 present, 1 missing, 1 damaged" in proc.stdout
    proc = check(store, "--repair")  # nothing to repair: objects cannot be made up
    assert proc.returncode == 1 and "Repairs: nothing to repair." in proc.stdout


@pytest.mark.slow
def test_missing_or_unreadable_catalog_is_reported_and_rebuilt(store: Store) -> None:
    catalog = store.path / "catalog.duckdb"
    catalog.unlink()
    proc = check(store)
    assert proc.returncode == 0, proc.stdout
    assert "catalog.duckdb is missing" in proc.stdout and "catalog: to rebuild" in proc.stdout
    assert not catalog.exists()  # checking does not repair

    proc = check(store, "--repair")
    assert proc.returncode == 0, proc.stdout
    assert "rebuilt the catalog from the journals (12 records)" in proc.stdout
    assert len(store.catalog().runs()) == 2

    catalog.write_bytes(b"not a database" * 1000)
    proc = check(store)
    assert proc.returncode == 0 and "catalog.duckdb is unreadable" in proc.stdout, proc.stdout
    assert check(store, "--repair").returncode == 0
    assert "catalog: ok" in check(store).stdout


def test_repair_refuses_a_live_run_and_repairs_the_others(store: Store) -> None:
    live = record_run(store, "nb", 3, finish=False)
    torn = [store.run_ids()[0], live.run_id]
    for run_id in torn:
        with open(store.journal_path(run_id), "ab") as f:
            f.write(b'{"t":"run_end","sta')
    proc = check(store, "--repair")
    assert proc.returncode == 1, proc.stdout
    assert "(the run is live: a write may be in progress)" in proc.stdout
    assert f"journals/{torn[0]}.jsonl: truncated the torn tail" in proc.stdout
    assert f"refused: run {live.run_id} is being driven by another live process (pid {os.getpid()}" in proc.stdout
    assert store.journal_path(live.run_id).read_bytes().endswith(b'{"t":"run_end","sta')  # untouched
    live.abandon()  # its process is gone: the journal can be repaired now
    proc = check(store, "--repair")
    assert proc.returncode == 0 and f"journals/{live.run_id}.jsonl: truncated the torn tail" in proc.stdout, proc.stdout


def age_objects(store: Store) -> None:
    for key in object_files(store):
        os.utime(store.object_path(key), (HOUR_AGO, HOUR_AGO))


def write_orphan(store: Store, key: str) -> None:
    store.write_object(key, lambda f: f.write(b"NBDP orphan left by a crash before its commit"))


@pytest.mark.slow
def test_gc_keeps_what_kept_runs_need_and_deletes_the_rest(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    a1 = record_run(store, "a", 1).run_id
    a2 = record_run(store, "a", 2).run_id
    crashed = record_run(store, "a", 3, finish=False)
    crashed.abandon()  # unfinished: kept
    a4 = record_run(store, "a", 4, resumed_from=a1).run_id  # newest of "a"; its step 1 comes from a1
    b1 = record_run(store, "b", 5).run_id
    b2 = record_run(store, "b", 6).run_id
    n1 = record_run(store, None, 7).run_id
    old_orphan, recent_orphan = "0" * 32, "f" * 32
    write_orphan(store, old_orphan)
    age_objects(store)
    write_orphan(store, recent_orphan)
    kept = [a1, crashed.run_id, a4, b2, n1]
    needed = {key for run_id in kept for key in file_refs(store, run_id).values()}
    needed |= {o["object"] for run_id in kept for r in step_ends(store, run_id) for o in r["outputs"]}
    gone = (object_files(store) - needed) - {recent_orphan}
    assert file_refs(store, a1)["df"] not in set(file_refs(store, a4).values())  # kept only through the resume chain
    assert old_orphan in gone and len(gone) == 1 + 4 + 4  # the orphan, what a2 and b1 alone need
    before = object_files(store)

    dry = run_cli("gc", "--store", str(store.path), "--keep-last", "1", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert object_files(store) == before
    freed = sum(store.object_size(k) for k in gone)
    assert f"Would delete {len(gone)} object files: {freed} bytes" in dry.stdout
    assert "Kept 5 runs" in dry.stdout and "Spared 1 unneeded object file modified in the last 10 minutes" in dry.stdout

    proc = run_cli("gc", "--store", str(store.path), "--keep-last", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Deleted {len(gone)} object files: {freed} bytes" in proc.stdout
    assert object_files(store) == before - gone
    assert recent_orphan in object_files(store) and old_orphan not in object_files(store)
    for run_id in kept:  # everything a kept run recorded still loads
        loader = ObjectLoader(store, {})
        for record in step_ends(store, run_id):
            for ref in record["variables"]:
                loader.load(ref, step_label=f"step {record['ordinal']}")
            assert all(o["output_type"] == "stream" for o in load_outputs(store, record["outputs"]))
    assert store.journal_exists(a2) and store.journal_exists(b1)  # journals stay without --prune-runs

    proc = check(store)  # what gc deleted is not damage
    assert proc.returncode == 0, proc.stdout
    assert "collected by gc" in proc.stdout

    store.append_journal(a2).close()  # a journal reopened after its run ended leaves a marker for the catalog
    assert store.reopened_marker(a2).exists()
    proc = run_cli("gc", "--store", str(store.path), "--keep-last", "1", "--prune-runs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Pruned 2 runs (their journals and leases); catalog rebuilt." in proc.stdout
    assert not store.journal_exists(a2) and not store.journal_exists(b1)
    assert not (store.path / "leases" / f"{a2}.lease").exists() and not store.reopened_marker(a2).exists()
    assert sorted(store.catalog().runs()["run_id"]) == sorted(kept)
    assert check(store).returncode == 0


def test_a_damaged_event_file_is_damage_and_repair_moves_it_aside(store: Store) -> None:
    kept = store.send_event("report.approved", {"week": 47})
    broken = store.send_event("report.approved", {"week": 48})
    path = store.path / "events" / f"{broken['id']}.json"
    damaged = path.read_bytes().replace(b"48", b"49")  # its tag no longer authenticates it
    path.write_bytes(damaged)
    with pytest.warns(UserWarning, match="skipping the damaged event file"):
        assert [e["id"] for e in store.events()] == [kept["id"]]  # a waiting run is not disturbed by it

    proc = check(store)
    assert (proc.returncode == 1
            and f"events/{broken['id']}.json is damaged or not authentic (tag or format)" in proc.stdout)
    proc = check(store, "--repair")
    assert f"events/{broken['id']}.json: moved aside as events/{broken['id']}.json.corrupt-" in proc.stdout
    assert check(store).returncode == 0
    aside = list((store.path / "events").glob("*.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # never delete user data
