"""The "Python 3 (nbdurable)" kernelspec: an ipykernel that loads the extension at start; and how nbdurable's
own runners (`nbdurable run`, the papermill engine, the demo) connect to the kernels they start."""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

DEFAULT_NAME = "nbdurable"
DISPLAY_NAME = "Python 3 (nbdurable)"
IPC_PATH_MAX = 100  # bytes of an ipc socket's path prefix (a Unix socket name holds 107; "-<port>" follows)


class QuietShutdownKernelManager(AsyncKernelManager):
    """nbclient's kernel manager, minus the SIGINT jupyter_client sends a kernel before asking it to shut down.

    Our runners shut a kernel down only once it has replied (or was interrupted and replied, or is dead), so
    that interrupt has nothing to stop; landing while ipykernel still handles a message, it printed
    "KeyboardInterrupt caught in kernel" to the terminal. A kernel that does not stop is still terminated,
    then killed, as before."""

    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()


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
