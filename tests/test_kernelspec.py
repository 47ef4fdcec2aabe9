"""How nbdurable's runners talk to the kernels they start (``kernelspec.py``): a kernel is ready once IOPub
carries the idle status of the kernel_info request, not after 0.2 s of silence; a missed status asks again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from nbdurable.kernelspec import QuietShutdownKernelManager, ReadyKernelClient, local_kernel_config

from helpers import clean_env, python_kernelspec

pytestmark = pytest.mark.kernel


@contextlib.asynccontextmanager
async def _client(tmp_path: Path, client_class: type[ReadyKernelClient] = ReadyKernelClient,
                  kernel_dirs: list[str] | None = None, kernel_name: str = "python3") -> AsyncIterator[Any]:
    """A kernel started as our runners start one, and a client of ``client_class`` with its channels open."""
    extra = {"kernel_spec_manager": KernelSpecManager(kernel_dirs=kernel_dirs)} if kernel_dirs else {}
    km = QuietShutdownKernelManager(kernel_name=kernel_name, config=local_kernel_config(), **extra)
    km.client_factory = client_class
    await km.start_kernel(env=clean_env({}), cwd=str(tmp_path))
    kc = km.client()
    assert isinstance(kc, client_class)
    kc.start_channels()
    try:
        yield kc
    finally:
        kc.stop_channels()
        if await km.is_alive():
            await km.shutdown_kernel()
        else:
            await km.cleanup_resources()


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


async def _result(kc: ReadyKernelClient, code: str) -> str:
    """The text of the one execute_result of ``code``."""
    got = await _outputs(kc, code)
    (result,) = [m["content"]["data"]["text/plain"] for m in got if m["msg_type"] == "execute_result"]
    return str(result)


def test_a_runner_kernel_is_ready_once_iopub_carries_the_kernel_info_idle(tmp_path: Path) -> None:
    async def go() -> None:
        async with _client(tmp_path) as kc:
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
        async with _client(tmp_path, _MissesTheFirstIdle) as kc:
            await kc.wait_for_ready(timeout=60)
            assert _MissesTheFirstIdle.asked == 2
            assert await _result(kc, "1 + 1") == "2"

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
        async with _client(tmp_path, _NoIdleForKernelInfo) as kc:
            await kc.wait_for_ready(timeout=60)
            assert await _result(kc, "2 + 2") == "4"

    asyncio.run(go())


def test_a_kernel_that_dies_before_replying_is_reported(tmp_path: Path) -> None:
    kernels = python_kernelspec(tmp_path, "dies", "import sys; sys.exit(3)")

    async def go() -> None:
        async with _client(tmp_path, kernel_dirs=[str(kernels)], kernel_name="dies") as kc:
            with pytest.raises(RuntimeError, match="Kernel died before replying to kernel_info"):
                await kc.wait_for_ready(timeout=60)

    asyncio.run(go())
