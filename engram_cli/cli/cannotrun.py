"""The error of a CMD of ``engram lock run`` that cannot be run (:mod:`.cmdgroup`)."""

from __future__ import annotations

from engram_cli.client.errors import EngramError, ExitCode
from engramd.protocol import ErrorCode


class CannotRun(EngramError):
    """CMD cannot be found (127) or started (126), as ``env`` and ``timeout`` say."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        # In a --json error: not_found for a CMD that is not there, forbidden for one
        # that may not be run (the words of the protocol, whoever found it).
        super().__init__(message, ErrorCode.NOT_FOUND if exit_code == ExitCode.COMMAND_NOT_FOUND
                         else ErrorCode.FORBIDDEN)
        self.exit_code = exit_code
