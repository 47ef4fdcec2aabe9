"""Crash-consistency harness: random SIGKILLs of the kernel, the runner or both, then resume to the end;
between the killed attempts, the notebook may be edited.

One command::

    python tests/crash_harness.py --trials 500 [--seed N] [--workers 2] [--no-edits] [--late-kills]
                                  [--shared postgresql://…/DATABASE]

Each trial runs ``nbdurable run`` on a notebook with heavy state writes (a 32 MB array committed in the
background, a DataFrame, 300 small variables, a loop of 40 explicit steps, an in-place update of the
big array), kills — SIGKILL, at a random moment — the kernel, the runner or both, 1 to 3 times, then runs
it again until it completes. With edits (the default), after each killed attempt the notebook file (same
path, so the next run resumes the killed one) is edited with probability ``EDIT_RATE`` (``edits``: its own
generator, seeded by the trial's seed, so ``--no-edits`` kills as before): (a) ``scratch``: a cell that only
reads state is inserted (or removed); (b) ``move``: cells moved without changing the dataflow (cells 3 and 4,
which are independent, swapped; the scratch cell moved); (c) ``literal``: a literal of a cell whose effect is
known changed back and forth (the sleep of cell 2: same values; the factor of the steps of cell 5: their
results; the modulus of a column of cell 3: the frame and its readers), or a cell computing something from
``big`` added or removed. The expected final outputs are those of a clean run of the *final* notebook (clean
runs cached by notebook content). After every trial it checks:

- ``nbdurable check`` passes (torn tails are harmless warnings, not damage);
- the final output notebook's outputs equal a clean run's of the same notebook;
- nothing with the same code and the same inputs was *committed as executed* twice across the runs of the
  trial (later runs restore or replay it): a cell's execution is known by its source hash and the versions it
  read (``inputs.reads``, and ``inputs.ambient`` but the generators, which only cells drawing from them
  depend on), an explicit step call by its cell's execution and its call identity (name, call counter,
  argument hash). An edited cell, or one reading a changed value, legitimately executes again. A cell whose
  reads cannot be known (``dynamic``: cell 4 assigns through ``globals()``) is never restored: exempt;
- no cell and no step call had a side effect (a line in ``marks.txt``, written with the kernel's pid) but in
  an execution its run journaled (not in a restored step, not in a replayed call), nor in a run later than
  the one that committed the same execution: nothing completed ran twice;
- no acknowledged record was lost: every journal's records are numbered without a gap, and a run's
  top-level steps commit in order (no commit after a step whose commit is missing);
- every run's journal keeps the dataflow rule: ``helpers.dataflow_violations(records) == []`` (each restored
  step read exactly the versions its session held when it began).

``tests/test_crash.py`` runs 12 trials in CI; the soak mode runs 500 and prints the figures (trials,
kills by target, edits by kind and how many came after a commit, records and restored steps checked,
violations — which must be 0). A kill's moment is drawn from the launch of the run, so that start-up is hit
too; on a loaded machine most kills then land before the first cell, and most edits change a notebook
nothing was committed from: ``--late-kills`` draws it from the moment the run's journal appears instead (the
run's cells and end), which is what exercises edits against restores. The window the moment is drawn from
is 1.2x the clean run's duration, shrunk to 1.2x a trial's first run that completed before its moment
(``KillWindow``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from helpers import dataflow_violations, run_cli, start_cli

CELLS = [
    "import os, time, pathlib\nimport numpy as np, pandas as pd\nimport nbdurable as nbd\n"
    "def mark(what):\n    with open('marks.txt', 'a') as f:\n        f.write(f'{os.getpid()} {what}\\n')\n"
    "mark('cell 1')",
    "big = np.arange(4_000_000, dtype='float64')  # 32 MB: committed in the background\n"
    "time.sleep(0.2)\nmark('cell 2')",
    "frame = pd.DataFrame({'a': np.arange(200_000), 'b': np.arange(200_000) * 0.5,\n"
    "                      'c': [str(i % 97) for i in range(200_000)]})\nmark('cell 3')",
    "for i in range(300):\n    globals()[f'v{i}'] = i * i\nmark('cell 4')",
    "@nbd.step\ndef work(i):\n    mark(f'step {i + 1}')\n    time.sleep(0.02)\n    return i * 3\n\n"
    "results = [work(i) for i in range(40)]\nmark('cell 5')",
    "big += 1\nframe['d'] = frame['a'] * 2\nmark('cell 6')",
    "print(float(big.sum()), int(frame['d'].sum()), sum(results), v299, len(frame))\nmark('cell 7')",
]
TARGETS = ("kernel", "runner", "both")

# ----- edits between killed attempts (a cell is known by the label of its `mark('...')` call) ----------------

EDIT_RATE = 0.6  # the chance that the notebook is edited after a killed attempt
# Scratch cells only read state; each may stand right after the cells it reads, or at the end.
SCRATCH = {
    "frame": ("print(len(frame), v12 + 1)\nmark('scratch')", ("cell 3", "cell 4")),
    "big": ("print(float(big[:10].sum()))\nmark('scratch')", ("cell 2",)),
}
# Literals whose change has a known effect: (cell, text, edited text).
LITERALS = {
    "sleep": ("cell 2", "time.sleep(0.2)", "time.sleep(0.3)"),  # the same values: its readers restore
    "factor": ("cell 5", "return i * 3", "return i * 4"),  # new step results, then `results`: cell 7 runs
    "modulus": ("cell 3", "i % 97", "i % 89"),  # another frame: cells 6 and 7 (and the frame scratch) run
}
EXTRA = "tail = float(big[-10:].sum())\nprint(tail)\nmark('extra')"  # computes from `big`, after cell 6
_LABEL = re.compile(r"\bmark\('([^']+)'\)")


def label(source: str) -> str:
    """The label a cell marks with (``cell 3``, ``scratch``, ``extra``), or ``?``."""
    found = _LABEL.findall(source)
    return found[-1] if found else "?"


def _index(cells: list[str], what: str) -> int:
    return next(i for i, c in enumerate(cells) if label(c) == what)


def _scratch_places(cells: list[str], kind: str) -> list[int]:
    """Where the scratch cell ``kind`` may be inserted in ``cells`` (without it): right after the last cell it
    reads, or at the end."""
    after = max(_index(cells, what) for what in SCRATCH[kind][1]) + 1
    return sorted({after, len(cells)})


def edit(cells: list[str], rng: random.Random) -> tuple[str, list[str]]:
    """One random edit of the notebook's ``cells``: its kind and detail (``scratch: insert big``...), and the
    edited cells."""
    cells = list(cells)
    scratch = next((i for i, c in enumerate(cells) if label(c) == "scratch"), None)
    kind = rng.choice(("scratch", "move", "literal"))
    if kind == "scratch" and scratch is not None:
        del cells[scratch]
        return "scratch: remove", cells
    if kind == "scratch":
        name = rng.choice(sorted(SCRATCH))
        cells.insert(rng.choice(_scratch_places(cells, name)), SCRATCH[name][0])
        return f"scratch: insert {name}", cells
    if kind == "move":
        if scratch is not None and rng.random() < 0.5:
            source = cells.pop(scratch)
            name = next(k for k, (text, _) in SCRATCH.items() if text == source)
            places = [p for p in _scratch_places(cells, name) if p != scratch] or [scratch]
            cells.insert(places[0], source)
            return f"move: scratch {name}", cells
        a, b = _index(cells, "cell 3"), _index(cells, "cell 4")
        cells[a], cells[b] = cells[b], cells[a]
        return "move: swap cells 3 and 4", cells
    what = rng.choice((*sorted(LITERALS), "extra"))
    if what == "extra":
        if any(label(c) == "extra" for c in cells):
            cells = [c for c in cells if label(c) != "extra"]
            return "literal: remove extra", cells
        cells.insert(_index(cells, "cell 6") + 1, EXTRA)
        return "literal: add extra", cells
    where, before, after = LITERALS[what]
    i = _index(cells, where)
    cells[i] = cells[i].replace(before, after) if before in cells[i] else cells[i].replace(after, before)
    return f"literal: {what}", cells


def write_notebook(directory: Path, cells: list[str] | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells or CELLS]
    path = directory / "heavy.ipynb"
    nbformat.write(nb, path)
    return path


RUN = ["run", "heavy.ipynb", "out.ipynb", "--no-progress", "--store", "store"]  # in the trial's directory
STORE_URL_FILE = "store.url"  # a trial on a shared store: the store's URL (``--shared``), else ./store


def store_arg(directory: Path) -> str:
    """The trial's ``--store``: ``store`` (a directory in it), or the shared store's URL."""
    url = directory / STORE_URL_FILE
    return url.read_text() if url.exists() else "store"


def run_args(directory: Path) -> list[str]:
    """``RUN`` with the trial's store."""
    return [*RUN[:-1], store_arg(directory)]


def open_store(directory: Path) -> Any:
    """The trial's store (a directory or a shared store)."""
    from nbdurable.store import Store

    where = store_arg(directory)
    return Store.open(where if "://" in where else directory / where)


def outputs(path: Path) -> list[list[dict[str, Any]]]:
    nb = nbformat.read(path, as_version=4)
    return [[{k: v for k, v in o.items() if k != "execution_count"} for o in c.outputs] for c in nb.cells]


def clean_run(root: Path, cells: list[str] | None = None,
              name: str = "clean") -> tuple[list[list[dict[str, Any]]], float]:
    """The outputs of a run of ``cells`` (default ``CELLS``) nobody killed, and how long it took."""
    directory = root / name
    directory.mkdir()
    write_notebook(directory, cells)
    started = time.monotonic()
    done = run_cli(*RUN, cwd=directory, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the clean run failed: {done.stdout}\n{done.stderr}")
    return outputs(directory / "out.ipynb"), time.monotonic() - started


class Expected:
    """The outputs of clean runs, one per notebook content, each run once (trials share them) on a pool of its
    own: a trial asks for its final notebook's as soon as it knows it (``prefetch``), then waits for them."""

    def __init__(self, root: Path, workers: int = 2) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._runs: dict[str, Future[list[list[dict[str, Any]]]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clean-run")

    @staticmethod
    def key(cells: list[str]) -> str:
        return hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:16]

    def add(self, cells: list[str], found: list[list[dict[str, Any]]]) -> None:
        done: Future[list[list[dict[str, Any]]]] = Future()
        done.set_result(found)
        with self._lock:
            self._runs[self.key(cells)] = done

    def prefetch(self, cells: list[str]) -> Future[list[list[dict[str, Any]]]]:
        key, frozen = self.key(cells), list(cells)
        with self._lock:
            if key not in self._runs:
                self._runs[key] = self._pool.submit(lambda: clean_run(self.root, frozen, f"clean-{key}")[0])
            return self._runs[key]

    def outputs(self, cells: list[str]) -> list[list[dict[str, Any]]]:
        return self.prefetch(cells).result()

    @property
    def clean_runs(self) -> int:
        """How many clean runs were started (the first, given by ``add``, not counted)."""
        with self._lock:
            return len(self._runs) - 1

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class TrialResult:
    """What one trial did and found."""

    seed: int
    kills: list[str] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)  # "kind: detail", in order
    edits_after_commit: int = 0  # edits made when the store held committed steps (the others change little)
    runs: int = 0
    records: int = 0
    restored: int = 0  # restored top-level steps whose reads the dataflow invariant checked
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _kernel_pid(runner: int) -> int | None:
    """The pid of the kernel the runner started (its child running ipykernel), once there is one."""
    try:
        children = Path(f"/proc/{runner}/task/{runner}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        with contextlib.suppress(OSError):
            if b"ipykernel" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    return None


def _journals(directory: Path) -> set[str]:
    if (directory / STORE_URL_FILE).exists():
        return set(open_store(directory).run_ids())
    return {p.name for p in (directory / "store" / "journals").glob("*.jsonl")}


class KillWindow:
    """How long after its origin (the launch, or the kernel's start with ``late``) a kill's moment is drawn:
    1.2x the clean run's, and at most 1.2x the shortest first attempt (a fresh run of the clean notebook, as
    the clean run was) seen completing before its moment. A clean
    run measured while the machine was busier than during the trials (the suite's other worker in a heavy
    test) would otherwise draw most moments after the runs' ends: 4 kills in 12 trials, once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()

    def completed_after(self, seconds: float) -> None:
        with self._lock:
            self.seconds = min(self.seconds, max(0.5, 1.2 * seconds))


def _killed_attempt(directory: Path, rng: random.Random, window: KillWindow, *, late: bool = False,
                    first: bool = False) -> str | None:
    """Start a run, SIGKILL something at a random moment, wait until everything it had is dead.
    Returns what was killed, or None if the run completed before that moment. With ``late``, the moment is
    drawn from the moment the run's journal appears (its kernel is up) instead of the launch. The ``first``
    attempt of a trial, completing before its moment, calibrates ``window``."""
    target = rng.choice(TARGETS)
    before = _journals(directory)
    proc = start_cli(*run_args(directory), cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if late:
        up = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < up and not _journals(directory) - before:
            time.sleep(0.01)
    origin = time.monotonic()
    deadline = origin + rng.uniform(0.0 if late else 0.2, window.seconds)
    kernel = _kernel_pid(proc.pid) if late else None
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
        kernel = kernel or _kernel_pid(proc.pid)
    if proc.poll() is not None:
        if first:
            window.completed_after(time.monotonic() - origin)
        return None
    if target in ("kernel", "both") and kernel is None:
        target = "runner"  # no kernel yet: the runner is what there is to kill
    if target in ("runner", "both"):
        proc.kill()
    if target in ("kernel", "both") and kernel is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(kernel, signal.SIGKILL)
    if target == "kernel":
        proc.wait(timeout=120)  # the runner notices the dead kernel and exits
    proc.wait(timeout=120)
    end = time.monotonic() + 30
    while kernel is not None and _alive(kernel) and time.monotonic() < end:
        time.sleep(0.05)  # an orphaned kernel exits by itself within about a second
    return target


def run_trial(root: Path, seed: int, expected: Expected, window: KillWindow, *, edits: bool = True,
              late: bool = False, shared: str | None = None) -> TrialResult:
    """One trial in its own directory: 1-3 random kills (the notebook maybe edited after each), then runs until
    one completes; then the checks against a clean run of the final notebook."""
    rng = random.Random(seed)
    edit_rng = random.Random(f"{seed}:edits")  # its own draws: the kills of a seed are the same without edits
    result = TrialResult(seed)
    begun = time.monotonic()
    directory = root / f"trial-{seed}"
    directory.mkdir()
    if shared is not None:  # a store of its own in the shared database: a schema
        from pg import new_store_url

        from nbdurable.store import open_shared

        url = new_store_url(shared)
        open_shared(url, objects=(directory / "objects").as_uri())  # records where its objects go
        (directory / STORE_URL_FILE).write_text(url)
    cells = list(CELLS)
    write_notebook(directory, cells)
    attempts = rng.randint(1, 3)
    for attempt in range(attempts):
        result.runs += 1
        killed = _killed_attempt(directory, rng, window, late=late, first=attempt == 0)
        if killed is None:  # the run completed before the moment drawn for the kill
            break
        result.kills.append(killed)
        if _completed(directory):  # killed after it marked its run completed: running again starts afresh
            break
        if edits and edit_rng.random() < EDIT_RATE:
            what, cells = edit(cells, edit_rng)
            result.edits.append(what)
            result.edits_after_commit += _has_commits(directory)
            write_notebook(directory, cells)
            if attempt == attempts - 1:  # the final notebook: its clean run may start now
                expected.prefetch(cells)
    else:
        _complete(directory, result)
    if not result.violations:
        try:
            check(directory, expected.outputs(cells), result)
        except Exception as exc:  # a state the checks did not foresee is a finding, not the end of the soak
            result.violations.append(f"the checks failed: {type(exc).__name__}: {exc}")
    result.seconds = time.monotonic() - begun
    return result


def _completed(directory: Path) -> bool:
    """True if the newest run of the trial's store completed."""
    from nbdurable.runtime.replay import journal_status

    store = open_store(directory)
    run_ids = store.run_ids()
    return bool(run_ids) and journal_status(store, run_ids[-1])[0] == "completed"


def _has_commits(directory: Path) -> bool:
    """True if a run of the trial's store committed a step (a cell or a step call, executed or restored)."""
    store = open_store(directory)
    return any(r.get("t") == "step_end" and r.get("status") in ("completed", "restored")
               for run_id in store.run_ids() for r in store.read_journal(run_id))


def _complete(directory: Path, result: TrialResult) -> None:
    """Run the notebook again until a run completes (each resumes the last)."""
    for _ in range(5):
        done = run_cli(*run_args(directory), cwd=directory, timeout=300)
        result.runs += 1
        if done.returncode == 0:
            return
    result.violations.append(f"no run completed after the kills: {done.stdout[-500:]} {done.stderr[-1000:]}")


Identity = tuple[Any, ...]


@dataclass
class _Run:
    """One run's journal, indexed for the checks: its steps' starts and ends by ordinal."""

    index: int
    run_id: str
    starts: dict[int, dict[str, Any]]
    ends: dict[int, dict[str, Any]]

    def executed(self, ordinal: int) -> bool:
        """The step's code ran (or began to): it was not restored, nor replayed."""
        end = self.ends.get(ordinal)
        return end is None or end.get("status") != "restored"

    def identity(self, ordinal: int) -> Identity:
        """An execution's identity: a cell's code and the versions it read (but the generators, inputs of the
        cells drawing from them only); a step call's cell's identity and its call identity."""
        from nbdurable.runtime.dataflow import DRAWN

        start = self.starts[ordinal]
        if start.get("parent") is not None:
            o = start.get("options") or {}
            return (self.identity(start["parent"]), start.get("name"), o.get("call"), o.get("args"))
        inputs = start.get("inputs") or {}
        ambient = {k: v for k, v in (inputs.get("ambient") or {}).items() if k not in DRAWN}
        return (start["source_hash"], start.get("name"), tuple(sorted((inputs.get("reads") or {}).items())),
                tuple(sorted(ambient.items())))

    def dynamic(self, ordinal: int) -> bool:
        """Its reads cannot be known (a step call: its cell's), so it is never restored: it may run again."""
        start = self.starts[ordinal]
        if start.get("parent") is not None:
            return self.dynamic(start["parent"])
        return bool((start.get("inputs") or {}).get("dynamic"))

    def what(self, ordinal: int) -> str:
        """How violations name the step: its mark label (``cell 3``, ``step 12``)."""
        start = self.starts[ordinal]
        if start.get("parent") is not None:
            return f"step {(start.get('options') or {}).get('call')}"
        return label(start.get("source", ""))


def check(directory: Path, expected: list[list[dict[str, Any]]], result: TrialResult) -> None:
    """The invariants listed in the module docstring; violations are appended to ``result``."""
    verdict = run_cli("check", "--store", store_arg(directory), cwd=directory, timeout=300)
    if verdict.returncode != 0:
        result.violations.append(f"nbdurable check failed: {verdict.stdout[-2000:]}")
    if not (directory / "out.ipynb").exists():
        result.violations.append("the completed run wrote no output notebook")
    elif outputs(directory / "out.ipynb") != expected:
        result.violations.append("the final outputs differ from a clean run's of the final notebook")
    store = open_store(directory)
    committed: dict[Identity, int] = {}  # an execution's identity -> index of the run that committed it
    pid_run: dict[int, _Run] = {}
    for index, run_id in enumerate(store.run_ids()):
        records = store.read_journal(run_id)
        if not records:
            continue  # killed between creating its journal and writing its first record: nothing was acknowledged
        result.records += len(records)
        seqs = [r.get("seq") for r in records]
        if seqs != list(range(1, len(records) + 1)):
            result.violations.append(f"run {run_id}: records are missing (seq {seqs[:5]}…)")
        run = _Run(index, run_id, {r["ordinal"]: r for r in records if r["t"] == "step_start"},
                   {r["ordinal"]: r for r in records if r["t"] == "step_end"})
        pid_run[int(records[0]["environment"]["pid"])] = run
        _commits(run, committed, result)
        result.restored += sum(1 for o, end in run.ends.items()
                               if end.get("status") == "restored" and run.starts[o].get("parent") is None)
        result.violations += [f"run #{index} {run_id}: {v}" for v in dataflow_violations(records)]
    _marks(directory, pid_run, committed, result)


def _commits(run: _Run, committed: dict[Identity, int], result: TrialResult) -> None:
    tops = sorted(o for o, r in run.starts.items() if r.get("parent") is None)
    missing = [o for o in tops if o not in run.ends]
    if missing and any(o > missing[0] for o in run.ends if o in tops):
        result.violations.append(f"run {run.run_id}: step {missing[0]} has no commit but a later step has one")
    for ordinal, end in sorted(run.ends.items()):
        if end["status"] != "completed" or run.dynamic(ordinal):
            continue
        identity = run.identity(ordinal)
        if identity in committed:
            result.violations.append(f"{run.what(ordinal)} (step {ordinal} of run #{run.index}) was committed as "
                                     f"executed twice with the same code and inputs (runs #{committed[identity]} "
                                     f"and #{run.index})")
        committed.setdefault(identity, run.index)


def _marks(directory: Path, pid_run: dict[int, _Run], committed: dict[Identity, int], result: TrialResult) -> None:
    """Each side effect in ``marks.txt`` is matched with the execution of its run that made it (the n-th mark
    of a label in a run with the n-th executed step of that label): none may be left over (a restored step, a
    replayed call, ran its code), none may repeat an execution an earlier run committed."""
    used: Counter[tuple[int, str]] = Counter()
    path = directory / "marks.txt"
    for line in path.read_text().splitlines() if path.exists() else []:
        pid, what = line.split(" ", 1)
        run = pid_run.get(int(pid))
        if run is None:
            result.violations.append(f"{what} ran in a kernel (pid {pid}) that recorded no run")
            continue
        ran = [o for o in sorted(run.starts) if run.executed(o) and run.what(o) == what]
        n = used[run.index, what]
        used[run.index, what] += 1
        if n >= len(ran):
            result.violations.append(f"{what} ran in run #{run.index}, which journaled no execution of it "
                                     f"(restored or replayed, not executed)")
            continue
        identity = run.identity(ran[n])
        first = committed.get(identity)
        if first is not None and first < run.index and not run.dynamic(ran[n]):
            result.violations.append(f"{what} ran again in run #{run.index} (step {ran[n]}) after run #{first} "
                                     f"committed it with the same code and inputs")


def soak(trials: int, seed: int, workers: int, root: Path | None = None, *, progress: bool = False,
         edits: bool = True, late_kills: bool = False, shared: str | None = None) -> list[TrialResult]:
    """Run ``trials`` trials, ``workers`` at a time (with ``edits``, the notebook edited between killed attempts;
    with ``late_kills``, every kill once the run's kernel is up, mostly in its cells; with ``shared``, a
    PostgreSQL database URL, each trial on a shared store of its own there); returns their results
    (with ``progress``, a line per finished trial on stderr, so a long soak shows how it goes)."""
    base = root or Path(tempfile.mkdtemp(prefix="nbd-crash-"))
    found, seconds = clean_run(base)
    expected = Expected(base, workers)
    expected.add(list(CELLS), found)
    window = KillWindow(seconds * 1.2)  # kill anywhere in a run's life, start-up included
    if late_kills:  # from the run's first record: anywhere in its cells (and its end)
        window = KillWindow(1.2 * _span(base / "clean"))

    def trial(s: int) -> TrialResult:
        result = run_trial(base, s, expected, window, edits=edits, late=late_kills, shared=shared)
        if progress:
            print(f"trial {s}: kills {result.kills or ['none']}, edits {result.edits or ['none']}, runs {result.runs}, "
                  f"records {result.records}, restored {result.restored}, violations {len(result.violations)}, "
                  f"{result.seconds:.0f} s", file=sys.stderr, flush=True)
        url_file = base / f"trial-{s}" / STORE_URL_FILE
        if url_file.exists():  # a shared store's catalog cache is outside the trial's directory
            from pg import drop_cache

            drop_cache(url_file.read_text())
        if root is None and not result.violations:  # a long soak must not fill the disk; failures are kept
            shutil.rmtree(base / f"trial-{s}", ignore_errors=True)
        return result

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(trial, range(seed, seed + trials)))
    finally:
        expected.close()
    if progress:
        print(f"clean runs of edited notebooks: {expected.clean_runs}", file=sys.stderr, flush=True)
    if root is None and not any(r.violations for r in results):
        shutil.rmtree(base, ignore_errors=True)
    elif root is None:
        print(f"the failed trials' directories are kept in {base}", file=sys.stderr)
    return results


def _span(directory: Path) -> float:
    """Seconds from the first record of the run in ``directory`` to its last."""
    store = open_store(directory)
    records = store.read_journal(store.run_ids()[-1])
    return float(records[-1]["ts"]) - float(records[0]["ts"])


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counter.items())) or "none"


def summary(results: list[TrialResult]) -> str:
    kills = Counter(k for r in results for k in r.kills)
    edits = Counter(e for r in results for e in r.edits)
    kinds = Counter(e.split(":")[0] for r in results for e in r.edits)
    violations = [f"trial {r.seed}: {v}" for r in results for v in r.violations]
    return (
        f"trials {len(results)}; kills survived {sum(kills.values())} ({_counts(kills)}); "
        f"edits {sum(edits.values())} in {sum(1 for r in results if r.edits)} trials, "
        f"{sum(r.edits_after_commit for r in results)} after a commit ({_counts(kinds)}: "
        f"{_counts(edits)}); runs {sum(r.runs for r in results)}; records checked {sum(r.records for r in results)}; "
        f"restored steps checked {sum(r.restored for r in results)}; violations {len(violations)} (lost records, "
        f"re-executions after commit, output differences, check failures, dataflow)"
        + "".join(f"\n  {v}" for v in violations)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workers", type=int, default=2, help="trials run at once")
    parser.add_argument("--edits", action=argparse.BooleanOptionalAction, default=True,
                        help="edit the notebook between killed attempts (default: on)")
    parser.add_argument("--late-kills", action="store_true",
                        help="draw each kill's moment from when the run's kernel is up (its journal appears), "
                             "not from the launch: most kills then land in cells, after commits")
    parser.add_argument("--shared", metavar="DATABASE_URL", default=None,
                        help="run each trial on a shared store (PostgreSQL, objects on file://): a schema of its own "
                             "in this database")
    args = parser.parse_args()
    started = time.monotonic()
    results = soak(args.trials, args.seed, args.workers, progress=True, edits=args.edits, late_kills=args.late_kills,
                   shared=args.shared)
    print(summary(results) + f"\nseed {args.seed}; edits {'on' if args.edits else 'off'}"
          f"{'; late kills' if args.late_kills else ''}; {time.monotonic() - started:.0f} s")
    sys.exit(1 if any(r.violations for r in results) else 0)


if __name__ == "__main__":
    main()
