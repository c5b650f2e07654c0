"""The event hub: every durable change, fanned out to the subscriptions that want it.

A subscription is a cursor into the event log. It first reads the stored log
after its cursor (catch-up), then, in the same synchronous step that finds
nothing more to read, attaches to the live flow, so no event falls between the
two; an event seen both ways is dropped by its seq. Live events are encoded
once and the same bytes go to every subscriber. Each live subscriber has a
bounded buffer; when it is full the publisher never waits: it detaches that
subscriber, which goes back to reading the store (nothing is lost) and, if it
has fallen more than ``max_lag`` events behind, is told so and ends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import msgspec
import trio

from engramd.metrics import Histogram
from engramd.protocol import Heartbeat, Lagged
from engramd.protocol.messages import Subscribe
from engramd.protocol.model import AnyEvent, ContextChange, UnitCreated
from engramd.storage import Store

_encoder = msgspec.msgpack.Encoder()
READ_BATCH = 512


@dataclass(frozen=True)
class Described:
    """What filters look at, plus the event's encoded bytes."""

    seq: int
    kind: str
    context_id: str
    agents: frozenset[str]
    unit_type: str | None
    meta: dict[str, str]
    data: bytes
    passing: bool = False
    """Not in the journal (cluster mode's lease events): live subscribers get it, it
    moves no cursor, and no catch-up reads it again."""


class _UnitHead(msgspec.Struct):
    agent_id: str
    type: str
    meta: dict[str, str]
    ts: dt.datetime
    seq: int
    context_id: str


class _ContextHead(msgspec.Struct):
    agent_ids: list[str]


class _EventHead(msgspec.Struct, tag_field="kind"):
    seq: int
    context_id: str


class _ContextCreatedHead(_EventHead, tag="context.created"):
    context: _ContextHead


class _ContextUpdatedHead(_EventHead, tag="context.updated"):
    changes: list[ContextChange]


class _LeaseHead(msgspec.Struct):
    holder: str


class _LockHead(_EventHead):
    lease: _LeaseHead


class _LockAcquiredHead(_LockHead, tag="lock.acquired"):
    pass


class _LockRenewedHead(_LockHead, tag="lock.renewed"):
    pass


class _LockReleasedHead(_LockHead, tag="lock.released"):
    by: str


class _LockExpiredHead(_LockHead, tag="lock.expired"):
    pass


class _UnitsRemovedHead(_EventHead, tag="units.removed"):
    pass


class _UnitCreatedFromStore(msgspec.Struct, tag_field="kind", tag="unit.created"):
    """A ``unit.created`` event rebuilt around a stored unit's bytes, never decoding them."""

    seq: int
    ts: dt.datetime
    context_id: str
    unit: msgspec.Raw


_unit_head = msgspec.msgpack.Decoder(_UnitHead)
_context_head = msgspec.msgpack.Decoder(
    _ContextCreatedHead | _ContextUpdatedHead | _LockAcquiredHead | _LockRenewedHead
    | _LockReleasedHead | _LockExpiredHead | _UnitsRemovedHead)
_AGENT_CHANGES = ("agent_joined", "agent_left")


def describe_unit(unit_bytes: bytes) -> Described:
    head = _unit_head.decode(unit_bytes)
    data = _encoder.encode(_UnitCreatedFromStore(seq=head.seq, ts=head.ts,
                                                 context_id=head.context_id,
                                                 unit=msgspec.Raw(unit_bytes)))
    return Described(head.seq, "unit.created", head.context_id, frozenset([head.agent_id]),
                     head.type, head.meta, data)


def describe_context_event(data: bytes) -> Described:
    """A context or lock event described for the filters (its agents: who it concerns)."""
    head = _context_head.decode(data)
    if isinstance(head, _LockHead):
        concerned = {head.lease.holder}
        if isinstance(head, _LockReleasedHead):
            concerned.add(head.by)
        kind = type(head).__struct_config__.tag
        return Described(head.seq, str(kind), head.context_id, frozenset(concerned), None, {},
                         data)
    if isinstance(head, _UnitsRemovedHead):  # (retention's: no agent made it)
        return Described(head.seq, "units.removed", head.context_id, frozenset(), None, {},
                         data)
    if isinstance(head, _ContextCreatedHead):
        return Described(head.seq, "context.created", head.context_id,
                         frozenset(head.context.agent_ids), None, {}, data)
    agents = frozenset(change.value for change in head.changes
                       if change.kind in _AGENT_CHANGES)
    return Described(head.seq, "context.updated", head.context_id, agents, None, {}, data)


def describe_live(event: AnyEvent) -> Described:
    """A freshly committed event described for the filters, encoded once for everyone."""
    data = _encoder.encode(event)
    if isinstance(event, UnitCreated):
        unit = event.unit
        return Described(event.seq, "unit.created", event.context_id,
                         frozenset([unit.agent_id]), unit.type, unit.meta, data)
    # Context and lock events are rare: read them the one way the stored ones are read.
    return describe_context_event(data)


def describe_stored(value: bytes) -> Described:
    """A stored event (see :meth:`Store.events_after`) described for the filters."""
    if value[:1] == b"U":
        return describe_unit(value[1:])
    return describe_context_event(value)


@dataclass(frozen=True)
class Filter:
    contexts: frozenset[str]
    kinds: frozenset[str]
    agents: frozenset[str]
    types: frozenset[str]
    meta: dict[str, str]

    @staticmethod
    def of(request: Subscribe) -> Filter:
        return Filter(frozenset(request.contexts), frozenset(request.kinds),
                      frozenset(request.agents), frozenset(t.upper() for t in request.types),
                      dict(request.meta))

    def covers(self, context_id: str) -> bool:
        return not self.contexts or context_id in self.contexts

    def matches(self, event: Described) -> bool:
        if self.contexts and event.context_id not in self.contexts:
            return False
        if self.kinds and event.kind not in self.kinds:
            return False
        if self.agents and not (self.agents & event.agents):
            return False
        if (self.types or self.meta) and event.unit_type is None:
            return False
        if self.types and event.unit_type not in self.types:
            return False
        return all(event.meta.get(key) == value for key, value in self.meta.items())


@dataclass(eq=False)
class Subscriber:
    id: int
    agent_id: str
    filter: Filter
    cursor: int
    """The last seq this subscriber was sent (or skipped past)."""
    heartbeat: float
    cursor_name: str | None = None
    _send: trio.MemorySendChannel[tuple[Described, float]] | None = None
    _receive: trio.MemoryReceiveChannel[tuple[Described, float]] | None = None
    was_live: bool = False


@dataclass
class HubStatistics:
    subscribers: int
    live: int
    published: int
    delivered: int
    detached_for_lag: int


@dataclass
class EventHub:
    store: Store
    buffer: int
    max_lag: int
    head: int = 0
    """The newest published seq."""
    subscribers: set[Subscriber] = field(default_factory=set)
    _live: set[Subscriber] = field(default_factory=set)
    published: int = 0
    delivered: int = 0
    detached_for_lag: int = 0
    fanout: Histogram = field(default_factory=Histogram)
    """From publication (durable, applied) to the push written to a live subscriber."""

    def publish(self, events: Iterable[Described]) -> None:
        """Hand durable events to live subscribers; never waits."""
        now = trio.current_time()
        for event in events:
            self.head = max(self.head, event.seq)
            self.published += 1
            for subscriber in list(self._live):
                if not subscriber.filter.matches(event):
                    continue
                assert subscriber._send is not None
                try:
                    subscriber._send.send_nowait((event, now))
                except trio.WouldBlock:
                    self._detach(subscriber)
                    self.detached_for_lag += 1

    def publish_passing(self, event: AnyEvent) -> None:
        """Hand live subscribers an event that is not in the journal (in cluster mode,
        a lease change this machine saw in the leases bucket, §9.1); never waits.

        It is numbered with the newest seq published before it (so a client that
        resumes after it misses nothing of the journal, and reads nothing twice), it
        moves no subscriber's cursor, and it is not stored: a subscriber that is
        catching up (a new one, or one detached for lag) does not get it, and no
        ``watch --after`` or named cursor shows it again.
        """
        numbered = msgspec.structs.replace(event, seq=self.head)
        self.publish([dataclasses.replace(describe_live(numbered), passing=True)])

    def _attach(self, subscriber: Subscriber) -> None:
        send, receive = trio.open_memory_channel[tuple[Described, float]](self.buffer)
        subscriber._send, subscriber._receive = send, receive
        self._live.add(subscriber)
        subscriber.was_live = True

    def _detach(self, subscriber: Subscriber) -> None:
        self._live.discard(subscriber)
        if subscriber._send is not None:
            subscriber._send.close()  # the subscriber drains, then goes back to the store

    def watchers(self, context_id: str) -> list[str]:
        return sorted({s.agent_id for s in self.subscribers if s.filter.covers(context_id)})

    def statistics(self) -> HubStatistics:
        return HubStatistics(len(self.subscribers), len(self._live), self.published,
                             self.delivered, self.detached_for_lag)

    async def serve(
        self,
        subscriber: Subscriber,
        push: Callable[[bytes], Awaitable[None]],
        encode_push: Callable[[int, bytes], bytes],
        on_delivered: Callable[[int], None] | None = None,
    ) -> None:
        """Deliver events to one subscriber until cancelled or lagged too far.

        Args:
            push: writes an encoded frame to the subscriber's connection.
            encode_push: frames an event's bytes for this subscription.
        """
        self.subscribers.add(subscriber)
        try:
            while True:
                if not await self._catch_up(subscriber, push, encode_push):
                    return
                await self._follow(subscriber, push, encode_push)
        finally:
            self._detach(subscriber)
            self.subscribers.discard(subscriber)

    async def _catch_up(self, subscriber: Subscriber, push: Callable[[bytes], Awaitable[None]],
                        encode_push: Callable[[int, bytes], bytes]) -> bool:
        """Read the store after the cursor, then go live; False if lagged out."""
        while True:
            if subscriber.was_live and self.head - subscriber.cursor > self.max_lag:
                await push(_encoder.encode(Lagged(subscription=subscriber.id,
                                                  cursor=subscriber.cursor,
                                                  head_seq=self.head)))
                return False
            stored = self.store.events_after(subscriber.cursor, READ_BATCH)
            if not stored:
                self._attach(subscriber)  # no await since the read: no gap
                return True
            for seq, value in stored:
                event = describe_stored(value)
                if subscriber.filter.matches(event):
                    await push(encode_push(subscriber.id, event.data))
                    self.delivered += 1
                subscriber.cursor = seq

    async def _follow(self, subscriber: Subscriber, push: Callable[[bytes], Awaitable[None]],
                      encode_push: Callable[[int, bytes], bytes]) -> None:
        receive = subscriber._receive
        assert receive is not None
        while True:
            if subscriber in self._live and receive.statistics().current_buffer_used == 0:
                # Still attached and nothing buffered: everything published so far that
                # matched has been sent, so the cursor may move on to the head. (Once
                # detached, events past the buffer were never handed over: keep it.)
                subscriber.cursor = max(subscriber.cursor, self.head)
            with trio.move_on_after(subscriber.heartbeat or math.inf) as idle:
                try:
                    event, published = await receive.receive()
                except trio.EndOfChannel:
                    return  # detached for lag: back to the store
            if idle.cancelled_caught:
                await push(_encoder.encode(Heartbeat(subscription=subscriber.id,
                                                     head_seq=self.head,
                                                     cursor=subscriber.cursor)))
                continue
            if event.passing:
                await push(encode_push(subscriber.id, event.data))
                self.delivered += 1
                continue
            if event.seq <= subscriber.cursor:
                continue  # already sent during catch-up
            await push(encode_push(subscriber.id, event.data))
            self.fanout.observe(trio.current_time() - published)
            self.delivered += 1
            subscriber.cursor = event.seq
