"""Error codes and protocol errors shared by both sides of the socket.

An error travels as an :class:`~engramd.protocol.messages.ErrorReply` frame
carrying one of the stable codes below and a human message. The codes never
change meaning once released; new codes may be added, so a client must treat an
unknown code like ``internal``.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The stable machine codes of error frames (documented in SPECS.md)."""

    BAD_REQUEST = "bad_request"
    """The request is malformed or invalid; resending it unchanged will fail again."""
    NOT_FOUND = "not_found"
    """The named thing (unit, context, lease) does not exist."""
    CONFLICT = "conflict"
    """The request contradicts current state (a stale fence, a duplicate id)."""
    LOCK_HELD = "lock_held"
    """The resource is leased by someone else."""
    DEADLOCK = "deadlock"
    """Waiting would close a cycle of agents each waiting for another's lease."""
    TIMEOUT = "timeout"
    """A wait the client asked for ran out."""
    TOO_LARGE = "too_large"
    """A frame, payload or batch exceeds a configured limit."""
    UNAVAILABLE = "unavailable"
    """The daemon cannot serve this now (recovering, shutting down, full, failed)."""
    RATE_LIMITED = "rate_limited"
    """The connection sent requests faster than its configured rate; retry later."""
    FORBIDDEN = "forbidden"
    """The peer is not allowed to do this (another uid, a missing token)."""
    VERSION_MISMATCH = "version_mismatch"
    """The client and daemon speak different protocol versions."""
    INTERNAL = "internal"
    """A bug in the daemon; the daemon log has the details."""


class ProtocolError(Exception):
    """The byte stream or message sequence broke the protocol.

    Attributes:
        code: the :class:`ErrorCode` to report to the peer.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """*We* tried to do something the protocol forbids (a bug on this side)."""


class RemoteProtocolError(ProtocolError):
    """The *peer* sent something the protocol forbids.

    After this error the connection cannot be trusted to stay in sync and must
    be closed, after sending an error frame when that is still possible.
    """


class FrameTooLarge(RemoteProtocolError):
    """A length prefix announced a frame over the configured maximum."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(
            f"frame of {length} bytes exceeds the limit of {limit} bytes",
            ErrorCode.TOO_LARGE,
        )
        self.length = length
        self.limit = limit
