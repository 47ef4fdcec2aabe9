"""Queues' settings: ``queues/<name>.json``, one authenticated line each, replaced atomically.

A queue is where ``nbdurable submit --queue NAME`` puts a run (its claim's ``queue``; claims naming none
are in ``default``). It exists once a run is submitted to it; a setting only bounds it: ``concurrency``,
at most that many of its runs execute at once across every worker of the store (each run holds one of the
queue's slots for its life: ``hold_slot``). ``nbdurable queue set NAME --concurrency N`` writes it; a file
that fails its tag is never used (the queue is then unbounded, and ``nbdurable queue list`` says so).
"""

from __future__ import annotations

import os
import pathlib
import re
import time
from typing import Any

from ..errors import OptionsError
from .journal import encode_line, fsync_dir, io_error, read_signed_file

QUEUES_DIR = "queues"
QUEUE_SUFFIX = ".json"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_queue_name(name: str) -> str:
    """``name`` if it can name a queue, else OptionsError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise OptionsError(f"not a queue name: {name!r}",
                           hint="use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit "
                           "(e.g. 'nightly')")
    return name


def queue_slot_key(name: str) -> str:
    """The flow-control key whose slots bound the queue ``name`` (``hold_slot``)."""
    return f"nbdurable-queue:{name}"


def queue_setting(name: str, concurrency: int | None) -> dict[str, Any]:
    """A queue's setting as stored (checked)."""
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise OptionsError(f"a queue's concurrency must be a whole number of at least 1, not {concurrency!r}",
                           hint="e.g. nbdurable queue set nightly --concurrency 2")
    return {"name": check_queue_name(name), "concurrency": concurrency, "set_at": time.time()}


class QueuesMixin:
    """The queues half of ``Store``."""

    path: pathlib.Path

    def _queue_path(self, name: str) -> pathlib.Path:
        return self.path / QUEUES_DIR / (check_queue_name(name) + QUEUE_SUFFIX)

    def set_queue(self, name: str, concurrency: int | None) -> dict[str, Any]:
        """Store the queue's setting (replacing the previous one atomically); returns it."""
        setting = queue_setting(name, concurrency)
        final = self._queue_path(name)
        tmp = self.path / "tmp" / f"queue-{final.stem}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(encode_line(setting))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise io_error(exc, f"writing the setting of queue {name!r}", final) from exc
        return setting

    def read_queue(self, name: str) -> dict[str, Any] | None:
        """The queue's setting, or None (none, or one failing its tag)."""
        setting = read_signed_file(self._queue_path(name))
        return setting if setting is not None and setting.get("name") == name else None

    def queues(self) -> list[dict[str, Any]]:
        """Every queue setting, by name."""
        try:
            names = sorted(n[: -len(QUEUE_SUFFIX)] for n in os.listdir(self.path / QUEUES_DIR)
                           if n.endswith(QUEUE_SUFFIX))
        except FileNotFoundError:
            return []
        return [s for n in names if _NAME_RE.fullmatch(n) and (s := self.read_queue(n)) is not None]


def queue_limits(settings: list[dict[str, Any]]) -> dict[str, int]:
    """Queue name -> its concurrency, for the bounded ones."""
    return {str(s["name"]): int(s["concurrency"]) for s in settings if isinstance(s.get("concurrency"), int)}


__all__ = ["QUEUES_DIR", "QueuesMixin", "check_queue_name", "queue_limits", "queue_setting", "queue_slot_key"]
