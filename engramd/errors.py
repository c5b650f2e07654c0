"""Errors the daemon reports to clients.

Each class carries one stable :class:`~engramd.protocol.ErrorCode`;
:mod:`engramd.dispatch` is the one place where they become error frames.
Anything else raised while serving a request is a bug and is reported as
``internal``.
"""

from __future__ import annotations

from engramd.protocol import ErrorCode


class EngramError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL


class BadRequest(EngramError):
    """The request is invalid; resending it unchanged will fail again."""

    code = ErrorCode.BAD_REQUEST


class NotFound(EngramError):
    code = ErrorCode.NOT_FOUND


class Conflict(EngramError):
    code = ErrorCode.CONFLICT


class LockHeld(EngramError):
    """The resource is leased by someone else (and the request would not wait)."""

    code = ErrorCode.LOCK_HELD


class Timeout(EngramError):
    """A wait the client asked for ran out."""

    code = ErrorCode.TIMEOUT


class Deadlock(EngramError):
    """Waiting would close a cycle of agents waiting for each other."""

    code = ErrorCode.DEADLOCK


class TooLarge(EngramError):
    code = ErrorCode.TOO_LARGE


class Unavailable(EngramError):
    """The daemon cannot serve this now: starting, recovering, stopping, or over a limit."""

    code = ErrorCode.UNAVAILABLE


class RateLimited(EngramError):
    """The connection is over its request rate."""

    code = ErrorCode.RATE_LIMITED


class Forbidden(EngramError):
    code = ErrorCode.FORBIDDEN


class VersionMismatch(EngramError):
    code = ErrorCode.VERSION_MISMATCH


class StartupError(Exception):
    """engramd cannot start; the message is printed as is and the exit status is 1."""
