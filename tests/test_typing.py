"""The core is strictly typed (mypy --strict, configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # mypy over the package: tens of seconds without its cache

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_passes() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "nbdurable"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
