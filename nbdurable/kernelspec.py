"""The "Python 3 (nbdurable)" kernelspec: an ipykernel that loads the extension at start."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

DEFAULT_NAME = "nbdurable"
DISPLAY_NAME = "Python 3 (nbdurable)"


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
