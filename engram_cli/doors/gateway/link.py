"""The gateway's connections to engramd: a few, shared by every caller and stream.

Every request travels on one of at most ``connections`` connections (default 8)
that hold the daemon's admin token and speak for each caller (``as``, SPECS §2.10):
per request, the daemon checks the caller's agent token, or takes the agent the
gateway vouches for (a JWT it validated) with that agent's rights only. So the
gateway's use of the daemon is bounded whatever the number of identities or
streams, and what a request takes (a lease, a claim) is a session of its own,
bound to no connection: it lives by its ttl, renewals, done or release. A request
that waits (a long-poll, a lease's wait in line) holds its place as long as it asks:
such requests take only some of the places (:data:`WAITS_PER_CONNECTION`), one agent
only a share of those, so waits never keep out a request that answers at once.

Streams are subscriptions on the same connections, each held to a window
(``Hello.window``): the daemon pushes a subscription no further ahead than the
gateway grants back as its HTTP client takes the events. The connection's reader
files each push under its stream and never waits for one, so a slow reader holds
up only itself, and is served from the stored log at its own pace.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import trio

from engram_cli.client.asynchronous import AsyncClient
from engram_cli.client.errors import ClientTimeout
from engram_cli.client.settings import Target
from engram_cli.doors.gateway.auth import Credentials, Unauthenticated
from engram_cli.doors.gateway.shares import Held
from engramd.protocol import (
    TOO_MANY_SUBSCRIPTIONS,
    ClientConnection,
    ClientMessage,
    Ended,
    EngramError,
    ErrorCode,
    EventPush,
    Forbidden,
    GetStatus,
    GrantPushes,
    Push,
    RateLimited,
    ServerMessage,
    SpeakFor,
    Subscribe,
    Subscribed,
    Unavailable,
    Unsubscribe,
    reply_type,
    result,
)

R = TypeVar("R", bound=ServerMessage)
log = logging.getLogger("engram.gateway")

CONNECT_TIMEOUT = 2.0
CONNECTIONS = 8
"""Daemon connections at most (``--daemon-connections``)."""
IN_FLIGHT = 48
"""Requests at once on one connection (under the daemon's
``limits.max_inflight_per_connection``, 64 by default); more wait for a place."""
WAITS_PER_CONNECTION = 32
"""Of a connection's :data:`IN_FLIGHT` places, those requests that wait (a long-poll, a
lease's wait in line) may hold: a wait holds its place for as long as it asks, so the
other 16 are kept for requests that answer at once, and ``/readyz``."""
WAITS_PER_AGENT_SHARE = 4
"""One agent holds at most this fraction (a quarter) of all the places for waits, so
that one identity's long-polls leave room for everyone else's."""
WAIT_RETRY = 1
"""Seconds a wait refused for want of a place is told to wait (``Retry-After``)."""
STREAMS_PER_CONNECTION = 64
"""Subscriptions on one connection (the daemon's ``limits.max_subscriptions_per_connection``
by default); a connection the daemon refuses one more holds no more."""
WINDOW = 128
"""Pushes a stream's subscription may send ahead of what its HTTP client took."""
STREAM_BUFFER_BYTES = 2 * 1024 * 1024
"""Bytes of pushes one stream keeps for its client at most (one event more when it keeps
none): past them, events are let go and read again from the log when the client gets
there. 128 pushes of small events fit; 128 of 100 KB do not."""
STREAM_MEMORY = 128 * 1024 * 1024
"""Bytes of pushes all streams together keep at most (``--stream-memory``)."""
FULL_RETRY = 5
"""Seconds a stream refused for want of a place is told to wait (``Retry-After``)."""
CREDENTIALS_REFUSED = "credentials refused"
"""How engramd begins refusing an ``as`` request's credentials (engramd.tokens)."""


class WaitsFull(Unavailable):
    """Every place for waits on every daemon connection is taken (503 with
    ``Retry-After``): a wait is refused at once rather than left in line."""


class TooManyWaits(RateLimited):
    """The caller's agent holds all the waits one agent may (429 with ``Retry-After``)."""


class StreamsFull(Unavailable):
    """Every daemon connection holds all the streams it may (503 with ``Retry-After``):
    a stream is refused at once rather than answered and left waiting for a place."""


class Budget:
    """The bytes of pushes every feed together holds, against ``--stream-memory``."""

    def __init__(self, limit: int = STREAM_MEMORY) -> None:
        self.limit = limit
        self.used = 0


class Feed:
    """The pushes of one subscription, filed by the connection's reader (never waiting:
    the window bounds them in number, the budgets in bytes), taken by its stream;
    ``lost`` once they stop coming.

    An event that would take the feed past :data:`STREAM_BUFFER_BYTES` (unless it holds
    nothing), or every feed past the shared :class:`Budget`, is let go: the feed is
    then ``overflowed``, lets every later push go too (an ``ended`` excepted), and its
    stream, once it has taken what the feed holds, subscribes again after the last
    event it took: the log keeps what memory does not."""

    def __init__(self, budget: Budget, limit: int = STREAM_BUFFER_BYTES) -> None:
        self.pushes: collections.deque[tuple[Push, int]] = collections.deque()
        self.bytes = 0
        self.lost: EngramError | None = None
        self.overflowed = False
        self._budget = budget
        self._limit = limit
        self._changed = trio.Event()

    def offer(self, push: Push, size: int) -> None:
        if self.lost is not None:
            return
        if self.overflowed and not isinstance(push, Ended):
            return
        if isinstance(push, EventPush) and not self._room(size):
            self.overflowed = True
            self._changed.set()
            return
        if len(self.pushes) > 2 * WINDOW:  # the daemon ignored the window: start over
            self.fail(Unavailable("engramd pushed past the window"))
            return
        self.pushes.append((push, size))
        self.bytes += size
        self._budget.used += size
        self._changed.set()

    def _room(self, size: int) -> bool:
        if self.pushes and self.bytes + size > self._limit:
            return False
        return self._budget.used == 0 or self._budget.used + size <= self._budget.limit

    def take(self) -> Push:
        push, size = self.pushes.popleft()
        self.bytes -= size
        self._budget.used -= size
        return push

    def clear(self) -> None:
        """Let go of what it holds (its stream has ended)."""
        self._budget.used -= self.bytes
        self.pushes.clear()
        self.bytes = 0

    def fail(self, error: EngramError) -> None:
        if self.lost is None:
            self.lost = error
        self._changed.set()

    async def wait(self) -> None:
        """Until something was filed, or the feed was lost or overflowed (cancel at will)."""
        if self.pushes or self.lost is not None or self.overflowed:
            return
        self._changed = trio.Event()
        await self._changed.wait()


class _Routes:
    """The feeds of one conversation, by subscription: where its reader files pushes.
    Subscription ids are request ids, so they mean something on their connection only."""

    def __init__(self, protocol: ClientConnection) -> None:
        self.feeds: dict[int, Feed] = {}
        self._protocol = protocol

    def __call__(self, push: Push) -> bool:
        feed = self.feeds.get(push.subscription)
        if feed is not None:
            feed.offer(push, self._protocol.frame_size)
        return True  # a subscription no stream follows any more: dropped


class _Channel(AsyncClient):
    """One connection: an :class:`AsyncClient` whose pushes go to feeds."""

    def __init__(self, target: Target, nursery: trio.Nursery) -> None:
        super().__init__(target, nursery, CONNECT_TIMEOUT)
        self.slots = trio.Semaphore(IN_FLIGHT)
        self.waiting = 0
        """Requests in flight that wait (at most :data:`WAITS_PER_CONNECTION`)."""
        self.feeds: dict[int, Feed] = {}
        """The feeds of the current conversation (a new one with each connection)."""
        self.unsubscribing = 0
        """Subscriptions let go whose ``unsubscribe`` is on its way: the daemon counts
        them until it is answered."""
        self.stream_limit = STREAMS_PER_CONNECTION
        """Subscriptions this conversation may hold: the daemon's limit, lowered only by
        its own refusal of one more (:data:`TOO_MANY_SUBSCRIPTIONS`), to what it holds."""

    @property
    def load(self) -> int:
        return IN_FLIGHT - self.slots.value

    @property
    def subscriptions(self) -> int:
        """Subscriptions the daemon holds on this connection, as far as the gateway knows."""
        return len(self.feeds) + self.unsubscribing

    def _conversation(self) -> ClientConnection:
        protocol = super()._conversation()
        routes = _Routes(protocol)
        self.feeds = routes.feeds
        # A new conversation, perhaps with a daemon configured anew: its limit is learnt
        # again, and the unsubscriptions of the last one went with it.
        self.stream_limit = STREAMS_PER_CONNECTION
        self.unsubscribing = 0
        protocol.route = routes
        return protocol

    async def _read(self, protocol: ClientConnection, stream: trio.SocketStream,
                    scope: trio.CancelScope) -> None:
        try:
            await super()._read(protocol, stream, scope)
        finally:
            lost = protocol.ended or Unavailable("lost the connection to engramd")
            assert isinstance(protocol.route, _Routes)
            for feed in protocol.route.feeds.values():
                feed.fail(lost)
            protocol.route.feeds.clear()


@dataclass(frozen=True)
class Subscription:
    """A stream's subscription: the connection and the conversation it lives on (its id
    means nothing on another), and the feed its pushes go to."""

    channel: _Channel
    protocol: ClientConnection
    feeds: dict[int, Feed]
    feed: Feed
    reply: Subscribed

    @property
    def id(self) -> int:
        return self.reply.subscription


class DaemonLink:
    """The gateway's connections to one engramd (see the module's docstring)."""

    def __init__(self, socket_path: str, nursery: trio.Nursery, *,
                 gateway_agent: str, env: Mapping[str, str],
                 connections: int = CONNECTIONS, stream_memory: int = STREAM_MEMORY,
                 reveal_paths: bool = True) -> None:
        self.socket_path = socket_path
        self.reveal_paths = reveal_paths
        """Whether callers may read why the daemon cannot be reached as the client
        library says it (its socket's path, how to start it); else the log has it."""
        self._told_unreachable = ("", -math.inf)
        self.budget = Budget(stream_memory)
        self.gateway_agent = gateway_agent
        self.size = connections
        self._nursery = nursery
        self._env = env
        self._channels: list[_Channel] = []
        self._freed = trio.Event()
        self._waits = Held(max(1, connections * WAITS_PER_CONNECTION // WAITS_PER_AGENT_SHARE))
        """Waits in flight by agent (or agent token, when the daemon names the agent)."""
        self.head_seq: int | None = None
        """The newest seq the gateway has seen the daemon name (None: none since the
        gateway started): where a stream opened while the daemon is away starts."""

    def saw_head(self, seq: int) -> None:
        """The daemon named *seq* as durable (a status, a subscription, an event)."""
        if self.head_seq is None or seq > self.head_seq:
            self.head_seq = seq

    @property
    def connections(self) -> int:
        """Daemon connections open now."""
        return sum(1 for channel in self._channels if channel.connected)

    @property
    def streams(self) -> int:
        return sum(len(channel.feeds) for channel in self._channels)

    @property
    def stream_capacity(self) -> int:
        """Streams the gateway may follow at most now: its connections' limits, a
        connection not yet made counted at :data:`STREAMS_PER_CONNECTION`. Less than
        ``size`` x that when the daemon holds its connections to fewer (``/metrics``)."""
        return sum(c.stream_limit for c in self._channels) \
            + (self.size - len(self._channels)) * STREAMS_PER_CONNECTION

    def _new_channel(self) -> _Channel:
        target = Target(socket_path=self.socket_path, agent_id=self.gateway_agent,
                        client_name="engram-gateway", autostart=False, token=None,
                        admin=True, env=self._env, window=WINDOW)
        channel = _Channel(target, self._nursery)
        self._channels.append(channel)
        return channel

    async def _ready(self, channel: _Channel) -> _Channel:
        """*channel* connected (a fresh conversation if its last one ended)."""
        if not channel.usable:
            await channel.aclose()
        before = channel._protocol
        try:
            await channel.connect()
            if channel._protocol is not before:
                # A new conversation: learn the daemon's head (streams opened while it
                # is away start there, so nothing written after them is lost).
                status = await channel.call(GetStatus())
                if status.journal is not None:
                    self.saw_head(status.journal.last_seq)
        except (ClientTimeout, trio.TooSlowError):
            await channel.aclose()
            raise Unavailable("engramd did not answer the connection in time") from None
        except EngramError as exc:
            await channel.aclose()
            raise self._unreachable(exc) from None
        return channel

    def _unreachable(self, exc: EngramError) -> EngramError:
        """*exc*, or, when it names this machine's paths and callers may not read them,
        a plain ``unavailable``, the reason logged (once a minute while it stays)."""
        where = os.path.dirname(self.socket_path) or self.socket_path
        if self.reveal_paths or where not in str(exc):
            return exc
        said, when = self._told_unreachable
        if str(exc) != said or trio.current_time() - when >= 60:
            log.warning("engramd cannot be reached: %s", exc)
            self._told_unreachable = (str(exc), trio.current_time())
        return Unavailable("engramd is not answering the gateway (its log says why); "
                           "retry in 1s")

    def _pick(self, waits: bool = False) -> _Channel | None:
        """The least loaded connection with a place free (for a request that *waits*,
        one of its places for waits), a new one while there may be more; None when
        every place is taken."""
        free = [c for c in self._channels if c.slots.value > 0
                and (not waits or c.waiting < WAITS_PER_CONNECTION)]
        idle = [c for c in free if c.load == 0]
        if idle:
            return idle[0]
        if len(self._channels) < self.size:
            return self._new_channel()
        return min(free, key=lambda c: c.load) if free else None

    def _room_to_wait(self) -> bool:
        return len(self._channels) < self.size or any(
            c.waiting < WAITS_PER_CONNECTION for c in self._channels)

    async def request(self, request: ClientMessage[R], *, waits: bool = False) -> R:
        """*request* as the gateway itself (the admin token): readiness, statistics.
        One that *waits* takes one of the places kept for waits (:class:`WaitsFull`,
        at once, when there is none); the others are never held by waits."""
        while (channel := self._pick(waits)) is None:
            if waits and not self._room_to_wait():
                raise WaitsFull(f"every place for requests that wait is taken "
                                f"({self.size} daemon connections x {WAITS_PER_CONNECTION}; "
                                f"--daemon-connections); retry in {WAIT_RETRY}s")
            self._freed = trio.Event()
            await self._freed.wait()
        channel.waiting += waits  # counted as it is picked, before anything yields
        try:
            async with channel.slots:
                await self._ready(channel)
                return await channel.call(request)
        finally:
            channel.waiting -= waits
            self._freed.set()

    async def call(self, credentials: Credentials, request: ClientMessage[R], *,
                   waits: bool = False) -> R:
        """*request* made for the caller of *credentials* (``as``); one that *waits*
        counts against the caller's agent's waits (:class:`TooManyWaits` past them)."""
        spoken: Any = SpeakFor(agent_id=credentials.agent_id, token=credentials.token,
                               delegated=credentials.delegated, request=cast(Any, request))
        with self._waiting(credentials, waits), refused_as_unauthenticated():
            return result(await self.request(spoken, waits=waits), reply_type(type(request)))

    @contextlib.contextmanager
    def _waiting(self, credentials: Credentials, waits: bool) -> Any:
        if not waits:
            yield
            return
        who = credentials.agent_id or credentials.token or ""
        with self._waits.one_more(who, lambda held: TooManyWaits(
                f"{held} requests that wait are in flight for this agent, as many as one "
                f"agent may hold; retry in {WAIT_RETRY}s")):
            yield

    async def subscribe(self, credentials: Credentials, subscribe: Subscribe
                        ) -> Subscription:
        """A subscription for the caller on a connection with room for it, and the feed
        its pushes go to. Unavailable when every connection holds all it may."""
        tried: set[int] = set()
        while True:
            channel = self._stream_channel(tried)
            await self._ready(channel)
            protocol, feeds = channel._protocol, channel.feeds
            if protocol is None:  # closed as it connected (the daemon went away)
                raise Unavailable("lost the connection to engramd")
            request_id = protocol.allocate_id()
            feed = feeds[request_id] = Feed(self.budget)
            try:
                with refused_as_unauthenticated():
                    reply = await channel.call_on(protocol, SpeakFor(
                        id=request_id, agent_id=credentials.agent_id,
                        token=credentials.token, delegated=credentials.delegated,
                        request=subscribe))
                return Subscription(channel, protocol, feeds, feed,
                                    result(reply, Subscribed))
            except EngramError as exc:
                # The daemon's answer: no subscription was made.
                feeds.pop(request_id, None)
                feed.clear()
                if not _no_place(exc):
                    raise  # this request's own (its filters, its credentials): its answer
                self._full(channel, protocol)
                tried.add(id(channel))
            except BaseException:
                # Cancelled after the request left, it may be subscribed: undo that.
                feed.clear()
                self._unsubscribe(channel, protocol, feeds, request_id)
                raise

    def _full(self, channel: _Channel, protocol: ClientConnection) -> None:
        """The daemon refused *channel* one more subscription: it holds no more than it
        does now (never fewer than one: a refusal with none held is a daemon that
        counts differently, not a connection for no stream)."""
        if channel._protocol is not protocol:
            return  # refused on a conversation that is over: the next one starts afresh
        limit = max(1, channel.subscriptions)
        if limit < channel.stream_limit:
            log.warning("engramd holds one of the gateway's connections to %d streams "
                        "(limits.max_subscriptions_per_connection; the gateway expected "
                        "%d)", limit, STREAMS_PER_CONNECTION)
            channel.stream_limit = limit

    def _stream_channel(self, tried: set[int]) -> _Channel:
        room = [c for c in self._channels if id(c) not in tried
                and c.subscriptions < c.stream_limit]
        if room:
            return min(room, key=lambda c: c.subscriptions)
        if len(self._channels) < self.size:
            return self._new_channel()
        held = sum(len(c.feeds) for c in self._channels)
        raise StreamsFull(f"the gateway follows as many streams as its {self.size} daemon "
                          f"connections may hold ({held}; --daemon-connections); retry in "
                          f"{FULL_RETRY}s")

    async def grant(self, subscription: Subscription, count: int) -> None:
        """Let *subscription* push *count* more (its stream took that many)."""
        with contextlib.suppress(EngramError):  # a connection lost: its feeds are told
            await subscription.channel.call_on(subscription.protocol, GrantPushes(
                subscription=subscription.id, count=count))

    def forget(self, subscription: Subscription) -> None:
        """The stream of *subscription* has ended (or will follow another): let go of
        what its feed holds, and unsubscribe in the background."""
        subscription.feed.clear()
        self._unsubscribe(subscription.channel, subscription.protocol, subscription.feeds,
                          subscription.id)

    def _unsubscribe(self, channel: _Channel, protocol: ClientConnection,
                     feeds: dict[int, Feed], subscription: int) -> None:
        if feeds.pop(subscription, None) is None or protocol.ended is not None:
            return  # (a connection that ended took its subscriptions with it)
        channel.unsubscribing += 1

        async def unsubscribe() -> None:
            try:
                with trio.move_on_after(CONNECT_TIMEOUT):
                    await channel.call_on(protocol, Unsubscribe(subscription=subscription))
            except EngramError:
                pass  # the connection is gone, and the subscription with it
            except Exception:
                # A bug: logged, never fatal to the gateway (this task is not a request's).
                log.exception("unsubscribing a stream that ended")
            finally:
                if channel._protocol is protocol:  # (a new conversation starts at 0)
                    channel.unsubscribing -= 1

        self._nursery.start_soon(unsubscribe)

    async def aclose(self) -> None:
        for channel in self._channels:
            await channel.aclose()
        self._channels.clear()


def _no_place(exc: EngramError) -> bool:
    """Whether *exc* is the daemon refusing a subscription for want of a place on its
    connection, and not for anything of the subscription's own (its filters over a
    bound are ``too_large`` too)."""
    return exc.code == ErrorCode.TOO_LARGE and str(exc).startswith(TOO_MANY_SUBSCRIPTIONS)


@contextlib.contextmanager
def refused_as_unauthenticated() -> Any:
    """The daemon refusing the caller's credentials (an unknown or revoked token, a
    token it requires) means the caller did not authenticate: 401, not 403."""
    try:
        yield
    except Forbidden as exc:
        if str(exc).startswith(CREDENTIALS_REFUSED):
            raise Unauthenticated(str(exc).removeprefix(CREDENTIALS_REFUSED + ": ")) \
                from None
        raise
