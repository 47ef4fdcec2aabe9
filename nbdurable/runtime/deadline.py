"""Interrupting a step attempt that runs past its timeout.

- In the main thread (where IPython runs cells) a SIGALRM timer raises StepTimeoutError: Python code
  and most blocking waits (``time.sleep``, socket and file waits) are interrupted.
- In other threads (``nbd.map`` workers) a watchdog raises StepTimeoutError asynchronously in the
  thread: Python code is interrupted at its next bytecode; a call blocked inside C code (a long numpy
  operation, a socket read without its own timeout) is interrupted only once it returns to Python.
- Async steps are cancelled by ``asyncio.wait_for`` at their next ``await``.
- On the time-skipping clock (``clock.py``) the timeout is also a deadline on that clock: a skipping wait
  inside the block that would end past it moves the clock to the deadline and raises StepTimeoutError.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from nbdurable.errors import StepTimeoutError
from nbdurable.runtime.clock import clock


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise StepTimeoutError in this thread if the block runs longer than ``seconds`` (None: no limit)."""
    if seconds is None:
        yield
    elif threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        with clock().within(seconds), _alarm(seconds):
            yield
    else:
        with clock().within(seconds), _watchdog(seconds):
            yield


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise StepTimeoutError(f"the step attempt exceeded its timeout of {seconds:g} s and was interrupted")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    target = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def expire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(StepTimeoutError))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["done"] = True
            if state["fired"]:  # fired as the block ended: drop it rather than hit unrelated code later
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), None)
        timer.cancel()
