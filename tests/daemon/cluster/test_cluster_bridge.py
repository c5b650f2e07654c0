"""The trio -> asyncio hand-off of cluster mode (engramd.cluster.bridge): results,
exceptions and cancellation cross it, and the asyncio side runs in its own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
import trio

from engramd.cluster.bridge import AsyncioThread


@pytest.fixture
async def bridge() -> AsyncIterator[AsyncioThread]:
    thread = AsyncioThread(name="test-asyncio")
    thread.start()
    yield thread
    thread.stop()


async def test_a_coroutine_runs_on_the_asyncio_thread_and_its_result_comes_back(
        bridge: AsyncioThread) -> None:
    async def where() -> tuple[str, bool]:
        await asyncio.sleep(0)
        return threading.current_thread().name, asyncio.get_running_loop() is bridge.loop

    assert await bridge.run(where) == ("test-asyncio", True)


async def test_an_exception_is_raised_in_the_trio_task(bridge: AsyncioThread) -> None:
    async def fails() -> None:
        raise ValueError("from asyncio")

    with pytest.raises(ValueError, match="from asyncio"):
        await bridge.run(fails)


async def test_cancelling_the_trio_task_cancels_the_coroutine(bridge: AsyncioThread) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def waits() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with trio.move_on_after(10) as scope:  # a bound, never reached when all is well
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bridge.run, waits)
            await trio.to_thread.run_sync(started.wait, 10)
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert await trio.to_thread.run_sync(cancelled.wait, 10)
