"""The real thing: ipykernel processes, SIGKILL from outside mid-cell, restart, Run All."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli
from kernels import Kernel, wait_for

pytestmark = pytest.mark.kernel  # real ipykernel processes


def text_of(outputs: list[dict]) -> str:
    parts = []
    for out in outputs:
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


def test_kernel_killed_mid_cell_resumes_with_outputs(tmp_path: Path) -> None:
    store = tmp_path / "store"
    started = tmp_path / "slow-started"
    env = {"NBDURABLE_STORE": str(store), "NBDURABLE_NOTEBOOK": str(tmp_path / "analysis.ipynb")}
    cells = [
        "%load_ext nbdurable",
        "import numpy as np\nprint('loading')\ndata = np.arange(10)",
        "from IPython.display import display, HTML\ndisplay(HTML('<b>bold</b>'))\ntotal = int(data.sum())\ntotal",
        f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
        f"time.sleep(60 if not pathlib.Path({str(started)!r} + '.done').exists() else 0)\nfinal = total * 2",
        "print('final is', final)",
    ]
    kernel = Kernel(env, tmp_path)
    for cell in cells[:3]:
        reply, _ = kernel.execute(cell)
        assert reply["status"] == "ok", reply
    kernel.start(cells[3])
    wait_for(started)
    kernel.kill()
    (tmp_path / "slow-started.done").touch()

    kernel = Kernel(env, tmp_path)
    try:
        results = [kernel.execute(cell) for cell in cells]
    finally:
        kernel.close()
    assert all(reply["status"] == "ok" for reply, _ in results), results
    notice = [(o["name"], o["text"]) for o in results[0][1] if o["output_type"] == "stream"]
    assert [name for name, text in notice if "nbdurable: resuming run" in text] == ["stdout"], (
        "the resuming notice is information, not an error (JupyterLab shows stderr in red)", notice)
    load_out, display_out = results[1][1], results[2][1]
    assert "loading" in text_of(load_out) and "restored from step 1" in text_of(load_out)
    kinds = [o["output_type"] for o in display_out]
    assert "execute_result" in kinds and any("text/html" in o.get("data", {}) for o in display_out)
    assert "45" in text_of(display_out)
    assert "restored" not in text_of(results[3][1])
    assert "final is 90" in text_of(results[4][1])


def test_installed_kernelspec_loads_the_extension(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    installed = run_cli("install-kernel", "--prefix", str(prefix), "--name", "nbd-test")
    assert installed.returncode == 0, installed.stderr
    spec_dir = prefix / "share" / "jupyter" / "kernels"
    spec = json.loads((spec_dir / "nbd-test" / "kernel.json").read_text())
    assert spec["display_name"] == "Python 3 (nbdurable)" and "nbdurable" in spec["argv"]
    env = {"NBDURABLE_STORE": str(tmp_path / "store"), "NBDURABLE_NOTEBOOK": "spec-test"}
    kernel = Kernel(env, tmp_path, kernel_name="nbd-test", kernel_dirs=[str(spec_dir)])
    try:
        kernel.execute("x = 1")
        reply, outputs = kernel.execute("%durable status")
    finally:
        kernel.close()
    assert reply["status"] == "ok"
    assert "executed:      1" in text_of(outputs)
