"""The "Python 3 (nbdurable)" kernelspec: an ipykernel that loads the extension at start; and how nbdurable's
own runners (`nbdurable run`, the papermill engine, the demo) connect to the kernels they start."""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager, KernelManager
from traitlets import DottedObjectName, Type

DEFAULT_NAME = "nbdurable"
DISPLAY_NAME = "Python 3 (nbdurable)"
IPC_PATH_MAX = 100  # bytes of an ipc socket's path prefix (a Unix socket name holds 107; "-<port>" follows)


SHUTDOWN_POLL_SECONDS = 0.01
IOPUB_CONNECT_SECONDS = 0.2  # jupyter_client's wait for IOPub after a kernel_info reply


class ReadyKernelClient(AsyncKernelClient):
    """nbclient's kernel client, minus the 0.2 s of silence jupyter_client waits for on IOPub once the kernel
    is ready.

    jupyter_client's ``wait_for_ready`` asks for kernel_info until a reply comes and IOPub carries a message,
    then reads IOPub until nothing arrives for 0.2 s: every kernel start waited 0.2 s for nothing. The kernel
    publishes its ``idle`` status for a request on IOPub after its reply, and IOPub delivers in order: once
    the ``idle`` of our kernel_info request is read, IOPub is connected and what the kernel published
    before it has been read (and dropped, as jupyter_client drops it). If nothing comes within 0.2 s (the
    IOPub subscription was not connected yet when the kernel published it), the request is sent again, as
    jupyter_client does; other messages but no such status (a kernel that publishes none for kernel_info)
    also mean connected after those 0.2 s. Anything published after it stays queued: nbclient reads only
    the messages whose parent is its own request."""

    async def _ready_wait(self, timeout: float | None = None) -> None:
        if not isinstance(self.parent, KernelManager):  # not our kernel: jupyter_client's heartbeat wait first
            await super()._async_wait_for_ready(timeout)
            return
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        asked: set[str] = set()
        while True:
            asked.add(self.kernel_info())
            reply = await self._reply_to(asked, min(1.0, max(0.0, deadline - time.monotonic())))
            if reply is not None and await self._iopub_connected(asked, IOPUB_CONNECT_SECONDS):
                self._handle_kernel_info_reply(reply)
                return
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")

    wait_for_ready = _ready_wait

    async def _reply_to(self, asked: set[str], wait: float) -> dict[str, Any] | None:
        """The first kernel_info reply to one of ``asked`` within ``wait`` seconds (other replies dropped)."""
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            try:
                msg = await self.shell_channel.get_msg(timeout=left)
            except Empty:
                return None
            if msg["msg_type"] == "kernel_info_reply" and msg["parent_header"].get("msg_id") in asked:
                return dict(msg)
        return None

    async def _iopub_connected(self, asked: set[str], wait: float) -> bool:
        """Whether IOPub is connected: it carries the ``idle`` status of one of ``asked`` (at once), or, for
        a kernel that publishes none for kernel_info, any message within ``wait`` seconds (jupyter_client's
        own test, without its wait for silence after it)."""
        end, seen = time.monotonic() + wait, False
        while (left := end - time.monotonic()) > 0:
            try:
                msg = await self.iopub_channel.get_msg(timeout=left)
            except Empty:
                break
            seen = True
            if (msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle"
                    and msg["parent_header"].get("msg_id") in asked):
                return True
        return seen


class QuietShutdownKernelManager(AsyncKernelManager):
    """nbclient's kernel manager, minus the SIGINT jupyter_client sends a kernel before asking it to shut down,
    and noticing sooner that the kernel has exited.

    Our runners shut a kernel down only once it has replied (or was interrupted and replied, or is dead), so
    that interrupt has nothing to stop; landing while ipykernel still handles a message, it printed
    "KeyboardInterrupt caught in kernel" to the terminal. A kernel that does not stop is still terminated,
    then killed, as before.

    jupyter_client looks every 0.1 s whether the kernel has exited: a kernel takes 0.2-0.3 s to tear its
    interpreter down, so a run waited on average 50 ms for nothing, and 100 ms whenever the teardown took a
    few milliseconds longer than the last multiple of 0.1 s. Here the wait is checked every 10 ms (a
    ``waitpid`` without blocking: nothing to measure). Its clients are ``ReadyKernelClient``s."""

    client_class = DottedObjectName("nbdurable.kernelspec.ReadyKernelClient")
    client_factory = Type(ReadyKernelClient, klass=AsyncKernelClient)

    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()

    async def _async_finish_shutdown(self, waittime: float | None = None, pollinterval: float = 0.1,
                                     restart: bool = False) -> None:
        await super()._async_finish_shutdown(waittime, min(pollinterval, SHUTDOWN_POLL_SECONDS), restart)


def local_kernel_config() -> Any:
    """The traitlets config for the kernel manager of one kernel nbdurable starts and talks to itself
    (`nbdurable run`, the papermill engine, the demo): the ``ipc`` transport where the platform has it, its
    Unix sockets named ``nbdurable-<random>-<n>`` in Jupyter's runtime directory (private: 0700), removed
    when the kernel is shut down. The kernel then listens on no TCP port that another local process could
    reach, and ipykernel has no cause for its "Kernel is running over TCP without encryption" warning, which
    broke into every progress bar. TCP stays where ipc cannot be had: Windows, or a runtime directory whose
    path is too long for a Unix socket's name (about 100 bytes). The manager is ``QuietShutdownKernelManager``."""
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets.config import Config

    config = Config()
    config.NotebookClient.kernel_manager_class = QuietShutdownKernelManager
    runtime = Path(jupyter_runtime_dir())
    prefix = runtime / f"nbdurable-{secrets.token_hex(6)}"
    if os.name != "posix" or len(os.fsencode(prefix)) > IPC_PATH_MAX:
        return config
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = str(prefix)  # absolute: the kernel's working directory is not the runner's
    return config


def kernel_json(python: str = sys.executable) -> dict[str, object]:
    """The kernel.json of the kernelspec: ipykernel with ``--ext nbdurable``."""
    return {
        "argv": [python, "-m", "ipykernel_launcher", "--ext", "nbdurable", "-f", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": True},
    }


def install_kernelspec(name: str = DEFAULT_NAME, *, user: bool = False, prefix: str | None = None) -> str:
    """Install the kernelspec; returns the directory it was installed to."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(kernel_json(), indent=1))
        return str(KernelSpecManager().install_kernel_spec(tmp, kernel_name=name, user=user, prefix=prefix,
                                                           replace=True))
