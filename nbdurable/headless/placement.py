"""Where a sweep's combinations run: a ``Placement`` submits a function call and yields the calls as they finish.

- ``LocalPool(n)``: n processes of this machine (``ProcessPoolExecutor``, spawned: no inherited threads);
- ``DaskPlacement(address)``: the workers of a Dask scheduler; each task runs in a worker's process, which
  must see the notebook and the store at the same paths (one machine, or a shared file system).

Kept small on purpose: the worker pool of ``nbdurable worker`` is one more placement.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Protocol

from nbdurable.errors import OptionsError

CONNECT_TIMEOUT = 5.0  # seconds to reach a Dask scheduler before giving up


class Placement(Protocol):
    """Runs calls somewhere; ``description`` says where (for progress lines)."""

    description: str

    def submit(self, fn: Callable[[Any], Any], arg: Any, name: str) -> Any:
        """A future of ``fn(arg)`` (``name``: what a dashboard may show)."""

    def finished(self, futures: list[Any]) -> Iterator[Any]:
        """The futures in the order they finish."""

    def close(self) -> None:
        """Release the processes or the connection."""


class LocalPool:
    """``workers`` processes of this machine."""

    def __init__(self, workers: int) -> None:
        self.description = f"{workers} local process{'es' if workers > 1 else ''}"
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, fn: Callable[[Any], Any], arg: Any, name: str) -> Any:
        return self._pool.submit(fn, arg)

    def finished(self, futures: list[Any]) -> Iterator[Any]:
        return as_completed(futures)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskPlacement:
    """The workers of the Dask scheduler at ``address`` (OptionsError when it cannot be reached)."""

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client
        except ImportError as exc:
            raise OptionsError("--dask needs Dask's distributed scheduler, which is not installed",
                               hint="pip install 'nbdurable[dask]'") from exc
        try:
            self._client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except Exception as exc:  # OSError / TimeoutError when nobody answers, ValueError for a malformed address
            raise OptionsError(
                f"cannot reach a Dask scheduler at {address!r}: {type(exc).__name__}: {exc}",
                hint="check the address (e.g. tcp://10.0.0.5:8786) and that `dask scheduler` runs there, with "
                "`dask worker ADDRESS` processes; or run on this machine with --workers N",
            ) from exc
        workers = len(self._client.scheduler_info().get("workers", {}))
        self.description = f"Dask at {address} ({workers} worker{'s' if workers != 1 else ''} now)"

    def submit(self, fn: Callable[[Any], Any], arg: Any, name: str) -> Any:
        return self._client.submit(fn, arg, key=f"nbdurable-sweep-{name}-{uuid.uuid4().hex[:8]}", pure=False)

    def finished(self, futures: list[Any]) -> Iterator[Any]:
        from distributed import as_completed as dask_completed

        return iter(dask_completed(futures, loop=self._client.loop))

    def close(self) -> None:
        self._client.close()
