"""Errors of the client library and the CLI, and the CLI's exit statuses.

The errors are the protocol's own (:mod:`engramd.protocol.errors`: one vocabulary on
both sides of the socket), re-exported here for the library's users; an error the
daemon reported carries its code in ``err.code``. The CLI adds the few of its own
below, and turns any :class:`EngramError` into one line on stderr and its
``exit_code``.
"""

from __future__ import annotations

import enum

from engramd.protocol import (
    BadRequest,
    Conflict,
    Deadlock,
    EngramError,
    ErrorCode,
    Forbidden,
    InternalError,
    LockHeld,
    NotFound,
    RateLimited,
    Timeout,
    TooLarge,
    Unavailable,
    VersionMismatch,
)


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
    DAMAGED = 74
    """A file of the journal is damaged: no answer rather than a short one (EX_IOERR)."""
    DISK_FULL = 75
    """A write refused for a full disk; try again once there is space (EX_TEMPFAIL)."""


class UsageProblem(EngramError):
    """The command line itself is wrong in a way the parser could not see."""

    code = ErrorCode.BAD_REQUEST
    exit_code = ExitCode.USAGE


class ClientTimeout(Timeout):
    """The daemon did not answer within the client's own timeout."""


__all__ = [
    "BadRequest", "ClientTimeout", "Conflict", "Deadlock", "EngramError", "ExitCode",
    "Forbidden", "InternalError", "LockHeld", "NotFound", "RateLimited", "Timeout",
    "TooLarge", "Unavailable", "UsageProblem", "VersionMismatch",
]
