"""Following the live stream with the blocking client.

A :class:`Subscription` is an iterator over the events the daemon pushes for it
(and the heartbeats it sends when idle). :func:`watch` adds what a long-running
follower needs: when the daemon goes away it reconnects, and it resumes after
the last event it delivered, so nothing is lost or repeated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from engram_cli.client.errors import ClientTimeout, Unavailable
from engramd.protocol import Event, EventPush, Heartbeat, Lagged, Push, Subscribe, Subscribed

if TYPE_CHECKING:
    from engram_cli.client.blocking import Client


P = TypeVar("P", bound="Position")


class LaggedBehind(Unavailable):
    """The subscription fell too far behind and the daemon ended it; resume from ``cursor``."""

    def __init__(self, cursor: int) -> None:
        super().__init__(f"fell too far behind the stream (at seq {cursor}); resume from there")
        self.cursor = cursor


class Position:
    """Where a subscription stands; shared by the blocking and the trio flavour.

    ``cursor`` is the seq of the last event delivered (or passed over): resume
    there with ``subscribe(after=cursor)``.
    """

    def __init__(self, client: Any, request: Subscribe, reply: Subscribed) -> None:
        self.client = client
        self.request = request
        self.id = reply.subscription
        self.cursor = reply.after
        self.head_seq = reply.head_seq

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
        assert isinstance(push, Lagged)
        raise LaggedBehind(push.cursor)


class Subscription(Position):
    """Events of one subscription, in order; iterate it. Heartbeats come through too."""

    client: Client

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Event | Heartbeat:
        return self.accept(self.client.next_push(self.id))

    def ack(self) -> None:
        """Store the cursor under the subscription's name (``cursor=`` when subscribing)."""
        if self.request.cursor is None:
            raise ValueError("this subscription has no cursor name")
        self.client.ack_cursor(self.request.cursor, self.cursor)

    def close(self) -> None:
        self.client.unsubscribe(self.id)


def watch(
    client: Client,
    *,
    reconnect: bool = True,
    on_status: Callable[[str, Subscription | None], None] | None = None,
    retry_interval: float = 0.2,
    **options: Any,
) -> Iterator[Event | Heartbeat]:
    """Follow the stream for good, resuming after a daemon restart or a lag notice.

    Args:
        on_status: told ``"connected"`` (with the subscription) and
            ``"reconnecting"`` (with None) as the connection comes and goes.
        options: the filters and cursor of :func:`engram_cli.client.requests.subscribe`.
    """
    follower = Follower(options, on_status)
    while True:
        try:
            subscription = follower.connected(client.subscribe(**follower.options))
            for item in subscription:
                follower.passed(subscription)
                yield item
        except (Unavailable, ClientTimeout) as exc:
            if follower.must_reconnect(exc, reconnect):
                client.close()
                _wait_for_daemon(client, retry_interval)


class Follower:
    """What a follower that outlives its connections keeps (both clients' ``watch``):
    where to resume — after the last event it passed on — and whom to tell."""

    def __init__(self, options: dict[str, Any],
                 on_status: Callable[[str, Any], None] | None) -> None:
        self._after: int | None = options.pop("after", None)
        self._filters = options
        self._on_status = on_status

    @property
    def options(self) -> dict[str, Any]:
        """What to subscribe with now."""
        return {**self._filters, "after": self._after}

    def connected(self, subscription: P) -> P:
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


def _wait_for_daemon(client: Client, interval: float) -> None:
    """Reconnect to the daemon that went away, without starting one of our own.

    Whoever stopped or restarts it (a supervisor, a person, a test) owns that
    decision; a follower that started its own could race the real one.
    """
    autostart, client.autostart = client.autostart, False
    try:
        while True:
            try:
                client.connect()
                client.wait_ready()
                return
            except (Unavailable, ClientTimeout):
                client.close()
                time.sleep(interval)
    finally:
        client.autostart = autostart
