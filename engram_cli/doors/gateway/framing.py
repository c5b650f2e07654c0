"""The requests hypercorn answers itself, before (or instead of) the app: those h11
cannot read, and those it reads that the gateway refuses before they reach the app (a
request framed twice). Each is answered in the one JSON error shape, and the
connection closed.

hypercorn has no hook for either, so :func:`install` replaces the two methods of its
HTTP/1.1 protocol that matter, and the one that serves a connection, so that an error on
one ends that connection alone (once, and only if they are there: another hypercorn
keeps its own, and the tests that send such requests fail)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import h11
import msgspec

from engram_cli.doors.gateway.policy import NOT_IMPLEMENTED
from engramd.protocol import BadRequest, TooLarge

_json_encoder = msgspec.json.Encoder()
log = logging.getLogger("engram.gateway")

TWO_FRAMINGS = ("a request with both Content-Length and Transfer-Encoding: give one "
                "of them (RFC 9112 §6.1)")
HANDSHAKE_WITH_BODY = "a WebSocket handshake carries no body (RFC 6455 §4.1)"
MAX_HEADERS = 16 * 1024
"""A request's headers at most, in bytes: h11's bound on a head that comes in pieces
(hypercorn's ``h11_max_incomplete_size``), which one that comes whole passes. (A long
query is bounded by what the endpoint reads of it: values past a subscription's, 413.)"""


def install() -> None:
    from hypercorn.events import Closed
    from hypercorn.protocol.h11 import H11Protocol

    send_error = getattr(H11Protocol, "_send_error_response", None)
    create_stream = getattr(H11Protocol, "_create_stream", None)

    async def send_error_response(self: Any, status_code: int) -> None:
        """HTTP/1.1 without ``Host``, two ``Host`` headers, a malformed line or chunk,
        headers past h11's bound (431): hypercorn's empty answer, with h11's reason.

        Called as hypercorn handles h11's RemoteProtocolError (the reason is its text),
        and only while no answer was begun (h11's state is checked first); its bytes
        are made before anything awaits. An app reading the body still (a malformed
        chunk) cannot have begun one either, and one it begins later is refused by h11
        (their side is in error) and dropped, as after hypercorn's own answer; the app
        then sees the client leave."""
        reason = sys.exc_info()[1]
        code = {431: TooLarge.code, 501: NOT_IMPLEMENTED}.get(status_code, BadRequest.code)
        await _answer(self, status_code, code,
                      f"the request cannot be read as HTTP/1.1: {reason or 'malformed'}")

    async def refusing_create_stream(self: Any, request: h11.Request) -> None:
        """Headers over ``MAX_HEADERS`` (431), and a request framed by both
        ``Content-Length`` and ``Transfer-Encoding``: h11
        reads its body by the second, a proxy in front may have read it by the first,
        and what one takes for the rest of the body the other takes for a request of
        its own (request smuggling). RFC 9112 §6.1 lets a server refuse it: refused
        here, before the app has it, and the connection closed; h11 would have read
        on. (Refused by the app, the answer would race h11 reading what follows it.)
        With no stream made, hypercorn's loop stops at the body's first event."""
        headers = dict(request.headers)  # (h11 gives the names in lower case)
        if b"content-length" in headers and b"transfer-encoding" in headers:
            await _answer(self, 400, BadRequest.code, TWO_FRAMINGS)
            await self.send(Closed())
            return
        if headers.get(b"upgrade", b"").strip().lower() == b"websocket" and (
                headers.get(b"content-length", b"0").strip() != b"0"
                or b"transfer-encoding" in headers):
            # hypercorn answers the body itself (400) while the app holds the handshake,
            # and with a valid token the connection then stayed open for good.
            await _answer(self, 400, BadRequest.code, HANDSHAKE_WITH_BODY)
            await self.send(Closed())
            return
        if sum(len(name) + len(value) + 4 for name, value in request.headers) > MAX_HEADERS:
            await _answer(self, 431, TooLarge.code,
                          f"the request's headers are over {MAX_HEADERS // 1024} KiB")
            await self.send(Closed())
            return
        await create_stream(self, request)  # type: ignore[misc]

    replacements: list[tuple[Any, str, Any, Any]] = [
        (H11Protocol, "_send_error_response", send_error, send_error_response),
        (H11Protocol, "_create_stream", create_stream, refusing_create_stream),
        _one_connection_at_a_time()]
    for owner, name, original, replacement in replacements:
        if original is not None and not getattr(original, "engram", False):
            replacement.engram = True
            setattr(owner, name, replacement)


def _one_connection_at_a_time() -> tuple[Any, str, Any, Any]:
    """A connection whose handling fails ends alone, logged; in hypercorn the error ended
    its whole server. (A WebSocket handshake followed by bytes before it was accepted,
    a body or a request behind it: hypercorn's own 400 and the app's 401 collided, h11
    refused the second answer, or the two were written at once.)"""
    from hypercorn.trio.tcp_server import TCPServer

    run = getattr(TCPServer, "run", None)

    async def run_alone(self: Any) -> None:
        try:
            await run(self)  # type: ignore[misc]
        except Exception as exc:  # (its connection is closed by then: run's own finally)
            while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            log.warning("a connection ended in an error inside hypercorn, closed (the "
                        "gateway serves on): %s: %s", type(exc).__name__, exc)

    return TCPServer, "run", run, run_alone


async def _answer(protocol: Any, status: int, code: str, message: str) -> None:
    """*message* as the JSON error of *status* on *protocol*'s connection, which closes."""
    from hypercorn.events import RawData

    body = _json_encoder.encode({"error": {"code": code, "message": message}})
    try:
        data = b"".join(protocol.connection.send(event) or b"" for event in (
            h11.Response(status_code=status, headers=[
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
                *protocol.config.response_headers("h11")]),
            h11.Data(data=body), h11.EndOfMessage()))
    except h11.LocalProtocolError:
        return  # (no answer can be written on this connection any more)
    await protocol.send(RawData(data=data))
