"""Optional encryption at rest (AES-256-GCM with a key from the environment): a run and its resume work
as usual, no plaintext reaches the disk, and without the right key the store says so instead of loading."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from nbdurable.store import Store

from conftest import run_session
from helpers import run_cli

KEY = secrets.token_hex(32)


def cells(marker: str, killed: Path) -> list[str]:
    return [
        f"note = {marker!r} * 3  # inline in a journal record",
        f"import numpy as np\nbig = np.frombuffer(({marker!r} * 200_000).encode(), dtype='uint8')  # an object file",
        f"print({marker!r})  # an output",
        f"import os, pathlib\nif not pathlib.Path({str(killed)!r}).exists():\n"
        f"    pathlib.Path({str(killed)!r}).touch()\n"
        "    os.kill(os.getpid(), 9)",
        "size = len(note) + big.nbytes",
    ]


@pytest.mark.slow
def test_an_encrypted_store_resumes_and_holds_no_plaintext(store_dir: Path, tmp_path: Path) -> None:
    marker = "PLAINTEXT-" + secrets.token_hex(8)
    session = cells(marker, tmp_path / "killed")
    assert run_session(store_dir, session, env={"NBDURABLE_ENCRYPTION_KEY": KEY}).killed
    runs = run_cli("runs", "--store", str(store_dir), env={"NBDURABLE_ENCRYPTION_KEY": KEY})
    assert runs.returncode == 0 and "crashed" in runs.stdout, runs.stdout + runs.stderr  # history: from memory
    files = [p for p in store_dir.rglob("*") if p.is_file()]
    assert any(p.parent.parent.name == "objects" for p in files) and not (store_dir / "catalog.duckdb").exists()
    for path in files:
        assert marker.encode() not in path.read_bytes(), path

    without = run_session(store_dir, session, probes={"size": "size"})
    assert "is encrypted and no key is set" in without.stdout and "NBDURABLE_ENCRYPTION_KEY" in without.stdout
    assert without.probes["size"] == repr(3 * len(marker) + 200_000 * len(marker))  # the notebook ran on, not durably
    wrong = run_cli("check", "--store", str(store_dir), env={"NBDURABLE_ENCRYPTION_KEY": secrets.token_hex(32)})
    assert (wrong.returncode != 0
            and "cannot be decrypted with this NBDURABLE_ENCRYPTION_KEY" in wrong.stderr + wrong.stdout)

    store_dir_2 = tmp_path / "store2"  # the same notebook resumed with the key: restored, not re-executed
    session = cells(marker, tmp_path / "killed2")
    assert run_session(store_dir_2, session, env={"NBDURABLE_ENCRYPTION_KEY": KEY}).killed
    resumed = run_session(store_dir_2, session, probes={"size": "size"}, env={"NBDURABLE_ENCRYPTION_KEY": KEY})
    assert resumed.probes == {"size": str(3 * len(marker) + 200_000 * len(marker))}
    assert resumed.stdout.count("restored from step") == 3 and marker in resumed.stdout  # the output replayed
    os.environ["NBDURABLE_ENCRYPTION_KEY"] = KEY
    try:
        assert len(Store.open(store_dir).run_ids()) == 1  # the keyless session wrote nothing into the store
    finally:
        del os.environ["NBDURABLE_ENCRYPTION_KEY"]


@pytest.mark.kernel
@pytest.mark.slow
def test_a_headless_run_resumes_from_an_encrypted_store(tmp_path: Path) -> None:
    import nbformat

    marker = "PLAINTEXT-" + secrets.token_hex(8)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(f"plan_text = {marker!r}"),
                nbformat.v4.new_code_cell("import pathlib\nif not pathlib.Path('failed-once').exists():\n"
                                          "    pathlib.Path('failed-once').touch()\n    raise RuntimeError('flaky')"),
                nbformat.v4.new_code_cell("print(len(plan_text))")]
    nbformat.write(nb, tmp_path / "enc.ipynb")
    env = {"NBDURABLE_ENCRYPTION_KEY": KEY}
    command = ["run", "enc.ipynb", "--no-progress", "--store", "store"]
    first = run_cli(*command, cwd=tmp_path, env=env)
    assert first.returncode == 1, first.stderr
    second = run_cli(*command, cwd=tmp_path, env=env)
    assert second.returncode == 0 and "1 restored" in second.stdout, second.stdout + second.stderr
    for path in (tmp_path / "store").rglob("*"):
        assert not path.is_file() or marker.encode() not in path.read_bytes(), path
