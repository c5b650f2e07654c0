"""Hostile peers against the real daemon: fuzzed frames, decode bombs, slow and silent
clients. The daemon never dies, answers or drops only the offender, keeps its memory,
and serves everyone else meanwhile."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engram_cli.client import Client
from engramd.config import DaemonConfig
from engramd.protocol import Ping, encode_frame
from tests.conftest import (
    WAIT,
    DaemonProcess,
    RawConnection,
    ThreadedDaemon,
    make_config,
    start_threaded,
    wait_until,
)
from tests.fuzzing import encode, request_maps
from tests.protocol.test_fuzz import AMPLIFIERS

FUZZ_READ_TIMEOUT = 0.2


def greeted(path: str) -> RawConnection:
    return RawConnection.greeted(path, "hostile")


def read_what_comes(raw: RawConnection, frames: int) -> None:
    """Read replies until each frame is answered, the daemon hangs up, or a pause."""
    raw.sock.settimeout(FUZZ_READ_TIMEOUT)
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        for _ in range(frames):
            if raw.receive() is None:
                return


def assert_no_internal_errors(socket_path: str) -> None:
    with Client(socket_path, autostart=False) as client:
        client.ping()
        counters = client.stats().counters
    assert counters.get('errors_total{code="internal"}', 0) == 0
    assert counters.get("connections_failed_total", 0) == 0


frames = st.lists(
    request_maps(exclude=frozenset({"shutdown", "hello"})).map(encode).map(encode_frame)
    | st.binary(min_size=1, max_size=64),
    min_size=1, max_size=4)


def test_fuzzed_frames_never_hurt_the_daemon(threaded_daemon: ThreadedDaemon) -> None:
    path = threaded_daemon.config.socket

    @settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(frames)
    def one_connection(sent: list[bytes]) -> None:
        raw = greeted(path)
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for frame in sent:
                    raw.send_raw(frame)
            read_what_comes(raw, len(sent))
        finally:
            raw.close()

    one_connection()
    assert_no_internal_errors(path)


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_decode_bombs_leave_memory_flat_and_others_served(engramd: DaemonProcess) -> None:
    with Client(engramd.socket, autostart=False) as warm:
        for number in range(50):
            warm.create_unit("warm", "MESSAGE", f"warm {number}")
        warm.search("warm")
    before = peak_rss_bytes(engramd.process.pid)
    attackers = [greeted(engramd.socket) for _ in range(4)]
    with Client(engramd.socket, autostart=False) as bystander:
        for round_number in range(3):
            for raw in attackers:
                for body in AMPLIFIERS.values():
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        raw.send_raw(encode_frame(body))
            bystander.create_unit("calm", "MESSAGE", f"still here {round_number}")
            attackers = [greeted(engramd.socket) for _ in attackers]  # dropped ones return
        assert len(bystander.list_units("calm").units) == 3
    for raw in attackers:
        raw.close()
    grown = peak_rss_bytes(engramd.process.pid) - before
    assert grown < 64 * 2**20, f"peak RSS grew {grown / 2**20:.1f} MiB"
    assert_no_internal_errors(engramd.socket)


def pipeline_until_dropped(raw: RawConnection) -> None:
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sock.settimeout(WAIT)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for request_id in itertools.count(2):
            raw.send(Ping(id=request_id))


def test_silent_half_framed_and_deaf_clients_are_shed(env: dict[str, str]) -> None:
    config: DaemonConfig = make_config(env, **{
        "limits.handshake_timeout": "0.5", "limits.frame_timeout": "0.5",
        "stream.dead_after_seconds": "0.5"})
    with start_threaded(config) as running:
        server = running.server
        assert server is not None
        silent = [RawConnection(config.socket) for _ in range(60)]
        half = [greeted(config.socket) for _ in range(40)]
        for raw in half:
            raw.send_raw(encode_frame(encode({"msg": "ping", "id": 2}))[:5])
        deaf = [greeted(config.socket) for _ in range(10)]
        # Each deaf peer pipelines pings and reads nothing until the daemon cuts it off
        # (its pings then fail): however slow the machine, its replies do fill the buffers.
        pipelining = [threading.Thread(target=pipeline_until_dropped, args=(raw,))
                      for raw in deaf]
        for thread in pipelining:
            thread.start()
        with Client(config.socket, autostart=False) as calm:
            for number in range(100):
                calm.create_unit("calm", "MESSAGE", f"unit {number}")
            for thread in pipelining:
                thread.join(WAIT)
            wait_until(lambda: server.connection_count == 1, "every hostile peer dropped")
            assert len(calm.list_units("calm", limit=1000).units) == 100
        for raw in silent + half + deaf:
            raw.close()
        assert_no_internal_errors(config.socket)
