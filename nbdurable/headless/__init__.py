"""Headless, resumable notebook runs: the runner behind ``nbdurable run`` and the papermill engine."""

from nbdurable.headless.runner import HeadlessRunner, RunResult

__all__ = ["HeadlessRunner", "RunResult"]
