"""The one error hierarchy of nbdurable.

Every error says what happened (the message) and what to do next (the hint).
Errors survive pickling with their hint, so a recorded error re-raises faithfully,
and IPython shows them as a short message rather than a traceback into our internals.
"""

from __future__ import annotations

from typing import Any


class NbdurableError(Exception):
    """Base of every error nbdurable raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  What to do: {self.hint}"
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), self.message, self.hint, self.__dict__.copy()))

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback through nbdurable's internals."""
        return [f"{type(self).__name__}: {line}" if i == 0 else line for i, line in enumerate(str(self).splitlines())]


def _rebuild_error(cls: type[NbdurableError], message: str, hint: str | None, state: dict[str, Any]) -> NbdurableError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    err.message, err.hint = message, hint
    return err


class StoreError(NbdurableError):
    """Something in the store (journals, objects, catalog) is missing, damaged or unreadable."""


class StoreFormatError(StoreError):
    """The directory is not a store, or it was written by a newer or unknown format version."""


class CorruptJournalError(StoreError):
    """A journal record that is not the last one fails authentication or does not parse."""


class ObjectNotFoundError(StoreError):
    """A journal record refers to an object file that does not exist."""


class CorruptObjectError(StoreError):
    """An object file exists but its content cannot be read back."""


class ChangedDuringWriteError(StoreError):
    """An object changed while its payload was being written in the background: not stored."""


class AuthenticationError(StoreError):
    """A journal record or object file fails authentication (tampered with, damaged, or written under
    another user's key), or the key itself is unusable. Nothing it holds is loaded."""


class CatalogLockedError(StoreError):
    """The DuckDB catalog stayed locked by other processes for longer than the retry budget."""


class LeaseHeldError(NbdurableError):
    """Another live process is driving this run."""


class RunNotFoundError(NbdurableError):
    """No run with this id exists in the store."""


class RestoreError(NbdurableError):
    """A recorded variable could not be brought back into the namespace."""


class OptionsError(NbdurableError):
    """Bad options to a magic, the CLI or the configuration."""


class NondeterminismError(NbdurableError):
    """A replayed step call disagrees with the recorded run (another step name, other arguments)."""


class NonRetryableError(NbdurableError):
    """Raise it inside a step to fail at once, without the remaining retries."""


class CompensationError(NbdurableError):
    """Compensations of a run failed for good (after their retries), or a run resumed mid-compensation
    finished its compensations instead of running its cells again."""


class StepTimeoutError(NbdurableError):
    """An attempt of a step ran longer than its timeout and was interrupted (a failed, retryable attempt)."""

    def __init__(self, message: str = "the step attempt exceeded its timeout and was interrupted", *,
                 hint: str | None = "raise the step's timeout, or make the call itself time out sooner") -> None:
        super().__init__(message, hint=hint)


class ExecutorError(NbdurableError):
    """An executor could not run a call of ``nbd.map`` (the function or an item could not be sent, the result
    could not come back, the pool broke), or a sweep's placement failed."""


class ChildRunFailed(NbdurableError):
    """A child run (``nbd.run_notebook``) ended without completing: failed, cancelled, crashed or interrupted.
    ``run_id`` is the child's id, ``status`` how it ended. Under the call's retry policy a retry starts a new
    child run."""

    def __init__(self, message: str, *, hint: str | None = None, run_id: str = "", status: str = "failed") -> None:
        super().__init__(message, hint=hint)
        self.run_id, self.status = run_id, status


class ChildRunTimeoutError(NbdurableError, TimeoutError):
    """A child run's handle (``nbd.run_notebook(..., wait=False)``) did not end within ``result(timeout=...)``."""


class SuspendedError(NbdurableError):
    """A headless run suspended itself where a suspension cannot be reported otherwise (papermill)."""


class RequestError(NbdurableError):
    """An HTTP request to ``nbdurable serve`` that cannot be served as asked; ``status`` is its HTTP status
    (400 malformed, 401 token, 403 outside the root, 404 unknown, 409 conflict, 413 too large)."""

    def __init__(self, message: str, *, status: int = 400, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class RetryAfter(Exception):  # a request, not an error: `raise nbd.RetryAfter(30)`
    """Raise it inside a step to be retried after ``seconds`` (counts as a failed attempt)."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(seconds, message)
        self.seconds = float(seconds)
        self.message = message or f"retry after {seconds} s"

    def __str__(self) -> str:
        return self.message


class RunSuspended(BaseException):  # a signal, not an error (BaseException: `except Exception` lets it through)
    """Raised by ``nbd.sleep`` / ``nbd.wait_for_event`` in a headless run whose wait is longer than the
    suspend threshold: the run commits, ends as ``suspended`` and its process exits; ``nbdurable worker``
    resumes it when its timer is due or its event arrives."""

    def __init__(self, *, wake_at: float | None = None, waiting_for: dict[str, Any] | None = None) -> None:
        super().__init__(wake_at, waiting_for)
        self.wake_at, self.waiting_for = wake_at, waiting_for

    def __str__(self) -> str:
        return describe_suspension(self.wake_at, self.waiting_for)

    def _render_traceback_(self) -> list[str]:
        return [f"⏸ nbdurable: run suspended: {self}. `nbdurable worker` resumes it when it is due."]


def describe_suspension(wake_at: float | None, waiting_for: dict[str, Any] | None) -> str:
    """What a suspended run waits for, in words."""
    import datetime as dt

    def at(ts: float) -> str:
        return dt.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")

    if waiting_for and waiting_for.get("child"):
        children = waiting_for.get("children") or [waiting_for["child"]]
        return (f"waiting for child run {children[0]}" if len(children) == 1
                else f"waiting for {len(children)} child runs ({', '.join(children)})")
    if waiting_for:
        match = waiting_for.get("match")
        text = f"waiting for event {waiting_for.get('name')!r}" + (f" matching {match}" if match else "")
        timeout_at = waiting_for.get("timeout_at")
        return text + (f" until {at(timeout_at)}" if timeout_at else "")
    return f"sleeping until {at(wake_at)}" if wake_at else "suspended"


__all__ = [
    "NbdurableError",
    "StoreError",
    "StoreFormatError",
    "CorruptJournalError",
    "ObjectNotFoundError",
    "CorruptObjectError",
    "CatalogLockedError",
    "AuthenticationError",
    "ChangedDuringWriteError",
    "LeaseHeldError",
    "RunNotFoundError",
    "RestoreError",
    "OptionsError",
    "NondeterminismError",
    "NonRetryableError",
    "CompensationError",
    "StepTimeoutError",
    "SuspendedError",
    "ExecutorError",
    "RequestError",
    "ChildRunFailed",
    "ChildRunTimeoutError",
    "RetryAfter",
    "RunSuspended",
]
