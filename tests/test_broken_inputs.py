"""Broken inputs: each gives a clear error (what happened, what to do) and loses nothing.

Real IPython shells in fresh processes (``run_session``), real kernels through the real ``nbdurable``
command, real files damaged the way crashes, disks and people damage them. Already covered elsewhere,
and not repeated here: a corrupt record mid-journal (test_errors.py, test_maintenance.py: reported with
file and line, salvaged by ``check --repair``), a newer store format (test_errors.py,
test_store_journal.py), ``check`` on missing/damaged objects and a missing catalog (test_maintenance.py),
``%durable resume`` of a well-formed unknown run id, ``nbdurable show/resume`` of one and ``-p`` with a
bad name (test_errors.py, test_headless.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from nbdurable.store import Store

from conftest import run_session
from helpers import KILL, counting_cell, executions, journal_paths, journal_records, run_cli, variable_refs


def object_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "objects").rglob("*") if p.is_file())


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----- 1. a torn journal tail ---------------------------------------------------------------------


def test_torn_journal_tail_is_ignored_and_its_step_runs_again(store_dir: Path, tmp_path: Path) -> None:
    """A crash in the middle of writing a step's commit record leaves half a line: the resume ignores it
    silently (that step was not durable, so its cell runs again) and restores everything before it."""
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "c1", "a = 1"), counting_cell(counter, "c2", "b = a + 1"),
             counting_cell(counter, "c3", "c = b * 10")]
    assert run_session(store_dir, [*cells, KILL]).killed
    [journal] = journal_paths(store_dir)
    lines = journal.read_bytes().splitlines(keepends=True)
    at = next(i for i, r in enumerate(journal_records(journal)) if r["t"] == "step_end" and r["ordinal"] == 3)
    journal.write_bytes(b"".join(lines[:at]) + lines[at][: len(lines[at]) // 2])  # the crash hit c3's commit record

    second = run_session(store_dir, cells, probes={"c": "c", "a": "a"})
    assert all(cell["success"] for cell in second.cells), second.cells
    assert second.probes == {"c": "20", "a": "1"}
    assert executions(counter) == ["c1", "c2", "c3", "c3"], "c1 and c2 restored; c3 was not durable: it runs again"
    assert second.stdout.count("nbdurable: restored from step") == 2
    assert "damaged" not in second.stdout and "Error" not in second.stdout, "a torn tail is recovered silently"
    check = run_cli("check", "--store", str(store_dir))
    assert check.returncode == 0 and "torn tail (a crash mid-write), harmless" in check.stdout, check.stdout


# ----- 3. a missing or truncated object file ----------------------------------------------------


def files_by_variable(store: Path) -> list[Path]:
    """The object files of ``PRODUCERS``' variables, in their order (from the journal's references)."""
    keys = {name: ref["object"] for name, ref in variable_refs(store).items() if "inline" not in ref}
    return [store / "objects" / keys[name][:2] / keys[name][2:] for name in PRODUCERS]


def damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


PRODUCERS = {  # variable -> the cell body producing it; each is stored as an object file of its own format
    "arr": "import numpy as np\narr = np.arange(100_000.0)",  # ndarray
    "df": "import pandas as pd\ndf = pd.DataFrame({'v': range(20_000)})",  # parquet
    "d": "d = {'k': list(range(20_000))}",  # pickle
}
PROBES = {"arr": "float(arr.sum())", "df": "int(df['v'].sum())", "d": "sum(d['k'])", "total": "total"}
EXPECTED = {"arr": "4999950000.0", "df": "199990000", "d": "199990000", "total": "40045.0"}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_missing_or_truncated_object_reexecutes_its_cell(store_dir: Path, tmp_path: Path, how: str) -> None:
    """Resuming when a step's object files are gone or damaged: the cell that produced them executes
    instead of being restored (a notice names the variable and the object), the session goes on with the
    right state, and the new run stores the objects again, so the next resume restores everything."""
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, name, body) for name, body in PRODUCERS.items()]
    cells.append(counting_cell(counter, "total", "total = float(arr[:10].sum()) + len(df) + len(d['k'])"))
    assert run_session(store_dir, [*cells, KILL]).killed
    files = object_files(store_dir)
    assert len(files) == 3, files
    for path in files:
        damage(path, how)

    state_is_right = "\n".join(f"assert repr({expr}) == {EXPECTED[name]!r}, {name!r}" for name, expr in PROBES.items())
    second = run_session(store_dir, [*cells, state_is_right, KILL])  # killed again: the third session resumes it
    assert second.killed and all(cell["success"] for cell in second.cells), second.cells
    assert executions(counter) == ["arr", "df", "d", "total", "arr", "df", "d"], "the damaged steps' cells ran again"
    assert second.stdout.count("nbdurable: restored from step") == 1  # `total` (inline) is restored
    notices = [line for line in second.stdout.splitlines() if line.startswith("↻ nbdurable: re-executing this cell: ")]
    assert len(notices) == 3, second.stdout
    for name, path in zip(PRODUCERS, files_by_variable(store_dir), strict=True):
        notice = next(line for line in notices if f"Cannot restore variable `{name}`" in line)
        assert f"object {path.parent.name}{path.name}" in notice, notice  # names the variable and its object
        if how == "deleted":
            assert "is missing from the store" in notice
    if how == "truncated":  # the damaged files were moved out of their keys' place, then stored whole again
        assert len(list((store_dir / "tmp").glob("*.damaged-*"))) == 3

    third = run_session(store_dir, cells, probes=PROBES)
    assert third.probes == EXPECTED
    assert executions(counter) == ["arr", "df", "d", "total", "arr", "df", "d"], "healed: everything restores"
    assert third.stdout.count("nbdurable: restored from step") == 4 and "re-executing" not in third.stdout
    check = run_cli("check", "--store", str(store_dir))  # the same content was stored again under each key
    assert check.returncode == 0 and "3 referenced: 3 present, 0 missing, 0 damaged" in check.stdout, check.stdout


def test_durable_resume_reexecutes_a_cell_whose_object_is_missing(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "arr", PRODUCERS["arr"]),
             counting_cell(counter, "total", "total = float(arr.sum())")]
    assert run_session(store_dir, [*cells, KILL]).killed
    object_files(store_dir)[0].unlink()
    second = run_session(store_dir, ["%durable resume"], probes={"arr": PROBES["arr"], "total": "total"})
    assert second.cells[-1]["success"], second.cells
    assert second.probes == {"arr": EXPECTED["arr"], "total": EXPECTED["arr"]}
    assert executions(counter) == ["arr", "total", "arr"]
    assert "re-executing step 1 of run" in second.stdout and "Cannot restore variable `arr`" in second.stdout
    assert "restored 1 step(s)" in second.stdout and "re-executed 1" in second.stdout


@pytest.mark.kernel
@pytest.mark.slow
def test_headless_resume_reexecutes_a_cell_whose_object_is_missing(tmp_path: Path) -> None:
    """``nbdurable run``: the batch restore stops before the damaged step; that cell executes, the
    next one is restored again, the crashed one runs."""
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    counter = "counter.txt"
    nb.cells = [
        nbformat.v4.new_code_cell(counting_cell(Path(counter), "arr", PRODUCERS["arr"])),
        nbformat.v4.new_code_cell(counting_cell(Path(counter), "total", "total = float(arr.sum())")),
        nbformat.v4.new_code_cell(counting_cell(Path(counter), "end",
                                                "import os, pathlib\nif not pathlib.Path('crashed-once').exists():\n"
                                                "    pathlib.Path('crashed-once').touch()\n"
                                                "    os.kill(os.getpid(), 9)\nprint('total', total)")),
    ]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    first = run_cli("run", "nb.ipynb", "out.ipynb", "--no-progress", cwd=tmp_path)
    assert first.returncode == 1 and "crashed" in first.stdout, first.stdout + first.stderr
    object_files(tmp_path / ".nbdurable")[0].unlink()

    second = run_cli("run", "nb.ipynb", "out.ipynb", "--no-progress", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 executed, 1 restored" in second.stdout
    assert executions(tmp_path / counter) == ["arr", "total", "end", "arr", "end"]
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert [c.metadata.nbdurable["status"] for c in out.cells] == ["executed", "restored", "executed"]
    assert "total 4999950000.0" in "".join(o.get("text", "") for o in out.cells[2].outputs)


# ----- 4. a deleted catalog ------------------------------------------------------------------------


@pytest.mark.slow
def test_deleted_catalog_is_rebuilt_on_the_next_query(store_dir: Path) -> None:
    run_session(store_dir, ["a = 1", KILL])
    run_session(store_dir, ["a = 1", "b = 2"])
    assert run_cli("runs", "--store", str(store_dir)).returncode == 0
    catalog = store_dir / "catalog.duckdb"
    assert catalog.exists()
    catalog.unlink()
    runs = run_cli("runs", "--store", str(store_dir))
    assert runs.returncode == 0, runs.stderr
    lines = runs.stdout.splitlines()[1:]
    assert len(lines) == 2 and "completed" in lines[0] and "crashed" in lines[1], runs.stdout
    show = run_cli("show", lines[0].split()[0], "--store", str(store_dir))
    assert show.returncode == 0 and "restored" in show.stdout and "b = 2" in show.stdout, show.stdout + show.stderr
    assert catalog.exists()


# ----- 5. a full disk ------------------------------------------------------------------------------

LIMIT_CELL = (  # the file-size limit makes every write past 4 MiB fail (EFBIG) in this process, as a full disk would
    "import resource, signal\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (4 * 2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))"
)


def full_disk_cells(counter: Path, mib: int) -> list[str]:
    return [
        LIMIT_CELL,
        "import numpy as np\nsmall = np.arange(1000)",
        counting_cell(counter, "big", f"big = np.ones({mib} * 2**20 // 8)"),
        counting_cell(counter, "after", "after = int(small.sum()) + big.size"),
        counting_cell(counter, "z", "z = after + 1"),
    ]


def assert_consistent_without_partial_objects(store: Path) -> None:
    assert object_files(store) == [], "nothing half-written in objects/"
    check = run_cli("check", "--store", str(store))
    assert check.returncode == 0 and "0 missing, 0 damaged" in check.stdout, check.stdout + check.stderr


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
@pytest.mark.parametrize("mib", [8, 24], ids=["committed-in-the-cell", "committed-in-the-background"])
def test_full_disk_fails_the_step_clearly_and_loses_nothing(tmp_path: Path, mib: int) -> None:
    """An object file that cannot be written (a file-size limit stands in for a full disk: a small tmpfs
    needs mount rights). The cell's own work is done and the session goes on; the message names the
    variable, says the disk is full for it and what to do (for a big payload committed in the background:
    as soon as that commit fails, naming its step, which is recorded as not durable); nothing half-written
    stays in the store; after a crash, the
    next session restores what was durable and executes the rest."""
    z = 499500 + mib * 2**17 + 1
    env = {"IPYTHONDIR": str(tmp_path / "ipython")}  # IPython's history database must not hit the limit

    reported = run_session(tmp_path / "s1", full_disk_cells(tmp_path / "c1.txt", mib), probes={"z": "z"}, env=env)
    assert all(cell["success"] for cell in reported.cells), reported.cells
    assert reported.probes == {"z": str(z)}
    assert ("variable `big` (numpy.ndarray" in reported.stdout
            and "was not saved: disk full" in reported.stdout), reported.stdout
    assert "ulimit -f" in reported.stdout
    if mib == 24:  # the background commit reports its own step, not whichever cell runs next
        assert re.search(r"nbdurable: step \d+ is not durable: variable `big`", reported.stdout), reported.stdout
    assert "Traceback" not in reported.stdout and "Errno" not in reported.stdout
    assert list((tmp_path / "s1" / "tmp").iterdir()) == [], "the failed write left no temporary file behind"
    assert_consistent_without_partial_objects(tmp_path / "s1")

    store, counter = tmp_path / "s2", tmp_path / "c2.txt"
    cells = full_disk_cells(counter, mib)
    assert run_session(store, [*cells, f"assert z == {z}", KILL], env=env).killed  # a crash: the next session resumes
    assert_consistent_without_partial_objects(store)  # (a write cut short by the kill may leave a file in tmp/: swept)
    # the limit cell is restored: no limit
    resumed = run_session(store, cells, probes={"z": "z", "big": "big.nbytes"}, env=env)
    assert resumed.probes == {"z": str(z), "big": str(mib * 2**20)}
    # `big` is executed again. When its commit failed before `after` and `z` committed, they executed again
    # too (their recorded reads of `big` were never durable); when it failed in the background after they
    # committed, they read a `big` of the same content: restored (the background case, timing decides).
    runs = executions(counter)
    assert runs in (["big", "after", "z"] * 2, ["big", "after", "z", "big"]), runs
    assert mib != 8 or runs == ["big", "after", "z"] * 2  # failed in the cell: nothing read a durable `big`
    restored = 2 if runs == ["big", "after", "z"] * 2 else 4
    assert resumed.stdout.count("nbdurable: restored from step") == restored  # + the limit cell and `small`
    assert run_cli("check", "--store", str(store)).returncode == 0


# ----- 6. a read-only store ------------------------------------------------------------------------

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _drop_permission_override() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@contextlib.contextmanager
def permissions_enforced(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within this block, shells started by ``run_session`` obey file modes even when the tests run as root.

    Root ignores ``chmod a-w`` through CAP_DAC_OVERRIDE. The shell process is started without it (dropped
    from the capability bounding set before exec, so the new program never gets it): it is then refused
    writes exactly as a normal user is (EACCES), which is what a user with a store they cannot write sees.
    """
    if os.geteuid() != 0:
        yield
        return
    with tempfile.TemporaryDirectory() as tmp:
        probe_file = Path(tmp) / "read-only"
        probe_file.touch(mode=0o444)
        try:
            probe = subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'w')", str(probe_file)],
                                   preexec_fn=_drop_permission_override, capture_output=True)
        except (OSError, subprocess.SubprocessError):
            probe = None
    if probe is None or probe.returncode == 0:
        pytest.skip("running as root and CAP_DAC_OVERRIDE cannot be dropped here (no CAP_SETPCAP): "
                    "a read-only directory cannot be made to refuse root's writes")
    with monkeypatch.context() as m:
        m.setattr(subprocess, "run", functools.partial(subprocess.run, preexec_fn=_drop_permission_override))
        yield


def make_read_only(path: Path) -> None:
    subprocess.run(["chmod", "-R", "a-w", str(path)], check=True)


def make_writable(path: Path) -> None:
    subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)


@pytest.mark.skipif(sys.platform != "linux", reason="capability handling is Linux's")
def test_read_only_store_runs_the_notebook_not_durably(store_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A store this process cannot write (here: an existing store made read-only by chmod): one warning
    at the first cell saying the session is not durable and what to do; every cell executes normally
    (nothing is restored either: that would be recorded); the store is left exactly as it was."""
    counter = tmp_path / "count.txt"
    cells = [counting_cell(counter, "a", "a = 1"), counting_cell(counter, "b", "b = a + 1")]
    assert run_session(store_dir, [*cells, KILL]).killed
    make_read_only(store_dir)
    before = tree(store_dir)
    try:
        with permissions_enforced(monkeypatch):
            second = run_session(store_dir, [*cells, "c = b * 10", "%durable status"], probes={"c": "c"})
    finally:
        make_writable(store_dir)
    assert [cell["success"] for cell in second.cells] == [True] * 5, second.cells
    assert second.probes == {"c": "20"}
    assert executions(counter) == ["a", "b", "a", "b"], "a cell that would have been restored executes instead"
    assert second.stdout.count("this session is NOT durable") == 1, second.stdout
    warning = second.stdout[second.stdout.index("this session is NOT durable"):]
    assert "Permission denied" in warning and "NBDURABLE_STORE" in warning
    assert "not recording" in second.stdout  # %durable status says so
    assert "Traceback" not in second.stdout and "Error in callback" not in second.stdout
    assert tree(store_dir) == before


@pytest.mark.skipif(sys.platform != "linux", reason="capability handling is Linux's")
def test_store_that_cannot_be_created_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's directory cannot be created (its parent is read-only): ``%load_ext nbdurable`` fails
    with a StoreError that says so and what to do; the notebook itself runs on."""
    parent = tmp_path / "readonly"
    parent.mkdir()
    make_read_only(parent)
    try:
        with permissions_enforced(monkeypatch):
            session = run_session(parent / "store", ["x = 1", "y = x + 1"], probes={"y": "y"}, workdir=tmp_path)
    finally:
        make_writable(parent)
    load = session.cells[0]
    assert not load["success"] and load["error"].startswith(
        "StoreError: permission denied while opening the store"), load
    assert "NBDURABLE_STORE" in load["error"]
    assert [cell["success"] for cell in session.cells[1:]] == [True, True] and session.probes == {"y": "2"}
    assert not (parent / "store").exists()


# ----- 7. malformed magic arguments and command lines ----------------------------------------------


def test_malformed_magic_arguments_are_clear_errors_and_change_nothing(store_dir: Path) -> None:
    """Each bad magic fails its own cell with a one-line error naming the problem (the error classes of
    plain usage errors are test_fuzz.py's business); nothing is half-applied and the session goes on."""
    bad = {
        "%durable resume no-such-run": "No run 'no-such-run' in store",
        "%durable resume ../../etc/passwd": "No run '../../etc/passwd' in store",
        "%durable resume a b": "unrecognized arguments: b",
        "%durable runs --limit x": "invalid int value: 'x'",
        "%durable exclude 1bad ok": "%durable exclude: not variable names: 1bad",
        "%durable attach": "the following arguments are required: name",
        "%%durable --retries x\nvalue = 'changed'": "%%durable: argument --retries: invalid int value: 'x'",
        "%%durable --timeout soon\nvalue = 'changed'": "%%durable: not a duration: 'soon'",
    }
    session = run_session(store_dir, ["value = 'kept'", *bad, "ok = 'not a secret'", "after = value"],
                          probes={"after": "after", "ok": "ok"})
    for (cell, expected), result in zip(bad.items(), session.cells[2:-2], strict=True):
        assert not result["success"] and expected in result["error"], (cell, result)
    assert session.cells[-1]["success"] and session.probes == {"after": "'kept'", "ok": "'not a secret'"}
    assert "Traceback" not in session.stdout
    assert len(journal_paths(store_dir)) == 1
    stored = {name: ref.get("format") for name, ref in variable_refs(store_dir).items()}
    assert stored == {"value": "pickle", "ok": "pickle", "after": "pickle"}, (
        "a rejected `%durable exclude` excludes nothing")


@pytest.mark.parametrize(("args", "code", "message"), [
    (["show", "bad-id"], 2, "no run 'bad-id' in store "),
    (["show", "../../etc"], 2, "no run '../../etc' in store "),
    (["resume", "no-such-run"], 2, "no run 'no-such-run' in store "),
    (["run", "missing.ipynb"], 2, "File 'missing.ipynb' does not exist"),
    (["run", "empty.ipynb"], 2, "empty.ipynb is not a Jupyter notebook: it is not JSON"),
    (["run", "nb.ipynb", "-p", "a"], 2, "Option '-p' requires 2 arguments"),
    (["run", "nb.ipynb", "-p", "1x", "2"], 2, "-p 1x: not a valid parameter name"),
    (["run", "nb.ipynb", "-f", "list.yaml"], 2, "parameters file list.yaml is not a mapping"),
    (["run", "nb.ipynb", "-f", "broken.yaml"], 2, "cannot read parameters file broken.yaml"),
    (["runs", "--limit", "x"], 2, "Invalid value for '--limit'"),
    (["gc", "--keep-last", "-1"], 2, "Invalid value for '--keep-last'"),
    (["send", "evt", "--data", "{bad"], 2, "the event data is not JSON"),
    (["frobnicate"], 2, "No such command 'frobnicate'"),
    (["runs", "--store", "newer"], 1, "was written by a newer nbdurable (format 99"),
])
def test_malformed_command_lines_are_clear_errors(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    """Usage errors exit 2, a store nbdurable cannot read exits 1; never a traceback; nothing is created."""
    Store.open(tmp_path / ".nbdurable")  # an empty store in the default place
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / "FORMAT").write_text(json.dumps({"format": 99}))
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), tmp_path / "nb.ipynb")
    (tmp_path / "empty.ipynb").write_text("")
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "broken.yaml").write_text("a: [1\n")
    before = tree(tmp_path)
    result = run_cli(*args, cwd=tmp_path, timeout=60, in_process=True)  # output and exit code are the point
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.startswith(("Error: ", "Usage: ")), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    after = {name: data for name, data in tree(tmp_path).items() if "catalog." not in name}  # `show` builds the catalog
    assert after == before, "a refused command changes nothing"
