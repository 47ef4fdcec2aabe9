"""Real Jupyter kernels for tests: start, execute with outputs collected, kill -9."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from helpers import clean_env


class Kernel:
    """A real ipykernel process driven over ZeroMQ; its environment is ``helpers.clean_env(env)``."""

    def __init__(self, env: dict[str, str], cwd: Path, *, kernel_name: str = "python3",
                 kernel_dirs: list[str] | None = None) -> None:
        ksm = KernelSpecManager(kernel_dirs=kernel_dirs) if kernel_dirs else None
        self.km = KernelManager(kernel_name=kernel_name, **({"kernel_spec_manager": ksm} if ksm else {}))
        self.km.start_kernel(env=clean_env(env), cwd=str(cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.process.pid)  # type: ignore[union-attr]

    def execute(self, code: str, timeout: float = 60) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Run code; returns (reply content, iopub outputs as nbformat-like dicts)."""
        outputs: list[dict[str, Any]] = []

        def hook(msg: dict[str, Any]) -> None:
            kind = msg["msg_type"]
            if kind in ("stream", "display_data", "execute_result", "error"):
                outputs.append({"output_type": kind, **msg["content"]})

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        return reply["content"], outputs

    def interrupt_later(self, seconds: float) -> threading.Timer:
        """SIGINT to the kernel in ``seconds``, as ``km.interrupt_kernel()`` sends it (to its process group), from
        a timer thread. Not ``km.interrupt_kernel`` itself there: jupyter_client's sync API would create an
        event loop in that short-lived thread and never close it; garbage-collected later (its self-pipe socket
        finalized first), it raised "ValueError: Invalid file descriptor: -1" as a PytestUnraisableExceptionWarning
        at the end of the test session."""
        timer = threading.Timer(seconds, os.killpg, (os.getpgid(self.pid), signal.SIGINT))
        timer.start()
        return timer

    def start(self, code: str) -> None:
        """Send code without waiting for it."""
        self.kc.execute(code)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.km.provisioner.process.wait()  # type: ignore[union-attr]
        self.close()

    def close(self) -> None:
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=False)
        else:
            self.km.cleanup_resources()


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.02)
