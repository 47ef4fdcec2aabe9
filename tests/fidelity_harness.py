"""Fidelity harness: a resumed run must be indistinguishable from a clean run that skipped the work done.

The notebooks are the data-science notebooks of ``tests/fidelity/notebooks/`` (their ``lib/`` and ``data/``
are copied beside them for every run). For one notebook the harness makes

- **the clean reference**: ``nbdurable run --fresh NAME out.ipynb`` with its own store, nobody killing it
  (``clean_run``); once per notebook also plain ``papermill NAME out.ipynb`` (``papermill_run``), which the
  clean nbdurable run must equal (nbdurable must be invisible in a run nobody killed);
- **trials** (``kill_trial``): a fresh directory and store, ``nbdurable run`` started in a process group of
  its own, SIGKILLed (the runner's process group and the kernel's, so the kernel and what it spawned die
  too) at a cell drawn at random, then the same ``nbdurable run`` again, which resumes, to the end; then
  the resumed output notebook is compared with the clean one, cell by cell, output by output
  (``compare``), its exit code with the clean run's (and with ``metadata.fidelity.returncode``, default
  0), and the side-effect counter is checked.

**Where a trial kills.** ``k`` is drawn in ``1 .. n-1`` (``n``: the cells a clean run executes), and a mode:
``after-commit`` waits for the journal's ``k``-th completed top-level step, ``mid-cell`` for the counter
line of the ``k+1``-th cell (the cell has started and done its side effect, not committed). Cells are fast,
so the kill may land a little later: the trial reports how many cells were committed when it struck.

**Side effects counted once.** Every code cell gets, at harness time and in every run alike (so the
sources match), a first line appending its cell index (its position in ``nb.cells``) to the file named by
``$NBD_FIDELITY_COUNTER``; the harness writes a ``resume`` line between the killed run and the resume. A
cell committed by the killed run (its journal's completed top-level steps) must appear exactly once in
total (restored cells do not execute, so they must not append) — unless the resumed run says it re-executed
it because its state could not be stored (an ipywidget, a connection: the design's announced exception,
``metadata.nbdurable.reexecuted`` on the cell, counted apart as "re-executed by design"); any other cell the
clean run executes
must appear exactly once after the ``resume`` line; a cell the clean run does not execute (after an early
``sys.exit``) must not appear at all.

**Normalization** (``normalize``), the same on both sides; only what is declared nondeterministic:

- execution counts (``execution_count``, ``Cell In[12]``/``Input In [12]`` in tracebacks), nbdurable's
  notice outputs and metadata (output ``metadata.nbdurable``), ``transient``; cell metadata (timings,
  papermill's and nbdurable's keys) is not compared at all, nor papermill's error markdown cells;
- memory addresses ``0x[0-9a-f]+``, the kernel's pid in ``/tmp/ipykernel_<pid>/``, the run directory's
  path (each run has its own directory);
- streams: all stream outputs of a cell with one name merged into the first (nbclient stores raw chunks, and
  stdout and stderr race in ipykernel: stdout is put before an adjacent stderr, as nbclient's
  ``coalesce_streams`` does), then backspaces and carriage returns folded as JupyterLab shows them
  (``removeOverwrittenChars``: a backspace erases the character before it, text after a ``\\r`` overwrites
  its line from the start). Not nbclient's fold: its backspace pattern ``r"[^\\n]\\b"`` is a word boundary
  and erases words;
- widgets: a widget view is replaced by its model's state from the notebook's widget state (model ids
  are random; references between models become ``IPY_MODEL_<ModelName>``; an Output widget's
  ``outputs`` are normalized like a cell's; its ``msg_id`` dropped). A view whose state is missing shows
  as ``<no widget state>``: Jupyter could not render it;
- images: a PNG is compared by its decoded pixels: ``png WxH <sha256 of the RGBA pixels>`` (matplotlib's
  Agg rendering is deterministic, the PNG's text chunks and compression are not compared), so a lost
  style, theme or rcParam shows. ``images="size"`` compares the size only;
- cells tagged ``nondeterministic`` (unseeded randomness, clocks): only the shape of their outputs is
  compared (output types, stream names, mime types), not their content.

``PYTHONHASHSEED=0``, no ``MPLBACKEND`` (the kernel's inline backend) and no ``PYTEST_CURRENT_TEST`` (under
pytest ipykernel does not forward ``os.system`` output) in every run's environment (``run_env``).
ipykernel reads what child processes write to file descriptors 1 and 2 on a thread, and a cell's reply can
overtake it (nbclient then drops the late output, in papermill's runs as in nbdurable's): ``outputs.ipynb``
sleeps briefly after its child processes so both runs show their output.

**Hangs.** nbclient (papermill and ``nbdurable run`` alike) sometimes never sees a cell's reply when an
ipywidgets ``Output`` widget captured in it (jupyter/nbclient#312; ``outputs.ipynb`` sleeps after its captures
to make it rare): a run still going after ``RUN_TIMEOUT`` (clean) or ``trial_timeout`` is killed and the
clean run or the whole trial made again in a new directory, at most ``ATTEMPTS`` times; the summary counts
these as "hung", never as differences.

**API.** ``reference(name, root)`` -> ``Reference`` (the clean runs); ``kill_trial(ref, root, trial, seed)``
-> ``TrialResult`` (``.ok``, ``.difference``, ``.violations``, ``.exit_problem``, ``.describe()``);
``compare_notebooks(clean, other)`` / ``compare(normalize(nb1), normalize(nb2))`` -> the first
``Difference`` or None; ``soak(trials, seed)`` and ``summary(refs, results)`` for the table.

**Soak**::

    python -m tests.fidelity_harness --trials 200 [--notebook NAME ...] [--seed S] [--workers 2]
        [--images pixels|size] [--keep DIR] [--no-papermill]

runs the clean references (and papermill's), then ``--trials`` trials spread round-robin over the notebooks
(trial ``i`` of notebook ``N`` draws ``k`` and the mode from ``random.Random(f"{S}:{N}:{i}")``: the same
seed kills at the same cells), and prints a line per trial and a summary table per notebook (trials,
kills, equal %, trials with side-effect violations, exit-code mismatches, hung runs, time) with the most
common first differences and violations. Exit code 1 if any trial was not ``ok``. ``--keep DIR`` keeps
every run directory (output notebooks, logs, stores, counter files); otherwise the passing trials'
directories are removed.

``tests/test_fidelity.py`` is the CI version: clean runs compare equal (and a changed output is reported),
and each notebook killed once in its last two thirds.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import difflib
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

sys.path.insert(0, str(Path(__file__).parent))  # `python -m tests.fidelity_harness`: helpers is a sibling

from helpers import CLI, clean_env, journal_records

NOTEBOOKS = Path(__file__).parent / "fidelity" / "notebooks"
COUNTER_ENV = "NBD_FIDELITY_COUNTER"
COUNTER_FILE = "counter.txt"
RESUME_MARK = "resume"
NONDETERMINISTIC = "nondeterministic"
OUTPUT = "out.ipynb"
MODES = ("after-commit", "mid-cell")
RUN_TIMEOUT = 120.0  # a clean run still going after this hung (see ATTEMPTS): killed
ATTEMPTS = 3  # a clean run or a trial in which a run hangs is made again, at most this many times in all
# nbclient (so papermill and nbdurable run alike) sometimes waits forever for a cell's reply when an
# ipywidgets Output widget captured in it: its OutputWidget sends comm messages on the shell channel while it
# polls that channel (jupyter/nbclient#312). The kernel is idle, the run never ends: a hang is killed and the
# attempt made again in a new directory (counted as "hung"), never reported as a difference.


def trial_timeout(ref: Reference) -> float:
    """How long a trial's run may take before it counts as hung: 6 times the clean run, at least 60 s."""
    return max(60.0, 6 * ref.clean.seconds)


# ------------------------------------------------------------------------------------------ notebooks


def notebook_names() -> list[str]:
    """The notebooks of ``tests/fidelity/notebooks`` (without ``.ipynb``)."""
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def counter_line(index: int) -> str:
    """The line injected first into code cell ``index``: appends the index to ``$NBD_FIDELITY_COUNTER``."""
    return f"open(__import__('os').environ[{COUNTER_ENV!r}], 'a').write('{index}\\n')  # fidelity: side-effect counter"


def instrument(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose every non-empty code cell first appends its index to the counter file (after
    the first line of a cell magic, which must stay first)."""
    nb = copy.deepcopy(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        lines = cell.source.split("\n")
        at = 1 if lines[0].startswith("%%") else 0
        lines.insert(at, counter_line(index))
        cell.source = "\n".join(lines)
    return nb


def copy_resources(folder: Path, directory: Path) -> None:
    """Every non-notebook file and folder of ``folder`` (data, local modules) copied into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.suffix == ".ipynb" or item.name in (".nbdurable", "__pycache__", ".ipynb_checkpoints"):
            continue
        if item.is_dir():
            shutil.copytree(item, directory / item.name, ignore=shutil.ignore_patterns("__pycache__", ".nbdurable"))
        else:
            shutil.copy2(item, directory / item.name)


def prepare(name: str, directory: Path, source: nbformat.NotebookNode | None = None) -> Path:
    """``directory`` with the notebook ``name`` (``source``, default the file) instrumented, and its resources
    (every non-notebook file of ``tests/fidelity/notebooks``: ``lib/``, ``data/``); returns its path there."""
    copy_resources(NOTEBOOKS, directory)
    path = directory / f"{name}.ipynb"
    nbformat.write(instrument(source or read_notebook(name)), path)
    return path


def read_notebook(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` of ``tests/fidelity/notebooks`` as it is now (a soak keeps the version it began with)."""
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def expected_returncode(name: str, source: nbformat.NotebookNode | None = None) -> int:
    """The exit code a clean run must have: ``metadata.fidelity.returncode`` of the notebook, default 0."""
    return int((source or read_notebook(name)).metadata.get("fidelity", {}).get("returncode", 0))


def run_env(directory: Path) -> dict[str, str]:
    """Every run's environment: ``helpers.clean_env`` plus the counter, a fixed hash seed, no MPLBACKEND (the
    kernel's inline backend), and no PYTEST_CURRENT_TEST: under pytest ipykernel does not forward what child
    processes write to file descriptors 1 and 2 (``os.system``), and the runs must be those of a user."""
    return clean_env({COUNTER_ENV: str(directory / COUNTER_FILE), "PYTHONHASHSEED": "0", "MPLBACKEND": None,
                      "PYTEST_CURRENT_TEST": None})


def counts(directory: Path) -> tuple[list[int], list[int]]:
    """The cell indices appended to the counter file before and after the ``resume`` line."""
    path = directory / COUNTER_FILE
    lines = path.read_text().split() if path.exists() else []
    cut = lines.index(RESUME_MARK) if RESUME_MARK in lines else len(lines)
    return [int(x) for x in lines[:cut]], [int(x) for x in lines[cut + 1:]]


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class RunOutcome:
    """One run of a notebook: its exit code, output, what its cells appended to the counter."""

    kind: str  # "nbdurable" | "papermill" | "resume"
    directory: Path
    returncode: int | None  # None: it hung (see ``RUN_TIMEOUT``) and was killed
    stdout: str  # stdout and stderr, also in the run directory's KIND-*.log
    seconds: float
    executed: list[int] = field(default_factory=list)

    @property
    def output(self) -> Path:
        return self.directory / OUTPUT

    @property
    def hung(self) -> bool:
        return self.returncode is None

    def notebook(self) -> nbformat.NotebookNode:
        return nbformat.read(self.output, as_version=4)


def _nbdurable_args(name: str, *, fresh: bool = False) -> list[str]:
    return ["run", f"{name}.ipynb", OUTPUT, "--no-progress", "--store", "store", *(["--fresh"] if fresh else [])]


def _start(cmd: list[str], directory: Path, log: Any) -> subprocess.Popen[Any]:
    """A run in a session (process group) of its own, so that the harness can kill it and its kernel."""
    return subprocess.Popen(cmd, cwd=directory, env=run_env(directory), stdout=log, stderr=log,
                            start_new_session=True)


def _run(kind: str, cmd: list[str], directory: Path, timeout: float) -> RunOutcome:
    """Run ``cmd`` to its end; a run still going after ``timeout`` s hung: killed, returncode None."""
    started = time.monotonic()
    log_path = directory / f"{kind}-{int(time.time() * 1000)}.log"
    with open(log_path, "w") as log:
        proc = _start(cmd, directory, log)
        kernel = None
        while proc.poll() is None and time.monotonic() - started < timeout:
            kernel = kernel or _kernel_pid(proc.pid)
            time.sleep(0.05)
        hung = proc.poll() is None
        if hung:
            _kill(proc, kernel or _kernel_pid(proc.pid))
    text = log_path.read_text()
    return RunOutcome(kind, directory, None if hung else proc.returncode, text, time.monotonic() - started,
                      counts(directory)[0])


def clean_run(name: str, directory: Path, timeout: float = RUN_TIMEOUT,
              source: nbformat.NotebookNode | None = None) -> RunOutcome:
    """``nbdurable run --fresh`` of the notebook in ``directory`` (prepared here), nobody killing it."""
    prepare(name, directory, source)
    return _run("nbdurable", [*CLI, *_nbdurable_args(name, fresh=True)], directory, timeout)


def papermill_run(name: str, directory: Path, timeout: float = RUN_TIMEOUT,
                  source: nbformat.NotebookNode | None = None) -> RunOutcome:
    """Plain papermill (no nbdurable) on the notebook in ``directory`` (prepared here)."""
    prepare(name, directory, source)
    return _run("papermill", [sys.executable, "-m", "papermill", f"{name}.ipynb", OUTPUT, "--log-level", "ERROR",
                              "--no-progress-bar"], directory, timeout)


# ------------------------------------------------------------------------------------- normalization

_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]+")
_KERNEL_PID = re.compile(r"ipykernel_\d+")
_EXECUTION_COUNT = re.compile(r"(Cell In ?|Input In ?)\[\d+\]")
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# JupyterLab's output area (``removeOverwrittenChars``), its JavaScript regular expressions in Python: ``.`` and
# the multiline ``^``/``$`` treat \r (and \u2028/9) as line terminators like \n.
_LT = "\n\r\u2028\u2029"
_DOT, _BOL, _EOL = f"[^{_LT}]", f"(?:^|(?<=[{_LT}]))", f"(?=[{_LT}]|\\Z)"
_BACKSPACE = re.compile("[^\n]\x08")
_CR_NL, _CR_ANY = re.compile("\r+\n"), re.compile("\r[^$]")
_CR_BASE, _CR_INSERT = re.compile(f"{_BOL}({_DOT}*)\r+"), re.compile(f"\r+({_DOT}*){_EOL}")
_CR_TAIL, _CR_HEAD = re.compile(f"\r+{_DOT}*{_EOL}"), re.compile(f"{_BOL}{_DOT}*\r")


def _fold(text: str) -> str:
    """Backspaces and carriage returns as Jupyter shows them (JupyterLab's ``fixBackspace`` then
    ``fixCarriageReturn``): a backspace erases the character before it; text after a ``\\r`` overwrites its
    line from the start (``"100%\\rdone"`` shows ``"done"``, ``"downloading\\rok"`` shows ``"okwnloading"``)."""
    while True:
        shorter = _BACKSPACE.sub("", text)
        if len(shorter) >= len(text):
            break
        text = shorter
    text = _CR_NL.sub("\n", text)
    while _CR_ANY.search(text):
        base = _CR_BASE.search(text).group(1)  # type: ignore[union-attr]
        insert = _CR_INSERT.search(text).group(1)  # type: ignore[union-attr]
        insert = insert + base[len(insert):]
        text = _CR_TAIL.sub("\r", text, count=1)
        text = _CR_HEAD.sub(lambda _, shown=insert: shown, text, count=1)
    return text


def coalesce(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All stream outputs of one name merged into the first, folded; stdout before an adjacent stderr."""
    merged: list[dict[str, Any]] = []
    streams: dict[str, dict[str, Any]] = {}
    for output in outputs:
        if output.get("output_type") == "stream":
            text = "".join(output.get("text", ""))
            if output["name"] in streams:
                streams[output["name"]]["text"] += text
                continue
            output = {**output, "text": text}
            streams[output["name"]] = output
        merged.append(output)
    for output in streams.values():
        output["text"] = _fold(output["text"])
    for i, output in enumerate(merged[:-1]):
        after = merged[i + 1]
        if (output.get("output_type") == "stream" and output["name"] == "stderr"
                and after.get("output_type") == "stream" and after["name"] == "stdout"):
            merged[i], merged[i + 1] = after, output
    return [o for o in merged if o.get("output_type") != "stream" or o["text"]]


class Normalizer:
    """The normalization rules (module docstring) for the notebooks of one run directory."""

    def __init__(self, directories: list[Path] | None = None, *, images: str = "pixels") -> None:
        if images not in ("pixels", "size"):
            raise ValueError("images: 'pixels' or 'size'")
        self.images = images
        paths = set()
        for directory in directories or []:
            paths.update({str(directory), str(directory.resolve()), os.path.realpath(directory)})
        self.paths = sorted(paths, key=len, reverse=True)

    def text(self, value: str) -> str:
        for path in self.paths:
            value = value.replace(path, "<RUNDIR>")
        value = _ADDRESS.sub("0x?", value)
        value = _KERNEL_PID.sub("ipykernel_<pid>", value)
        return _EXECUTION_COUNT.sub(r"\1[N]", value)

    def png(self, encoded: str) -> str:
        from PIL import Image

        raw = base64.b64decode(encoded)
        with Image.open(io.BytesIO(raw)) as image:
            size = f"png {image.width}x{image.height}"
            if self.images == "size":
                return size
            return f"{size} {hashlib.sha256(image.convert('RGBA').tobytes()).hexdigest()[:16]}"

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            if value and all(isinstance(v, str) for v in value):  # multiline strings as lists of lines
                return self.text("".join(value))
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value

    def widget(self, model_id: str, widgets: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
        model = widgets.get(model_id)
        if model is None:
            return "<no widget state>"
        state = {}
        for key, item in sorted(model.get("state", {}).items()):
            if key == "msg_id":
                continue
            if key == "outputs" and isinstance(item, list):
                item = self.outputs(item, widgets, seen + (model_id,))
            state[key] = self._references(item, widgets)
        return {"model": model.get("model_name"), "state": state}

    def _references(self, item: Any, widgets: dict[str, Any]) -> Any:
        if isinstance(item, str) and item.startswith("IPY_MODEL_"):
            return f"IPY_MODEL_<{widgets.get(item[len('IPY_MODEL_'):], {}).get('model_name', '?')}>"
        if isinstance(item, list):
            return [self._references(v, widgets) for v in item]
        if isinstance(item, dict):
            return {k: self._references(v, widgets) for k, v in item.items()}
        return self.value(item)

    def outputs(self, outputs: list[dict[str, Any]], widgets: dict[str, Any],
                seen: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        result = []
        for output in coalesce([dict(o) for o in outputs if not _is_notice(o)]):
            kind = output.get("output_type")
            item: dict[str, Any] = {"output_type": kind}
            if kind == "stream":
                item.update(name=output["name"], text=self.text(output["text"]))
            elif kind == "error":
                item.update(ename=output.get("ename"), evalue=self.text(output.get("evalue", "")),
                            traceback=[self.text(line) for line in output.get("traceback", [])])
            else:
                data = {}
                for mime, content in sorted(output.get("data", {}).items()):
                    if mime == "image/png":
                        data[mime] = self.png("".join(content) if isinstance(content, list) else content)
                    elif mime == _WIDGET_VIEW:
                        model_id = content.get("model_id", "")
                        data[mime] = "<widget cycle>" if model_id in seen else self.widget(model_id, widgets, seen)
                    else:
                        data[mime] = self.value(content)
                item["data"] = data
                metadata = {k: v for k, v in output.get("metadata", {}).items() if k != "nbdurable"}
                if metadata:
                    item["metadata"] = self.value(metadata)
            result.append(item)
        return result


def _is_notice(output: dict[str, Any]) -> bool:
    meta = output.get("metadata", {}).get("nbdurable")
    return isinstance(meta, dict) and "notice" in meta


def _shape(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a ``nondeterministic`` cell's outputs are compared by: types, stream names, mime types."""
    return [{"output_type": o["output_type"], **({"name": o["name"]} if "name" in o else {}),
             **({"data": sorted(o["data"])} if "data" in o else {}), "content": "<nondeterministic>"}
            for o in outputs]


@dataclass
class CellView:
    """One code cell of an output notebook, normalized."""

    index: int  # position in nb.cells
    number: int  # 1-based among code cells
    source: str
    outputs: list[dict[str, Any]]
    nondeterministic: bool


def normalize(nb: nbformat.NotebookNode, directories: list[Path] | None = None, *,
              images: str = "pixels") -> list[CellView]:
    """The code cells of ``nb`` with their outputs normalized (module docstring)."""
    norm = Normalizer(directories, images=images)
    widgets = nb.metadata.get("widgets", {}).get(_WIDGET_STATE, {}).get("state", {})
    cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    views, number = [], 0
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        number += 1
        nondeterministic = NONDETERMINISTIC in cell.get("metadata", {}).get("tags", [])
        outputs = norm.outputs(cell.get("outputs", []), widgets)
        views.append(CellView(index, number, cell.source, _shape(outputs) if nondeterministic else outputs,
                              nondeterministic))
    return views


# ---------------------------------------------------------------------------------------- comparison


@dataclass
class Difference:
    """The first cell whose outputs differ, and how."""

    index: int
    number: int
    what: str
    diff: str

    def __str__(self) -> str:
        return f"cell {self.index} (code cell {self.number}): {self.what}\n{self.diff}"


def render(outputs: list[dict[str, Any]], width: int = 160) -> list[str]:
    """Normalized outputs as lines, for diffs."""
    lines: list[str] = []
    for i, output in enumerate(outputs):
        kind = output["output_type"]
        if kind == "stream":
            lines.append(f"[{i}] {output['name']}:")
            lines += [f"    {line[:width]}" for line in output["text"].splitlines()]
        elif kind == "error":
            lines.append(f"[{i}] error {output['ename']}: {output['evalue'][:width]}")
        else:
            lines.append(f"[{i}] {kind}:")
            for mime, content in output.get("data", {}).items():
                text = content if isinstance(content, str) else json.dumps(content, sort_keys=True, indent=1)
                body = text.splitlines() or [""]
                lines.append(f"  {mime}: {body[0][:width]}")
                lines += [f"    {line[:width]}" for line in body[1:]]
    return lines


def _describe(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> str:
    if len(expected) != len(actual):
        kinds = lambda outs: [o["output_type"] + (f":{o['name']}" if "name" in o else "") for o in outs]  # noqa: E731
        return f"{len(actual)} outputs instead of {len(expected)} ({kinds(actual)} vs clean {kinds(expected)})"
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if e != a:
            if e["output_type"] != a["output_type"]:
                return f"output {i} is {a['output_type']} instead of {e['output_type']}"
            keys = sorted(k for k in set(e.get("data", {})) | set(a.get("data", {}))
                          if e.get("data", {}).get(k) != a.get("data", {}).get(k))
            return f"output {i} ({e['output_type']}{' ' + ', '.join(keys) if keys else ''}) differs"
    return "outputs differ"


def compare(expected: list[CellView], actual: list[CellView], *, labels: tuple[str, str] = ("clean", "resumed"),
            context: int = 1, max_lines: int = 30) -> Difference | None:
    """The first code cell whose normalized outputs differ (None: indistinguishable)."""
    if [c.source for c in expected] != [c.source for c in actual]:
        return Difference(-1, -1, "the notebooks' cells differ", "")
    for e, a in zip(expected, actual, strict=True):
        if e.outputs != a.outputs:
            diff = list(difflib.unified_diff(render(e.outputs), render(a.outputs), *labels,
                                             n=context, lineterm=""))
            if len(diff) > max_lines:
                diff = diff[:max_lines] + [f"... ({len(diff) - max_lines} more diff lines)"]
            return Difference(e.index, e.number, _describe(e.outputs, a.outputs), "\n".join(diff))
    return None


def compare_notebooks(expected: Path, actual: Path, *, images: str = "pixels",
                      labels: tuple[str, str] = ("clean", "resumed")) -> Difference | None:
    """``compare`` of two output notebooks, each normalized with its own run directory."""
    return compare(normalize(nbformat.read(expected, as_version=4), [expected.parent], images=images),
                   normalize(nbformat.read(actual, as_version=4), [actual.parent], images=images), labels=labels)


# -------------------------------------------------------------------------------------------- trials


@dataclass
class Reference:
    """A notebook's clean runs (``hangs``: runs that hung and were run again, see ``ATTEMPTS``)."""

    name: str
    source: nbformat.NotebookNode  # the notebook as the clean runs ran it (trials run the same)
    clean: RunOutcome
    papermill: RunOutcome | None = None
    hangs: int = 0

    @property
    def cells(self) -> list[int]:
        """The cells (indices) a clean run executes, in order."""
        return list(dict.fromkeys(self.clean.executed))

    def papermill_difference(self, images: str = "pixels") -> Difference | None:
        if self.papermill is None:
            return None
        if not self.papermill.output.exists():
            return Difference(-1, -1, f"papermill wrote no output notebook (exit {self.papermill.returncode})",
                              self.papermill.stdout[-1500:])
        return compare_notebooks(self.papermill.output, self.clean.output, images=images,
                                 labels=("papermill", "nbdurable"))


def _attempts(run: Any, root: Path, label: str) -> tuple[RunOutcome, int]:
    """``run(directory)`` until it does not hang (at most ``ATTEMPTS`` times); returns it and the hangs."""
    for attempt in range(ATTEMPTS):
        outcome = run(root / (label if attempt == 0 else f"{label}-again{attempt}"))
        if not outcome.hung:
            return outcome, attempt
    return outcome, ATTEMPTS


def reference(name: str, root: Path, *, papermill: bool = True, timeout: float = RUN_TIMEOUT) -> Reference:
    """The clean nbdurable run of ``name`` in ``root/NAME-clean`` (and papermill's in ``root/NAME-papermill``).
    Raises RuntimeError if the clean run does not exit as expected (``expected_returncode``)."""
    source = read_notebook(name)
    clean, hangs = _attempts(lambda d: clean_run(name, d, timeout, source), root, f"{name}-clean")
    expected = expected_returncode(name, source)
    if clean.returncode != expected:
        raise RuntimeError(f"the clean run of {name} exited {'(hung)' if clean.hung else clean.returncode}, "
                           f"expected {expected}:\n{clean.stdout[-3000:]}")
    ref = Reference(name, source, clean, hangs=hangs)
    if papermill:
        ref.papermill, more = _attempts(lambda d: papermill_run(name, d, timeout, source), root,
                                        f"{name}-papermill")
        ref.hangs += more
    return ref


@dataclass
class TrialResult:
    """What one kill-and-resume trial found."""

    name: str
    trial: int
    seed: str
    k: int  # kill after the k-th committed cell (after-commit) or in the k+1-th (mid-cell)
    mode: str
    killed: bool = False
    committed: list[int] = field(default_factory=list)  # cells the killed run committed
    kill_returncode: int | None = None
    resume_returncode: int | None = None
    difference: Difference | None = None
    violations: list[str] = field(default_factory=list)  # side effects not counted once
    reexecuted: list[int] = field(default_factory=list)  # committed cells run again, announced (unstorable state)
    exit_problem: str | None = None
    error: str | None = None  # the trial itself failed (no output notebook, ...)
    hangs: int = 0  # attempts abandoned because a run hung (nbclient, see ATTEMPTS)
    seconds: float = 0.0
    directory: Path | None = None

    @property
    def equal(self) -> bool:
        return self.difference is None and self.error is None

    @property
    def ok(self) -> bool:
        return self.equal and not self.violations and self.exit_problem is None

    def describe(self) -> str:
        where = (f"killed after {len(self.committed)} committed cell(s)" if self.killed
                 else "completed before the kill")
        head = (f"{self.name} trial {self.trial}: k={self.k} {self.mode}, {where}, resume exit "
                f"{self.resume_returncode}, {self.seconds:.1f} s{f', {self.hangs} hung' if self.hangs else ''}: ")
        verdict = []
        if self.error:
            verdict.append(f"ERROR {self.error}")
        verdict.append("outputs equal" if self.difference is None else f"DIFFERS at {self.difference}")
        verdict.append("side effects once" if not self.violations
                       else "SIDE EFFECTS: " + "; ".join(self.violations))
        if self.reexecuted:
            verdict.append(f"re-executed by design (unstorable state): cells {self.reexecuted}")
        if self.exit_problem:
            verdict.append(f"EXIT: {self.exit_problem}")
        return head + "; ".join(verdict)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _kernel_pid(runner: int) -> int | None:
    """The runner's child running ipykernel, once there is one (as ``crash_harness``)."""
    try:
        children = Path(f"/proc/{runner}/task/{runner}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        with contextlib.suppress(OSError):
            if b"ipykernel" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def _kill(proc: subprocess.Popen[Any], kernel: int | None) -> None:
    """SIGKILL the kernel's process group and the runner's (each leads a session of its own: the kernel's
    children, ``os.system`` shells, die with it), and wait until both are gone."""
    groups = []
    if kernel is not None:
        with contextlib.suppress(ProcessLookupError):
            groups.append(os.getpgid(kernel))
    groups.append(proc.pid)  # started with start_new_session: its group id is its pid
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    proc.wait(timeout=60)
    end = time.monotonic() + 30
    while kernel is not None and _alive(kernel) and time.monotonic() < end:
        time.sleep(0.02)


def run_completed(directory: Path) -> bool:
    """Whether a run of ``directory/store`` ended ``completed`` (its journal's ``run_end``)."""
    journals = directory / "store" / "journals"
    return journals.exists() and any(r.get("t") == "run_end" and r.get("status") == "completed"
                                     for path in journals.glob("*.jsonl") for r in journal_records(path))


def committed_cells(directory: Path, sources: dict[str, int]) -> list[int]:
    """The cells (indices) the runs of ``directory/store`` committed as completed top-level steps."""
    store = directory / "store"
    if not (store / "journals").exists():
        return []
    done: list[int] = []
    for path in sorted((store / "journals").glob("*.jsonl")):
        starts: dict[int, dict[str, Any]] = {}
        for record in journal_records(path):
            if record.get("t") == "step_start" and record.get("parent") is None:
                starts[record["ordinal"]] = record
            elif record.get("t") == "step_end" and record.get("status") == "completed":
                start = starts.get(record["ordinal"])
                if start is not None:
                    done.append(sources.get(start.get("source", "").strip(), -1))
    return done


def _killed_run(directory: Path, name: str, result: TrialResult, cells: list[int], sources: dict[str, int],
                timeout: float) -> bool:
    """Start ``nbdurable run``, SIGKILL it (runner and kernel) at the trial's kill point. False if it hung."""
    target = cells[result.k] if result.mode == "mid-cell" else None
    started = time.monotonic()
    with open(directory / "killed-run.log", "w") as log:
        proc = _start([*CLI, *_nbdurable_args(name)], directory, log)
        kernel, seen = None, -1
        journals = directory / "store" / "journals"
        while proc.poll() is None and time.monotonic() - started < timeout:
            kernel = kernel or _kernel_pid(proc.pid)
            if result.mode == "after-commit":
                size = sum(p.stat().st_size for p in journals.glob("*.jsonl")) if journals.exists() else 0
                if size != seen:  # read the journal again only when it grew (reading it costs ~3 ms)
                    seen = size
                    if len(committed_cells(directory, sources)) >= result.k:
                        break
            elif target in counts(directory)[0]:
                break
            time.sleep(0.005)
        hung = time.monotonic() - started >= timeout
        result.killed = proc.poll() is None
        if result.killed:
            _kill(proc, kernel or _kernel_pid(proc.pid))
    result.kill_returncode = proc.returncode
    return not hung


def kill_trial(ref: Reference, root: Path, trial: int, seed: int | str, *, images: str = "pixels",
               k: int | None = None, mode: str | None = None, timeout: float | None = None,
               later_than: float = 0.0) -> TrialResult:
    """One trial in ``root/NAME-trial-N``: run, SIGKILL at a random cell, run again (resume), compare.

    ``k`` (in ``1 .. n-1``, or from ``later_than`` of the way in: ``1/3`` kills in the last two thirds) and
    ``mode`` are drawn from ``random.Random(f"{seed}:{NAME}:{trial}")`` unless given. An attempt in which a
    run hangs (``timeout`` s, default ``trial_timeout``) is abandoned and the trial made again in a new
    directory."""
    name = ref.name
    timeout = timeout or trial_timeout(ref)
    trial_seed = f"{seed}:{name}:{trial}"
    rng = random.Random(trial_seed)
    cells = ref.cells
    last = max(1, len(cells) - 1)
    drawn_k, drawn_mode = rng.randint(min(last, max(1, int(later_than * len(cells)))), last), rng.choice(MODES)
    begun = time.monotonic()
    for attempt in range(ATTEMPTS):
        result = TrialResult(name, trial, trial_seed, k if k is not None else drawn_k, mode or drawn_mode,
                             hangs=attempt)
        label = f"{name}-trial-{trial}" + (f"-again{attempt}" if attempt else "")
        if _trial_attempt(ref, root / label, result, images, timeout):
            break
        result.hangs = attempt + 1
    else:
        result.error = f"a run hung in each of {ATTEMPTS} attempts"
    result.seconds = time.monotonic() - begun
    return result


def _trial_attempt(ref: Reference, directory: Path, result: TrialResult, images: str, timeout: float) -> bool:
    """One attempt of a trial; False if a run hung (the attempt is void)."""
    name = result.name
    result.directory = directory
    path = prepare(name, directory, ref.source)
    sources = {c.source.strip(): i for i, c in enumerate(nbformat.read(path, as_version=4).cells)
               if c.cell_type == "code"}
    try:
        if not _killed_run(directory, name, result, ref.cells, sources, timeout):
            return False
        result.committed = committed_cells(directory, sources)
        if result.killed and run_completed(directory):  # the kill came after the run's end: the next
            result.killed = False  # invocation is a new run by design (a completed run is not resumed)
        with open(directory / COUNTER_FILE, "a") as f:
            f.write(RESUME_MARK + "\n")
        resumed = _run("resume", [*CLI, *_nbdurable_args(name)], directory, timeout)
        if resumed.hung:
            return False
        result.resume_returncode = resumed.returncode
        if resumed.returncode != ref.clean.returncode:
            said = "\n".join(line for line in resumed.stdout.splitlines() if "[IPKernelApp]" not in line)
            result.exit_problem = (f"the resumed run exited {resumed.returncode}, the clean run "
                                   f"{ref.clean.returncode}: {said.strip()[-600:]}")
        if (directory / OUTPUT).exists():
            result.difference = compare_notebooks(ref.clean.output, directory / OUTPUT, images=images)
            result.reexecuted = reexecuted_cells(directory / OUTPUT)
        else:
            result.error = "the resumed run wrote no output notebook"
        result.violations = side_effect_violations(ref.cells, result.committed if result.killed else [],
                                                   *counts(directory), killed=result.killed,
                                                   reexecuted=set(result.reexecuted))
    except Exception as exc:  # a trial that breaks is a finding, not the end of a soak
        result.error = f"{type(exc).__name__}: {exc}"
    return True


def reexecuted_cells(path: Path) -> list[int]:
    """Cells the resumed run says it re-executed because their recorded state could not be stored."""
    nb = nbformat.read(str(path), as_version=4)
    return [i for i, cell in enumerate(nb.cells) if (cell.get("metadata", {}).get("nbdurable") or {}).get("reexecuted")]


def side_effect_violations(cells: list[int], committed: list[int], before: list[int], after: list[int], *,
                           killed: bool = True, reexecuted: set[int] | None = None) -> list[str]:
    """The counter check (module docstring): committed cells once in total, the others once after resuming;
    a committed cell the resumed run announced as re-executed (unstorable state) once more, not more."""
    problems = []
    first, second = Counter(before), Counter(after)
    expected = set(cells)
    for index in sorted(set(committed)):
        if committed.count(index) > 1:
            problems.append(f"cell {index} was committed {committed.count(index)} times by the killed run")
        if index in (reexecuted or set()):
            if first[index] + second[index] != 2:
                problems.append(f"cell {index} (committed, re-executed by design) ran {first[index] + second[index]} "
                                "times")
            continue
        if first[index] + second[index] != 1:
            problems.append(f"cell {index} (committed before the kill) ran {first[index] + second[index]} times "
                            f"({first[index]} before the kill, {second[index]} after)")
    if killed:
        for index in sorted(expected - set(committed)):
            if second[index] != 1:
                problems.append(f"cell {index} (not committed before the kill) ran {second[index]} times in the "
                                "resumed run")
    for index in sorted((set(first) | set(second)) - expected):
        problems.append(f"cell {index} ran ({first[index]} + {second[index]} times) but a clean run does not run it")
    return problems


# ---------------------------------------------------------------------------------------------- soak


def soak(trials: int, seed: int, names: list[str] | None = None, *, workers: int = 2, root: Path | None = None,
         images: str = "pixels", papermill: bool = True, progress: bool = False) -> tuple[dict[str, Reference],
                                                                                       list[TrialResult]]:
    """The clean references of ``names`` (default: every notebook), then ``trials`` trials round-robin."""
    names = names or notebook_names()
    base = root or Path(tempfile.mkdtemp(prefix="nbd-fidelity-"))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        refs = dict(zip(names, pool.map(lambda n: reference(n, base, papermill=papermill), names), strict=True))
        if progress:
            for ref in refs.values():
                pm = ref.papermill_difference(images) if ref.papermill else None
                print(f"{ref.name}: clean run {ref.clean.seconds:.1f} s, {len(ref.cells)} cells executed"
                      + (f"; papermill {ref.papermill.seconds:.1f} s, "
                         + ("equal" if pm is None else f"DIFFERS at {pm}") if ref.papermill else ""),
                      file=sys.stderr, flush=True)
        plan = [(names[i % len(names)], i // len(names)) for i in range(trials)]

        def one(item: tuple[str, int]) -> TrialResult:
            result = kill_trial(refs[item[0]], base, item[1], seed, images=images)
            if progress:
                print(result.describe(), file=sys.stderr, flush=True)
            if root is None and result.ok and result.directory is not None:
                shutil.rmtree(result.directory, ignore_errors=True)  # a long soak must not fill the disk
            return result

        results = list(pool.map(one, plan))
    if root is None:
        print(f"run directories (failed trials and the clean runs) are kept in {base}", file=sys.stderr)
    return refs, results


def summary(refs: dict[str, Reference], results: list[TrialResult], seconds: float | None = None) -> str:
    """The table: per notebook trials, kills, equal %, side-effect violations, exit mismatches, hung runs
    (run again), time; then the most common first differences."""
    header = (f"{'notebook':<16} {'trials':>6} {'kills':>5} {'equal %':>8} {'side-eff.':>9} {'exit':>5} {'hung':>5} "
              f"{'time s':>7}")
    lines = [header, "-" * len(header)]

    def row(label: str, mine: list[TrialResult], hangs: int, spent: float) -> str:
        equal = 100.0 * sum(r.equal for r in mine) / max(1, len(mine))
        return (f"{label:<16} {len(mine):>6} {sum(r.killed for r in mine):>5} {equal:>7.1f}% "
                f"{sum(bool(r.violations) for r in mine):>9} {sum(r.exit_problem is not None for r in mine):>5} "
                f"{hangs:>5} {spent:>7.0f}")

    for name, ref in refs.items():
        mine = [r for r in results if r.name == name]
        if mine:
            lines.append(row(name, mine, ref.hangs + sum(r.hangs for r in mine), sum(r.seconds for r in mine)))
    lines.append("-" * len(header))
    hangs = sum(ref.hangs for ref in refs.values()) + sum(r.hangs for r in results)
    lines.append(row("all", results, hangs, seconds if seconds is not None else sum(r.seconds for r in results)))
    firsts = Counter(f"{r.name} cell {r.difference.index}: {r.difference.what}" for r in results if r.difference)
    if firsts:
        lines.append("\nfirst differences (trials):")
        lines += [f"  {n:>4}  {what}" for what, n in firsts.most_common(25)]
    others = Counter(f"{r.name}: {v}" for r in results for v in r.violations + [r.exit_problem or "", r.error or ""]
                     if v)
    if others:
        lines.append("\nside effects, exit codes, errors (trials):")
        lines += [f"  {n:>4}  {what[:200]}" for what, n in others.most_common(25)]
    pm = [(n, ref.papermill_difference()) for n, ref in refs.items() if ref.papermill is not None]
    if any(d for _, d in pm):
        lines.append("\nclean nbdurable runs that differ from papermill's:")
        lines += [f"  {n}: cell {d.index}: {d.what}" for n, d in pm if d]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--notebook", action="append", choices=notebook_names(), help="repeatable; default all")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workers", type=int, default=2, help="runs at once")
    parser.add_argument("--images", choices=("pixels", "size"), default="pixels")
    parser.add_argument("--keep", type=Path, default=None, help="run in (and keep) this directory")
    parser.add_argument("--no-papermill", action="store_true", help="skip the papermill reference runs")
    args = parser.parse_args()
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="nbd-fidelity-config-")  # never the user's key
    started = time.monotonic()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    refs, results = soak(args.trials, args.seed, args.notebook, workers=args.workers, root=args.keep,
                         images=args.images, papermill=not args.no_papermill, progress=True)
    print(summary(refs, results, time.monotonic() - started) + f"\nseed {args.seed}")
    sys.exit(0 if all(r.ok for r in results) else 1)


if __name__ == "__main__":
    main()
