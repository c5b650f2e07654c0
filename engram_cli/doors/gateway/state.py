"""What every endpoint of the gateway shares: :class:`Gateway` (who callers are, the
way to the daemon, the bounds of a request) and the shape of a handler."""

from __future__ import annotations

import collections
import hashlib
import math
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
from engram_cli.doors.gateway.policy import REQUEST_TIMEOUT, Origins, too_large
from engram_cli.doors.gateway.shares import TICKETS_PER_AGENT, StreamShares, caller_of
from engramd.protocol import (
    BadRequest,
    ClientMessage,
    EngramError,
    Ping,
    RateLimited,
    ServerMessage,
    Timeout,
    TooLarge,
)

R = TypeVar("R", bound=ServerMessage)

MAX_BODY = 4 * 1024 * 1024
"""Request bodies are bounded (``--max-body``); the daemon's own limits apply within."""
BODY_TIMEOUT = 30.0
"""Seconds a request's body may take to come whole, from its headers (``--body-timeout``)."""
REPLY_GRACE = 30.0
"""How long a daemon answer may take beyond the wait the request asked for."""
TICKET_TTL = 30.0
"""Seconds a stream ticket may wait for its stream."""
MAX_TICKETS = 10_000
ACCEPTED_FOR = 10.0
"""Seconds the daemon's acceptance of a caller's credentials is taken as said before a
body is read (the request itself is checked by the daemon all the same)."""
MAX_ACCEPTED = 4096


class Tickets:
    """Stream tickets: what a browser, which cannot send ``Authorization`` on an
    EventSource or a WebSocket, puts in the stream's URL instead (``?ticket=``).
    One is issued to a caller with credentials, opens one stream, within
    :data:`TICKET_TTL` seconds, and is gone; the stream it opens lives as long as
    those credentials (a JWT's ``exp``, a token until revoked). One caller holds at
    most *per_agent* unused ones (:mod:`.shares`): the table's room is everyone's."""

    def __init__(self, per_agent: int = TICKETS_PER_AGENT) -> None:
        self.per_agent = per_agent
        self._issued: dict[str, tuple[Credentials, float]] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def issue(self, credentials: Credentials) -> str:
        now = time.monotonic()
        who = caller_of(credentials)
        if len(self._issued) >= MAX_TICKETS or self._held[who] >= self.per_agent:
            self._forget_expired(now)
        if self._held[who] >= self.per_agent:
            raise RateLimited(f"this agent holds {self._held[who]} unused stream tickets, "
                              f"as many as one agent may (--tickets-per-agent): open a "
                              f"stream with one, or retry in {math.ceil(TICKET_TTL)}s, "
                              f"when they expire")
        if len(self._issued) >= MAX_TICKETS:
            raise TooLarge(f"{MAX_TICKETS} stream tickets are waiting to be used")
        ticket = "egs_" + secrets.token_urlsafe(24)
        self._issued[ticket] = (credentials, now + TICKET_TTL)
        self._held[who] += 1
        return ticket

    def _forget_expired(self, now: float) -> None:
        self._issued = {t: v for t, v in self._issued.items() if v[1] > now}
        self._held = collections.Counter(caller_of(c) for c, _ in self._issued.values())

    def redeem(self, ticket: str) -> Credentials:
        found = self._issued.pop(ticket, None)
        if found is not None:
            who = caller_of(found[0])
            self._held[who] -= 1
            if self._held[who] <= 0:
                del self._held[who]
        if found is None or found[1] <= time.monotonic():
            raise Unauthenticated("unknown, used or expired stream ticket (POST "
                                  "/stream/ticket gives one)")
        credentials = found[0]
        # A ticket is worth no more than what it was issued for: a JWT that has expired
        # since opens nothing (a stream it opened before ends at its exp).
        if credentials.expires is not None and credentials.expires <= time.time():
            raise Unauthenticated("the token the stream ticket was issued for has expired")
        return credentials


class Accepted:
    """Credentials the daemon accepted a moment ago: a request's body is read only once
    its credentials are accepted, and asking the daemon before each upload of a busy
    caller would double its requests. Bounded in time (:data:`ACCEPTED_FOR`) and in
    number (:data:`MAX_ACCEPTED`, the oldest let go first); credentials refused are
    never kept, so made-up ones cost the daemon one request each, as any request does.
    Tokens are kept by digest."""

    def __init__(self) -> None:
        self._until: dict[tuple[str, bytes, bool], float] = {}

    def __contains__(self, credentials: Credentials) -> bool:
        until = self._until.get(_key(credentials))
        return until is not None and until > time.monotonic()

    def add(self, credentials: Credentials) -> None:
        key = _key(credentials)
        self._until.pop(key, None)
        if len(self._until) >= MAX_ACCEPTED:
            del self._until[next(iter(self._until))]
        self._until[key] = time.monotonic() + ACCEPTED_FOR


def _key(credentials: Credentials) -> tuple[str, bytes, bool]:
    token = hashlib.sha256((credentials.token or "").encode()).digest()
    return credentials.agent_id, token, credentials.delegated


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
    body_timeout: float = BODY_TIMEOUT
    """Seconds a request body may take to come whole (408 after)."""
    accepted: Accepted = field(default_factory=Accepted)
    streams: StreamShares = field(default_factory=StreamShares)
    """The streams each caller has open, against its share (``--streams-per-agent``)."""

    def credentials(self, request: HTTPConnection) -> Credentials:
        """Who the request is, from its headers (checked once per request)."""
        known = request.scope.get("engram.credentials")
        if known is None:
            known = request.scope["engram.credentials"] = self.auth.identify(request.headers)
        return known

    def stream_credentials(self, request: HTTPConnection) -> Credentials:
        """A stream's credentials: its ``ticket``, else its headers'."""
        ticket = request.query_params.get("ticket")
        if ticket:
            return self.tickets.redeem(ticket)
        return self.credentials(request)

    async def accepted_credentials(self, request: Request) -> Credentials:
        """The request's credentials, once the daemon accepts them (it is asked, unless
        it accepted them a moment ago): an unknown or revoked token, an agent the daemon
        will not be spoken for as, are 401 (403, 503: its answer) before anything else."""
        credentials = self.credentials(request)
        if credentials not in self.accepted:
            await self.call(request, Ping())
            self.accepted.add(credentials)
        return credentials

    async def call(self, request: Request, message: ClientMessage[R],
                   wait: float | None = 0.0) -> R:
        """*message* made for the caller, bounded by its wait plus grace; one that waits
        takes a place kept for waits (429 or 503 at once when there is none)."""
        credentials = self.credentials(request)
        # The daemon refuses a negative wait; the bound on its answer is no less for it.
        wait = max(0.0, wait or 0.0)
        with trio.move_on_after(REPLY_GRACE + wait):
            try:
                return await self.link.call(credentials, message, waits=wait > 0)
            except OverflowError:  # msgpack's integers end at 2**64
                raise BadRequest("a number in the request is out of range (integers are "
                                 "64-bit)") from None
        raise NoAnswer("engramd did not answer in time")

    async def body(self, request: Request) -> bytes:
        """The request body, once the caller's headers prove who it is (401 before a byte
        of it is read); refused past ``max_body`` (413, by its length at once, else as it
        comes) and when it has not come whole within ``body_timeout`` (408). Only an
        endpoint that takes a body reads one, so only such an endpoint gives 413 or 408
        (another answers without reading what was sent)."""
        await self.accepted_credentials(request)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:  # (hypercorn checked it)
            raise too_large(self.max_body)
        size = 0
        chunks = []
        with trio.move_on_after(self.body_timeout) as late:
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_body:
                        raise too_large(self.max_body)
                    chunks.append(chunk)
            except ClientDisconnect:
                raise ClientLeft from None
        if late.cancelled_caught:
            raise RequestTimeout(f"the request body did not come whole within "
                                 f"{self.body_timeout:g}s (--body-timeout)")
        return b"".join(chunks)


class NoAnswer(Timeout):
    """engramd did not answer within the request's wait and :data:`REPLY_GRACE`: the one
    ``timeout`` that is the gateway's failure (504), not an answer (a wait that ran out,
    409)."""

    gateway_timeout = True


class RequestTimeout(EngramError):
    """A request's body did not come whole in time (HTTP 408)."""

    code = REQUEST_TIMEOUT


class ClientLeft(Exception):
    """The client hung up before its request was read whole (an aborted upload)."""


Handler = Callable[[Gateway, Request], Awaitable[Response]]
