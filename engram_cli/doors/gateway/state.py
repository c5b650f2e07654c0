"""What every endpoint of the gateway shares: :class:`Gateway` (who callers are, the
way to the daemon, the bounds of a request) and the shape of a handler."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import Response

from engram_cli.doors.gateway.auth import Authenticator, Credentials, Unauthenticated
from engram_cli.doors.gateway.guard import Tally
from engram_cli.doors.gateway.link import DaemonLink
from engram_cli.doors.gateway.policy import Origins
from engramd.protocol import BadRequest, ClientMessage, ServerMessage, Timeout, TooLarge

R = TypeVar("R", bound=ServerMessage)

MAX_BODY = 4 * 1024 * 1024
"""Request bodies are bounded (``--max-body``); the daemon's own limits apply within."""
REPLY_GRACE = 30.0
"""How long a daemon answer may take beyond the wait the request asked for."""
TICKET_TTL = 30.0
"""Seconds a stream ticket may wait for its stream."""
MAX_TICKETS = 10_000


class Tickets:
    """Stream tickets: what a browser, which cannot send ``Authorization`` on an
    EventSource or a WebSocket, puts in the stream's URL instead (``?ticket=``).
    One is issued to a caller with credentials, opens one stream, within
    :data:`TICKET_TTL` seconds, and is gone; the stream it opens lives as long as
    those credentials (a JWT's ``exp``, a token until revoked)."""

    def __init__(self) -> None:
        self._issued: dict[str, tuple[Credentials, float]] = {}

    def issue(self, credentials: Credentials) -> str:
        now = time.monotonic()
        if len(self._issued) >= MAX_TICKETS:
            self._issued = {t: v for t, v in self._issued.items() if v[1] > now}
            if len(self._issued) >= MAX_TICKETS:
                raise TooLarge(f"{MAX_TICKETS} stream tickets are waiting to be used")
        ticket = "egs_" + secrets.token_urlsafe(24)
        self._issued[ticket] = (credentials, now + TICKET_TTL)
        return ticket

    def redeem(self, ticket: str) -> Credentials:
        found = self._issued.pop(ticket, None)
        if found is None or found[1] <= time.monotonic():
            raise Unauthenticated("unknown, used or expired stream ticket (POST "
                                  "/stream/ticket gives one)")
        return found[0]


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
    stream_stall: float = 60.0
    """Seconds a stream's client may take nothing before it is let go."""
    tickets: Tickets = field(default_factory=Tickets)

    def credentials(self, request: HTTPConnection) -> Credentials:
        return self.auth.identify(request.headers)

    def stream_credentials(self, request: HTTPConnection) -> Credentials:
        """A stream's credentials: its ``ticket``, else its headers'."""
        ticket = request.query_params.get("ticket")
        if ticket:
            return self.tickets.redeem(ticket)
        return self.credentials(request)

    async def call(self, request: Request, message: ClientMessage[R],
                   wait: float | None = 0.0) -> R:
        """*message* made for the caller, bounded by its wait plus grace."""
        credentials = self.credentials(request)
        # The daemon refuses a negative wait; the bound on its answer is no less for it.
        with trio.move_on_after(REPLY_GRACE + max(0.0, wait or 0.0)):
            try:
                return await self.link.call(credentials, message)
            except OverflowError:  # msgpack's integers end at 2**64
                raise BadRequest("a number in the request is out of range (integers are "
                                 "64-bit)") from None
        raise NoAnswer("engramd did not answer in time")

    async def body(self, request: Request) -> bytes:
        """The request body, refused past ``max_body`` (413) even without a length."""
        size = 0
        chunks = []
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise TooLarge(f"request body over {self.max_body} bytes (--max-body)")
                chunks.append(chunk)
        except ClientDisconnect:
            raise ClientLeft from None
        return b"".join(chunks)


class NoAnswer(Timeout):
    """engramd did not answer within the request's wait and :data:`REPLY_GRACE`: the one
    ``timeout`` that is the gateway's failure (504), not an answer (a wait that ran out,
    409)."""

    gateway_timeout = True


class ClientLeft(Exception):
    """The client hung up before its request was read whole (an aborted upload)."""


Handler = Callable[[Gateway, Request], Awaitable[Response]]
