"""Crash consistency under random SIGKILLs of the kernel, the runner or both (``crash_harness.py``):
12 trials in CI (the suite stays under 20 minutes); ``python tests/crash_harness.py --trials 500`` is the soak."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from crash_harness import soak, summary

pytestmark = [pytest.mark.kernel, pytest.mark.slow]  # 12 trials of `nbdurable run` killed at random


def test_twelve_randomly_killed_runs_resume_with_nothing_lost_or_run_twice(tmp_path: Path) -> None:
    seed = int(os.environ.get("NBDURABLE_CRASH_SEED") or time.time())
    results = soak(12, seed, workers=2, root=tmp_path)
    report = summary(results)
    print(report)
    # The kills did happen. 12 trials of 1-3 attempts, each killed at a moment drawn from 1.2x a run's life:
    # ~15 kills on average, 9-21 in six runs here; 9 was the threshold and failed once at 4 (the window was
    # measured on a busier machine than the trials ran on: ``KillWindow`` now shrinks it).
    assert sum(len(r.kills) for r in results) >= 6, report
    assert sum(r.records for r in results) > 0
    assert not [v for r in results for v in r.violations], f"{report}\nreproduce: NBDURABLE_CRASH_SEED={seed}"
