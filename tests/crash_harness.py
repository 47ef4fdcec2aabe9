"""Crash-consistency harness: random SIGKILLs of the kernel, the runner or both, then resume to the end.

One command::

    python tests/crash_harness.py --trials 500 [--seed N] [--workers 2]

Each trial runs ``nbdurable run`` on a notebook with heavy state writes (a 32 MB array committed in the
background, a DataFrame, 300 small variables, a loop of 40 explicit steps, an in-place update of the
big array), kills — SIGKILL, at a random moment — the kernel, the runner or both, 1 to 3 times, then runs
it again until it completes. After every trial it checks:

- ``nbdurable check`` passes (torn tails are harmless warnings, not damage);
- the final output notebook's outputs equal a clean run's;
- every cell and every step call was *committed as executed* exactly once across the runs of the trial
  (later runs restore or replay it);
- no cell and no step call had a side effect (a line in ``marks.txt``, written with the kernel's pid)
  in a run later than the one that committed it: nothing completed ran twice;
- no acknowledged record was lost: every journal's records are numbered without a gap, and a run's
  top-level steps commit in order (no commit after a step whose commit is missing).

``tests/test_crash.py`` runs 20 trials in CI; the soak mode runs 500 and prints the figures (trials,
kills by target, records checked, violations — which must be 0).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
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

from helpers import run_cli, start_cli

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


def write_notebook(directory: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    path = directory / "heavy.ipynb"
    nbformat.write(nb, path)
    return path


RUN = ["run", "heavy.ipynb", "out.ipynb", "--no-progress", "--store", "store"]  # in the trial's directory


def outputs(path: Path) -> list[list[dict[str, Any]]]:
    nb = nbformat.read(path, as_version=4)
    return [[{k: v for k, v in o.items() if k != "execution_count"} for o in c.outputs] for c in nb.cells]


def clean_run(root: Path) -> tuple[list[list[dict[str, Any]]], float]:
    """The outputs of a run nobody killed, and how long it took."""
    directory = root / "clean"
    directory.mkdir()
    write_notebook(directory)
    started = time.monotonic()
    done = run_cli(*RUN, cwd=directory, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the clean run failed: {done.stdout}\n{done.stderr}")
    return outputs(directory / "out.ipynb"), time.monotonic() - started


@dataclass
class TrialResult:
    """What one trial did and found."""

    seed: int
    kills: list[str] = field(default_factory=list)
    runs: int = 0
    records: int = 0
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


def _killed_attempt(directory: Path, rng: random.Random, window: float) -> str | None:
    """Start a run, SIGKILL something at a random moment, wait until everything it had is dead.
    Returns what was killed, or None if the run completed before that moment."""
    target = rng.choice(TARGETS)
    proc = start_cli(*RUN, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    delay = rng.uniform(0.2, window)
    deadline = time.monotonic() + delay
    kernel = None
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
        kernel = kernel or _kernel_pid(proc.pid)
    if proc.poll() is not None:
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


def run_trial(root: Path, seed: int, expected: list[list[dict[str, Any]]], window: float) -> TrialResult:
    """One trial in its own directory: 1-3 random kills, then runs until one completes; then the checks."""
    rng = random.Random(seed)
    result = TrialResult(seed)
    begun = time.monotonic()
    directory = root / f"trial-{seed}"
    directory.mkdir()
    write_notebook(directory)
    for _ in range(rng.randint(1, 3)):
        result.runs += 1
        killed = _killed_attempt(directory, rng, window)
        if killed is None:  # the run completed before the moment drawn for the kill
            break
        result.kills.append(killed)
        if _completed(directory):  # killed after it marked its run completed: running again starts afresh
            break
    else:
        _complete(directory, result)
    if not result.violations:
        try:
            check(directory, expected, result)
        except Exception as exc:  # a state the checks did not foresee is a finding, not the end of the soak
            result.violations.append(f"the checks failed: {type(exc).__name__}: {exc}")
    result.seconds = time.monotonic() - begun
    return result


def _completed(directory: Path) -> bool:
    """True if the newest run of the trial's store completed."""
    from nbdurable.runtime.replay import journal_status
    from nbdurable.store import Store

    store = Store.open(directory / "store")
    run_ids = store.run_ids()
    return bool(run_ids) and journal_status(store, run_ids[-1])[0] == "completed"


def _complete(directory: Path, result: TrialResult) -> None:
    """Run the notebook again until a run completes (each resumes the last)."""
    for _ in range(5):
        done = run_cli(*RUN, cwd=directory, timeout=300)
        result.runs += 1
        if done.returncode == 0:
            return
    result.violations.append(f"no run completed after the kills: {done.stdout[-500:]} {done.stderr[-1000:]}")


def check(directory: Path, expected: list[list[dict[str, Any]]], result: TrialResult) -> None:
    """The invariants listed in the module docstring; violations are appended to ``result``."""
    from nbdurable.runtime.cells import classify
    from nbdurable.store import Store

    verdict = run_cli("check", "--store", "store", cwd=directory, timeout=300)
    if verdict.returncode != 0:
        result.violations.append(f"nbdurable check failed: {verdict.stdout[-2000:]}")
    if not (directory / "out.ipynb").exists():
        result.violations.append("the completed run wrote no output notebook")
    elif outputs(directory / "out.ipynb") != expected:
        result.violations.append("the final outputs differ from a clean run's")
    store = Store.open(directory / "store")
    cell_of = {classify(source).source_hash: index + 1 for index, source in enumerate(CELLS)}
    committed: dict[str, int] = {}  # "cell N" / "step N" -> index of the run that committed it as executed
    pid_run: dict[int, int] = {}
    for index, run_id in enumerate(store.run_ids()):
        records = store.read_journal(run_id)
        if not records:
            continue  # killed between creating its journal and writing its first record: nothing was acknowledged
        result.records += len(records)
        seqs = [r.get("seq") for r in records]
        if seqs != list(range(1, len(records) + 1)):
            result.violations.append(f"run {run_id}: records are missing (seq {seqs[:5]}…)")
        pid_run[int(records[0]["environment"]["pid"])] = index
        _commits(run_id, index, records, cell_of, committed, result)
    for line in (directory / "marks.txt").read_text().splitlines():
        pid, what = line.split(" ", 1)
        run = pid_run.get(int(pid))
        if run is None:
            result.violations.append(f"{what} ran in a kernel (pid {pid}) that recorded no run")
        elif what in committed and run > committed[what]:
            result.violations.append(f"{what} ran again in run #{run} after run #{committed[what]} committed it")


def _commits(run_id: str, index: int, records: list[dict[str, Any]], cell_of: dict[str, int],
             committed: dict[str, int], result: TrialResult) -> None:
    starts = {r["ordinal"]: r for r in records if r["t"] == "step_start"}
    ends = {r["ordinal"]: r for r in records if r["t"] == "step_end"}
    tops = sorted(o for o, r in starts.items() if r.get("parent") is None)
    missing = [o for o in tops if o not in ends]
    if missing and any(o > missing[0] for o in ends if o in tops):
        result.violations.append(f"run {run_id}: step {missing[0]} has no commit but a later step has one")
    for ordinal, end in ends.items():
        start = starts[ordinal]
        if end["status"] != "completed":
            continue
        if start.get("parent") is None:
            what = f"cell {cell_of.get(start['source_hash'], '?')}"
        else:
            what = f"step {start['options']['call']}"
        if what in committed:
            result.violations.append(f"{what} was committed as executed twice (runs #{committed[what]} and #{index})")
        committed.setdefault(what, index)


def soak(trials: int, seed: int, workers: int, root: Path | None = None, *,
         progress: bool = False) -> list[TrialResult]:
    """Run ``trials`` trials, ``workers`` at a time; returns their results (with ``progress``, a line per
    finished trial on stderr, so a long soak shows how it goes)."""
    base = root or Path(tempfile.mkdtemp(prefix="nbd-crash-"))
    expected, seconds = clean_run(base)
    window = seconds * 1.2  # kill anywhere in a run's life, start-up included

    def trial(s: int) -> TrialResult:
        result = run_trial(base, s, expected, window)
        if progress:
            print(f"trial {s}: kills {result.kills or ['none']}, runs {result.runs}, records {result.records}, "
                  f"violations {len(result.violations)}", file=sys.stderr, flush=True)
        if root is None and not result.violations:  # a long soak must not fill the disk; failures are kept
            shutil.rmtree(base / f"trial-{s}", ignore_errors=True)
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(trial, range(seed, seed + trials)))
    if root is None and not any(r.violations for r in results):
        shutil.rmtree(base, ignore_errors=True)
    elif root is None:
        print(f"the failed trials' directories are kept in {base}", file=sys.stderr)
    return results


def summary(results: list[TrialResult]) -> str:
    kills = Counter(k for r in results for k in r.kills)
    violations = [f"trial {r.seed}: {v}" for r in results for v in r.violations]
    return (
        f"trials {len(results)}; kills survived {sum(kills.values())} "
        f"({', '.join(f'{k} {n}' for k, n in sorted(kills.items()))}); runs {sum(r.runs for r in results)}; "
        f"records checked {sum(r.records for r in results)}; violations {len(violations)} (lost records, "
        f"re-executions after commit, output differences, check failures)"
        + "".join(f"\n  {v}" for v in violations)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workers", type=int, default=2, help="trials run at once")
    args = parser.parse_args()
    started = time.monotonic()
    results = soak(args.trials, args.seed, args.workers, progress=True)
    print(summary(results) + f"\nseed {args.seed}; {time.monotonic() - started:.0f} s")
    sys.exit(1 if any(r.violations for r in results) else 0)


if __name__ == "__main__":
    main()
