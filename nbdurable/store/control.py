"""Requests to a run from outside its process: ``control/<run_id>.cancel``, one file per cancelled run.

A cancel request is one authenticated line (``encode_line``) ``{"run_id", "by", "reason",
"requested_at"}``, written to a temporary file, fsync'ed and renamed (then the directory fsync'ed), like an
event: it is durable once ``request_cancel`` returns, and any process sharing the store sees it with one
``stat``. The first request of a run stands (a second one returns it unchanged), so who cancelled a run
and when never changes. The request is the cause; the run's ``run_end`` record with status ``cancelled``
(written by whichever process ends the run) is the effect.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

from .journal import check_run_id, encode_line, fsync_dir, io_error, read_signed_file

CONTROL_DIR = "control"
CANCEL_SUFFIX = ".cancel"


class ControlMixin:
    """The control half of ``Store``: cancel requests."""

    path: pathlib.Path

    def _cancel_path(self, run_id: str) -> pathlib.Path:
        return pathlib.Path(self._cancel_file(run_id))

    def _cancel_file(self, run_id: str) -> str:
        # a str, not a pathlib.Path: a quarter of the time, and cancel_requested runs before every cell
        return os.path.join(self.path, CONTROL_DIR, check_run_id(run_id) + CANCEL_SUFFIX)

    def request_cancel(self, run_id: str, *, by: str | None, reason: str | None) -> dict[str, Any]:
        """Record durably that ``run_id`` is to be cancelled; returns the request (the first one, if the run
        was already asked to cancel)."""
        existing = self.cancel_request(run_id)
        if existing is not None:
            return existing
        request = {"run_id": run_id, "by": by, "reason": reason, "requested_at": time.time()}
        final = self._cancel_path(run_id)
        tmp = self.path / "tmp" / f"cancel-{run_id}-{os.getpid()}"
        try:
            final.parent.mkdir(mode=0o700, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(encode_line(request))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, final)  # never replaces: of two concurrent requests, the first stands
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
            fsync_dir(final.parent)
        except OSError as exc:
            raise io_error(exc, f"recording the cancel request of run {run_id}", final) from exc
        return self.cancel_request(run_id) or request

    def cancel_requested(self, run_id: str) -> bool:
        """True if ``run_id`` was asked to cancel (one ``stat``: cheap enough to poll)."""
        return os.path.exists(self._cancel_file(run_id))

    def cancel_request(self, run_id: str) -> dict[str, Any] | None:
        """The cancel request of ``run_id``, or None (none, or a damaged file: ``nbdurable check`` reports)."""
        request = read_signed_file(self._cancel_path(run_id))
        return request if request is not None and request.get("run_id") == run_id else None


__all__ = ["CANCEL_SUFFIX", "CONTROL_DIR", "ControlMixin"]
