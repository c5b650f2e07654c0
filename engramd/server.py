"""The socket server: transport only. Accept loop, one task per connection, graceful stop.

A connection is moved here as frames and guarded by the transport's limits: the
peer's uid and the hello (who it is: :mod:`engramd.caller`, :mod:`engramd.tokens`),
a request rate (:mod:`engramd.ratelimit`), a frame must arrive within
``frame_timeout`` once begun, and a frame left unread ``dead_after_seconds`` cuts
the peer off. Every request goes to :meth:`engramd.dispatch.Dispatcher.answer`
and its reply comes back as a frame.

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

import collections
import contextlib
import errno
import logging
import math
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import trio
from trio import TaskStatus

from engramd.caller import (
    Caller,
    Identity,
    PeerCredentials,
    check_hello,
    connection_id,
    peer_credentials,
)
from engramd.config import DaemonConfig
from engramd.dispatch import Dispatcher
from engramd.engine import Engine
from engramd.events import EventHub, Subscriber
from engramd.protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    Ended,
    EngramError,
    ErrorCode,
    ErrorReply,
    EventPush,
    Forbidden,
    FrameTooLarge,
    Hello,
    InvalidMessage,
    RemoteProtocolError,
    Request,
    ServerConnection,
    ServerMessage,
    SpeakFor,
    Welcome,
    encode_frame,
)
from engramd.ratelimit import TokenBucket
from engramd.tokens import Authenticator
from engramd.validate import PAYLOAD_LIMIT_SETTING

_OVER_BOUND = re.compile(r"of length <= (?P<bound>\d+) - at `(?P<path>[^`]*)`")
"""How msgspec says a list or map is over its bound (``Meta(max_length=...)``)."""
log = logging.getLogger("engramd.server")

# accept() errors that mean "the system is out of something right now": wait
# and retry instead of crashing the server (the same list trio uses).
_ACCEPT_CAPACITY_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY_DELAY = 0.1
_RECEIVE_SIZE = 256 * 1024
# A goodbye error frame to a misbehaving peer must not hold the task forever.
_GOODBYE_TIMEOUT = 1.0

_push_encoder = msgspec.msgpack.Encoder()
MAX_RATE_BUCKETS = 4_096
"""Agents a connection that speaks for many keeps a request rate for (then it starts over)."""


class _Credit:
    """How many more pushes a subscription of a connection with a window may send."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.left = window
        self._more = trio.Event()

    async def take(self) -> None:
        while self.left <= 0:
            self._more = trio.Event()
            await self._more.wait()
        self.left -= 1

    def grant(self, count: int) -> None:
        self.left = min(self.window, self.left + count)
        self._more.set()


def encode_event_push(subscription: int, event: bytes) -> bytes:
    """An ``event`` push around already encoded event bytes (encoded once for all)."""
    return _push_encoder.encode(EventPush(subscription=subscription,
                                          event=msgspec.Raw(event)))  # type: ignore[arg-type]


@dataclass(eq=False)
class Session:
    """One client connection's state on the daemon side (the dispatcher's ``Connection``)."""

    stream: trio.SocketStream
    peer: PeerCredentials
    protocol: ServerConnection
    number: int = 0
    """Counts connections from 1 in this daemon start (for ``Caller.connection_id``)."""
    write_timeout: float = 30.0
    on_unread: Callable[[], None] = lambda: None
    """Called when the peer is cut off for leaving a frame unread."""
    rate: TokenBucket | None = None
    rates: dict[str, TokenBucket] = field(default_factory=dict)
    """A connection that speaks for many (``as``): a request rate per agent."""
    window: int = 0
    """The hello's window: each subscription pushes at most this far ahead of grants."""
    reader_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    caller: Caller | None = None
    """Who the hello proved this connection is; None until then."""
    streams: trio.Nursery | None = None
    """Where this connection's subscriptions run; cancelled when the connection ends."""
    _following: dict[int, trio.CancelScope] = field(default_factory=dict)
    _credits: dict[int, _Credit] = field(default_factory=dict)
    _tokens: dict[int, str] = field(default_factory=dict)
    """Subscription -> the agent token it was made with."""
    peer_closed: bool = False
    """The client hung up (as opposed to the daemon stopping or dropping it)."""

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
        try:
            self.send_lock.acquire_nowait()
        except trio.WouldBlock:
            async with self.send_lock:
                await self._send_all(data)
            return
        # Nobody else is writing: most frames fit the socket's buffer and go at once,
        # without a trip through the scheduler (a reply's last step, on every request).
        try:
            sent = self._send_now(data)
            if sent < len(data):
                await self._send_all(memoryview(data)[sent:])
        finally:
            self.send_lock.release()

    def _send_now(self, data: bytes) -> int:
        """As much of *data* as the socket takes now, without waiting."""
        fd = self.stream.socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the connection was closed")
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"the peer is gone: {exc.strerror}") from exc

    async def _send_all(self, data: bytes | memoryview) -> None:
        with trio.move_on_after(self.write_timeout) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            self.on_unread()
            log.warning("pid %d read nothing for %gs; dropping the connection",
                        self.peer.pid, self.write_timeout)
            await trio.aclose_forcefully(self.stream)
            raise trio.ClosedResourceError("the peer stopped reading")

    # -- subscriptions (see engramd.dispatch.Connection) ---------------------------

    @property
    def subscriptions(self) -> int:
        return len(self._following)

    def follow(self, subscriber: Subscriber, hub: EventHub, token_id: str | None = None
               ) -> None:
        assert self.streams is not None
        scope = trio.CancelScope()
        self._following[subscriber.id] = scope
        if token_id is not None:
            self._tokens[subscriber.id] = token_id
        push = self.push
        if self.window:
            credit = self._credits[subscriber.id] = _Credit(self.window)

            async def push(body: bytes) -> None:
                # Waiting here, a live subscriber's buffer fills and the hub sends it
                # back to the stored log: it then reads at the pace of the grants.
                await credit.take()
                await self.push(body)

        self.streams.start_soon(self._push_events, subscriber, hub, scope, push)

    def unfollow(self, subscription: int) -> bool:
        scope = self._following.pop(subscription, None)
        self._credits.pop(subscription, None)
        self._tokens.pop(subscription, None)
        if scope is None:
            return False
        scope.cancel()
        return True

    def grant(self, subscription: int, count: int) -> bool:
        credit = self._credits.get(subscription)
        if credit is None:
            return subscription in self._following  # no window: nothing to grant
        credit.grant(count)
        return True

    def end_revoked(self, token_ids: set[str]) -> list[int]:
        """End the subscriptions made with these (revoked) tokens; their ids."""
        ended = [sub for sub, token in self._tokens.items() if token in token_ids]
        for subscription in ended:
            self.unfollow(subscription)
        return ended

    async def _push_events(self, subscriber: Subscriber, hub: EventHub,
                           scope: trio.CancelScope,
                           push: Callable[[bytes], Awaitable[None]]) -> None:
        with scope:
            try:
                await hub.serve(subscriber, push, encode_event_push)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # Gone, or cut off by _write: end the whole connection.
                self._end()
            except EngramError as exc:
                # The stored log cannot be read (damaged): a stream with a hole in it
                # would be a short answer, so the peer is told why and let go.
                log.error("subscription %d of pid %d ended: %s", subscriber.id,
                          self.peer.pid, exc)
                with trio.move_on_after(1.0), contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.send(ErrorReply(id=None, code=exc.code, message=str(exc)))
                self._end()
        self._following.pop(subscriber.id, None)
        self._credits.pop(subscriber.id, None)
        self._tokens.pop(subscriber.id, None)

    def _end(self) -> None:
        self.reader_scope.cancel()
        if self.streams is not None:
            self.streams.cancel_scope.cancel()


class Server:
    def __init__(self, config: DaemonConfig, engine: Engine,
                 authenticator: Authenticator) -> None:
        self.config = config
        self.engine = engine
        self.authenticator = authenticator
        self.dispatcher = Dispatcher(engine, self, authenticator,
                                     config.max_subscriptions_per_connection)
        self._sessions: set[Session] = set()
        self._per_process: collections.Counter[int] = collections.Counter()
        self._refusals_told: dict[int, float] = {}
        """When a refusal of each process was last logged (trio's clock)."""
        """Connections open by process (peer pid): the reserve's rule needs it."""
        self._connections_accepted = 0
        self._requests_served = 0
        self._requests_in_flight = 0
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

    async def close_connections_of(self, token_ids: set[str]) -> None:
        """Close at once the connections that presented one of these (revoked) tokens,
        and end the subscriptions made with them on connections that speak for many
        (``as``), telling each why (``ended``)."""
        for other in list(self._sessions):
            identity = other.caller.identity if other.caller else None
            if identity is not None and identity.token_id in token_ids:
                other.reader_scope.cancel()
                await trio.aclose_forcefully(other.stream)
                continue
            for subscription in other.end_revoked(token_ids):
                with trio.move_on_after(_GOODBYE_TIMEOUT), contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError):
                    await other.send(Ended(subscription=subscription,
                                           code=Forbidden.code,
                                           message="the token was revoked"))

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

    def _new_session(self, stream: trio.SocketStream) -> Session:
        self._connections_accepted += 1
        session = Session(stream, peer_credentials(stream.socket),  # type: ignore[arg-type]
                          ServerConnection(self.config.max_frame_bytes),
                          number=self._connections_accepted,
                          write_timeout=self.config.dead_after_seconds,
                          on_unread=lambda: self.metrics.count(
                              'connections_dropped_total{reason="unread"}'))
        if self.config.rate_per_second > 0:
            session.rate = TokenBucket(self.config.rate_per_second,
                                       self.config.rate_burst, trio.current_time())
        self.metrics.count("connections_accepted_total")
        return session

    async def _run_session(self, stream: trio.SocketStream) -> None:
        session: Session | None = None
        try:
            session = self._new_session(stream)
            peer = session.peer
            if peer.uid != self._uid:
                self.metrics.count('connections_refused_total{reason="uid"}')
                log.warning("refused pid %d: uid %d is not ours", peer.pid, peer.uid)
                await self._goodbye(session, ErrorCode.FORBIDDEN,
                                    f"uid {peer.uid} may not use this daemon")
                return
            refusal = self._over_limit(peer.pid)
            if refusal is not None:
                self.metrics.count('connections_refused_total{reason="limit"}')
                if self._refusals_told.get(peer.pid, -math.inf) < trio.current_time() - 60:
                    # Once a minute per process: one that retries without end floods no log.
                    if len(self._refusals_told) > 1024:
                        self._refusals_told.clear()
                    self._refusals_told[peer.pid] = trio.current_time()
                    log.warning("refused pid %d: %d connections open, %d of them its own",
                                peer.pid, len(self._sessions), self._per_process[peer.pid])
                await self._goodbye(session, ErrorCode.UNAVAILABLE, refusal)
                return
            self._sessions.add(session)
            self._per_process[peer.pid] += 1
            await self._serve_session(session)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            self.metrics.count("connections_failed_total")
            log.exception("connection failed")
        finally:
            if session is not None and session.caller is not None:
                self.engine.presence.disconnected(session.caller.agent_id, session.peer.pid)
            if session is not None and session in self._sessions:
                self._sessions.discard(session)
                self._per_process[session.peer.pid] -= 1
                if not self._per_process[session.peer.pid]:
                    del self._per_process[session.peer.pid]
            await trio.aclose_forcefully(stream)
            if session is not None and not self.engine.shutdown_requested.is_set():
                # Its connection-bound leases end with it (not when the daemon stops:
                # then they outlive the restart, bounded by their ttl).
                with trio.move_on_after(_GOODBYE_TIMEOUT * 5) as scope:
                    scope.shield = True
                    try:
                        await self.engine.connection_closed(session)
                    except EngramError as exc:  # (a full disk): they end at their ttl
                        log.warning("the leases of a closed connection not ended: %s", exc)

    def _over_limit(self, pid: int) -> str | None:
        """Why a new connection of process *pid* is refused, or None. The last
        ``connection_reserve`` places go only to processes that hold no connection yet,
        so that one process opening connections without end never locks out a command,
        a ``lock run`` keeper reconnecting, or ``doctor``."""
        limit, reserve = self.config.max_connections, self.config.connection_reserve
        open_now, its_own = len(self._sessions), self._per_process[pid]
        if open_now >= limit:
            return (f"too many connections ({open_now}, limit {limit}; limits.max_connections "
                    "raises it): close some, or see 'engram stats' for who holds them")
        if open_now >= limit - reserve and its_own:
            return (f"process {pid} holds {its_own} of the {open_now} connections open; the "
                    f"last {reserve} are kept for processes that hold none (limits."
                    "connection_reserve): close some of its connections")
        return None

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
                    await self._goodbye(session, exc.code, self._explain(exc))
            timed_out = session.caller is None and session.reader_scope.cancelled_caught
            if timed_out and not self.engine.shutdown_requested.is_set():
                await self._goodbye(session, ErrorCode.BAD_REQUEST, "no hello in time")
            if session.peer_closed:
                requests.cancel_scope.cancel()  # no one is left to read the answers
        # Leaving the nursery waited for in-flight requests to answer.

    def _explain(self, exc: RemoteProtocolError) -> str:
        if isinstance(exc, FrameTooLarge):
            # A unit too big, or too many units in one request: name what a writer can act on.
            return (f"{exc}; send fewer units in a request, and a unit's payload may be at most "
                    f"{self.config.max_payload_bytes} bytes ({PAYLOAD_LIMIT_SETTING})")
        return str(exc)

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
                await session.send(self._refusal(event))
                continue
            if isinstance(event, Hello):
                if not await self._welcome(session, event):
                    return
                continue
            rate = self._bucket(session, event)
            if rate is not None:
                wait = rate.take(trio.current_time())
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

    def _bucket(self, session: Session, request: Request | SpeakFor) -> TokenBucket | None:
        """The request rate *request* counts against: its connection's, or for a request
        made for an agent (``as``), that agent's on this connection."""
        if session.rate is None or not isinstance(request, SpeakFor):
            return session.rate
        key = request.agent_id or (request.token or "")[:24]
        bucket = session.rates.get(key)
        if bucket is None:
            if len(session.rates) >= MAX_RATE_BUCKETS:
                session.rates.clear()
            bucket = session.rates[key] = TokenBucket(
                self.config.rate_per_second, self.config.rate_burst, trio.current_time())
        return bucket

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

    def _refusal(self, invalid: InvalidMessage) -> ErrorReply:
        """The answer to a message that did not decode. A list or map over the wire's
        bound is told as the limit it is over, as the engine tells one over the
        configured limit (the configured limits are within the wire's)."""
        over = _OVER_BOUND.search(invalid.reason)
        if over is None:
            return ErrorReply(id=invalid.id, code=ErrorCode.BAD_REQUEST, message=invalid.reason)
        bound, path = int(over["bound"]), over["path"]
        what = (f"metadata entries, limit {self.config.max_meta_entries}"
                if path.endswith(".meta") or path.endswith("_meta") else
                f"items at {path}, limit {bound}")
        return ErrorReply(id=invalid.id, code=ErrorCode.TOO_LARGE,
                          message=f"more than {bound} {what}")

    async def _welcome(self, session: Session, hello: Hello) -> bool:
        """Greet or refuse; a greeted connection knows its caller from here on."""
        try:
            check_hello(hello)
            identity: Identity = self.authenticator.authenticate(hello)
        except EngramError as exc:
            log.warning("refused pid %d as %s: %s", session.peer.pid, hello.agent_id[:256], exc)
            await session.send(ErrorReply(id=hello.id, code=exc.code, message=str(exc)))
            return False
        session.caller = Caller(
            agent_id=identity.agent_id, uid=session.peer.uid, pid=session.peer.pid,
            connection_id=connection_id(session.number, self.engine.instance_id),
            connection=session, push=session.push, identity=identity)
        session.reader_scope.deadline = float("inf")
        session.window = hello.window
        await session.send(Welcome(id=hello.id, protocol_version=PROTOCOL_VERSION,
                                   daemon_version=self.engine.version, pid=os.getpid(),
                                   instance_id=self.engine.instance_id,
                                   agent_id=identity.agent_id, stale=self.engine.stale(),
                                   notice=self.engine.notice_once()))
        log.debug("pid %d connected as %s (%s)", session.peer.pid, identity.agent_id,
                  hello.client_name)
        self.engine.presence.connected(identity.agent_id, session.peer.pid, hello.client_name)
        return True

    async def _run_request(self, session: Session, inflight: trio.Semaphore,
                           request: Request | SpeakFor) -> None:
        assert session.caller is not None
        try:
            reply = await self.dispatcher.answer(request, session.caller, session)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # a subscription's reply found the peer gone
        finally:
            inflight.release()
            self._requests_in_flight -= 1
        self._requests_served += 1
        if reply is None:
            return  # already sent, ahead of the events
        sent = False
        try:
            await session.send(reply)
            sent = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("pid %d left before its reply", session.peer.pid)
        finally:
            if not sent:  # (its client left: what the reply granted, no one has)
                self.engine.reply_lost(reply)
