"""nats-py's asyncio loop beside engramd's trio loop.

nats-py is asyncio only and engramd is trio. Rather than run one loop inside the
other (trio-asyncio), the asyncio loop has a thread of its own, and the only way
across is :meth:`AsyncioThread.run`: a trio task hands the loop a coroutine and
sleeps until its outcome comes back through ``run_sync_soon``. nats-py's objects
live and are used only in that thread, so neither side sees the other's
concurrency rules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")


def _not_eof_noise(record: logging.LogRecord) -> bool:
    """asyncio warns at every TLS connection nats-py's protocol closes (its
    ``eof_received`` returns true, which TLS ignores): harmless, and a machine the
    servers refuse would log it twice a second for ever."""
    return "eof_received()" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_not_eof_noise)


class AsyncioThread:
    def __init__(self, name: str = "engramd-nats") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                self._end_what_is_left()
            finally:
                self.loop.close()

    def _end_what_is_left(self, within: float = 2.0) -> None:
        """Cancel the tasks nats-py leaves running (a JetStream subscription's checks, a
        queue's get) and let them end, as ``asyncio.run`` does: closed under them, they
        are destroyed later, wherever the collector finds them, as errors."""
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.wait(pending, timeout=within))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def stop(self) -> None:
        """End the loop (after what is running now gives way) and the thread."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)

    async def run(self, coroutine: Callable[[], Awaitable[T]]) -> T:
        """Run ``coroutine()`` on the asyncio loop and return its result (or raise its
        exception). Cancelling the trio task cancels the coroutine."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def finished(_: concurrent.futures.Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        abandoned = False

        async def call() -> T:
            try:
                return await coroutine()
            except BaseException:
                if abandoned:
                    # No one waits for it any more (its trio task was cancelled: at
                    # shutdown, say, as the connection closes under it): what it
                    # raised instead of being cancelled is nobody's to hear, and
                    # asyncio would log it as a traceback ("never retrieved").
                    return None  # type: ignore[return-value]
                raise

        future = asyncio.run_coroutine_threadsafe(call(), self.loop)
        future.add_done_callback(finished)
        try:
            await done.wait()
        except trio.Cancelled:
            abandoned = True
            future.cancel()
            raise
        return future.result()
