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
    assert sum(len(r.kills) for r in results) >= 9, report  # the kills did happen, mostly mid-run
    assert sum(r.records for r in results) > 0
    assert not [v for r in results for v in r.violations], f"{report}\nreproduce: NBDURABLE_CRASH_SEED={seed}"
