"""Following the live stream: what the blocking and the trio client share.

A :class:`Position` is where a subscription stands (each client's subscription
builds on it); a :class:`Follower` is what a follower that outlives its connections
keeps, so that it resumes after the last event it delivered, nothing lost or
repeated; :class:`LaggedBehind` is the notice of a subscriber the daemon left behind.

A named cursor says where a follower *starts*, once: what the name holds is what its
consumers acknowledged, which trails what this follower has delivered. Resuming
from the name after a reconnect would hand out again, out of order, every event
delivered since the last acknowledgement; so a follower resumes from its own
position, and the name serves the next follower (a new process) alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from engram_cli.client.errors import ClientTimeout, Unavailable
from engramd.protocol import (
    Ended,
    Event,
    EventPush,
    Heartbeat,
    Lagged,
    Push,
    Subscribe,
    Subscribed,
    error_for,
)

P = TypeVar("P", bound="Position")


class LaggedBehind(Unavailable):
    """The subscription fell too far behind and the daemon ended it; resume from ``cursor``."""

    def __init__(self, cursor: int) -> None:
        super().__init__(f"fell too far behind the stream (at seq {cursor}); resume from there")
        self.cursor = cursor


class Position:
    """Where a subscription stands; shared by the blocking and the trio flavour.

    ``cursor`` is the seq of the last event delivered (or passed over): resume
    there with ``subscribe(after=cursor)``. ``name`` is the named cursor that
    ``ack()`` moves (the request's, or the one a :class:`Follower` started from).
    """

    def __init__(self, client: Any, request: Subscribe, reply: Subscribed) -> None:
        self.client = client
        self.request = request
        self.id = reply.subscription
        self.cursor = reply.after
        self.head_seq = reply.head_seq
        self.name = request.cursor

    def accept(self, push: Push) -> Event | Heartbeat:
        """Move along with *push* and return what to hand the caller."""
        if isinstance(push, EventPush):
            self.cursor = push.event.seq
            self.head_seq = max(self.head_seq, push.event.seq)
            return push.event
        if isinstance(push, Heartbeat):
            self.head_seq = push.head_seq
            self.cursor = max(self.cursor, push.cursor)
            return push
        if isinstance(push, Ended):
            raise error_for(push.code, push.message)
        assert isinstance(push, Lagged)
        raise LaggedBehind(push.cursor)


class Follower:
    """What a follower that outlives its connections keeps (both clients' ``watch``):
    where to resume — after the last event it passed on — and whom to tell.

    Its first subscription starts where ``cursor`` (a name) or ``after`` says; every
    later one (after a reconnect or a lag notice) starts after the last event this
    follower passed on, never behind it, whatever the name holds by then.
    """

    def __init__(self, options: dict[str, Any],
                 on_status: Callable[[str, Any], None] | None) -> None:
        self._after: int | None = options.pop("after", None)
        self._name: str | None = options.pop("cursor", None)
        self._started = False
        self._filters = options
        self._on_status = on_status

    @property
    def options(self) -> dict[str, Any]:
        """What to subscribe with now."""
        if self._started:
            return {**self._filters, "after": self._after}
        return {**self._filters, "after": self._after, "cursor": self._name}

    def connected(self, subscription: P) -> P:
        self._started = True
        subscription.name = self._name
        self.passed(subscription)
        if self._on_status:
            self._on_status("connected", subscription)
        return subscription

    def passed(self, subscription: Position) -> None:
        self._after = subscription.cursor

    def must_reconnect(self, exc: Unavailable | ClientTimeout, reconnect: bool) -> bool:
        """After *exc*: subscribe again at once (lagged behind), reconnect first, or raise."""
        if isinstance(exc, LaggedBehind):
            self._after = exc.cursor
            return False
        if not reconnect:
            raise exc
        if self._on_status:
            self._on_status("reconnecting", None)
        return True


