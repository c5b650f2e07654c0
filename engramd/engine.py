"""The engine: the daemon's state and the operations on it.

In this first version it knows who it is and whether it is ready; the write
path (validate, group commit, storage, search, publish) grows here, and every
stateful component is opened and closed by :func:`open_engine`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator

import trio

from engramd import __version__
from engramd.config import DaemonConfig


class Engine:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.version = __version__
        self.instance_id = uuid.uuid4().hex
        self.started_at = dt.datetime.now(dt.UTC)
        self._started_monotonic = time.monotonic()
        self.state = "ready"
        self.shutdown_requested = trio.Event()

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started_monotonic

    def request_shutdown(self) -> None:
        """Begin a graceful stop; idempotent."""
        self.shutdown_requested.set()


@contextlib.asynccontextmanager
async def open_engine(config: DaemonConfig) -> AsyncIterator[Engine]:
    engine = Engine(config)
    yield engine
