"""What every benchmark shares: timing helpers, result rows, and the table printed at the end.

Machines are shared and noisy: each figure is a median of repeated runs, and each is compared with
a baseline measured in the same run, so the ratio is what to read.
"""

from __future__ import annotations

import compileall
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Figure:
    """One line of the results table."""

    name: str
    value: float
    baseline_name: str
    baseline: float
    unit: str
    target: str
    ok: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


def median_of(fn: Callable[[], float], repeats: int) -> float:
    """Median of ``repeats`` measurements returned by ``fn``."""
    return statistics.median(fn() for _ in range(repeats))


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes once."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_child(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> list[dict]:
    """Run ``python -m bench.<module>`` in a fresh process; it prints one JSON list of figures.

    Python may write bytecode there (and nbdurable's is compiled first), as it does for any installed package:
    with PYTHONDONTWRITEBYTECODE set (CI machines, containers) every kernel would compile nbdurable's sources
    again at start, ~60 ms that a user's install never pays, while the baselines' packages have theirs."""
    compileall.compile_dir(str(ROOT / "nbdurable"), quiet=1)
    child_env = {**os.environ, **(env or {})}
    child_env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.{module} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def emit(figures: list[Figure]) -> None:
    """A child benchmark's output: one JSON line."""
    print(json.dumps([asdict(f) for f in figures]))


def print_table(figures: list[Figure]) -> None:
    """The suite's table: figure, nbdurable, baseline, ratio, target, verdict (columns fit their content)."""
    bases = [f"{f.baseline:.3f} {f.unit} {f.baseline_name}" for f in figures]
    name_w = max([len("figure"), *(len(f.name) for f in figures)])
    base_w = max([len("baseline"), *(len(b) for b in bases)])
    target_w = max([len("target"), *(len(f.target) for f in figures)])
    header = f"{'figure':<{name_w}} {'nbdurable':>12} {'baseline':>{base_w}} {'ratio':>7}  {'target':<{target_w}} ok"
    print(header)
    print("-" * len(header))
    for f, base in zip(figures, bases, strict=True):
        value = f"{f.value:.3f} {f.unit}"
        print(f"{f.name:<{name_w}} {value:>12} {base:>{base_w}} {f.ratio:>7.2f}  {f.target:<{target_w}} "
              f"{'yes' if f.ok else 'NO'}")
        if f.note:
            print(f"{'':<{name_w}} {f.note}")
