"""The daemon over its real socket: handshake, requests, hostile input, limits, stop."""

from __future__ import annotations

import os
import socket

import msgspec
import pytest
import trio

from engram_cli.client.asynchronous import open_client
from engram_cli.client.errors import RateLimited, Unavailable, VersionMismatch
from engramd.config import DaemonConfig
from engramd.protocol import (
    PROTOCOL_VERSION,
    ErrorReply,
    GetStatus,
    Hello,
    Ping,
    Pong,
    encode_frame,
)
from engramd.protocol.framing import PREFIX
from engramd.server import Server
from tests.conftest import (
    RawConnection,
    ThreadedDaemon,
    connect,
    make_config,
    start_threaded,
    wait_until,
)


def greeted(config: DaemonConfig) -> RawConnection:
    return RawConnection.greeted(config.socket, "r")


def assert_still_serving(config: DaemonConfig) -> None:
    with connect(config) as other:
        assert other.ping().daemon_version


# -- the trio client, in the daemon's own trio run ---------------------------


async def test_trio_client_ping_and_status(daemon: Server, config: DaemonConfig) -> None:
    with trio.fail_after(10):
        async with open_client(config.socket, autostart=False, agent_id="t1") as engram:
            assert engram.welcome is not None and engram.welcome.pid == os.getpid()
            pong = await engram.ping()
            status = await engram.status()
    assert pong.uptime >= 0
    assert status.state == "ready"
    assert status.socket == config.socket and status.data_dir == config.data_dir
    assert status.connections == 1


async def test_many_tasks_share_one_trio_connection(daemon: Server, config: DaemonConfig) -> None:
    replies: list[Pong] = []

    async def one(engram) -> None:  # type: ignore[no-untyped-def]
        replies.append(await engram.ping())

    with trio.fail_after(10):
        async with open_client(config.socket, autostart=False) as engram, \
                trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(one, engram)
    assert len(replies) == 200
    assert daemon.requests_served == 200


# -- the blocking client against a daemon in a thread ------------------------


def test_blocking_client_round_trip(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config, "b1") as engram:
        assert engram.daemon_pid == os.getpid()
        status = engram.status()
        assert engram.ping().daemon_version == status.daemon_version
    assert status.limits.max_frame_bytes == config.max_frame_bytes


def test_pipelined_requests_are_all_answered(env: dict[str, str]) -> None:
    config = make_config(env, **{"limits.max_inflight_per_connection": "4"})
    with start_threaded(config), connect(config) as engram:
        ids = [engram.send(Ping(id=engram.next_id())) for _ in range(500)]
        replies = [engram.receive(request_id) for request_id in reversed(ids)]
    assert all(isinstance(reply, Pong) for reply in replies)
    assert [reply.id for reply in replies] == list(reversed(ids))  # type: ignore[union-attr]


def test_oversized_frame_gets_an_error_and_only_that_connection_closes(env: dict[str, str]) -> None:
    config = make_config(env, **{"limits.max_frame_bytes": "4096"})
    with start_threaded(config):
        raw = greeted(config)
        raw.send_raw(PREFIX.pack(4097))
        error = raw.receive_error()
        assert error.code == "too_large" and error.id is None
        assert "4097" in error.message
        assert raw.closed_by_peer()
        assert_still_serving(config)


def test_garbage_frame_gets_an_error_and_a_close(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    raw = greeted(config)
    raw.send_raw(encode_frame(b"\xc1\xc1\xc1"))
    assert raw.receive_error().code == "bad_request"
    assert raw.closed_by_peer()
    assert_still_serving(config)


def test_truncated_frame_then_hang_up_leaves_the_daemon_serving(
    threaded_daemon: ThreadedDaemon,
) -> None:
    config = threaded_daemon.config
    raw = greeted(config)
    raw.send_raw(encode_frame(msgspec.msgpack.encode(Ping(id=2)))[:-2])
    raw.close()
    assert_still_serving(config)


def test_invalid_request_is_answered_and_the_connection_lives_on(
    threaded_daemon: ThreadedDaemon,
) -> None:
    raw = greeted(threaded_daemon.config)
    raw.send_raw(encode_frame(msgspec.msgpack.encode({"msg": "ping", "id": 5, "extra": 1})))
    error = raw.receive_error()
    assert (error.id, error.code) == (5, "bad_request")
    raw.send_raw(encode_frame(msgspec.msgpack.encode({"msg": "teleport", "id": 6})))
    error = raw.receive_error()
    assert (error.id, error.code) == (6, "bad_request")
    raw.send(Ping(id=7))
    reply = raw.receive()
    assert isinstance(reply, Pong) and reply.id == 7


def test_request_before_hello_is_refused(threaded_daemon: ThreadedDaemon) -> None:
    raw = RawConnection(threaded_daemon.config.socket)
    raw.send(Ping(id=1))
    assert raw.receive_error().code == "bad_request"
    assert raw.closed_by_peer()


def test_version_mismatch_is_refused_with_its_code(threaded_daemon: ThreadedDaemon) -> None:
    raw = RawConnection(threaded_daemon.config.socket)
    raw.send(Hello(id=1, protocol_version=PROTOCOL_VERSION + 1, client_name="future",
                   agent_id="a"))
    error = raw.receive_error()
    assert (error.id, error.code) == (1, "version_mismatch")
    assert f"protocol {PROTOCOL_VERSION}" in error.message
    assert raw.closed_by_peer()


def test_blocking_client_raises_version_mismatch(
    threaded_daemon: ThreadedDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("engram_cli.client.blocking.PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    with pytest.raises(VersionMismatch) as caught:
        connect(threaded_daemon.config).connect()
    assert caught.value.code == "version_mismatch"


def test_empty_agent_id_is_refused(threaded_daemon: ThreadedDaemon) -> None:
    raw = RawConnection(threaded_daemon.config.socket)
    raw.send(Hello(id=1, protocol_version=PROTOCOL_VERSION, client_name="x", agent_id=""))
    assert raw.receive_error().code == "bad_request"


def test_silent_connection_is_dropped_after_the_handshake_timeout(env: dict[str, str]) -> None:
    config = make_config(env, **{"limits.handshake_timeout": "0.2"})
    with start_threaded(config):
        raw = RawConnection(config.socket)
        error = raw.receive_error()
        assert "no hello" in error.message
        assert raw.closed_by_peer()
        assert_still_serving(config)


def test_connections_over_the_limit_are_refused(env: dict[str, str]) -> None:
    config = make_config(env, **{"limits.max_connections": "2", "limits.connection_reserve": "0"})
    with start_threaded(config) as running:
        first, second = connect(config), connect(config)
        first.connect()
        second.connect()
        with pytest.raises(Unavailable, match="too many connections"):
            connect(config).connect()
        first.close()
        assert running.server is not None
        wait_until(lambda: running.server.connection_count < 2, "a connection slot")
        with connect(config) as third:
            third.ping()
        second.close()


def test_shutdown_request_answers_then_stops(threaded_daemon: ThreadedDaemon) -> None:
    config = threaded_daemon.config
    with connect(config) as engram:
        assert engram.shutdown().pid == os.getpid()
    threaded_daemon.thread.join(10)
    assert not threaded_daemon.thread.is_alive()
    assert not os.path.exists(config.socket)


def test_error_reply_without_id_is_sent_as_error_frame(threaded_daemon: ThreadedDaemon) -> None:
    raw = RawConnection(threaded_daemon.config.socket)
    raw.send_raw(b"\x00\x00\x00\x00")
    error = raw.receive()
    assert isinstance(error, ErrorReply) and error.id is None


def test_a_peer_that_stops_mid_frame_is_dropped(env: dict[str, str]) -> None:
    config = make_config(env, **{"limits.frame_timeout": "0.3"})
    with start_threaded(config) as running:
        raw = greeted(config)
        frame = encode_frame(msgspec.msgpack.encode(Ping(id=2)))
        raw.send_raw(frame[:3])
        assert_still_serving(config)
        error = raw.receive_error()
        assert error.code == "bad_request" and "frame not completed" in error.message
        assert raw.closed_by_peer()
        assert running.server is not None
        wait_until(lambda: running.server.connection_count == 0, "the slot given back")


def test_a_peer_that_reads_no_replies_is_dropped(env: dict[str, str]) -> None:
    config = make_config(env, **{"stream.dead_after_seconds": "0.5"})
    with start_threaded(config) as running:
        raw = greeted(config)
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Pipeline far more replies than the socket buffers hold, and read none.
        for request_id in range(2, 5000):
            try:
                raw.send(GetStatus(id=request_id))
            except (BrokenPipeError, ConnectionResetError):
                break
        assert running.server is not None
        with connect(config) as other:
            wait_until(lambda: other.ping() and running.server.connection_count == 1,
                       "the silent reader dropped")


def test_a_connection_over_its_rate_is_answered_rate_limited(env: dict[str, str]) -> None:
    config = make_config(env, **{"limits.rate_per_second": "0.01", "limits.rate_burst": "3"})
    with start_threaded(config):
        raw = greeted(config)
        for request_id in range(2, 12):
            raw.send(Ping(id=request_id))
        replies = [raw.receive() for _ in range(10)]
        granted = [reply for reply in replies if isinstance(reply, Pong)]
        limited = [reply for reply in replies if isinstance(reply, ErrorReply)]
        assert len(granted) == 3 and len(limited) == 7
        assert all(error.code == "rate_limited" and "retry in" in error.message
                   for error in limited)
        assert_still_serving(config)  # a new connection has its own bucket
        with connect(config) as engram:
            for _ in range(3):
                engram.ping()
            with pytest.raises(RateLimited) as caught:
                engram.ping()
            assert caught.value.exit_code == 69
