"""Who is on a connection: the kernel's word, the hello's claim, and what it proved.

* :class:`PeerCredentials`: the connecting process's pid, uid and gid, from
  ``SO_PEERCRED`` (another uid is refused before anything is read).
* :class:`Identity`: what the hello proved — the agent it acts as, and whether
  it holds an agent token or the admin token (:mod:`engramd.tokens` checks).
* :class:`Caller`: all of it for the requests of one connection, made once per
  connection after its hello.

An *agent* is a name (attribution, tokens, the per-agent lease limit); a
*session* is one running instance of it. A connection is a session of its own,
named by ``connection_id``; a lease bound to a process makes that process the
session instead (see :mod:`engramd.leases`).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from engramd import validate
from engramd.protocol import PROTOCOL_VERSION, BadRequest, Hello, VersionMismatch

MAX_NAME = 256
MAX_WINDOW = 65_536
"""The most pushes a subscription may have in flight on a connection with a window."""
_PEERCRED = struct.Struct("3i")


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The connecting process's ids, as the kernel recorded them at connect()."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


@dataclass(frozen=True)
class Identity:
    """What a connection proved in its hello."""

    agent_id: str
    token_id: str | None = None
    admin: bool = False
    delegated: bool = False
    """Named by an admin-token holder speaking for it (a gateway): that agent's rights."""

    @property
    def bound(self) -> bool:
        """Whether the connection acts as its agent only (an agent token, or delegated)."""
        return self.token_id is not None or self.delegated


def check_hello(hello: Hello) -> None:
    """Raise the error a malformed hello gets (before any token is looked at)."""
    if hello.protocol_version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"the daemon speaks protocol {PROTOCOL_VERSION}, the client "
            f"{hello.protocol_version}; restart the daemon with 'engram daemon restart' "
            "after upgrading")
    # Without an agent id, an agent token names the agent (the daemon looks it up).
    if hello.agent_id or hello.token is None or hello.delegated:
        validate.agent_id(hello.agent_id)
    if len(hello.client_name) > MAX_NAME:
        raise BadRequest(f"client name must be at most {MAX_NAME} characters")
    if not 0 <= hello.window <= MAX_WINDOW:
        raise BadRequest(f"window must be 0 to {MAX_WINDOW}")


@dataclass(frozen=True)
class Caller:
    """Who sends the requests of one connection."""

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
    identity: Identity | None = None
    """What its hello proved (None for the daemon's own writes)."""

    @property
    def admin(self) -> bool:
        return self.identity is not None and self.identity.admin


def connection_id(number: int, instance_id: str) -> str:
    return f"conn:{number}@{instance_id[:8]}"
