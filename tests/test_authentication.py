"""Tamper-proof stores: records and objects are authenticated with HMAC-SHA256 under a private per-user
key, and nothing that fails is loaded (a pickle planted in the store never runs)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from nbdurable.errors import AuthenticationError
from nbdurable.serialization import serialize
from nbdurable.store import Store, auth

from conftest import run_session
from helpers import counting_cell, executions, run_cli


class Exploit:
    """Unpickling this runs a shell command: what an attacker would plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def file_refs(store: Store) -> dict[str, dict]:
    refs = {}
    for run_id in store.run_ids():
        for r in store.read_journal(run_id):
            for v in r.get("variables") or []:
                if v.get("object") and v.get("inline") is None and v.get("format") in ("pickle", "ndarray"):
                    refs[v["name"]] = v
    return refs


def test_a_planted_pickle_never_runs_and_the_cell_runs_again(store_dir: Path, tmp_path: Path) -> None:
    marker, counter, killed = tmp_path / "PWNED", tmp_path / "count.txt", tmp_path / "killed"
    cells = ["import os, pathlib",
             counting_cell(counter, "config",  # a pickled object file (> 32 KiB)
                           "config = {f'k{i}': f'v{i}' * 20 for i in range(1000)}"),
             f"if not pathlib.Path({str(killed)!r}).exists():\n    pathlib.Path({str(killed)!r}).touch()\n"
             "    os.kill(os.getpid(), 9)  # the run does not finish: the next session resumes it",
             "size = len(config)"]
    assert run_session(store_dir, cells).killed
    store = Store.open(store_dir)
    ref = file_refs(store)["config"]
    planted = serialize(Exploit(marker))
    assert planted.format == "pickle"
    store.object_path(ref["object"]).write_bytes(planted.to_bytes())  # a valid pickle file, but not ours

    second = run_session(store_dir, cells, probes={"size": "size", "k0": "config['k0'][:4]"})
    assert not marker.exists()  # refused before unpickling
    assert second.probes == {"size": "1000", "k0": "'v0v0'"}  # the producing cell ran again instead
    assert executions(counter) == ["config", "config"]
    assert "re-executing this cell" in second.stdout and "fails authentication" in second.stdout
    assert "restored from step 1" in second.stdout  # the first cell was restored: this was a resume


def test_check_verifies_every_byte_and_verify_data_refuses_big_tampered_arrays(store_dir: Path) -> None:
    cells = ["import numpy as np\nbig = np.arange(1_000_000, dtype='float64')  # 8 MB: mapped lazily on restore"]
    assert run_session(store_dir, cells).cells[-1]["success"]
    store = Store.open(store_dir)
    ref = file_refs(store)["big"]
    path = store.object_path(ref["object"])
    data = bytearray(path.read_bytes())
    data[-8:] = np.float64(-1.0).tobytes()  # the last element, changed in place
    path.write_bytes(bytes(data))

    with pytest.raises(AuthenticationError, match="fails authentication"):
        os.environ["NBDURABLE_VERIFY_DATA"] = "1"
        try:
            store.read_object(ref["object"], ref["tag"])
        finally:
            del os.environ["NBDURABLE_VERIFY_DATA"]
    assert store.read_object(ref["object"], ref["tag"])  # by default a big data object is mapped unchecked
    check = run_cli("check", "--store", str(store_dir))
    assert check.returncode == 1 and "fails authentication" in check.stdout, check.stdout


def test_the_key_is_private_and_a_shared_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.delenv("NBDURABLE_KEY_FILE", raising=False)
    key = auth.user_key()
    path = config / "nbdurable" / "key"
    assert path.read_bytes() == key and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    other = tmp_path / "shared-key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o644)
    monkeypatch.setenv("NBDURABLE_KEY_FILE", str(other))
    with pytest.raises(AuthenticationError, match="accessible to other users") as exc:
        auth.user_key()
    assert f"chmod 600 {other}" in str(exc.value)
    other.chmod(0o600)
    other.write_bytes(b"short")
    with pytest.raises(AuthenticationError, match="damaged"):
        auth.user_key()
