"""Who sent a request: the agent its connection named, the process behind it, the connection.

An *agent* is a name (attribution, tokens, the per-agent lease limit); a
*session* is one running instance of it. A connection is a session of its own,
named by ``connection_id``; a lease bound to a process makes that process the
session instead (see :mod:`engramd.leases`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    agent_id: str
    uid: int
    pid: int
    """The connecting process, from ``SO_PEERCRED``."""
    connection_id: str = ""
    """``conn:N@I``: connection N of daemon start I, unique across restarts."""
    connection: object | None = None
    """The connection itself, for what is bound to it (leases, notices)."""
    push: Callable[[bytes], Awaitable[None]] | None = None
    """Writes a pushed message to that connection."""


def connection_id(number: int, instance_id: str) -> str:
    return f"conn:{number}@{instance_id[:8]}"
