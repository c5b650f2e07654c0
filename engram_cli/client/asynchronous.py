"""The trio client library, for agents written with trio.

One connection, shared by any number of tasks: requests are pipelined and a
reader task files what arrives in the protocol's sans-IO
:class:`~engramd.protocol.ClientConnection`, where each task finds its own
answer, push or notice. The operations are the blocking client's, from the same
definitions (:mod:`engram_cli.client.operations`), awaited here::

    from engram_cli import open_client

    async with open_client() as engram:
        pong = await engram.ping()

Same socket rules, auto-start and errors as :class:`engram_cli.client.blocking.Client`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import trio

from engram_cli.client import requests
from engram_cli.client.autostart import (
    START_TIMEOUT,
    gone_away,
    lost_while_starting,
    ready_polls,
    refused_after_start,
    start_daemon,
)
from engram_cli.client.errors import ClientTimeout, RateLimited, Unavailable
from engram_cli.client.operations import Call, Operations
from engram_cli.client.settings import Target
from engram_cli.client.stream import Follower, Position
from engramd.protocol import (
    PROTOCOL_VERSION,
    ClientConnection,
    ClientMessage,
    DaemonStatus,
    Event,
    GetStatus,
    Heartbeat,
    LeaseLost,
    Push,
    ServerMessage,
    Unsubscribe,
    Welcome,
    cuts_notice,
    reply_type,
    result,
)
from engramd.protocol.connection import State

_RECEIVE_SIZE = 256 * 1024
_PARTING_WAIT = 0.5
"""How long a failed send waits for the daemon's goodbye, as the blocking client does."""
PUSH_BUFFER = 4096
"""Pushes read ahead of their subscribers before the reader stops reading (back-pressure)."""

R = TypeVar("R", bound=ServerMessage)
T = TypeVar("T")


class _HungUp(Exception):
    """The daemon hung up during the handshake (of a daemon this client did not start)."""

    def __init__(self, lost: Unavailable) -> None:
        super().__init__(str(lost))
        self.lost = lost


class AsyncClient(Operations):
    """A connection to engramd used from trio; make one with :func:`open_client`."""

    def __init__(self, target: Target, nursery: trio.Nursery,
                 connect_timeout: float = 10.0) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self._nursery = nursery
        self._stream: trio.SocketStream | None = None
        self._protocol: ClientConnection | None = None
        self._reader = trio.CancelScope()
        self._send_lock = trio.Lock()
        self._connect_lock = trio.Lock()
        self._arrived = trio.Event()
        """Set (and replaced) whenever the reader has filed something, or stopped."""

    @property
    def connected(self) -> bool:
        return self._stream is not None

    @property
    def usable(self) -> bool:
        """Not yet connected, or connected with the conversation still going."""
        return self._protocol is None or self._protocol.ended is None

    # -- connection ---------------------------------------------------------

    async def connect(self) -> None:
        """Connect and shake hands (starting the daemon if allowed); idempotent, also
        for tasks that ask at once (the first connects, the others wait for it)."""
        async with self._connect_lock:
            try:
                started = await self._connect()
            except _HungUp as hung_up:
                # A daemon on its way out (killed, its last threads still holding the
                # socket) took the connection: once it has gone, start another.
                if not (self.target.autostart and await trio.to_thread.run_sync(
                        gone_away, self.socket_path)):
                    raise hung_up.lost from None
                started = await self._connect()
        if started:
            # Outside the lock: waiting for readiness makes calls, which connect.
            try:
                self._started_notice = cuts_notice((await self.wait_ready()).wal_cuts)
            except Unavailable as lost:
                raise lost_while_starting(self.socket_path, self.target.env, lost) from None

    async def _connect(self) -> bool:
        """Connect and shake hands; whether a daemon had to be started for it."""
        if self._stream is not None:
            return False
        started = False
        with trio.fail_after(self.connect_timeout or math.inf):
            try:
                stream = await trio.open_unix_socket(self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if not self.target.autostart:
                    raise self.target.unreachable(exc) from None
                started = await trio.to_thread.run_sync(
                    lambda: start_daemon(self.socket_path, env=self.target.env))
                try:
                    stream = await trio.open_unix_socket(self.socket_path)
                except (FileNotFoundError, ConnectionRefusedError) as exc:
                    # It answered once, then went: it stopped while it recovered.
                    raise lost_while_starting(self.socket_path, self.target.env,
                                              refused_after_start(self.socket_path, exc)
                                              ) from None
            protocol = self._conversation()
            self._stream, self._protocol = stream, protocol
            self._reader = trio.CancelScope()
            self._nursery.start_soon(self._read, protocol, stream, self._reader)
            try:
                await self._send(protocol, stream, protocol.hello(PROTOCOL_VERSION))
                result(await self._answer(protocol, protocol.hello_id), Welcome)
            except Unavailable as lost:
                await self.aclose()
                if started:
                    raise lost_while_starting(self.socket_path, self.target.env,
                                              lost) from None
                raise _HungUp(lost) from None
            except BaseException:
                await self.aclose()
                raise
        return started

    def _conversation(self) -> ClientConnection:
        """The sans-IO side of a new connection."""
        return self.target.conversation()

    async def aclose(self) -> None:
        """End the conversation: what waits on it gets Unavailable; the next call
        connects anew."""
        # Forget the conversation before the first checkpoint: a task that connects
        # while this one closes the socket makes a conversation of its own, which
        # this close never touches.
        stream, protocol, reader = self._stream, self._protocol, self._reader
        self._stream = self._protocol = None
        reader.cancel()
        if protocol is not None:
            protocol.fail(Unavailable("the connection to engramd was closed"))
        self._wake()
        if stream is not None:
            await trio.aclose_forcefully(stream)

    # The timeouts below mirror the blocking client's arguments (ASYNC109).
    async def wait_ready(self, timeout: float = START_TIMEOUT  # noqa: ASYNC109
                         ) -> DaemonStatus:
        """Wait (bounded) until the daemon has finished recovering its journal."""
        with trio.move_on_after(timeout):
            # The daemon's state is polled: it has no event to wait on.
            for pause in ready_polls():
                try:
                    status = await self.call(GetStatus())
                except RateLimited:
                    pass  # a daemon with a low request rate: the polls slow down
                else:
                    if status.state == "ready":
                        return status
                await trio.sleep(pause)
        raise Unavailable(f"engramd is still recovering after {timeout:g}s")

    # -- the request loop ---------------------------------------------------

    async def run(self, call: Call[T]) -> T:
        """Run one operation (see :mod:`engram_cli.client.operations`)."""
        return call.then(await self.call(call.request))

    async def call(self, request: ClientMessage[R]) -> R:
        """Send *request*, wait for its reply, and raise the error it reports."""
        await self.connect()
        return await self.call_on(self._ready(), request)

    async def call_on(self, protocol: ClientConnection, request: ClientMessage[R]) -> R:
        """:meth:`call` on the conversation *protocol*, never on another: a request
        that names what lives on one connection (a subscription) must not reach the
        next. Unavailable when that conversation is over, or not this client's now."""
        stream = self._stream
        if protocol is not self._protocol or stream is None \
                or protocol.state is not State.READY:
            raise protocol.ended or Unavailable("lost the connection to engramd")
        request = protocol.numbered(request)
        await self._send(protocol, stream, protocol.send(request))
        return result(await self._answer(protocol, request.id), reply_type(type(request)))

    async def next_push(self, subscription: int) -> Push | None:
        """The next push for *subscription*; None once it has been closed here."""
        while True:
            protocol = self._ready()
            if subscription not in protocol.subscriptions:
                return None
            push = protocol.push(subscription)
            if push is not None:
                return push
            await self._arrival()

    async def lease_lost(self, timeout: float | None  # noqa: ASYNC109
                         ) -> LeaseLost | None:
        """Wait up to *timeout* (None: for good) for the daemon to say a lease was lost."""
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            while (notice := self._ready().notice()) is None:
                await self._arrival()
        if scope.cancelled_caught:
            return None
        assert isinstance(notice, LeaseLost)  # the one kind of notice there is
        return notice

    def _ready(self) -> ClientConnection:
        if self._protocol is None:
            raise Unavailable("not connected to engramd")
        return self._protocol

    async def _send(self, protocol: ClientConnection, stream: trio.SocketStream,
                    data: bytes) -> None:
        """Send *data* on *stream*, the socket of *protocol*'s conversation; any failure
        is Unavailable (or what the daemon said as it hung up)."""
        try:
            async with self._send_lock:
                if protocol.ended is not None:  # over while this task waited its turn
                    raise trio.ClosedResourceError
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # A daemon that refuses a request (a frame over its limit) says why, then
            # hangs up: the reader files its goodbye, which is the better answer.
            with trio.move_on_after(_PARTING_WAIT):
                while protocol.ended is None:
                    await self._arrival()
            if protocol.goodbye is not None:
                raise protocol.goodbye from None
            raise Unavailable("lost the connection to engramd") from None

    async def _answer(self, protocol: ClientConnection, request_id: int) -> ServerMessage:
        """The answer to *request_id* on *protocol*'s conversation; its end if it ends."""
        while (answer := protocol.answer(request_id)) is None:
            await self._arrival()
        return answer

    async def _arrival(self) -> None:
        await self._arrived.wait()

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()

    async def _read(self, protocol: ClientConnection, stream: trio.SocketStream,
                    scope: trio.CancelScope) -> None:
        """File what the daemon sends until the conversation ends."""
        with scope:
            try:
                while protocol.ended is None:
                    # A slow subscriber holds up this connection, not the daemon.
                    while protocol.queued_pushes >= PUSH_BUFFER:
                        await self._arrival()
                    protocol.receive_data(await stream.receive_some(_RECEIVE_SIZE))
                    protocol.collect()
                    self._wake()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                protocol.fail(Unavailable("lost the connection to engramd"))
            finally:
                self._wake()

    # -- the live stream ------------------------------------------------------

    async def subscribe(self, **options: Any) -> AsyncSubscription:
        """Start a subscription: an async iterator of events and heartbeats."""
        request = requests.subscribe(**options)
        return AsyncSubscription(self, request, await self.call(request))

    async def unsubscribe(self, subscription: int) -> None:
        await self.call(Unsubscribe(subscription=subscription))
        if self._protocol is not None:
            self._protocol.forget(subscription)
        self._wake()

    async def watch(self, *, reconnect: bool = True,
                    on_status: Callable[[str, AsyncSubscription | None], None] | None = None,
                    retry_interval: float = 0.2,
                    **options: Any) -> AsyncIterator[Event | Heartbeat]:
        """Events (and heartbeats) for good, reconnecting across daemon restarts and
        resuming after the last event; see :func:`engram_cli.client.blocking.watch`."""
        follower = Follower(options, on_status)
        while True:
            try:
                subscription = follower.connected(await self.subscribe(**follower.options))
                async for item in subscription:
                    follower.passed(subscription)
                    yield item
            except (Unavailable, ClientTimeout) as exc:
                if follower.must_reconnect(exc, reconnect):
                    await self.aclose()
                    await self._come_back(retry_interval)

    async def _come_back(self, interval: float) -> None:
        """Reconnect to a daemon that went away, never starting one of our own."""
        autostart, self.target.autostart = self.target.autostart, False
        try:
            while True:
                try:
                    await self.connect()
                    await self.wait_ready()
                    return
                except (Unavailable, ClientTimeout, trio.TooSlowError):
                    await self.aclose()
                    await trio.sleep(interval)
        finally:
            self.target.autostart = autostart


class AsyncSubscription(Position):
    """Events of one subscription, in order: ``async for event in subscription``."""

    client: AsyncClient

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> Event | Heartbeat:
        push = await self.client.next_push(self.id)
        if push is None:
            raise StopAsyncIteration
        return self.accept(push)

    async def ack(self) -> None:
        """Store the cursor under the subscription's name (``cursor=`` when subscribing)."""
        if self.name is None:
            raise ValueError("this subscription has no cursor name")
        await self.client.ack_cursor(self.name, self.cursor)

    async def aclose(self) -> None:
        await self.client.unsubscribe(self.id)


@contextlib.asynccontextmanager
async def open_client(
    socket_path: str | None = None,
    *,
    agent_id: str | None = None,
    client_name: str = "engram-trio",
    autostart: bool | None = None,
    connect_timeout: float = 10.0,
    token: str | None = None,
    admin: bool = False,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[AsyncClient]:
    """Connect to engramd (starting it if allowed) and yield an :class:`AsyncClient`.

    The arguments are those of :class:`~engram_cli.client.settings.Target`. The
    connection and its reader task close when the block exits.
    """
    target = Target.resolve(socket_path, agent_id=agent_id, client_name=client_name,
                            autostart=autostart, token=token, admin=admin, env=env)
    async with connect_to(target, connect_timeout) as client:
        yield client


@contextlib.asynccontextmanager
async def connect_to(target: Target, connect_timeout: float = 10.0
                     ) -> AsyncIterator[AsyncClient]:
    """:func:`open_client` for a :class:`~engram_cli.client.settings.Target` already resolved."""
    try:
        async with trio.open_nursery() as nursery:
            client = AsyncClient(target, nursery, connect_timeout)
            try:
                await client.connect()
                yield client
            finally:
                await client.aclose()
    except BaseExceptionGroup as group:
        # The nursery wraps whatever leaves the block; one error leaves it as itself
        # (an EngramError stays an EngramError for the caller's except clause).
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
