"""The trio client library, for agents written with trio.

One connection, shared by any number of tasks: requests are pipelined and a
reader task hands each reply to the task waiting for it::

    from engram_cli.aclient import open_client

    async with open_client() as engram:
        pong = await engram.ping()

Same socket rules, auto-start and errors as :class:`engram_cli.client.Client`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import trio

from engram_cli import requests
from engram_cli.autostart import start_daemon
from engram_cli.errors import (
    EngramError,
    NotFound,
    ReplyT,
    Unavailable,
    error_from_reply,
    reply_as,
)
from engram_cli.requests import Payload
from engram_cli.settings import autostart_enabled, default_agent_id, default_token, find_socket
from engram_cli.stream import Position, Push
from engramd.protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    AckCursor,
    ClientConnection,
    ClientMessage,
    Context,
    ContextFound,
    ContextPage,
    DaemonStatus,
    Done,
    ErrorReply,
    Event,
    EventPush,
    GetContext,
    GetStatus,
    GetUnits,
    Heartbeat,
    Lagged,
    Ping,
    Pong,
    ProtocolError,
    RelatedFound,
    ServerMessage,
    Shutdown,
    ShuttingDown,
    SocketPathTooLong,
    Subscribe,
    Subscribed,
    Unit,
    UnitDraft,
    UnitPage,
    UnitsCreated,
    UnitsFound,
    Unsubscribe,
    Welcome,
)

_RECEIVE_SIZE = 256 * 1024


class _Waiter:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: ServerMessage | None = None


class AsyncClient:
    """A connection to engramd used from trio; make one with :func:`open_client`."""

    def __init__(self, stream: trio.SocketStream, protocol: ClientConnection) -> None:
        self._stream = stream
        self._protocol = protocol
        self._send_lock = trio.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._pushes: dict[int, trio.MemorySendChannel[Push]] = {}
        self._broken: EngramError | None = None

    @property
    def welcome(self) -> Welcome | None:
        return self._protocol.welcome

    async def _read_replies(self) -> None:
        """Hand each reply to its waiter until the stream ends."""
        try:
            while True:
                event = self._protocol.next_event()
                if event is NEED_DATA:
                    self._protocol.receive_data(await self._stream.receive_some(_RECEIVE_SIZE))
                    continue
                if event is CLOSED:
                    self._fail(Unavailable("engramd closed the connection"))
                    return
                assert isinstance(event, ServerMessage)
                if isinstance(event, EventPush | Heartbeat | Lagged):
                    channel = self._pushes.get(event.subscription)
                    if channel is not None:
                        # A slow consumer holds up this connection, not the daemon.
                        await channel.send(event)
                    continue
                message_id = getattr(event, "id", None)
                if message_id is None and isinstance(event, ErrorReply):
                    self._fail(error_from_reply(event))
                    return
                waiter = self._waiters.pop(message_id, None) if message_id is not None else None
                if waiter is not None:
                    waiter.reply = event
                    waiter.event.set()
        except ProtocolError as exc:
            self._fail(Unavailable(f"protocol error: {exc}"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._fail(Unavailable("lost the connection to engramd"))

    def _fail(self, error: EngramError) -> None:
        self._broken = error
        for waiter in self._waiters.values():
            waiter.event.set()
        self._waiters.clear()
        for channel in self._pushes.values():
            channel.close()
        self._pushes.clear()

    async def request(self, request: ClientMessage, expect: type[ReplyT]) -> ReplyT:
        """Send *request* and wait for its reply; raise if it is an error."""
        if self._broken is not None:
            raise self._broken
        waiter = _Waiter()
        self._waiters[request.id] = waiter
        try:
            async with self._send_lock:
                await self._stream.send_all(self._protocol.send(request))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._waiters.pop(request.id, None)
            raise Unavailable("lost the connection to engramd") from None
        await waiter.event.wait()
        reply = waiter.reply
        if reply is None:
            assert self._broken is not None
            raise self._broken
        return reply_as(reply, request, expect)

    def _next_id(self) -> int:
        return self._protocol.allocate_id()

    async def ping(self) -> Pong:
        return await self.request(Ping(id=self._next_id()), Pong)

    async def status(self) -> DaemonStatus:
        return await self.request(GetStatus(id=self._next_id()), DaemonStatus)

    async def shutdown(self) -> ShuttingDown:
        return await self.request(Shutdown(id=self._next_id()), ShuttingDown)

    async def subscribe(self, **options: Any) -> AsyncSubscription:
        """Start a subscription: an async iterator of events and heartbeats."""
        request = requests.subscribe(self._next_id(), **options)
        send, receive = trio.open_memory_channel[Push](PUSH_BUFFER)
        self._pushes[request.id] = send  # pushes may follow the reply at once
        try:
            reply = await self.request(request, Subscribed)
        except BaseException:
            self._pushes.pop(request.id, None)
            raise
        return AsyncSubscription(self, request, reply, receive)

    async def unsubscribe(self, subscription: int) -> None:
        await self.request(Unsubscribe(id=self._next_id(), subscription=subscription), Done)
        channel = self._pushes.pop(subscription, None)
        if channel is not None:
            channel.close()

    async def ack_cursor(self, name: str, seq: int) -> None:
        await self.request(AckCursor(id=self._next_id(), cursor=name, seq=seq), Done)

    # -- journal --------------------------------------------------------------

    async def create_unit(self, context_id: str, type: str = "MESSAGE", payload: Payload = b"",
                    **options: Any) -> Unit:
        """Write one unit; see :func:`engram_cli.requests.draft` for the options."""
        created = await self.create_units([requests.draft(context_id, type, payload, **options)])
        return created.units[0]

    async def create_units(self, drafts: Iterable[UnitDraft]) -> UnitsCreated:
        """Write units all or nothing, with one fsync."""
        return await self.request(requests.create_units(self._next_id(), drafts), UnitsCreated)

    async def get_units(self, unit_ids: Iterable[str]) -> UnitsFound:
        return await self.request(GetUnits(id=self._next_id(), ids=list(unit_ids)), UnitsFound)

    async def get_unit(self, unit_id: str) -> Unit:
        """One unit; raises :class:`~engram_cli.errors.NotFound` when it does not exist."""
        found = await self.get_units([unit_id])
        if not found.units:
            raise NotFound(f"no unit {unit_id}")
        return found.units[0]

    async def list_units(self, context_id: str, **options: Any) -> UnitPage:
        """A context's units; see :func:`engram_cli.requests.list_units` for the options."""
        return await self.request(
            requests.list_units(self._next_id(), context_id, **options), UnitPage)

    async def related_units(self, unit_id: str, **options: Any) -> RelatedFound:
        return await self.request(requests.related_units(self._next_id(), unit_id, **options),
                            RelatedFound)

    async def create_context(self, context_id: str | None = None, **options: Any) -> Context:
        found = await self.request(
            requests.create_context(self._next_id(), context_id, **options), ContextFound)
        return found.context

    async def get_context(self, context_id: str) -> Context:
        found = await self.request(GetContext(id=self._next_id(), context_id=context_id),
                                   ContextFound)
        return found.context

    async def list_contexts(self, **options: Any) -> ContextPage:
        return await self.request(requests.list_contexts(self._next_id(), **options), ContextPage)

    async def update_context(self, context_id: str, **changes: Any) -> Context:
        """Rename, add or remove agents, pin or unpin units, set or unset meta."""
        found = await self.request(
            requests.update_context(self._next_id(), context_id, **changes), ContextFound)
        return found.context


PUSH_BUFFER = 4096


class AsyncSubscription(Position):
    """Events of one subscription, in order: ``async for event in subscription``."""

    def __init__(self, client: AsyncClient, request: Subscribe, reply: Subscribed,
                 receive: trio.MemoryReceiveChannel[Push]) -> None:
        super().__init__(request, reply)
        self.client = client
        self._receive = receive

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> Event | Heartbeat:
        try:
            push = await self._receive.receive()
        except trio.EndOfChannel:
            if self.client._broken is not None:
                raise self.client._broken from None
            raise StopAsyncIteration from None
        return self.accept(push)

    async def ack(self) -> None:
        if self.request.cursor is None:
            raise ValueError("this subscription has no cursor name")
        await self.client.ack_cursor(self.request.cursor, self.cursor)

    async def aclose(self) -> None:
        await self.client.unsubscribe(self.id)


async def _connect(path: str) -> trio.SocketStream:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _handshake(stream: trio.SocketStream, protocol: ClientConnection) -> None:
    await stream.send_all(protocol.hello(PROTOCOL_VERSION))
    while True:
        event = protocol.next_event()
        if event is NEED_DATA:
            protocol.receive_data(await stream.receive_some(_RECEIVE_SIZE))
            continue
        if event is CLOSED:
            raise Unavailable("engramd closed the connection during the handshake")
        if isinstance(event, ErrorReply):
            raise error_from_reply(event)
        return


@contextlib.asynccontextmanager
async def open_client(
    socket_path: str | None = None,
    *,
    agent_id: str | None = None,
    client_name: str = "engram-trio",
    autostart: bool | None = None,
    connect_timeout: float = 10.0,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[AsyncClient]:
    """Connect to engramd (starting it if allowed) and yield an :class:`AsyncClient`.

    The connection and its reader task close when the block exits.
    """
    env = os.environ if env is None else env
    try:
        path = find_socket(socket_path, env)
    except SocketPathTooLong as exc:
        raise EngramError(str(exc)) from None
    allow_start = autostart_enabled(env) if autostart is None else autostart
    protocol = ClientConnection(
        client_name=client_name, agent_id=agent_id or default_agent_id(env),
        token=token or default_token(env),
    )
    with trio.fail_after(connect_timeout if connect_timeout else math.inf):
        try:
            stream = await _connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if not allow_start:
                raise Unavailable(
                    f"engramd is not running on {path} ({exc.strerror})"
                ) from None
            await trio.to_thread.run_sync(lambda: start_daemon(path, env=env))
            stream = await _connect(path)
    try:
        try:
            await _handshake(stream, protocol)
        except ProtocolError as exc:
            raise Unavailable(f"protocol error: {exc}") from None
        client = AsyncClient(stream, protocol)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read_replies)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
