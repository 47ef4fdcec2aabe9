"""Object files: atomic, content-addressed, written without extra copies."""

from __future__ import annotations

import errno
import os
import pathlib
from collections.abc import Callable
from typing import BinaryIO

import pytest
import xxhash

from nbdurable.errors import AuthenticationError, ObjectNotFoundError, StoreError
from nbdurable.store import Store
from nbdurable.store.auth import object_tag


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Store:
    return Store.open(tmp_path / "store")


def _key(data: bytes | bytearray | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def _writer(data: bytes) -> Callable[[BinaryIO], int]:
    return lambda f: f.write(data)


def test_write_read_round_trip(store: Store) -> None:
    data = b"hello object"
    key = _key(data)
    assert not store.has_object(key)
    assert store.write_object(key, lambda f: f.write(data)) == (len(data), object_tag(data))
    assert store.has_object(key) and store.object_size(key) == len(data)
    got = store.read_object(key, object_tag(data))
    assert isinstance(got, bytearray) and got == data
    path = store.object_path(key)
    assert path == store.path / "objects" / key[:2] / key[2:] and path.is_file()
    assert list(store.object_keys()) == [key]
    assert os.listdir(store.path / "tmp") == []  # renamed into place, nothing left behind


def test_existing_object_is_not_rewritten_and_its_tag_comes_from_our_bytes(store: Store) -> None:
    key = _key(b"abc")
    store.write_object(key, lambda f: f.write(b"abc"))
    inode = store.object_path(key).stat().st_ino
    store.object_path(key).write_bytes(b"evil")  # replaced behind our back (same inode)
    assert store.write_object(key, _writer(b"abc")) == (4, object_tag(b"abc"))  # not the file's bytes' tag
    assert store.object_path(key).stat().st_ino == inode and store.object_path(key).read_bytes() == b"evil"
    with pytest.raises(AuthenticationError, match=f"object {key} fails authentication"):
        store.read_object(key, object_tag(b"abc"))


def test_empty_object(store: Store) -> None:
    key = _key(b"")
    assert store.write_object(key, lambda f: None) == (0, object_tag(b""))
    assert store.read_object(key, object_tag(b"")) == bytearray()


def test_big_object_from_memoryview_parts(store: Store) -> None:
    part = os.urandom(1 << 20)
    big = bytearray(part) * 64  # 64 MiB
    view = memoryview(big)
    key = _key(big)

    def writer(f: BinaryIO) -> int:
        total = 0
        for off in range(0, len(view), 16 << 20):
            total += f.write(view[off : off + (16 << 20)])  # straight from memory, 16 MiB at a time
        return total

    size, tag = store.write_object(key, writer)
    assert size == len(big)
    got = store.read_object(key, tag)
    assert len(got) == len(big) and got == big


def test_writer_gets_unbuffered_file(store: Store) -> None:
    seen = []

    def writer(f: BinaryIO) -> None:
        seen.append(f)
        f.write(memoryview(b"xyz"))

    store.write_object(_key(b"xyz"), writer)
    import io

    assert isinstance(seen[0], io.FileIO)  # raw: a big memoryview is not copied into a buffer


def test_missing_object(store: Store) -> None:
    key = "0" * 32
    with pytest.raises(ObjectNotFoundError, match=key) as exc:
        store.read_object(key, None)
    assert exc.value.hint
    with pytest.raises(ObjectNotFoundError):
        store.object_size(key)
    store.delete_object(key)  # deleting a missing object is fine


def test_failing_writer_leaves_nothing(store: Store) -> None:
    key = _key(b"never")

    def writer(f: BinaryIO) -> None:
        f.write(b"partial payload")
        raise RuntimeError("pickling failed")

    with pytest.raises(RuntimeError, match="pickling failed"):
        store.write_object(key, writer)
    assert not store.has_object(key)
    assert os.listdir(store.path / "tmp") == []


def test_disk_full_becomes_store_error(store: Store) -> None:
    key = _key(b"full")

    def writer(f: BinaryIO) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match="disk full") as exc:
        store.write_object(key, writer)
    assert isinstance(exc.value.__cause__, OSError) and exc.value.hint
    assert os.listdir(store.path / "tmp") == [] and not store.has_object(key)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_real_enospc_from_dev_full(store: Store) -> None:
    # /dev/full fails every write with ENOSPC: the writer hits a real kernel error, not a simulated one.
    def writer(f: BinaryIO) -> None:
        with open("/dev/full", "wb", buffering=0) as full:
            full.write(b"x")

    with pytest.raises(StoreError, match="disk full"):
        store.write_object(_key(b"devfull"), writer)


@pytest.mark.parametrize("bad", ["", "abc", "G" * 32, "A" * 32, "0" * 31, "0" * 33, "../" + "0" * 29])
def test_bad_keys(store: Store, bad: str) -> None:
    for call in (store.has_object, lambda key: store.read_object(key, None), store.object_size, store.object_path,
                 store.delete_object):
        with pytest.raises(ValueError):
            call(bad)
    with pytest.raises(ValueError):
        store.write_object(bad, lambda f: None)


def test_delete_and_keys(store: Store) -> None:
    keys = set()
    for i in range(20):
        data = b"obj%d" % i
        keys.add(_key(data))
        store.write_object(_key(data), _writer(data))
    (store.path / "objects" / "zz").mkdir()  # junk is ignored
    assert set(store.object_keys()) == keys
    victim = sorted(keys)[0]
    store.delete_object(victim)
    assert not store.has_object(victim) and set(store.object_keys()) == keys - {victim}


def test_stale_temp_files_swept_on_open(store: Store) -> None:
    old = store.path / "tmp" / "dead.tmp"
    new = store.path / "tmp" / "inflight.tmp"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (0, 0))
    Store.open(store.path)
    assert not old.exists() and new.exists()


def test_big_objects_are_mapped_copy_on_write_and_survive_deletion(tmp_path) -> None:
    from nbdurable.store import Store
    from nbdurable.store.objects import MMAP_THRESHOLD

    store = Store.open(tmp_path / "store")
    data = bytes(range(256)) * (MMAP_THRESHOLD // 256 + 1)
    key = "ab" * 16
    _, tag = store.write_object(key, lambda f: f.write(data))
    view = store.read_object(key, tag)
    assert isinstance(view, memoryview) and not view.readonly
    assert view.tobytes() == data
    view[0] = 255  # a private copy-on-write page: the object file is unchanged
    store.delete_object(key)  # a mapped file may be deleted (gc) while a kernel still uses it
    assert view[1] == 1 and view[0] == 255
    assert not store.has_object(key)


def test_the_tag_of_mixed_small_and_big_writes_is_the_tag_of_the_bytes(store: Store) -> None:
    data = os.urandom(80 * 2**20)  # more than one pipelined slice

    def writer(f: BinaryIO) -> None:
        scratch = bytearray(data[:1000])
        f.write(scratch)
        scratch[:] = b"\0" * 1000  # the caller reuses its buffer once write returns: the tag must not see it
        f.write(memoryview(data)[1000 : 2**20])
        f.write(memoryview(data)[2**20 :])

    size, tag = store.write_object(_key(data), writer)
    assert size == len(data) and tag == object_tag(data)
    assert store.read_object(_key(data), tag) == data
