"""Waiting for a process to exit, without polling."""

from __future__ import annotations

import os

import trio


async def process_exit(pid: int) -> None:
    """Return when process *pid* has exited (at once when there is none): a pidfd
    becomes readable then."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
