"""Where the store lives and which notebook a session is: configuration, environment, frontend."""

from __future__ import annotations

from pathlib import Path

from conftest import run_session
from helpers import KILL, journal_paths


def test_traitlets_config_sets_the_store_and_env_overrides_it(tmp_path: Path) -> None:
    configured = tmp_path / "configured"
    run_session(None, ["a = 1"], config={"Durable": {"store": str(configured)}}, workdir=tmp_path)
    assert len(journal_paths(configured)) == 1
    env_store = tmp_path / "from-env"
    run_session(env_store, ["a = 1"], config={"Durable": {"store": str(configured)}}, workdir=tmp_path)
    assert len(journal_paths(env_store)) == 1 and len(journal_paths(configured)) == 1


def test_configured_secret_patterns(tmp_path: Path) -> None:
    store = tmp_path / "s"
    run_session(store, ["import os\nsession_cookie = os.environ['COOKIE']"], env={"COOKIE": "c00kie-value-xyz"},
                config={"Durable": {"secret_patterns": ["*COOKIE*"]}})
    for path in store.rglob("*"):
        if path.is_file():
            assert b"c00kie-value-xyz" not in path.read_bytes(), path


def test_jupyter_session_name_gives_identity_and_store_beside_the_notebook(tmp_path: Path) -> None:
    notebook = tmp_path / "work" / "analysis.ipynb"
    notebook.parent.mkdir()
    env = {"JPY_SESSION_NAME": str(notebook)}
    run_session(None, ["x = 41", KILL], notebook=None, env=env, workdir=tmp_path)
    store = notebook.parent / ".nbdurable"
    assert len(journal_paths(store)) == 1
    second = run_session(None, ["x = 41", "y = x + 1"], notebook=None, env=env, workdir=tmp_path, probes={"y": "y"})
    assert second.probes == {"y": "42"}
    assert "restored from step 1" in second.stdout


def test_attach_names_an_unnamed_session(tmp_path: Path) -> None:
    store = tmp_path / "s"
    run_session(store, ["%durable attach my-pipeline", "x = 1", KILL], notebook=None)
    second = run_session(store, ["%durable attach my-pipeline", "x = 1", "%durable status"], notebook=None)
    assert "restored from step 1" in second.stdout
    assert "notebook:      my-pipeline" in second.stdout


def test_failed_reexecution_names_the_variable(tmp_path: Path) -> None:
    store = tmp_path / "s"
    flag = tmp_path / "allow"
    flag.touch()
    cell = f"import pathlib\nassert pathlib.Path({str(flag)!r}).exists(), 'source gone'\ngen = (i for i in range(3))"
    run_session(store, [cell, KILL])
    flag.unlink()
    second = run_session(store, [cell])
    assert "`gen`" in second.stdout and "%%durable --always" in second.stdout
