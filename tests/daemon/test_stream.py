"""The live stream through the real daemon: replay, live, filters, slow and dead readers."""

from __future__ import annotations

import os
import threading

import msgspec
import pytest

from engram_cli.client import requests
from engram_cli.client.errors import BadRequest
from engram_cli.client.stream import LaggedBehind
from engramd.config import DaemonConfig
from engramd.protocol import (
    PROTOCOL_VERSION,
    EventPush,
    Heartbeat,
    Hello,
    Lagged,
    Subscribed,
    UnitCreated,
    Welcome,
)
from engramd.storage import Store, seq_bytes
from tests.conftest import (
    RawConnection,
    ThreadedDaemon,
    connect,
    make_config,
    start_threaded,
    wait_until,
)


def all_seqs(config: DaemonConfig) -> list[int]:
    with connect(config) as engram:
        journal = engram.status().journal
        assert journal is not None
        return list(range(1, journal.last_seq + 1))


def events(subscription, count: int) -> list:  # type: ignore[no-untyped-def]
    received = []
    for item in subscription:
        if not isinstance(item, Heartbeat):
            received.append(item)
            if len(received) == count:
                return received
    return received


def test_replay_joins_the_live_flow_with_no_gap_or_duplicate(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    stop = threading.Event()

    def write(name: str) -> None:
        with connect(config, name) as engram:
            while not stop.is_set():
                engram.create_unit(f"ctx-{name}", "MESSAGE", "x")

    writers = [threading.Thread(target=write, args=(f"w{n}",)) for n in range(3)]
    for writer in writers:
        writer.start()
    try:
        with connect(config) as engram:
            wait_until(lambda: engram.status().journal.last_seq > 300,  # type: ignore[union-attr]
                       "some history")
            subscription = engram.subscribe(after=0)
            received = [event.seq for event in events(subscription, 1500)]
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
    assert received == list(range(1, 1501))


def test_subscription_from_now_skips_history(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config) as engram:
        engram.create_unit("c", "MESSAGE", "old")
        subscription = engram.subscribe()
        new = engram.create_unit("c", "MESSAGE", "new")
        (event,) = events(subscription, 1)
    assert isinstance(event, UnitCreated) and event.unit == new


def test_filters(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config) as alice, connect(config, "bob") as bob:
        by_context = alice.subscribe(after=0, contexts=["a"])
        by_kind = alice.subscribe(after=0, kinds=["context.created"])
        by_agent = alice.subscribe(after=0, agents=["bob"], kinds=["unit.created"])
        by_type = alice.subscribe(after=0, types=["tool_call"])
        by_meta = alice.subscribe(after=0, meta={"exit": "1"})
        alice.create_unit("a", "MESSAGE", "1")
        bob.create_unit("b", "TOOL_CALL", "2", meta={"exit": "1"})
        alice.create_unit("b", "TOOL_RESULT", "3", meta={"exit": "0"})
        bob.create_unit("a", "ERROR", "4", meta={"exit": "1"})
        assert [e.seq for e in events(by_context, 4)] == [1, 2, 7, 8]  # 7: bob joins a
        assert [e.context_id for e in events(by_kind, 2)] == ["a", "b"]
        assert [e.unit.payload for e in events(by_agent, 2)] == [b"2", b"4"]
        assert [e.unit.payload for e in events(by_type, 1)] == [b"2"]
        assert [e.unit.payload for e in events(by_meta, 2)] == [b"2", b"4"]
        with pytest.raises(BadRequest, match="unknown event kind"):
            alice.subscribe(kinds=["unit.deleted"])


def test_idle_subscription_gets_heartbeats_with_the_head(threaded_daemon: ThreadedDaemon) -> None:
    with connect(threaded_daemon.config) as engram:
        engram.create_unit("quiet", "MESSAGE", "x")
        subscription = engram.subscribe(contexts=["elsewhere"], heartbeat=0.05)
        beat = next(subscription)
    assert isinstance(beat, Heartbeat) and beat.head_seq == 2 and beat.cursor == 2


def test_presence_shows_who_is_watching(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config) as engram:
        engram.create_unit("room", "MESSAGE", "x")
        watcher = connect(config, "carol")
        subscription = watcher.subscribe(contexts=["room"])
        wait_until(lambda: engram.context_info("room").watching == ["carol"], "presence")
        assert engram.context_info("room").context.agent_ids == ["alice"]
        subscription.close()
        wait_until(lambda: engram.context_info("room").watching == [], "carol gone")
        watcher.subscribe()  # everything: watching every context
        wait_until(lambda: engram.context_info("room").watching == ["carol"], "presence")
        watcher.close()
        wait_until(lambda: engram.context_info("room").watching == [], "disconnect")


def test_named_cursor_resumes_where_it_acknowledged(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config) as engram:
        for number in range(6):
            engram.create_unit("n", "MESSAGE", str(number))
    with connect(config, "bot") as bot:
        subscription = bot.subscribe(after=0, cursor="bot-feed", kinds=["unit.created"])
        first = events(subscription, 3)
        subscription.ack()
    with connect(config, "bot") as bot:
        resumed = events(bot.subscribe(cursor="bot-feed", kinds=["unit.created"]), 3)
    assert [e.unit.payload for e in first + resumed] == [str(n).encode() for n in range(6)]



def test_a_new_cursor_is_stored_where_its_first_subscription_starts(
        threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config) as engram:
        engram.create_unit("n", "MESSAGE", "before")
        with connect(config, "bot") as bot:
            first = bot.subscribe(cursor="fresh", kinds=["unit.created"])  # from now on
            start = first.cursor
            first.close()  # nothing delivered, nothing acknowledged
        later = [engram.create_unit("n", "MESSAGE", str(n)).seq for n in range(3)]
        with connect(config, "bot") as bot:
            again = bot.subscribe(cursor="fresh", kinds=["unit.created"])
            assert again.cursor == start
            assert [e.seq for e in events(again, 3)] == later
            # A name that exists keeps its seq: `after` is only where a new one starts.
            assert bot.subscribe(cursor="fresh", after=0).cursor == start
            assert bot.subscribe(cursor="from-zero", after=0).cursor == 0
            assert bot.subscribe(cursor="from-zero").cursor == 0


def test_named_cursors_belong_to_their_agent(threaded_daemon: ThreadedDaemon) -> None:
    """Two agents may use one name: each has its own position, never the other's."""
    config = threaded_daemon.config
    with connect(config) as engram:
        seqs = [engram.create_unit("n", "MESSAGE", str(n)).seq for n in range(4)]
    with connect(config, "alice") as alice, connect(config, "bob") as bob:
        alice.ack_cursor("feed", seqs[1])
        theirs = bob.subscribe(cursor="feed", kinds=["unit.created"])
        assert theirs.cursor == seqs[-1]  # a name new to bob: from now, not alice's place
        theirs.close()
        bob.ack_cursor("feed", seqs[-1])
        mine = alice.subscribe(cursor="feed", kinds=["unit.created"])
        assert mine.cursor == seqs[1]
        assert [e.seq for e in events(mine, 2)] == seqs[2:]


def test_an_ack_beyond_the_head_is_refused(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "alice") as alice:
        head = alice.create_unit("n", "MESSAGE", "x").seq
        alice.ack_cursor("feed", head)
        for beyond in (head + 1, 10**12):
            with pytest.raises(BadRequest, match="beyond the newest"):
                alice.ack_cursor("feed", beyond)
        with pytest.raises(BadRequest):
            alice.ack_cursor("feed", -1)
        assert alice.subscribe(cursor="feed").cursor == head


def test_a_cursor_stored_before_cursors_had_owners_is_where_each_agent_starts(
        config: DaemonConfig) -> None:
    """A store from before: ``n/<name>`` with no agent. Each agent's first use of the name
    starts there; its acknowledgements are its own from then on."""
    with start_threaded(config), connect(config) as engram:
        seqs = [engram.create_unit("n", "MESSAGE", str(n)).seq for n in range(4)]
    store = Store(os.path.join(config.data_dir, "store"))
    store.db.put(b"n/old-feed", seq_bytes(seqs[1]))  # as an engramd before owners wrote it
    store.db.close()
    with start_threaded(config), connect(config, "alice") as alice, \
            connect(config, "bob") as bob:
        assert alice.subscribe(cursor="old-feed").cursor == seqs[1]
        alice.ack_cursor("old-feed", seqs[3])
        assert bob.subscribe(cursor="old-feed").cursor == seqs[1]
        assert alice.subscribe(cursor="old-feed").cursor == seqs[3]


def subscribed_raw(config: DaemonConfig, after: int = 0) -> RawConnection:
    raw = RawConnection(config.socket)
    raw.send(Hello(id=1, protocol_version=PROTOCOL_VERSION, client_name="slow", agent_id="s"))
    assert isinstance(raw.receive(), Welcome)
    raw.send(msgspec.structs.replace(requests.subscribe(after=after), id=2))
    assert isinstance(raw.receive(), Subscribed)
    return raw


def test_a_reader_that_stalls_slows_no_writer_and_misses_nothing(env: dict[str, str]) -> None:
    config = make_config(env, **{"stream.buffer_events": "8"})
    with start_threaded(config) as running:
        stalled = subscribed_raw(config)
        with connect(config) as engram:
            payload = b"p" * 2000
            for _ in range(20):  # 2,000 units: far more than the socket buffers hold
                engram.create_units([requests.draft("s", "MESSAGE", payload)] * 100)
            head = engram.status().journal.last_seq  # type: ignore[union-attr]
        assert running.server is not None and running.server.engine.ready().hub is not None
        assert running.server.engine.ready().hub.detached_for_lag >= 1
        seqs = []
        while len(seqs) < head:
            message = stalled.receive()
            if isinstance(message, EventPush):
                seqs.append(message.event.seq)
        assert seqs == list(range(1, head + 1))


def test_past_the_lag_limit_the_reader_is_told_and_may_resume(env: dict[str, str]) -> None:
    config = make_config(env, **{"stream.buffer_events": "4", "stream.max_lag_events": "50"})
    with start_threaded(config):
        stalled = subscribed_raw(config)
        with connect(config) as engram:
            for _ in range(20):
                engram.create_units([requests.draft("l", "MESSAGE", b"q" * 2000)] * 100)
        seqs = []
        while True:
            message = stalled.receive()
            if isinstance(message, Lagged):
                break
            if isinstance(message, EventPush):
                seqs.append(message.event.seq)
        assert message.cursor == seqs[-1] and message.head_seq > message.cursor + 50
        with connect(config) as engram:
            rest = events(engram.subscribe(after=message.cursor), message.head_seq - message.cursor)
        assert seqs + [e.seq for e in rest] == list(range(1, message.head_seq + 1))


def test_library_reports_a_lag_as_lagged_behind(env: dict[str, str]) -> None:
    config = make_config(env, **{"stream.buffer_events": "2", "stream.max_lag_events": "10"})
    with start_threaded(config), connect(config, "reader") as reader, connect(config) as writer:
        subscription = reader.subscribe(after=0)
        for _ in range(20):
            writer.create_units([requests.draft("x", "MESSAGE", b"r" * 4000)] * 100)
        with pytest.raises(LaggedBehind) as caught:
            for _ in subscription:
                pass
        assert caught.value.cursor >= 0


def test_a_reader_that_reads_nothing_is_dropped(env: dict[str, str]) -> None:
    config = make_config(env, **{"stream.dead_after_seconds": "0.3"})
    with start_threaded(config) as running:
        stalled = subscribed_raw(config)
        assert running.server is not None
        with connect(config) as engram:
            for _ in range(20):
                engram.create_units([requests.draft("d", "MESSAGE", b"z" * 2000)] * 100)
            wait_until(lambda: running.server.connection_count == 1, "the silent reader dropped")
            engram.ping()
        stalled.close()


async def test_trio_client_subscription_is_an_async_iterator(daemon, config: DaemonConfig) -> None:  # type: ignore[no-untyped-def]
    import trio

    from engram_cli.client.asynchronous import open_client

    with trio.fail_after(10):
        async with open_client(config.socket, autostart=False, agent_id="t") as engram:
            subscription = await engram.subscribe(after=0, kinds=["unit.created"],
                                                  heartbeat=0.05)
            written = [await engram.create_unit("async", "MESSAGE", f"u{n}") for n in range(5)]
            received = []
            beats = 0
            async for item in subscription:
                if isinstance(item, Heartbeat):
                    beats += 1
                else:
                    received.append(item.unit)
                if len(received) == 5 and beats:
                    break
            await subscription.aclose()
            assert engram.welcome is not None
    assert received == written
