"""The socket server: accept loop, one task per connection, graceful stop.

Connections are where identity and limits live: the hello is checked against
the tokens (:mod:`engramd.tokens`), each connection may have a request rate
(:mod:`engramd.ratelimit`), a frame must arrive within ``frame_timeout`` once
begun, and a frame left unread ``dead_after_seconds`` cuts the peer off.

Each connection is a thin loop around :class:`~engramd.protocol.ServerConnection`:
bytes in, messages out; requests run concurrently in the connection's own
nursery (up to ``max_inflight_per_connection``, after which the reader simply
stops reading, which pushes back on the client) and their replies are written
under one lock so frames never interleave.

Resource handling: every connection task lives in the server's nursery and
closes its stream in ``finally``. Error handling: a broken or hostile peer
ends only its own connection; an unexpected exception in a connection is
logged and ends only that connection.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio
from trio_typing import TaskStatus

from engramd.caller import Caller, connection_id
from engramd.config import DaemonConfig
from engramd.dispatch import Dispatcher
from engramd.engine import Engine
from engramd.events import Subscriber
from engramd.protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    ClientMessage,
    CreateToken,
    Done,
    ErrorCode,
    ErrorReply,
    EventPush,
    Forbidden,
    Hello,
    InvalidMessage,
    ListTokens,
    NotFound,
    RemoteProtocolError,
    RevokeTokens,
    ServerConnection,
    ServerMessage,
    Subscribe,
    Subscribed,
    TooLarge,
    Unsubscribe,
    Welcome,
    encode_frame,
)
from engramd.ratelimit import TokenBucket
from engramd.tokens import Authenticator, Identity, answer_token_request

log = logging.getLogger("engramd.server")

# accept() errors that mean "the system is out of something right now": wait
# and retry instead of crashing the server (the same list trio uses).
_ACCEPT_CAPACITY_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY_DELAY = 0.1
_RECEIVE_SIZE = 256 * 1024
# A goodbye error frame to a misbehaving peer must not hold the task forever.
_GOODBYE_TIMEOUT = 1.0
_MAX_NAME = 256

_PEERCRED = struct.Struct("3i")


_push_encoder = msgspec.msgpack.Encoder()


def encode_event_push(subscription: int, event: bytes) -> bytes:
    """An ``event`` push around already encoded event bytes (encoded once for all)."""
    return _push_encoder.encode(EventPush(subscription=subscription,
                                          event=msgspec.Raw(event)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: trio.socket.SocketType) -> PeerCredentials:
    """The connecting process's ids, as the kernel recorded them at connect()."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


@dataclass(eq=False)
class Session:
    """One client connection's state on the daemon side."""

    stream: trio.SocketStream
    peer: PeerCredentials
    protocol: ServerConnection
    reader_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    hello: Hello | None = None
    identity: Identity | None = None
    """Who the hello proved this connection acts as."""
    streams: trio.Nursery | None = None
    """Where this connection's subscriptions run; cancelled when the connection ends."""
    subscriptions: dict[int, trio.CancelScope] = field(default_factory=dict)
    peer_closed: bool = False
    """The client hung up (as opposed to the daemon stopping or dropping it)."""
    number: int = 0
    """Counts connections from 1 in this daemon start (for ``Caller.connection_id``)."""
    write_timeout: float = 30.0
    on_unread: Callable[[], None] = lambda: None
    """Called when the peer is cut off for leaving a frame unread."""
    rate: TokenBucket | None = None

    async def send(self, message: ServerMessage) -> None:
        await self._write(self.protocol.send(message))

    async def push(self, body: bytes) -> None:
        """Write one pushed message (already encoded) as a frame."""
        await self._write(encode_frame(body))

    async def _write(self, data: bytes) -> None:
        """Write one frame; a peer that leaves it unread ``write_timeout`` is cut off.

        Closing the stream wakes every task of the connection (its reader and
        any writer queued on the lock) with ``ClosedResourceError``, so a peer
        that reads nothing holds no task, buffer or slot past the timeout.
        """
        async with self.send_lock:
            with trio.move_on_after(self.write_timeout) as scope:
                await self.stream.send_all(data)
        if scope.cancelled_caught:
            self.on_unread()
            log.warning("pid %d read nothing for %gs; dropping the connection",
                        self.peer.pid, self.write_timeout)
            await trio.aclose_forcefully(self.stream)
            raise trio.ClosedResourceError("the peer stopped reading")


class Server:
    def __init__(self, config: DaemonConfig, engine: Engine,
                 authenticator: Authenticator) -> None:
        self.config = config
        self.engine = engine
        self.authenticator = authenticator
        self.dispatcher = Dispatcher(engine, self)
        self._sessions: set[Session] = set()
        self._connections_accepted = 0
        self._requests_served = 0
        self._requests_in_flight = 0
        self._token_writes = trio.CapacityLimiter(1)
        self.metrics = engine.metrics
        self._uid = os.geteuid()
        self._nursery: trio.Nursery | None = None
        self._accept_scope = trio.CancelScope()

    @property
    def connection_count(self) -> int:
        return len(self._sessions)

    @property
    def requests_served(self) -> int:
        return self._requests_served

    @property
    def requests_in_flight(self) -> int:
        return self._requests_in_flight

    async def serve(
        self,
        listen_socket: socket.socket,
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until the engine asks for shutdown, then stop gracefully.

        Graceful means: stop accepting, stop reading requests, give in-flight
        requests ``shutdown_grace`` seconds to answer, then close everything.
        """
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(listen_socket))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._accept_loop, listener)
            task_status.started()
            await self.engine.shutdown_requested.wait()
            log.info("stopping: %d connection(s) open", len(self._sessions))
            self._accept_scope.cancel()
            for session in list(self._sessions):
                session.reader_scope.cancel()
            nursery.cancel_scope.deadline = trio.current_time() + self.config.shutdown_grace

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        assert self._nursery is not None
        with self._accept_scope:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRORS:
                        raise
                    log.warning("accept failed (%s); retrying", os.strerror(exc.errno))
                    await trio.sleep(_ACCEPT_RETRY_DELAY)
                    continue
                self._nursery.start_soon(self._run_session, stream)

    async def _run_session(self, stream: trio.SocketStream) -> None:
        session: Session | None = None
        try:
            peer = peer_credentials(stream.socket)
            self._connections_accepted += 1
            session = Session(stream, peer, ServerConnection(self.config.max_frame_bytes),
                              number=self._connections_accepted,
                              write_timeout=self.config.dead_after_seconds,
                              on_unread=lambda: self.metrics.count(
                                  'connections_dropped_total{reason="unread"}'))
            if self.config.rate_per_second > 0:
                session.rate = TokenBucket(self.config.rate_per_second,
                                           self.config.rate_burst, trio.current_time())
            self.metrics.count("connections_accepted_total")
            if peer.uid != self._uid:
                self.metrics.count('connections_refused_total{reason="uid"}')
                log.warning("refused pid %d: uid %d is not ours", peer.pid, peer.uid)
                await self._goodbye(session, ErrorCode.FORBIDDEN,
                                    f"uid {peer.uid} may not use this daemon")
                return
            if len(self._sessions) >= self.config.max_connections:
                self.metrics.count('connections_refused_total{reason="limit"}')
                log.warning("refused pid %d: %d connections open", peer.pid, len(self._sessions))
                await self._goodbye(session, ErrorCode.UNAVAILABLE,
                                    f"too many connections (limit {self.config.max_connections})")
                return
            self._sessions.add(session)
            await self._serve_session(session)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            self.metrics.count("connections_failed_total")
            log.exception("connection failed")
        finally:
            if session is not None:
                self._sessions.discard(session)
            await trio.aclose_forcefully(stream)
            if session is not None and not self.engine.shutdown_requested.is_set():
                # Its connection-bound leases end with it (not when the daemon stops:
                # then they outlive the restart, bounded by their ttl).
                with trio.move_on_after(_GOODBYE_TIMEOUT * 5) as scope:
                    scope.shield = True
                    await self.engine.connection_closed(session)

    async def _goodbye(self, session: Session, code: ErrorCode, message: str) -> None:
        """Best effort: tell the peer why, then let the caller close."""
        with trio.move_on_after(_GOODBYE_TIMEOUT):
            try:
                await session.send(ErrorReply(id=None, code=code, message=message))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _serve_session(self, session: Session) -> None:
        async with trio.open_nursery() as streams:
            session.streams = streams
            await self._serve_requests(session)
            streams.cancel_scope.cancel()

    async def _serve_requests(self, session: Session) -> None:
        inflight = trio.Semaphore(self.config.max_inflight_per_connection)
        async with trio.open_nursery() as requests:
            with session.reader_scope:
                session.reader_scope.deadline = trio.current_time() + self.config.handshake_timeout
                try:
                    await self._read_requests(session, inflight, requests)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # Reset by the peer, or cut off by Session._write: gone either way.
                    session.peer_closed = True
                except RemoteProtocolError as exc:
                    log.info("pid %d broke the protocol: %s", session.peer.pid, exc)
                    self.metrics.count('connections_dropped_total{reason="protocol"}')
                    await self._goodbye(session, exc.code, str(exc))
            timed_out = session.hello is None and session.reader_scope.cancelled_caught
            if timed_out and not self.engine.shutdown_requested.is_set():
                await self._goodbye(session, ErrorCode.BAD_REQUEST, "no hello in time")
            if session.peer_closed:
                requests.cancel_scope.cancel()  # no one is left to read the answers
        # Leaving the nursery waited for in-flight requests to answer.

    async def _read_requests(
        self, session: Session, inflight: trio.Semaphore, requests: trio.Nursery
    ) -> None:
        protocol = session.protocol
        while True:
            event = protocol.next_event()
            if event is NEED_DATA:
                await self._receive(session)
                continue
            if event is CLOSED:
                session.peer_closed = True
                return
            if isinstance(event, InvalidMessage):
                await session.send(ErrorReply(id=event.id, code=ErrorCode.BAD_REQUEST,
                                              message=event.reason))
                continue
            if isinstance(event, Hello):
                if not await self._welcome(session, event):
                    return
                continue
            if session.rate is not None:
                wait = session.rate.take(trio.current_time())
                if wait:
                    self.metrics.count('errors_total{code="rate_limited"}')
                    await session.send(ErrorReply(
                        id=event.id, code=ErrorCode.RATE_LIMITED,
                        message=f"over {self.config.rate_per_second:g} requests/s on this "
                                f"connection; retry in {wait:.3f}s"))
                    continue
            await inflight.acquire()
            self._requests_in_flight += 1
            requests.start_soon(self._run_request, session, inflight, event)

    async def _receive(self, session: Session) -> None:
        """Read more bytes; a peer that stops in the middle of a frame is dropped."""
        if not session.protocol.mid_frame:
            session.protocol.receive_data(await session.stream.receive_some(_RECEIVE_SIZE))
            return
        with trio.move_on_after(self.config.frame_timeout):
            session.protocol.receive_data(await session.stream.receive_some(_RECEIVE_SIZE))
            return
        raise RemoteProtocolError(
            f"frame not completed within {self.config.frame_timeout:g}s")

    async def _welcome(self, session: Session, hello: Hello) -> bool:
        problem = None
        code = ErrorCode.BAD_REQUEST
        if hello.protocol_version != PROTOCOL_VERSION:
            code = ErrorCode.VERSION_MISMATCH
            problem = (f"the daemon speaks protocol {PROTOCOL_VERSION}, the client "
                       f"{hello.protocol_version}; restart the daemon with "
                       "'engram daemon restart' after upgrading")
        elif not hello.agent_id or len(hello.agent_id) > _MAX_NAME or "\0" in hello.agent_id:
            problem = f"agent id must be 1 to {_MAX_NAME} characters without NUL"
        elif len(hello.client_name) > _MAX_NAME:
            problem = f"client name must be at most {_MAX_NAME} characters"
        if problem is None:
            try:
                session.identity = self.authenticator.authenticate(hello)
            except Forbidden as exc:
                code, problem = exc.code, str(exc)
        if problem is not None:
            log.warning("refused pid %d as %s: %s", session.peer.pid, hello.agent_id[:_MAX_NAME],
                        problem)
            await session.send(ErrorReply(id=hello.id, code=code, message=problem))
            return False
        session.hello = hello
        session.reader_scope.deadline = float("inf")
        await session.send(
            Welcome(
                id=hello.id,
                protocol_version=PROTOCOL_VERSION,
                daemon_version=self.engine.version,
                pid=os.getpid(),
                instance_id=self.engine.instance_id,
            )
        )
        log.debug("pid %d connected as %s (%s)", session.peer.pid, hello.agent_id,
                  hello.client_name)
        return True

    async def _subscription_request(
        self, session: Session, request: Subscribe | Unsubscribe, caller: Caller
    ) -> ServerMessage:
        if isinstance(request, Unsubscribe):
            scope = session.subscriptions.pop(request.subscription, None)
            if scope is None:
                raise NotFound(f"no subscription {request.subscription} on this connection")
            scope.cancel()
            return Done(id=request.id)
        if len(session.subscriptions) >= self.config.max_subscriptions_per_connection:
            raise TooLarge(f"too many subscriptions on one connection (limit "
                           f"{self.config.max_subscriptions_per_connection})")
        subscriber = self.engine.subscriber(request, caller)
        hub = self.engine.hub
        assert hub is not None and session.streams is not None
        scope = trio.CancelScope()
        session.subscriptions[request.id] = scope
        reply = Subscribed(id=request.id, subscription=request.id, after=subscriber.cursor,
                           head_seq=hub.head)
        # The reply goes out before the first event: the task waits for this send.
        await session.send(reply)
        session.streams.start_soon(self._run_subscription, session, subscriber, scope)
        return reply

    async def _token_request(
            self, request: CreateToken | ListTokens | RevokeTokens) -> ServerMessage:
        # The token file is rewritten with fsyncs: off the event loop, one at a time.
        reply, revoked = await trio.to_thread.run_sync(
            answer_token_request, self.authenticator.registry, request,
            limiter=self._token_writes)
        for other in list(self._sessions):
            if other.identity is not None and other.identity.token_id in revoked:
                other.reader_scope.cancel()
                await trio.aclose_forcefully(other.stream)
        return reply

    async def _run_subscription(self, session: Session, subscriber: Subscriber,
                                scope: trio.CancelScope) -> None:
        hub = self.engine.hub
        assert hub is not None
        with scope:
            try:
                await hub.serve(subscriber, session.push, encode_event_push)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # Gone, or cut off by Session.write: end the whole connection.
                session.reader_scope.cancel()
                if session.streams is not None:
                    session.streams.cancel_scope.cancel()
        session.subscriptions.pop(subscriber.id, None)

    async def _answer(self, session: Session, request: ClientMessage[Any],
                      caller: Caller) -> ServerMessage:
        return await self.dispatcher.guard(
            request, lambda: self._handle(session, request, caller))

    async def _handle(self, session: Session, request: ClientMessage[Any],
                      caller: Caller) -> ServerMessage:
        assert session.identity is not None
        self.authenticator.check_allowed(session.identity, request)
        # Subscriptions and tokens belong to connections, not to the engine: they
        # are handled here, and everything else goes through dispatch.
        if isinstance(request, Subscribe | Unsubscribe):
            return await self._subscription_request(session, request, caller)
        if isinstance(request, CreateToken | ListTokens | RevokeTokens):
            return await self._token_request(request)
        return await self.dispatcher.handle(request, caller)

    async def _run_request(
        self, session: Session, inflight: trio.Semaphore, request: ClientMessage[Any]
    ) -> None:
        assert session.identity is not None
        caller = Caller(agent_id=session.identity.agent_id, uid=session.peer.uid,
                        pid=session.peer.pid,
                        connection_id=connection_id(session.number, self.engine.instance_id),
                        connection=session, push=session.push)
        try:
            reply = await self._answer(session, request, caller)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # a subscription's reply found the peer gone
        finally:
            inflight.release()
            self._requests_in_flight -= 1
        self._requests_served += 1
        if isinstance(reply, Subscribed):
            return  # already sent, ahead of the events
        try:
            await session.send(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("pid %d left before its reply", session.peer.pid)
