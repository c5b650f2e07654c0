"""What every endpoint of the gateway shares: :class:`Gateway` (who callers are, the
way to the daemon, the bounds of a request) and the shape of a handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from engram_cli.doors.gateway.auth import Authenticator, Credentials
from engram_cli.doors.gateway.guard import Tally
from engram_cli.doors.gateway.link import DaemonLink
from engram_cli.doors.gateway.policy import Origins
from engramd.protocol import ClientMessage, ServerMessage, Timeout, TooLarge

R = TypeVar("R", bound=ServerMessage)

MAX_BODY = 4 * 1024 * 1024
"""Request bodies are bounded (``--max-body``); the daemon's own limits apply within."""
REPLY_GRACE = 30.0
"""How long a daemon answer may take beyond the wait the request asked for."""


@dataclass
class Gateway:
    """What every handler needs: who callers are, and the way to the daemon."""

    link: DaemonLink
    auth: Authenticator
    origins: Origins
    max_body: int = MAX_BODY
    tally: Tally = field(default_factory=Tally)
    stopping: trio.Event = field(default_factory=trio.Event)
    """Set when the gateway begins to stop: streams end then, rather than hold it up."""

    def credentials(self, request: HTTPConnection) -> Credentials:
        return self.auth.identify(request.headers)

    async def call(self, request: Request, message: ClientMessage[R],
                   wait: float | None = 0.0, *, own: bool = False) -> R:
        """*message* as the caller, bounded by its wait plus grace: on the caller's shared
        connection, or with *own* on a connection (a session) of its own."""
        credentials = self.credentials(request)
        with trio.move_on_after(REPLY_GRACE + (wait or 0.0)):
            if not own:
                return await self.link.call(credentials, message)
            async with self.link.own(credentials) as client:
                return await client.call(message)
        raise Timeout("engramd did not answer in time")

    async def body(self, request: Request) -> bytes:
        """The request body, refused past ``max_body`` (413) even without a length."""
        size = 0
        chunks = []
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise TooLarge(f"request body over {self.max_body} bytes (--max-body)")
            chunks.append(chunk)
        return b"".join(chunks)


Handler = Callable[[Gateway, Request], Awaitable[Response]]
