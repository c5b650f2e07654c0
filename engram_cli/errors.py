"""Errors of the client library and the CLI, each with its exit status.

:class:`EngramError` is the root. Errors the daemon reported are
:class:`DaemonError` subclasses chosen by the error code (``err.code``); the
CLI turns any :class:`EngramError` into one line on stderr and ``exit_code``.
"""

from __future__ import annotations

import enum
from typing import TypeVar

from engramd.protocol import ClientMessage, ErrorCode, ErrorReply, ServerMessage


class ExitCode(enum.IntEnum):
    """The CLI's exit statuses (documented in SPECS.md and ``engram --help``)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    CONFLICT = 4
    """A conflict, or a lock held by someone else."""
    TIMEOUT = 5
    LEASE_LOST = 6
    """``lock run``: a lease was lost while the command ran (it was stopped)."""
    CANNOT_RUN = 126
    """``lock run``: the command was found but could not be started (as ``env`` says)."""
    COMMAND_NOT_FOUND = 127
    """``lock run``: the command was not found."""
    UNAVAILABLE = 69
    """The daemon cannot be reached or cannot serve now (EX_UNAVAILABLE)."""


class EngramError(Exception):
    exit_code: ExitCode = ExitCode.ERROR


class UsageProblem(EngramError):
    """The command line itself is wrong in a way the parser could not see."""

    exit_code = ExitCode.USAGE


class DaemonUnavailable(EngramError):
    """The daemon could not be reached, or went away mid-conversation."""

    exit_code = ExitCode.UNAVAILABLE


class ClientTimeout(EngramError):
    """The daemon did not answer within the client's timeout."""

    exit_code = ExitCode.TIMEOUT


class DaemonError(EngramError):
    """The daemon answered a request with an error frame."""

    code: str = ErrorCode.INTERNAL

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class BadRequest(DaemonError):
    code = ErrorCode.BAD_REQUEST
    exit_code = ExitCode.ERROR


class NotFound(DaemonError):
    code = ErrorCode.NOT_FOUND
    exit_code = ExitCode.NOT_FOUND


class Conflict(DaemonError):
    code = ErrorCode.CONFLICT
    exit_code = ExitCode.CONFLICT


class LockHeld(DaemonError):
    code = ErrorCode.LOCK_HELD
    exit_code = ExitCode.CONFLICT


class Deadlock(DaemonError):
    code = ErrorCode.DEADLOCK
    exit_code = ExitCode.CONFLICT


class Timeout(DaemonError):
    code = ErrorCode.TIMEOUT
    exit_code = ExitCode.TIMEOUT


class TooLarge(DaemonError):
    code = ErrorCode.TOO_LARGE


class Unavailable(DaemonError):
    code = ErrorCode.UNAVAILABLE
    exit_code = ExitCode.UNAVAILABLE


class RateLimited(DaemonError):
    """Over the connection's request rate: retry later (like EX_UNAVAILABLE)."""

    code = ErrorCode.RATE_LIMITED
    exit_code = ExitCode.UNAVAILABLE


class Forbidden(DaemonError):
    code = ErrorCode.FORBIDDEN


class VersionMismatch(DaemonError):
    code = ErrorCode.VERSION_MISMATCH


class InternalError(DaemonError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[str, type[DaemonError]] = {
    cls.code: cls
    for cls in (BadRequest, NotFound, Conflict, LockHeld, Deadlock, Timeout, TooLarge,
                Unavailable, RateLimited, Forbidden, VersionMismatch, InternalError)
}


ReplyT = TypeVar("ReplyT", bound=ServerMessage)


def reply_as(reply: ServerMessage, request: ClientMessage, expect: type[ReplyT]) -> ReplyT:
    """*reply* as the answer to *request*; raises if it is an error or of another kind."""
    if isinstance(reply, ErrorReply):
        raise error_from_reply(reply)
    if not isinstance(reply, expect):
        raise EngramError(
            f"engramd answered {type(reply).__name__} to {type(request).__name__}"
        )
    return reply


def error_from_reply(reply: ErrorReply) -> DaemonError:
    """The exception for an error frame; an unknown code becomes :class:`DaemonError`."""
    cls = _BY_CODE.get(reply.code, DaemonError)
    return cls(reply.message, reply.code)
