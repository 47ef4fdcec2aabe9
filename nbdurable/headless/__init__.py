"""Headless, resumable notebook runs: the runner behind ``nbdurable run`` and the papermill engine.

``HeadlessRunner`` (``nbdurable.headless.runner``) and ``RunResult`` (``nbdurable.headless.result``) are
imported from here on first use, not with the package: the runner needs nbformat and nbclient, which cost the
``nbdurable`` command most of its start-up time, and commands that only read the store need neither.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HeadlessRunner", "RunResult"]


def __getattr__(name: str) -> Any:
    if name == "HeadlessRunner":
        from nbdurable.headless.runner import HeadlessRunner

        return HeadlessRunner
    if name == "RunResult":
        from nbdurable.headless.result import RunResult

        return RunResult
    raise AttributeError(f"module 'nbdurable.headless' has no attribute {name!r}")
