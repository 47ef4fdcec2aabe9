"""The command line as a person reads it: one store rule for every command (beside the notebook for `run`,
else the nearest store above the working directory, else the stores nearby named in the error), run ids by
a unique prefix with one wording for an unknown one, and `runs` / `show` in readable units."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import CLI, clean_env, run_cli, write_notebook

HERE = Path(__file__).parent


@pytest.fixture
def crashed_then_resumed(tmp_path: Path) -> Path:
    """notebooks/quickstart.ipynb in tmp/nbs: run once (it kills its own kernel), then resumed."""
    (tmp_path / "nbs").mkdir()
    shutil.copy(HERE.parent / "notebooks" / "quickstart.ipynb", tmp_path / "nbs")
    first = run_cli("run", "nbs/quickstart.ipynb", "--no-progress", cwd=tmp_path)
    assert first.returncode == 1, first.output
    second = run_cli("run", "nbs/quickstart.ipynb", "out.ipynb", cwd=tmp_path)  # with its progress bar
    assert second.returncode == 0, second.output
    assert "store nbs/.nbdurable" in second.stdout, "the summary says where the store is"
    for done in (first, second):  # the kernels listen on Unix sockets, not TCP: no warning in the progress bar
        assert "Kernel is running over TCP" not in done.stderr and "WARNING" not in done.stderr, done.stderr
    load_ext = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[1]
    assert load_ext.source == "%load_ext nbdurable" and load_ext.outputs == [], "no 'already loaded' echo"
    return tmp_path


@pytest.mark.slow
def test_one_store_rule_for_every_command(crashed_then_resumed: Path) -> None:
    root = crashed_then_resumed
    lost = run_cli("runs", cwd=root)  # the store is below: named in the error
    assert lost.returncode == 2 and "stores nearby: nbs/.nbdurable" in lost.stderr
    (root / "nbs" / "deeper").mkdir()
    below = run_cli("runs", cwd=root / "nbs" / "deeper")  # the store is above: found, as git finds its repository
    assert below.returncode == 0 and below.stdout.count("quickstart.ipynb") == 2, below.output


@pytest.mark.slow
def test_runs_and_show_are_readable_and_take_a_run_id_prefix(crashed_then_resumed: Path) -> None:
    where = crashed_then_resumed / "nbs"
    runs = run_cli("runs", cwd=where)
    assert runs.returncode == 0
    header, newest, oldest = runs.stdout.splitlines()[:3]
    assert header.split() == ["run_id", "status", "started", "duration", "executed", "restored", "saved",
                              "notebook"]
    assert re.search(r" completed 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d ", newest) and "." not in newest.split()[3]
    assert newest.rstrip().endswith(" quickstart.ipynb"), "the notebook relative to the working directory"
    crashed_id, resumed_id = oldest.split()[0], newest.split()[0]
    shown = run_cli("show", crashed_id[:-3], cwd=where)  # a unique prefix is enough
    assert shown.returncode == 0, shown.output
    assert "its process died" in shown.stdout and "cut short" in shown.stdout and "NaN" not in shown.stdout
    restored = run_cli("show", resumed_id, cwd=where).stdout
    rows = [line for line in restored.splitlines() if line.split()[2:3] == ["restored"]]
    assert rows and all("(saved " in line for line in rows)
    expensive = next(line for line in rows if "An expensive load" in line)
    assert expensive.split()[3:5] != ["2.0", "s"], "its own restore time, not the original's duration"
    for command in (["show", "nope"], ["report", "nope"], ["resume", "nope"]):
        unknown = run_cli(*command, cwd=where)
        assert unknown.returncode == 2 and f"no run 'nope' in store {where / '.nbdurable'}" in unknown.stderr
    ambiguous = run_cli("show", "20", cwd=where)
    assert ambiguous.returncode == 2 and "2 runs of store" in ambiguous.stderr
    plan = run_cli("plan", "quickstart.ipynb", cwd=where)  # the last run completed: a new run, unless --reuse
    assert plan.returncode == 0 and "would start a new run" in plan.stdout, plan.output
    assert re.search(r"^With --reuse, [1-9]\d* more cell\(s\) would be restored from completed runs", plan.stdout,
                     re.M), plan.stdout


def test_help_lists_whole_sentences_and_documents_every_option() -> None:
    top = run_cli("--help", in_process=True)
    commands = top.stdout.split("Commands:")[1]
    assert top.returncode == 0 and "..." not in commands, commands
    runs = run_cli("runs", "--help", in_process=True).stdout
    assert "Only runs with this status." in runs and "--limit N" in runs and "1<=x" not in runs
    assert "2 usage error" in run_cli("run", "--help", in_process=True).stdout


@pytest.mark.parametrize("command", ["run", "plan", "resume", "show", "runs", "report", "check", "gc", "send",
                                     "worker", "sweep"])
def test_every_store_option_states_the_real_rule_and_no_range_notation(command: str) -> None:
    text = run_cli(command, "--help", in_process=True).stdout
    store = " ".join(text.split("--store DIR", 1)[1].split())  # the option's help, on one line
    if command in ("run", "plan", "sweep"):
        assert "$NBDURABLE_STORE if set, else .nbdurable beside NOTEBOOK" in store, store
    else:
        assert ("$NBDURABLE_STORE if set, else the nearest .nbdurable in the working directory or one of its "
                "parents") in store, store
    assert not re.search(r"\[x?[<>]=?|<=x", text), f"click's range notation in `{command} --help`"


def test_a_file_that_is_not_a_notebook_is_one_clear_error(tmp_path: Path) -> None:
    shutil.copy(HERE.parent / "README.md", tmp_path)
    for command in ("run", "plan"):
        result = run_cli(command, "README.md", cwd=tmp_path)
        assert result.returncode == 2, result.output
        assert result.stderr.splitlines() == [
            "Error: README.md is not a Jupyter notebook: it is not JSON (an .ipynb file is)",
            "  What to do: pass an .ipynb file (a Markdown or script notebook converts with "
            "`jupytext --to ipynb FILE`)"], result.stderr  # no papermill UserWarning, no site-packages path


@pytest.mark.kernel
def test_parameters_without_a_parameters_cell_are_injected_with_our_warning(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('lr is', lr)")])
    nbformat.write(nb, tmp_path / "train.ipynb")
    result = run_cli("run", "train.ipynb", "out.ipynb", "-p", "lr", "0.1", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.output  # papermill's rule: injected anyway, in a new first cell
    assert result.stderr.startswith("Warning: train.ipynb has no cell tagged `parameters`: -p lr went into a new "
                                    "first cell"), result.stderr
    assert "tag the cell that sets the defaults `parameters`" in result.stderr
    assert "Input notebook does not contain" not in result.stderr, "papermill's bare log line"
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[0].source.strip() == "# Parameters\nlr = 0.1" and "lr is 0.1" in out.cells[1].outputs[0].text


def test_the_command_starts_without_the_notebook_machinery() -> None:
    """Importing the command line imports neither nbformat nor nbclient nor the data libraries: `nbdurable
    --help`, `runs` or `status` start in a fraction of a second; commands that run notebooks import them."""
    heavy = ("nbformat", "nbclient", "jsonschema", "pandas", "duckdb", "pyarrow", "papermill")
    proc = subprocess.run([sys.executable, "-c", f"import sys, nbdurable.cli\nprint([m for m in {heavy!r} "
                           "if m in sys.modules])"], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


@pytest.mark.kernel
def test_a_run_of_the_command_skips_the_slow_iri_checker(tmp_path: Path) -> None:
    """The `nbdurable` process never imports rfc3987_syntax (over a second of grammar compiling, for a format
    no notebook schema uses: nbdurable.startup), and nbformat still reads, validates and writes notebooks."""
    write_notebook(tmp_path / "nb.ipynb", ["x = 1", "print(x + 1)"])
    proc = subprocess.run([*CLI, "run", "nb.ipynb", "out.ipynb", "--no-progress"], cwd=tmp_path,
                          env={**clean_env(None), "PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "nbformat" in imported and "jsonschema" in imported, "the timing saw the imports"
    assert "lark" not in imported, "rfc3987_syntax was loaded (it compiles its grammars with lark)"
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    nbformat.validate(out)
    assert out.cells[1].outputs[0]["text"] == "2\n"
