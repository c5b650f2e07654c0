"""The live stream over HTTP: Server-Sent Events (``/stream-sse``) and WebSocket (``/stream``).

Both take ``engram watch``'s filters as query parameters (``context``, ``kind``,
``agent``, ``type``, ``meta=KEY=VALUE``, each repeatable; ``after=SEQ``;
``heartbeat=SECONDS``) and follow the daemon across its restarts, resuming after
the last event sent, so a restart loses and repeats nothing. Each stream has a
daemon connection of its own: a slow reader holds up only that connection, and
the daemon's rule for slow subscribers applies to it, never to the writers.

* SSE: each event's ``id`` is its seq; a client that reconnects with
  ``Last-Event-ID`` resumes after it. Heartbeats are ``heartbeat`` events.
* WebSocket: ``cursor=NAME`` resumes after that cursor's last acknowledgement;
  the client acknowledges with ``{"ack": SEQ}``. Each event is one text message,
  the ``watch --json`` form; heartbeats are ``{"kind": "heartbeat", …}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import trio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import HTTPConnection, Request
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from engram_cli.client.asynchronous import AsyncClient
from engram_cli.doors.gateway import query
from engram_cli.doors.gateway.auth import Credentials
from engram_cli.doors.gateway.replies import error_response
from engram_cli.doors.gateway.state import Gateway
from engram_cli.formats.jsonforms import event_json
from engramd.protocol import BadRequest, EngramError, Event, Heartbeat

DEFAULT_HEARTBEAT = 15.0
_encoder = msgspec.json.Encoder()


def stream_options(request: HTTPConnection) -> dict[str, Any]:
    """The subscription a stream request asks for, from its query string."""
    return {"contexts": query.names(request, "context"), "kinds": query.names(request, "kind"),
            "agents": query.names(request, "agent"), "types": query.names(request, "type"),
            "meta": query.pairs(request, "meta"), "after": query.integer(request, "after"),
            "heartbeat": query.seconds(request, "heartbeat", DEFAULT_HEARTBEAT)}


def item_json(item: Event | Heartbeat) -> dict[str, Any]:
    if isinstance(item, Heartbeat):
        return {"kind": "heartbeat", "head_seq": item.head_seq, "cursor": item.cursor}
    return event_json(item)


@contextlib.asynccontextmanager
async def following(gw: Gateway, credentials: Credentials, options: dict[str, Any]
                    ) -> AsyncIterator[tuple[AsyncClient, AsyncIterator[Event | Heartbeat]]]:
    """A connection of the stream's own and its events from where *options* say,
    across daemon restarts; counted as an open stream while in use.

    Subscribes once up front, so a bad filter or an unreachable daemon raises here,
    before anything is sent to the HTTP client; then follows from where that
    subscription started.
    """
    async with gw.link.own(credentials) as client:
        first = await client.subscribe(**options)
        start = first.cursor
        await first.aclose()
        gw.tally.streams_open += 1
        try:
            # From that start on, not from the name again: it may have moved since.
            yield client, client.watch(reconnect=True,
                                       **{**options, "after": start, "cursor": None})
        finally:
            gw.tally.streams_open -= 1


SSE_QUEUE = 1024
"""Encoded events a stream holds for its HTTP client before it stops reading from the
daemon (which then applies its rule for slow subscribers)."""
SSE_BATCH = 256
"""Events at most in one write to the HTTP client."""


class _ServerSentEvents:
    """An SSE response that opens its daemon connection in the task that serves it
    (trio's nurseries must be left by the task that entered them) and answers an
    error with its status while nothing has been sent yet.

    Events are encoded as they arrive and written in batches: what queued up while
    the last write was on its way goes out in one write, so a stream that falls
    behind a burst catches up instead of paying a write per event.
    """

    def __init__(self, gw: Gateway, credentials: Credentials, options: dict[str, Any]
                 ) -> None:
        self.gw = gw
        self.credentials = credentials
        self.options = options

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with following(self.gw, self.credentials, self.options) as (_, items):
                sender, receiver = trio.open_memory_channel[bytes](SSE_QUEUE)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_encode_events, items, sender)
                    nursery.start_soon(_end_on, self.gw.stopping, nursery.cancel_scope)
                    await EventSourceResponse(_batches(receiver), ping=None,
                                              send_timeout=None)(scope, receive, send)
                    nursery.cancel_scope.cancel()
        except EngramError as exc:
            await error_response(exc)(scope, receive, send)


async def _end_on(stopping: trio.Event, scope: trio.CancelScope) -> None:
    """End a stream when the gateway stops: its client resumes elsewhere or later."""
    await stopping.wait()
    scope.cancel()


def _frame(item: Event | Heartbeat) -> bytes:
    data = _encoder.encode(item_json(item)).decode()
    if isinstance(item, Heartbeat):
        return ServerSentEvent(event="heartbeat", data=data).encode()
    return ServerSentEvent(id=str(item.seq), event=item_kind(item), data=data).encode()


async def _encode_events(items: AsyncIterator[Event | Heartbeat],
                         sender: trio.MemorySendChannel[bytes]) -> None:
    async with sender:
        try:
            async for item in items:
                await sender.send(_frame(item))
        except EngramError as exc:
            await sender.send(ServerSentEvent(event="error", data=_encoder.encode(
                {"code": exc.code, "message": str(exc)}).decode()).encode())


async def _batches(receiver: trio.MemoryReceiveChannel[bytes]) -> AsyncIterator[bytes]:
    async with receiver:
        async for first in receiver:
            batch = [first]
            while len(batch) < SSE_BATCH:
                try:
                    batch.append(receiver.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            yield b"".join(batch)


def item_kind(event: Event) -> str:
    return str(event.__struct_config__.tag)


def sse_endpoint(gw: Gateway) -> Callable[[Request], Awaitable[Any]]:
    async def endpoint(request: Request) -> Any:
        try:
            credentials = gw.credentials(request)
            options = stream_options(request)
            last = request.headers.get("last-event-id")
            if last:
                if not last.isdigit():
                    raise BadRequest(f"Last-Event-ID must be a seq, not {last!r:.40}")
                options["after"] = int(last)
        except EngramError as exc:
            return error_response(exc)
        return _ServerSentEvents(gw, credentials, options)

    return endpoint


def websocket_endpoint(gw: Gateway) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(websocket: WebSocket) -> None:
        try:
            credentials = gw.credentials(websocket)
            options = stream_options(websocket)
            options["cursor"] = websocket.query_params.get("cursor") or None
        except EngramError as exc:
            await _refuse(websocket, exc)
            return
        try:
            async with following(gw, credentials, options) as (client, items):
                await websocket.accept()
                await _converse(websocket, client, items, options["cursor"], gw.stopping)
        except EngramError as exc:
            await _refuse(websocket, exc)

    return endpoint


async def _refuse(websocket: WebSocket, exc: EngramError) -> None:
    """Before the handshake: an HTTP error response; after it: close with the reason."""
    if websocket.client_state is WebSocketState.CONNECTING:
        try:
            await websocket.send_denial_response(error_response(exc))
        except RuntimeError:  # a server without the denial extension: a bare 403
            await websocket.close(code=1008)
    elif websocket.client_state is WebSocketState.CONNECTED:
        await websocket.close(code=1011, reason=f"{exc.code}: {exc}"[:120])


def _acknowledged(text: str, cursor: str | None) -> int:
    """The seq a client message acknowledges; BadRequest for anything else."""
    try:
        message = msgspec.json.decode(text)
    except msgspec.DecodeError:
        message = None
    seq = message.get("ack") if isinstance(message, dict) else None
    if cursor is None or not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise BadRequest('send {"ack": SEQ} on a stream opened with cursor=NAME')
    return seq


async def _converse(websocket: WebSocket, client: AsyncClient,
                    items: AsyncIterator[Event | Heartbeat], cursor: str | None,
                    stopping: trio.Event) -> None:
    """Send events while reading the client's acknowledgements, until either side ends
    or the gateway stops (close code 1001, going away)."""
    async with trio.open_nursery() as nursery:
        async def going_away() -> None:
            await stopping.wait()
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await websocket.close(code=1001, reason="the gateway is stopping")

        nursery.start_soon(going_away)
        async def acknowledgements() -> None:
            try:
                while True:
                    text = await websocket.receive_text()
                    try:
                        seq = _acknowledged(text, cursor)
                        await client.ack_cursor(cursor or "", seq)
                    except EngramError as exc:
                        await websocket.send_json({"kind": "error", "code": exc.code,
                                                   "message": str(exc)})
            except WebSocketDisconnect:
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(acknowledgements)
        try:
            async for item in items:
                await websocket.send_text(_encoder.encode(item_json(item)).decode())
        except WebSocketDisconnect:
            pass
        except EngramError as exc:
            await websocket.close(code=1011, reason=f"{exc.code}: {exc}"[:120])
        nursery.cancel_scope.cancel()

