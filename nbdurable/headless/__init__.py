"""Headless, resumable notebook runs: the runner behind ``nbdurable run`` and the papermill engine."""

from nbdurable.headless.result import RunResult
from nbdurable.headless.runner import HeadlessRunner

__all__ = ["HeadlessRunner", "RunResult"]
