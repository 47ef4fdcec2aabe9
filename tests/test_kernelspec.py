"""How nbdurable's runners talk to the kernels they start (``kernelspec.py``): a kernel is ready once IOPub
carries the idle status of the kernel_info request, not after 0.2 s of silence; a missed status asks again."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from nbdurable.kernelspec import QuietShutdownKernelManager, ReadyKernelClient, local_kernel_config

from helpers import clean_env

pytestmark = pytest.mark.kernel


async def _started(tmp_path: Path, client_class: type[ReadyKernelClient] = ReadyKernelClient,
                   kernel_dirs: list[str] | None = None, kernel_name: str = "python3") -> QuietShutdownKernelManager:
    extra = {"kernel_spec_manager": KernelSpecManager(kernel_dirs=kernel_dirs)} if kernel_dirs else {}
    km = QuietShutdownKernelManager(kernel_name=kernel_name, config=local_kernel_config(), **extra)
    km.client_factory = client_class
    await km.start_kernel(env=clean_env({}), cwd=str(tmp_path))
    return km


async def _outputs(kc: ReadyKernelClient, code: str) -> list[dict[str, Any]]:
    """The IOPub messages of one execute request, up to its idle status."""
    msg_id = kc.execute(code)
    got = []
    while True:
        msg = await kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return got
        got.append(msg)


def test_a_runner_kernel_is_ready_once_iopub_carries_the_kernel_info_idle(tmp_path: Path) -> None:
    async def go() -> None:
        km = await _started(tmp_path)
        kc = km.client()
        assert isinstance(kc, ReadyKernelClient)
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            # What the kernel published for the kernel_info request was read: nothing of it is left.
            left = []
            while True:
                try:
                    left.append(await kc.get_iopub_msg(timeout=0.3))
                except Empty:
                    break
            assert not [m for m in left if m["parent_header"].get("msg_type") == "kernel_info_request"], left
            got = await _outputs(kc, "print('ready', 6 * 7)")
            assert [(m["msg_type"], m["content"].get("text")) for m in got if m["msg_type"] == "stream"] == \
                [("stream", "ready 42\n")]
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()

    asyncio.run(go())


class _MissesTheFirstIdle(ReadyKernelClient):
    """As if IOPub had connected only after the kernel published the first request's status."""

    asked = 0

    def kernel_info(self) -> str:  # type: ignore[override]
        type(self).asked += 1
        return str(super().kernel_info())

    async def _iopub_connected(self, asked: set[str], wait: float) -> bool:
        if type(self).asked == 1:
            await asyncio.sleep(wait)
            while True:  # the status went by unseen
                try:
                    await self.iopub_channel.get_msg(timeout=0.05)
                except Empty:
                    return False
        return await super()._iopub_connected(asked, wait)


def test_a_kernel_info_status_missed_on_iopub_is_asked_again(tmp_path: Path) -> None:
    async def go() -> None:
        km = await _started(tmp_path, _MissesTheFirstIdle)
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            assert _MissesTheFirstIdle.asked == 2
            got = await _outputs(kc, "1 + 1")
            assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["2"]
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()

    asyncio.run(go())


class _NoIdleForKernelInfo(ReadyKernelClient):
    """As if the kernel published its busy status for kernel_info but no idle."""

    async def _iopub_connected(self, asked: set[str], wait: float) -> bool:
        channel = self.iopub_channel
        real = channel.get_msg

        async def without_idle(timeout: float | None = None) -> dict[str, Any]:
            while True:
                msg = await real(timeout=timeout)
                if not (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"):
                    return dict(msg)

        channel.get_msg = without_idle
        try:
            return await super()._iopub_connected(asked, wait)
        finally:
            del channel.get_msg


def test_a_kernel_without_an_idle_status_for_kernel_info_is_ready_once_iopub_carries_anything(tmp_path: Path) -> None:
    async def go() -> None:
        km = await _started(tmp_path, _NoIdleForKernelInfo)
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            got = await _outputs(kc, "2 + 2")
            assert [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"] == ["4"]
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()

    asyncio.run(go())


def test_a_kernel_that_dies_before_replying_is_reported(tmp_path: Path) -> None:
    spec = tmp_path / "kernels" / "dies"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", "import sys; sys.exit(3)", "{connection_file}"],
        "display_name": "dies", "language": "python"}))

    async def go() -> None:
        km = await _started(tmp_path, kernel_dirs=[str(tmp_path / "kernels")], kernel_name="dies")
        kc = km.client()
        kc.start_channels()
        try:
            with pytest.raises(RuntimeError, match="Kernel died before replying to kernel_info"):
                await kc.wait_for_ready(timeout=60)
        finally:
            kc.stop_channels()
            await km.cleanup_resources()

    asyncio.run(go())
