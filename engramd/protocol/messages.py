"""Every message that crosses the socket, as msgspec Structs.

Messages are MessagePack maps tagged by their ``msg`` field. Client messages
(the handshake and requests) all carry a client-chosen ``id``; every reply
carries the ``id`` of the request it answers, so a client may pipeline many
requests on one connection and match the answers as they come.

Rules for changing this module (the wire format is a promise):

* A new message is a new Struct with a new short tag, plus a ``match`` arm on
  each side; add its golden bytes to ``tests/data/``.
* New fields go at the end and have defaults. Requests refuse unknown fields
  (the daemon must not silently ignore what a client asked for); replies
  accept them (a newer daemon may say more than an older client knows).
* Bump :data:`PROTOCOL_VERSION` only for a change an older peer cannot read.
"""

# msgspec Struct options (frozen, kw_only) are inherited by subclasses; mypy's
# dataclass model does not know that and would flag every message class.
# mypy: disable-error-code="misc"

from __future__ import annotations

import datetime as dt

import msgspec

PROTOCOL_VERSION = 1


# -- client to daemon -------------------------------------------------------


class ClientMessage(
    msgspec.Struct, tag_field="msg", frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """Base of everything a client sends."""

    id: int


class Hello(ClientMessage, tag="hello"):
    """The first message on every connection."""

    protocol_version: int
    client_name: str
    agent_id: str


class Ping(ClientMessage, tag="ping"):
    """Round trip: the daemon answers with :class:`Pong`."""


class GetStatus(ClientMessage, tag="status"):
    """Ask for the daemon's state, paths, counts and limits."""


class Shutdown(ClientMessage, tag="shutdown"):
    """Ask the daemon to stop gracefully (like SIGTERM)."""


Request = Ping | GetStatus | Shutdown
"""Requests allowed after the handshake."""

AnyClientMessage = Hello | Ping | GetStatus | Shutdown


# -- daemon to client -------------------------------------------------------


class ServerMessage(msgspec.Struct, tag_field="msg", frozen=True, kw_only=True):
    """Base of everything the daemon sends."""


class Reply(ServerMessage):
    """Base of the answers to requests."""

    id: int


class Welcome(Reply, tag="welcome"):
    """The daemon's answer to a :class:`Hello` it accepts."""

    protocol_version: int
    daemon_version: str
    pid: int
    instance_id: str


class Pong(Reply, tag="pong"):
    daemon_version: str
    uptime: float
    """Seconds since the daemon started."""
    server_time: dt.datetime
    """The daemon's wall clock, UTC."""


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    max_frame_bytes: int
    max_connections: int
    max_inflight_per_connection: int


class DaemonStatus(Reply, tag="status"):
    state: str
    """``ready`` or ``recovering`` (see SPECS.md)."""
    daemon_version: str
    protocol_version: int
    pid: int
    instance_id: str
    started_at: dt.datetime
    uptime: float
    socket: str
    data_dir: str
    config_file: str | None
    log_file: str | None
    connections: int
    requests_served: int
    limits: Limits


class ShuttingDown(Reply, tag="shutdown"):
    """The daemon accepted a :class:`Shutdown` and has stopped accepting."""

    pid: int


class ErrorReply(ServerMessage, tag="error"):
    """A request failed, or the connection is about to close.

    ``id`` is ``None`` when the failing frame could not be read far enough to
    find its id. ``code`` is one of :class:`~engramd.protocol.errors.ErrorCode`.
    """

    id: int | None
    code: str
    message: str


AnyServerMessage = Welcome | Pong | DaemonStatus | ShuttingDown | ErrorReply
