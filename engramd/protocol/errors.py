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
    DAMAGED = "damaged"
    """A file of the journal is damaged: the answer would be incomplete, so there is none."""
    DISK_FULL = "disk_full"
    """The disk holding the journal is full: writes are refused until there is space."""


class EngramError(Exception):
    """Every error engram reports, on either side of the socket: a stable code and a message.

    The daemon raises these; exactly one place (``engramd.dispatch``) turns them
    into error frames, and the clients turn error frames back into them
    (:func:`error_for`). An unknown code from a newer daemon keeps its text in
    ``code`` on a plain :class:`EngramError`. ``exit_code`` is the status the
    command line exits with (SPECS.md, error codes).
    """

    code: str = ErrorCode.INTERNAL
    exit_code: int = 1

    def __init__(self, message: str = "", code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadRequest(EngramError):
    """The request is malformed or invalid; resending it unchanged fails again."""

    code = ErrorCode.BAD_REQUEST
    exit_code = 2  # an invalid value is a usage error, whichever side caught it


class NotFound(EngramError):
    """The named thing (unit, context, lease, subscription) does not exist."""

    code = ErrorCode.NOT_FOUND
    exit_code = 3


class Conflict(EngramError):
    """The request contradicts current state (a stale fence, an id in use, asking again)."""

    code = ErrorCode.CONFLICT
    exit_code = 4


class LockHeld(EngramError):
    """The resource is leased by another session (and the request would not wait)."""

    code = ErrorCode.LOCK_HELD
    exit_code = 4


class Deadlock(EngramError):
    """Waiting would close a cycle of sessions waiting for each other's leases."""

    code = ErrorCode.DEADLOCK
    exit_code = 4


class Timeout(EngramError):
    """A wait the client asked for ran out."""

    code = ErrorCode.TIMEOUT
    exit_code = 5


class TooLarge(EngramError):
    """A frame, payload, batch or list exceeds a limit."""

    code = ErrorCode.TOO_LARGE
    exit_code = 2  # what was asked for is over a limit: an invalid value, like bad_request


TOO_MANY_SUBSCRIPTIONS = "too many subscriptions on one connection"
"""How the daemon begins the ``too_large`` that refuses a subscription for want of a place
on its connection (``limits.max_subscriptions_per_connection``): a client sharing one
connection among many streams (the gateway) tells it from a subscription's own limits by
it, and opens it elsewhere."""


class Unavailable(EngramError):
    """The daemon cannot serve this now: recovering, stopping, full, failed writes;
    or, on the client's side, it cannot be reached or the connection was lost."""

    code = ErrorCode.UNAVAILABLE
    exit_code = 69


class RateLimited(EngramError):
    """The connection is over its request rate; the message says when to retry."""

    code = ErrorCode.RATE_LIMITED
    exit_code = 69


class Forbidden(EngramError):
    """The peer may not do this: another uid, a token problem, another agent's lease."""

    code = ErrorCode.FORBIDDEN


class VersionMismatch(EngramError):
    """The client and the daemon speak different protocol versions."""

    code = ErrorCode.VERSION_MISMATCH


class InternalError(EngramError):
    """A bug in the daemon; its log has the details."""

    code = ErrorCode.INTERNAL


class Damaged(EngramError):
    """A read met a damaged file of the journal (the store): the message names the file
    and the fix. Never a shorter answer instead."""

    code = ErrorCode.DAMAGED
    exit_code = 74  # EX_IOERR


class DiskFull(Unavailable):
    """A write was refused because the disk holding the journal is full (or engramd
    started read-only on a full disk). Reads go on; writes resume once there is space.
    An :class:`Unavailable`, so that clients that wait for the daemon wait for this too."""

    code = ErrorCode.DISK_FULL
    exit_code = 75  # EX_TEMPFAIL: try again once there is space


_BY_CODE: dict[str, type[EngramError]] = {
    cls.code: cls
    for cls in (BadRequest, NotFound, Conflict, LockHeld, Deadlock, Timeout, TooLarge,
                Unavailable, RateLimited, Forbidden, VersionMismatch, InternalError, Damaged,
                DiskFull)
}


def error_for(code: str, message: str) -> EngramError:
    """The error an error frame reports; an unknown code gives a plain :class:`EngramError`."""
    cls = _BY_CODE.get(code)
    return cls(message) if cls is not None else EngramError(message, code)


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


__all__ = [
    "BadRequest", "Conflict", "Damaged", "Deadlock", "DiskFull", "EngramError", "error_for",
    "ErrorCode", "Forbidden", "FrameTooLarge", "InternalError", "LocalProtocolError",
    "LockHeld", "NotFound", "ProtocolError", "RateLimited", "RemoteProtocolError", "Timeout",
    "TOO_MANY_SUBSCRIPTIONS", "TooLarge", "Unavailable", "VersionMismatch",
]
