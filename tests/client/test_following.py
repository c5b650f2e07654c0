"""Following the stream under a named cursor with the library (``Client.watch``,
``AsyncClient.watch``) across daemon restarts: each event once, in order, resumed
after what the follower delivered, never from the name's older acknowledgement."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
import trio

from engram_cli.client import Client, Subscription, Unavailable, open_client
from engram_cli.client.stream import Follower, Position
from engramd.protocol import Subscribe, Subscribed, UnitCreated
from tests.conftest import (
    WAIT,
    DaemonProcess,
    ThreadedDaemon,
    connect,
    start_engramd,
    wait_until,
)

HOW = ["restart", "kill -9"]
T = TypeVar("T")


def restart(daemon: DaemonProcess, how: str) -> None:
    """Stop the daemon (SIGTERM, or SIGKILL) and start it again on the same journal."""
    if how == "kill -9":
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(WAIT)
    else:
        assert daemon.stop() == 0
    daemon.process = start_engramd(daemon.env)


def write(socket: str, count: int, tag: str) -> list[int]:
    with connect(socket) as engram:
        return [engram.create_unit("f", "MESSAGE", f"{tag}{n}").seq for n in range(count)]


def stored_cursor(socket: str, name: str, agent: str) -> int:
    """Where *agent*'s cursor *name* stands: a subscription under it starts there."""
    with connect(socket, agent) as engram:
        subscription = engram.subscribe(cursor=name)
        subscription.close()
        return subscription.cursor


def following(socket: str) -> bool:
    with connect(socket) as engram:
        return "follower" in engram.context_info("f").watching


def unit_seqs(subscription: Subscription, count: int) -> list[int]:
    seqs: list[int] = []
    for item in subscription:
        if isinstance(item, UnitCreated):
            seqs.append(item.seq)
            if len(seqs) == count:
                break
    return seqs


def test_a_follower_resubscribes_after_what_it_delivered_without_the_name() -> None:
    follower = Follower({"cursor": "c", "after": 0, "contexts": ["x"]}, None)
    assert follower.options == {"contexts": ["x"], "after": 0, "cursor": "c"}
    position = Position(None, Subscribe(cursor="c", after=0),
                        Subscribed(id=1, subscription=1, after=7, head_seq=9))
    follower.connected(position)
    position.cursor = 9  # it delivered up to 9; the name may still say 7
    follower.passed(position)
    assert follower.options == {"contexts": ["x"], "after": 9}
    assert position.name == "c"


@pytest.mark.parametrize("how", HOW)
def test_watch_under_a_cursor_delivers_each_event_once_across_a_restart(
        engramd: DaemonProcess, how: str) -> None:
    socket = engramd.socket
    write(socket, 1, "context ")
    seen: list[int] = []
    stop = threading.Event()

    def follow() -> None:
        client = Client(socket, agent_id="follower", autostart=False, timeout=WAIT)
        first = True
        for item in client.watch(cursor="lib", contexts=["f"], kinds=["unit.created"],
                                 heartbeat=0.05, retry_interval=0.02):
            if isinstance(item, UnitCreated):
                seen.append(item.seq)
                if first:  # the name now trails what this follower delivered
                    client.ack_cursor("lib", item.seq)
                    first = False
            if stop.is_set():
                return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    wait_until(lambda: following(socket), "the follower to subscribe")
    before = write(socket, 5, "before ")
    wait_until(lambda: len(seen) == 5, "the first five events")
    assert stored_cursor(socket, "lib", "follower") == before[0]
    restart(engramd, how)
    after = write(socket, 3, "after ")
    wait_until(lambda: len(seen) >= 8, "the three events after the restart")
    stop.set()
    follower.join(WAIT)
    assert seen == before + after
    # Another follower under the name (the agent's) starts after its acknowledgement: at
    # least once.
    with connect(socket, "follower") as engram:
        again = engram.subscribe(cursor="lib", contexts=["f"], kinds=["unit.created"])
        assert unit_seqs(again, 7) == before[1:] + after


async def test_the_trio_watch_under_a_cursor_delivers_each_event_once_across_a_restart(
        engramd: DaemonProcess) -> None:
    socket = engramd.socket

    async def in_thread(function: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(function)

    async def until(predicate: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT):
            while not predicate():
                await trio.sleep(0.01)

    await in_thread(lambda: write(socket, 1, "context "))
    seen: list[int] = []
    with trio.fail_after(WAIT * 3):
        async with open_client(socket, agent_id="follower", autostart=False) as client:
            async def follow() -> None:
                first = True
                async for item in client.watch(cursor="alib", contexts=["f"],
                                               kinds=["unit.created"], heartbeat=0.05,
                                               retry_interval=0.02):
                    if isinstance(item, UnitCreated):
                        seen.append(item.seq)
                        if first:
                            await client.ack_cursor("alib", item.seq)
                            first = False

            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                await in_thread(lambda: wait_until(lambda: following(socket),
                                                   "the follower to subscribe"))
                before = await in_thread(lambda: write(socket, 5, "before "))
                await until(lambda: len(seen) == 5)
                await in_thread(lambda: restart(engramd, "restart"))
                after = await in_thread(lambda: write(socket, 3, "after "))
                await until(lambda: len(seen) >= 8)
                nursery.cancel_scope.cancel()
    assert seen == before + after


def test_a_subscription_ends_with_its_connection_even_if_the_client_connects_again(
        threaded_daemon: ThreadedDaemon) -> None:
    """A push comes only on the connection that subscribed: once the client is on
    another one, the subscription says it is gone instead of waiting for good."""
    with connect(threaded_daemon.config, timeout=WAIT) as engram:
        subscription = engram.subscribe()
        engram.close()
        with pytest.raises(Unavailable):
            next(subscription)  # not connected: no new connection made for it
        engram.ping()  # connected again, to a connection that has no such subscription
        with pytest.raises(Unavailable):
            next(subscription)
