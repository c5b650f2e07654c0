"""The live stream over HTTP: Server-Sent Events (``/stream-sse``) and WebSocket (``/stream``).

Both take ``engram watch``'s filters as query parameters (``context``, ``kind``,
``agent``, ``type``, ``meta=KEY=VALUE``, each repeatable; ``after=SEQ``;
``heartbeat=SECONDS``) and follow the daemon across its restarts, resuming after
the last event sent, so a restart loses and repeats nothing. Each stream is a
subscription on one of the gateway's shared daemon connections, held to a window
(:mod:`.link`): a slow reader is served from the stored log at its own pace and
holds up nobody else. A client that takes nothing for ``--stream-stall`` seconds
is let go (it resumes with ``Last-Event-ID`` or its cursor).

* SSE: each event's ``id`` is its seq; a client that reconnects with
  ``Last-Event-ID`` resumes after it. Heartbeats are ``heartbeat`` events, sent
  while the stream waits for the daemon too; ``error`` comes before an end.
* WebSocket: ``cursor=NAME`` resumes after that cursor's last acknowledgement;
  the client acknowledges with ``{"ack": SEQ}``. Each event is one text message,
  the ``watch --json`` form; heartbeats are ``{"kind": "heartbeat", …}``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import trio
from starlette.requests import Request
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from engram_cli.client import requests
from engram_cli.client.errors import ClientTimeout
from engram_cli.doors.gateway import query
from engram_cli.doors.gateway.auth import Credentials
from engram_cli.doors.gateway.link import WINDOW, StreamsFull, Subscription
from engram_cli.doors.gateway.policy import UNAUTHENTICATED
from engram_cli.doors.gateway.query import SseQuery, StreamQuery, WebSocketQuery
from engram_cli.doors.gateway.replies import error_response
from engram_cli.doors.gateway.state import Gateway
from engram_cli.formats.jsonforms import event_json
from engramd.protocol import (
    AckCursor,
    BadRequest,
    Ended,
    EngramError,
    ErrorCode,
    Event,
    EventPush,
    Heartbeat,
    Lagged,
    Unavailable,
    error_for,
)

log = logging.getLogger("engram.gateway")

DEFAULT_HEARTBEAT = 15.0
STREAM_STALL = 60.0
"""Seconds a stream's client may take nothing before it is let go (``--stream-stall``)."""
RETRY = 0.5
"""Seconds between attempts to subscribe again while the daemon is away."""
RETRY_MS = 2000
"""What an SSE stream tells the browser to wait before reconnecting (``retry:``)."""
SSE_BATCH = WINDOW
"""Events at most in one write to the HTTP client."""
POLICY_VIOLATION = 1008
"""WebSocket close code: the stream's credentials no longer hold."""
INTERNAL_ERROR = 1011
"""WebSocket close code: another error ended the stream."""
_encoder = msgspec.json.Encoder()

def stream_options(q: StreamQuery) -> dict[str, Any]:
    """The subscription a stream request asks for, from its query string."""
    return {"contexts": list(q.context), "kinds": list(q.kind), "agents": q.agent,
            "types": list(q.type), "meta": q.meta, "after": q.after,
            "heartbeat": q.heartbeat}


def item_json(item: Event | Heartbeat, *, away: bool = False) -> dict[str, Any]:
    """An item as a stream sends it; a heartbeat says whether the stream follows the
    daemon now (``daemon``: ``up``), or waits for it to come back (``away``)."""
    if isinstance(item, Heartbeat):
        return {"kind": "heartbeat", "head_seq": item.head_seq, "cursor": item.cursor,
                "daemon": "away" if away else "up"}
    return event_json(item)


def item_kind(event: Event) -> str:
    return str(event.__struct_config__.tag)


class Following:
    """One stream's place in the journal, and the subscription that feeds it from
    there; a new subscription after a lost connection, a daemon restart or a lag
    notice, from after the last event taken, never before."""

    def __init__(self, gw: Gateway, credentials: Credentials, options: dict[str, Any],
                 cursor: str | None = None) -> None:
        self.gw = gw
        self.credentials = credentials
        self.after: int | None = options.pop("after", None)
        self.heartbeat = float(options["heartbeat"]) or DEFAULT_HEARTBEAT
        self.filters = options
        self.name = cursor
        self.head_seq = 0
        self._started = False
        self._current: Subscription | None = None
        self._ungranted = 0

    async def _subscribe(self) -> None:
        options = {**self.filters, "after": self.after}
        if not self._started:
            options["cursor"] = self.name
        subscription = await self.gw.link.subscribe(
            self.credentials, requests.subscribe(**options))
        reply = subscription.reply
        if not self._started and self.after is not None and self.after > reply.head_seq:
            # The stream would wait, silently, for the events up to it and never send
            # them: refused, as an acknowledgement beyond the newest event is. Told by
            # the daemon's head as it subscribed, so no event can slip in between.
            self.gw.link.forget(subscription)
            raise BadRequest(f"seq {self.after} (after, Last-Event-ID) is beyond the "
                             f"newest event, {reply.head_seq}: give the seq of an event "
                             "the stream sent, or leave it out to start from now")
        self.after, self.head_seq = reply.after, max(self.head_seq, reply.head_seq)
        self.gw.link.saw_head(reply.head_seq)
        self._started = True
        self._current, self._ungranted = subscription, 0

    async def start(self) -> bool:
        """Subscribe once: an error the daemon gives is raised, and so is
        :class:`StreamsFull` (503: no place for one more); False while the daemon is
        away (:meth:`take` keeps trying)."""
        try:
            await self._subscribe()
        except StreamsFull:
            raise
        except (Unavailable, ClientTimeout):
            if self.after is None:
                # "From now" is the moment the stream is answered: after the newest head
                # the gateway saw (at or before now), else from the start of the log.
                self.after = self.gw.link.head_seq or 0
            return False
        return True

    async def take(self, limit: int) -> list[Event | Heartbeat]:
        """Wait for what comes next, and take up to *limit* of it; cancel at will (what
        was not returned stays). Raises the error that ends the stream."""
        while True:
            if self._current is None:
                try:
                    await self._subscribe()
                except (Unavailable, ClientTimeout):
                    await trio.sleep(RETRY)
                continue
            subscription = self._current
            feed = subscription.feed
            if self._ungranted >= WINDOW // 2 and feed.lost is None and not feed.overflowed:
                await self.gw.link.grant(subscription, self._ungranted)
                self._ungranted = 0
            await feed.wait()
            taken: list[Event | Heartbeat] = []
            while feed.pushes and len(taken) < limit:
                push = feed.take()
                self._ungranted += 1
                if isinstance(push, EventPush):
                    self.after = push.event.seq
                    self.head_seq = max(self.head_seq, push.event.seq)
                    self.gw.link.saw_head(push.event.seq)
                    taken.append(push.event)
                elif isinstance(push, Heartbeat):
                    self.after = max(self.after or 0, push.cursor)
                    self.head_seq = max(self.head_seq, push.head_seq)
                    self.gw.link.saw_head(push.head_seq)
                    taken.append(push)
                elif isinstance(push, Lagged):
                    self.after = push.cursor
                    self._drop()
                    break
                elif isinstance(push, Ended):
                    self._drop()
                    raise error_for(push.code, push.message)
            if self._current is not None and not feed.pushes \
                    and (feed.lost is not None or feed.overflowed):
                # Lost, or past its byte budget: follow again after the last event taken.
                self._drop()
            if taken:
                return taken

    @property
    def away(self) -> bool:
        """Whether the stream waits for the daemon (no subscription now)."""
        return self._current is None

    def heartbeat_now(self) -> Heartbeat:
        """The gateway's own heartbeat, while nothing came (the daemon away, or slow)."""
        return Heartbeat(subscription=0, head_seq=self.head_seq, cursor=self.after or 0)

    async def acknowledge(self, seq: int) -> None:
        assert self.name is not None
        await self.gw.link.call(self.credentials, AckCursor(cursor=self.name, seq=seq))

    def _drop(self) -> None:
        if self._current is not None:
            self.gw.link.forget(self._current)
            self._current = None

    def close(self) -> None:
        self._drop()


@contextlib.asynccontextmanager
async def _open(gw: Gateway, following: Following) -> Any:
    """Count the stream while open; end its subscription after."""
    gw.tally.streams_open += 1
    try:
        yield following
    finally:
        gw.tally.streams_open -= 1
        following.close()


def deadline_of(credentials: Credentials) -> float:
    """When a stream of *credentials* must end (a JWT's ``exp``), on trio's clock."""
    if credentials.expires is None:
        return math.inf
    return trio.current_time() + max(0.0, credentials.expires - time.time())


class _Stalled(Exception):
    """The client took nothing for ``--stream-stall`` seconds."""


def _sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {_encoder.encode(data).decode()}\n\n".encode()


def _error_event(exc: EngramError) -> bytes:
    return _sse("error", {"code": exc.code, "message": str(exc)})


class _ServerSentEvents:
    """An SSE response written by hand (ASGI): its writes wait for the client, each
    bounded by ``--stream-stall``; an error before anything is sent is its status."""

    def __init__(self, gw: Gateway, credentials: Credentials, options: dict[str, Any],
                 names: Callable[[Event], str]) -> None:
        self.following = Following(gw, credentials, options)
        self.gw = gw
        self.names = names
        self.deadline = deadline_of(credentials)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with contextlib.ExitStack() as share:
            try:
                share.enter_context(self.gw.streams.hold(self.following.credentials))
                await self.following.start()
            except EngramError as exc:
                await error_response(exc)(scope, receive, send)
                return
            await self._serve(receive, send)

    async def _serve(self, receive: Any, send: Any) -> None:
        async with _open(self.gw, self.following):
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_disconnect, receive, nursery.cancel_scope)
                nursery.start_soon(_end_on, self.gw.stopping, nursery.cancel_scope)
                await self._pump(send)
                nursery.cancel_scope.cancel()
        with trio.move_on_after(1.0), contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Any) -> None:
        async def write(data: bytes) -> None:
            with trio.move_on_after(self.gw.stream_stall) as stalled:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            if stalled.cancelled_caught:
                raise _Stalled

        following = self.following
        try:
            await write(f"retry: {RETRY_MS}\n\n".encode())
            while True:
                with trio.move_on_at(self.deadline) as expired:
                    with trio.move_on_after(following.heartbeat) as idle:
                        items = await following.take(SSE_BATCH)
                if expired.cancelled_caught:
                    await write(_error_event(error_for(
                        "unauthenticated", "the token has expired")))
                    return
                if idle.cancelled_caught:
                    items = [following.heartbeat_now()]
                await write(b"".join(
                    _sse("heartbeat", item_json(item, away=following.away))
                    if isinstance(item, Heartbeat)
                    else _sse(self.names(item), item_json(item), item.seq)
                    for item in items))
        except EngramError as exc:
            with trio.move_on_after(1.0), contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": _error_event(exc),
                            "more_body": True})
        except _Stalled:
            log.info("an SSE client took nothing for %gs; let go (it resumes with "
                     "Last-Event-ID)", self.gw.stream_stall)
        except OSError as exc:  # the client left as we wrote
            log.debug("an SSE client left: %s", exc)


async def _until_disconnect(receive: Any, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _end_on(stopping: trio.Event, scope: trio.CancelScope) -> None:
    """End a stream when the gateway stops: its client resumes elsewhere or later."""
    await stopping.wait()
    scope.cancel()


def _default_names(event: Event) -> str:
    return item_kind(event)


SEED_EVENT_NAMES = {"unit.created": "workunit", "context.created": "context",
                    "context.updated": "context", "lock.acquired": "lock",
                    "lock.renewed": "lock", "lock.released": "lock", "lock.expired": "lock"}
"""``events=seed``: the event names of Engram v3's SSE stream."""


def _seed_names(event: Event) -> str:
    kind = item_kind(event)
    return SEED_EVENT_NAMES.get(kind, kind)


def sse_endpoint(gw: Gateway) -> Callable[[Request], Awaitable[Any]]:
    async def endpoint(request: Request) -> Any:
        try:
            credentials = gw.stream_credentials(request)
            query.known(request, query.parameters(SseQuery))
            q = query.read(request, SseQuery)
            options = stream_options(q)
            last = request.headers.get("last-event-id")
            if last:
                if not last.isdigit() or len(last) > 19:
                    raise BadRequest(f"Last-Event-ID must be a seq, not {last!r:.40}")
                options["after"] = int(last)
            style = q.events
        except EngramError as exc:
            return error_response(exc)
        return _ServerSentEvents(gw, credentials, options,
                                 _seed_names if style == "seed" else _default_names)

    return endpoint


def websocket_endpoint(gw: Gateway) -> Callable[[WebSocket], Awaitable[None]]:
    async def endpoint(websocket: WebSocket) -> None:
        try:
            credentials = gw.stream_credentials(websocket)
            query.known(websocket, query.parameters(WebSocketQuery))
            q = query.read(websocket, WebSocketQuery)
            following = Following(gw, credentials, stream_options(q), q.cursor)
        except EngramError as exc:
            await _refuse(websocket, exc)
            return
        with contextlib.ExitStack() as share:
            try:
                share.enter_context(gw.streams.hold(credentials))
                await following.start()
            except EngramError as exc:
                await _refuse(websocket, exc)
                return
            await _follow(websocket, following, gw)

    return endpoint


async def _follow(websocket: WebSocket, following: Following, gw: Gateway) -> None:
    async with _open(gw, following):
        await websocket.accept()
        with trio.move_on_at(deadline_of(following.credentials)) as expired:
            await _converse(websocket, following, gw)
        if expired.cancelled_caught:
            with contextlib.suppress(Exception):
                await websocket.send_json({"kind": "error", "code": "unauthenticated",
                                           "message": "the token has expired"})
                await websocket.close(code=POLICY_VIOLATION,
                                      reason="the token has expired")


async def _refuse(websocket: WebSocket, exc: EngramError) -> None:
    """Before the handshake: an HTTP error response; after it: close with the reason."""
    if websocket.client_state is WebSocketState.CONNECTING:
        try:
            await websocket.send_denial_response(error_response(exc))
        except RuntimeError:  # a server without the denial extension: a bare 403
            await websocket.close(code=1008)
    elif websocket.client_state is WebSocketState.CONNECTED:
        await websocket.close(code=close_code(exc), reason=f"{exc.code}: {exc}"[:120])


def close_code(exc: EngramError) -> int:
    """The WebSocket close code for an error that ends a stream: 1008 (policy violation)
    when its credentials no longer hold (a JWT's exp, a revoked token), else 1011."""
    if exc.code in (UNAUTHENTICATED, ErrorCode.FORBIDDEN):
        return POLICY_VIOLATION
    return INTERNAL_ERROR


def _acknowledged(received: Mapping[str, Any], cursor: str | None) -> int:
    """The seq a client message (an ASGI ``websocket.receive``) acknowledges; BadRequest
    for anything else, a binary message included."""
    text = received.get("text")
    if text is None:
        raise BadRequest('the stream reads text messages only: send {"ack": SEQ} as text, '
                         'not binary')
    try:
        message = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        message = None
    seq = message.get("ack") if isinstance(message, dict) else None
    if cursor is None or not isinstance(seq, int) or isinstance(seq, bool) \
            or not 0 <= seq < 2**63:
        raise BadRequest('send {"ack": SEQ} on a stream opened with cursor=NAME')
    return seq


async def _converse(websocket: WebSocket, following: Following, gw: Gateway) -> None:
    """Send events while reading the client's acknowledgements, until either side ends
    or the gateway stops (close code 1001, going away)."""
    async with trio.open_nursery() as nursery:
        async def going_away() -> None:
            await gw.stopping.wait()
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await websocket.close(code=1001, reason="the gateway is stopping")

        async def acknowledgements() -> None:
            # Each client message is answered alone: one it cannot read (not JSON, not
            # an ack, binary) gets an error message and the stream goes on.
            try:
                while (received := await websocket.receive())["type"] == "websocket.receive":
                    try:
                        await following.acknowledge(_acknowledged(received, following.name))
                    except EngramError as exc:
                        await websocket.send_json({"kind": "error", "code": exc.code,
                                                   "message": str(exc)})
            except (WebSocketDisconnect, RuntimeError):
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(going_away)
        nursery.start_soon(acknowledgements)
        try:
            while True:
                with trio.move_on_after(following.heartbeat) as idle:
                    items = await following.take(WINDOW)
                if idle.cancelled_caught:
                    items = [following.heartbeat_now()]
                for item in items:
                    with trio.move_on_after(gw.stream_stall) as stalled:
                        await websocket.send_text(_encoder.encode(
                            item_json(item, away=following.away)).decode())
                    if stalled.cancelled_caught:
                        log.info("a WebSocket client took nothing for %gs; let go",
                                 gw.stream_stall)
                        nursery.cancel_scope.cancel()
                        return
        except (WebSocketDisconnect, OSError):
            pass
        except EngramError as exc:
            with contextlib.suppress(Exception):
                await websocket.send_json({"kind": "error", "code": exc.code,
                                           "message": str(exc)})
                await websocket.close(code=close_code(exc), reason=f"{exc.code}: {exc}"[:120])
        nursery.cancel_scope.cancel()
