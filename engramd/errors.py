"""The daemon's own errors: it cannot start.

The errors it reports to clients are the protocol's (:mod:`engramd.protocol.errors`),
shared with the clients; :mod:`engramd.dispatch` is the one place where they
become error frames, and anything else raised while serving a request is a bug
reported as ``internal``.
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_DAMAGED = 3


class StartupError(Exception):
    """engramd cannot start; the message is printed as is (one line) and the exit status
    is :attr:`exit_status`."""

    exit_status = EXIT_FAILURE


class JournalDamaged(StartupError):
    """The journal's files are damaged so that starting would lose or misread what they
    hold; the message names the file, the place and the fix (``engramd --repair``)."""

    exit_status = EXIT_DAMAGED
