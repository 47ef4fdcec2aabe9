"""Leases: one writer per run, across real processes."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from nbdurable.errors import LeaseHeldError
from nbdurable.store import Store
from nbdurable.store import lease as lease_mod

ROOT = pathlib.Path(__file__).resolve().parents[1]

_HOLDER = """
import os, sys, time
from nbdurable.store import Store
store = Store.open(sys.argv[1])
lease = store.acquire_lease(sys.argv[2])
child = 0
if len(sys.argv) > 3:  # leave a forked child behind, sleeping, sharing the lease's open file
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # at-fork handlers have run by now: say so, then linger
        os.write(w, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(r, 1)
print("ready", child, flush=True)
time.sleep(60)
"""


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Store:
    return Store.open(tmp_path / "store")


@pytest.fixture
def holder(store: Store) -> Iterator[subprocess.Popen[bytes]]:
    proc = _start_holder(store, "r1")
    yield proc
    _kill(proc)


def _start_holder(store: Store, run_id: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store.path), run_id, *extra], env=env,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    word, child = proc.stdout.readline().split()
    assert word == b"ready"
    proc.child_pid = int(child)  # type: ignore[attr-defined]
    return proc


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_acquire_release(store: Store) -> None:
    assert not store.is_live("r1") and store.lease_holder("r1") is None
    lease = store.acquire_lease("r1")
    assert lease.run_id == "r1"
    assert store.is_live("r1")
    holder = store.lease_holder("r1")
    assert holder is not None and holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert set(holder) == {"pid", "host", "acquired", "heartbeat"}
    assert (store.path / "leases" / "r1.lease").stat().st_mode & 0o777 == 0o600
    lease.release()
    lease.release()  # idempotent
    assert not store.is_live("r1") and store.lease_holder("r1") is None
    with store.acquire_lease("r1"):  # reacquirable; context manager
        assert store.is_live("r1")
    assert not store.is_live("r1")


def test_second_acquire_in_same_process_conflicts(store: Store) -> None:
    with store.acquire_lease("r1"):
        with pytest.raises(LeaseHeldError, match=f"pid {os.getpid()}"):
            store.acquire_lease("r1")
        with store.acquire_lease("r2"):  # other runs are independent
            pass


def test_acquire_held_by_other_process(store: Store, holder: subprocess.Popen[bytes]) -> None:
    with pytest.raises(LeaseHeldError) as exc:
        store.acquire_lease("r1")
    msg = str(exc.value)
    assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "since" in msg and exc.value.hint
    assert store.is_live("r1")
    info = store.lease_holder("r1")
    assert info is not None and info["pid"] == holder.pid


def test_killed_holder_releases(store: Store, holder: subprocess.Popen[bytes]) -> None:
    assert store.is_live("r1")
    _kill(holder)
    assert not store.is_live("r1") and store.lease_holder("r1") is None
    with store.acquire_lease("r1") as lease:  # a dead holder's lease is taken over
        assert lease.held and store.lease_holder("r1")["pid"] == os.getpid()  # type: ignore[index]


def test_forked_child_does_not_keep_dead_holders_lease(store: Store) -> None:
    proc = _start_holder(store, "r1", "fork")
    try:
        _kill(proc)  # the holder dies; its forked child lives on
        assert not store.is_live("r1")
        store.acquire_lease("r1").release()
    finally:
        os.kill(proc.child_pid, signal.SIGKILL)  # type: ignore[attr-defined]


def test_lease_released_when_object_dropped(store: Store) -> None:
    store.acquire_lease("r1")  # not kept: the lease lives as long as the object
    import gc

    gc.collect()
    assert not store.is_live("r1")


def test_heartbeat_refreshes(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease_mod, "HEARTBEAT_INTERVAL_S", 0.05)
    with store.acquire_lease("r1"):
        first = store.lease_holder("r1")
        time.sleep(0.3)
        later = store.lease_holder("r1")
        assert first is not None and later is not None
        assert later["heartbeat"] > first["heartbeat"] and later["acquired"] == first["acquired"]


def _foreign_lease(store: Store, run_id: str, heartbeat: float) -> None:
    info = {"pid": 4242, "host": "some-other-host", "acquired": heartbeat - 5, "heartbeat": heartbeat}
    (store.path / "leases" / f"{run_id}.lease").write_text(json.dumps(info))


def test_other_host_lease_judged_by_heartbeat(store: Store) -> None:
    _foreign_lease(store, "fresh", time.time())
    assert store.is_live("fresh")
    assert store.lease_holder("fresh")["host"] == "some-other-host"  # type: ignore[index]
    with pytest.raises(LeaseHeldError, match="some-other-host"):
        store.acquire_lease("fresh")
    _foreign_lease(store, "stale", time.time() - 120)
    assert not store.is_live("stale")
    store.acquire_lease("stale").release()  # taken over


def test_bad_run_id(store: Store) -> None:
    with pytest.raises(ValueError):
        store.acquire_lease("../x")
    assert not store.is_live("../x")
