"""The gateway in front of people (issue 36): slow readers, many identities, hostile
input, the one error shape; the real ``engram gateway`` and ``engramd`` as processes."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hypercorn")

import httpx2
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from engram_cli.client import requests
from engram_cli.doors.gateway.link import STREAM_BUFFER_BYTES
from tests.conftest import WAIT, DaemonProcess, connect, run_cli, start_engramd, wait_until
from tests.doors.test_gateway import (
    Collected,
    Gateway,
    as_agent,
    error_code,
    gateway,
    open_gateway,
    open_gateway_streams,
    read_sse,
    sse_events,
)

pytestmark = pytest.mark.slow
__all__ = ["open_gateway"]  # a fixture, used by name


def daemon_connections(engramd: DaemonProcess) -> int:
    with connect(engramd.socket, "observer") as client:
        return int(client.stats().gauges["connections"]) - 1  # less this one


class RawStream:
    """An SSE client on a plain socket with a small receive buffer, reading only when
    told: a reader that pauses, as a slow browser or a stalled proxy does."""

    def __init__(self, gw: Gateway, query: str, *, buffer: int = 4096,
                 agent: str | None = None) -> None:
        """*agent*: the stream's ``X-Agent-ID`` (one agent has 64 streams at most)."""
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        self.sock.connect((host, int(port)))
        who = f"X-Agent-ID: {agent}\r\n" if agent else ""
        self.sock.sendall(f"GET /stream-sse?{query} HTTP/1.1\r\nHost: {host}\r\n{who}\r\n"
                          .encode())
        self.pending = b""
        self.head_read = False

    def events(self, timeout: float = WAIT) -> Iterator[dict[str, str]]:
        """Parsed events as they come, until *timeout* passes with nothing."""
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                return  # (a reset drops what the kernel held unread)
            if not data:
                return
            self.pending += data
            if not self.head_read:
                head, sep, rest = self.pending.partition(b"\r\n\r\n")
                if not sep:
                    continue
                assert head.startswith(b"HTTP/1.1 200"), head
                self.head_read, self.pending = True, rest
            yield from self._parse()

    def _parse(self) -> Iterator[dict[str, str]]:
        # Chunked transfer: strip the chunk sizes, keep the text.
        text, self.pending = _dechunk(self.pending)
        self._text = getattr(self, "_text", "") + text
        *blocks, self._text = self._text.split("\n\n")
        for block in blocks:
            event = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "event" in event:
                yield event

    def close(self) -> None:
        self.sock.close()


def _dechunk(data: bytes) -> tuple[str, bytes]:
    out = []
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if len(rest) < size + 2:
            break
        out.append(rest[:size])
        data = rest[size + 2:]
    return b"".join(out).decode(), data


def write_units(engramd: DaemonProcess, context: str, count: int, payload: str = "x") -> None:
    with connect(engramd.socket, "writer") as writer:
        for start in range(0, count, 500):
            writer.create_units(requests.draft(context, "MESSAGE", payload)
                                for _ in range(min(500, count - start)))


# -- 1. a slow reader ----------------------------------------------------------------

def test_a_paused_reader_with_a_small_buffer_gets_every_event_and_heartbeats(
        open_gateway: Gateway, engramd: DaemonProcess) -> None:
    """It stops reading while 20,000 units are written, then reads: every event, in
    order, at its own pace, and heartbeats while it is open; a fast reader beside it
    on the same daemon connections is never held up."""
    slow = RawStream(open_gateway, "context=flood&heartbeat=0.3")
    fast: list[int] = []

    def read_fast() -> None:
        with httpx2.Client(base_url=open_gateway.url, timeout=WAIT) as http, \
                http.stream("GET", "/stream-sse", params={"context": "flood"}) as response:
            for event in sse_events(response.iter_lines()):
                if event.get("event") == "unit.created":
                    fast.append(int(event["id"]))
                    if len(fast) == 20_000:
                        return

    reader = threading.Thread(target=read_fast)
    reader.start()
    wait_until(lambda: open_gateway_streams(open_gateway) >= 2, "both streams open")
    started = time.monotonic()
    write_units(engramd, "flood", 20_000, "y" * 100)
    reader.join(60)
    assert len(fast) == 20_000, "the fast reader was held up"
    fast_done = time.monotonic() - started
    seqs: list[int] = []
    heartbeats = 0
    for event in slow.events():
        if event["event"] == "unit.created":
            seqs.append(int(event["id"]))
        elif event["event"] == "heartbeat" and len(seqs) == 20_000:
            heartbeats += 1
            if heartbeats == 2:
                break
    slow.close()
    assert len(seqs) == 20_000 and seqs == sorted(set(seqs)) and seqs == fast
    assert heartbeats == 2
    assert fast_done < 60


def test_a_reader_that_takes_nothing_is_let_go_and_resumes_with_last_event_id(
        engramd: DaemonProcess) -> None:
    with gateway(engramd.env, "--stream-stall", "1") as gw:
        slow = RawStream(gw, "context=stall&after=0", buffer=2048)
        wait_until(lambda: open_gateway_streams(gw) >= 1, "the stream open")
        # More than the kernel's buffers on both sides hold (a few MB on loopback).
        write_units(engramd, "stall", 3000, "z" * 4000)
        wait_until(lambda: open_gateway_streams(gw) == 0, "the stalled stream let go")
        seqs = [int(e["id"]) for e in slow.events(2) if e["event"] == "unit.created"]
        slow.close()
        assert seqs == sorted(set(seqs)) and len(seqs) < 3000
        with httpx2.Client(base_url=gw.url, timeout=WAIT) as http, \
                http.stream("GET", "/stream-sse", params={"context": "stall"},
                            headers={"Last-Event-ID": str(seqs[-1] if seqs else 0)}
                            ) as response:
            for event in sse_events(response.iter_lines()):
                if event.get("event") == "unit.created":
                    seqs.append(int(event["id"]))
                    if len(seqs) == 3000:
                        break
        assert len(seqs) == 3000 and seqs == sorted(set(seqs))


# -- streams that come and go while the daemon restarts -------------------------------

class Churn:
    """Threads that open an SSE stream, read its status line, leave at once and open the
    next, until told to stop; what each status line said is counted."""

    def __init__(self, gw: Gateway, threads: int = 8) -> None:
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))
        self.statuses: dict[str, int] = {}
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._open, args=(n,)) for n in range(threads)]
        for thread in self.threads:
            thread.start()

    def _open(self, n: int) -> None:
        while not self.done.is_set():
            try:
                with socket.create_connection(self.address, timeout=WAIT) as sock:
                    sock.sendall(f"GET /stream-sse?context=churn HTTP/1.1\r\nHost: "
                                 f"127.0.0.1\r\nX-Agent-ID: c{n}\r\n\r\n".encode())
                    said = sock.recv(12)[9:12].decode() or "closed"
            except OSError as exc:
                said = type(exc).__name__
            with self.lock:
                self.statuses[said] = self.statuses.get(said, 0) + 1

    def count(self) -> int:
        with self.lock:
            return sum(self.statuses.values())

    def wait_for(self, more: int) -> None:
        mark = self.count()
        wait_until(lambda: self.count() >= mark + more, "streams to come and go")

    def stop(self) -> dict[str, int]:
        self.done.set()
        for thread in self.threads:
            thread.join(WAIT)
        return self.statuses


def test_streams_opened_and_closed_while_the_daemon_restarts_never_end_the_gateway(
        open_gateway: Gateway, engramd: DaemonProcess) -> None:
    """Every stream is answered 200 (they wait for the daemon), the gateway lives on, and
    a stream opened after gets what is written."""
    churn = Churn(open_gateway)
    try:
        for _ in range(3):
            churn.wait_for(20)
            engramd.stop()
            engramd.process = start_engramd(engramd.env)
        churn.wait_for(20)
    finally:
        statuses = churn.stop()
    assert open_gateway.process.poll() is None, open_gateway.process.stderr.read()  # type: ignore[union-attr]
    assert set(statuses) == {"200"}, statuses
    collected = Collected()
    reader = threading.Thread(target=read_sse, args=(open_gateway, {"context": "churn"}, 1,
                                                     collected))
    reader.start()
    wait_until(lambda: open_gateway_streams(open_gateway) >= 1, "the stream open")
    open_gateway.http.post("/workunit", json={"context_id": "churn", "payload": "after"})
    reader.join(WAIT)
    assert collected.error is None
    assert [e["unit"]["payload"] for e in collected.events] == ["after"]  # type: ignore[index]


def test_a_sigterm_as_100_streams_close_is_a_clean_exit(engramd: DaemonProcess) -> None:
    """The streams' subscriptions are ended in the background as the daemon connections
    close for the stop: exit status 0, and nothing in the log."""
    for _ in range(3):
        with gateway(engramd.env) as gw:
            streams = [RawStream(gw, f"context=term&heartbeat={n % 7 + 1}",
                                 agent=f"agent-{n % 4}") for n in range(100)]
            wait_until(lambda: open_gateway_streams(gw) == 100, "100 streams open")
            for stream in streams:
                stream.close()
            gw.process.send_signal(signal.SIGTERM)
            assert gw.process.wait(WAIT) == 0
            assert gw.process.stderr is not None
            err = gw.process.stderr.read()
            assert "Traceback" not in err and "error" not in err, err[-3000:]


def test_past_the_stream_cap_a_stream_is_refused_503_with_retry_after(
        engramd: DaemonProcess) -> None:
    """One daemon connection holds 64 streams: the 65th (SSE or WebSocket) is 503 at
    once, not an open stream without events; a place freed is a place again."""
    with gateway(engramd.env, "--daemon-connections", "1") as gw:
        streams = [RawStream(gw, "context=cap", agent=f"agent-{n % 2}") for n in range(64)]
        wait_until(lambda: open_gateway_streams(gw) == 64, "64 streams open")
        refused = gw.http.get("/stream-sse", params={"context": "cap"})
        assert refused.status_code == 503 and error_code(refused) == "unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        assert "--daemon-connections" in refused.json()["error"]["message"]
        with pytest.raises(InvalidStatus) as ws_refused:
            ws_connect(f"{gw.ws_url}/stream?context=cap", open_timeout=WAIT)
        assert ws_refused.value.response.status_code == 503
        streams.pop().close()
        wait_until(lambda: open_gateway_streams(gw) == 63, "a place freed")
        collected = Collected()
        reader = threading.Thread(target=read_sse, args=(gw, {"context": "cap"}, 1,
                                                         collected))
        reader.start()
        wait_until(lambda: open_gateway_streams(gw) == 64, "the stream open")
        gw.http.post("/workunit", json={"context_id": "cap", "payload": "in"})
        reader.join(WAIT)
        assert collected.error is None and len(collected.events) == 1
        for stream in streams:
            stream.close()


def _follow(gw: Gateway, params: dict[str, str], count: int) -> tuple[threading.Thread, Collected]:
    """An SSE reader of *count* events of any kind, in a thread."""
    collected = Collected()

    def read() -> None:
        try:
            with httpx2.Client(base_url=gw.url, timeout=WAIT) as http, \
                    http.stream("GET", "/stream-sse", params=params) as response:
                assert response.status_code == 200
                for event in sse_events(response.iter_lines()):
                    if "id" in event:
                        collected.events.append({"kind": event["event"],
                                                 **json.loads(event["data"])})
                        if len(collected.events) >= count:
                            return
        except BaseException as exc:
            collected.error = exc

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: open_gateway_streams(gw) >= 1, "the stream open")
    return reader, collected


def test_a_stream_opened_while_the_daemon_is_away_loses_nothing_written_after(
        open_gateway: Gateway, engramd: DaemonProcess) -> None:
    """Opened with no ``after`` while engramd is down, answered 200: what is written
    once it is back (a new context, two units) all comes, from the moment it opened."""
    open_gateway.http.get("/readyz")  # the gateway has seen the daemon's head
    write_units(engramd, "before", 2)
    engramd.stop()
    reader, collected = _follow(open_gateway, {"context": "later"}, 3)
    engramd.process = start_engramd(engramd.env)
    with connect(engramd.socket, "writer") as writer:  # at once, before the stream is back
        writer.create_units([requests.draft("later", "MESSAGE", "one")])
        writer.create_units([requests.draft("later", "MESSAGE", "two")])
    reader.join(WAIT)
    assert collected.error is None, collected.error
    assert [e["kind"] for e in collected.events] == \
        ["context.created", "unit.created", "unit.created"]
    assert [e["unit"]["payload"] for e in collected.events[1:]] == ["one", "two"]  # type: ignore[index]


def test_a_gateway_that_never_saw_the_daemon_streams_from_the_start_of_the_log(
        engramd: DaemonProcess) -> None:
    write_units(engramd, "early", 1)
    engramd.stop()
    with gateway({**engramd.env, "ENGRAM_NO_AUTOSTART": "1"}) as gw:
        reader, collected = _follow(gw, {"context": "early", "kind": "unit.created"}, 2)
        engramd.process = start_engramd(engramd.env)
        write_units(engramd, "early", 1)
        reader.join(WAIT)
        assert collected.error is None, collected.error
        assert len(collected.events) == 2


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def pushes_delivered(engramd: DaemonProcess) -> int:
    with connect(engramd.socket, "observer") as client:
        stream = client.status().stream
        assert stream is not None
        return stream.delivered


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_idle_readers_of_big_units_hold_a_bounded_number_of_bytes(
        engramd: DaemonProcess) -> None:
    """10 SSE readers that read nothing while 130 units of 100 KB are written: each
    subscription's window (128 pushes) comes to the gateway, which keeps at most
    STREAM_BUFFER_BYTES of it per stream and --stream-memory in all (re-reading the
    rest from the log when the reader gets there), not 10 x 128 x 100 KB."""
    memory = 8 * 1024 * 1024
    with gateway(engramd.env, "--stream-memory", str(memory)) as gw:
        readers = [RawStream(gw, "context=big&heartbeat=60") for _ in range(10)]
        try:
            wait_until(lambda: open_gateway_streams(gw) == 10, "10 streams open")
            before = resident_mb(gw.process.pid)
            pushed = pushes_delivered(engramd)
            write_units(engramd, "big", 130, "y" * 100_000)
            wait_until(lambda: pushes_delivered(engramd) >= pushed + 10 * 128,
                       "every window to reach the gateway")
            grown = resident_mb(gw.process.pid) - before
            assert grown < 60, f"the gateway grew by {grown:.0f} MB"
            assert 0 < stream_buffer_bytes(gw) <= min(memory, 10 * STREAM_BUFFER_BYTES)
            # Every event still reaches a reader that reads, in order.
            seqs: list[int] = []
            for event in readers[0].events():
                if event["event"] == "unit.created":
                    seqs.append(int(event["id"]))
                    if len(seqs) == 130:
                        break
            assert len(seqs) == 130 and seqs == sorted(set(seqs))
        finally:
            for reader in readers:
                reader.close()
        wait_until(lambda: open_gateway_streams(gw) == 0, "the streams closed")
        assert stream_buffer_bytes(gw) == 0


def stream_buffer_bytes(gw: Gateway) -> int:
    found = re.search(r"^engram_gateway_stream_buffer_bytes (\d+)$",
                      gw.http.get("/metrics").text, re.MULTILINE)
    assert found
    return int(found.group(1))


# -- hostile input without credentials ------------------------------------------------

def raw_request(gw: Gateway, head: bytes) -> socket.socket:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    sock.sendall(head)
    return sock


def answer_of(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the response on *sock* (read until it closes)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, json.loads(body) if body.startswith(b"{") else {}


SLOW_POST = (b"POST /workunit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
             b"\r\nContent-Length: 1000\r\n\r\n{")


def test_a_caller_without_credentials_is_refused_before_its_body(
        engramd: DaemonProcess) -> None:
    with gateway(engramd.env, "--auth", "token") as gw:
        with raw_request(gw, SLOW_POST) as sock:  # the rest of the body never comes
            status, body = answer_of(sock)
        assert status == 401 and body["error"]["code"] == "unauthenticated"


def test_a_body_longer_than_max_body_is_refused_by_its_length_at_once(
        engramd: DaemonProcess) -> None:
    with gateway(engramd.env, "--max-body", "1000") as gw:
        with raw_request(gw, b"POST /workunit HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Length: 1000000000\r\n\r\n") as sock:
            status, body = answer_of(sock)
        assert status == 413 and body["error"]["code"] == "too_large"
        assert "--max-body" in body["error"]["message"]


def test_a_body_that_does_not_come_in_time_is_408(engramd: DaemonProcess) -> None:
    with gateway(engramd.env, "--body-timeout", "0.5") as gw:
        started = time.monotonic()
        with raw_request(gw, SLOW_POST) as sock:
            status, body = answer_of(sock)
        assert status == 408 and body["error"]["code"] == "request_timeout"
        assert time.monotonic() - started < WAIT
        # A body that comes, slowly but in time, is read.
        with raw_request(gw, b"POST /workunit HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Length: 40\r\nConnection: close\r\n\r\n") as sock:
            for part in (b'{"context_id": "c", ', b'"payload": "slow"}  '):
                time.sleep(0.1)
                sock.sendall(part)
            status, body = answer_of(sock)
        assert status == 201, body


def test_out_of_file_descriptors_is_said_once_and_slow_bodies_give_them_back(
        engramd: DaemonProcess) -> None:
    """64 descriptors, 80 connections that send half a body: accept fails (EMFILE) until
    the body timeout cuts them; the log says so once, without a traceback, and
    /healthz answers again."""
    with gateway(engramd.env, "--body-timeout", "1", open_files=64) as gw:
        socks = [raw_request(gw, SLOW_POST) for _ in range(80)]

        def healthy() -> bool:
            try:
                return httpx2.get(f"{gw.url}/healthz", timeout=1).status_code == 200
            except httpx2.TransportError:
                return False

        try:
            wait_until(healthy, "/healthz to answer again", timeout=WAIT * 2)
        finally:
            for sock in socks:
                sock.close()
        gw.process.terminate()
        assert gw.process.wait(WAIT) == 0
        assert gw.process.stderr is not None
        err = gw.process.stderr.read()
        assert "Traceback" not in err, err[-2000:]
        assert sum("file descriptors" in line for line in err.splitlines()) == 1, err[-2000:]


# -- 2. many identities --------------------------------------------------------------

def test_300_identities_and_300_streams_leave_the_daemon_room(
        open_gateway: Gateway, engramd: DaemonProcess) -> None:
    http = open_gateway.http
    added = http.post("/tasks", json={"title": "only once"}, headers=as_agent("boss"))
    task_id = added.json()["task"]["id"]
    claimed = http.post(f"/tasks/{task_id}/claim", json={}, headers=as_agent("bob"))
    assert claimed.status_code == 201, claimed.text
    claim = claimed.json()["task"]["claim"]
    for n in range(300):
        reply = http.get("/inbox/count", headers=as_agent(f"agent-{n}"))
        assert reply.status_code == 200, reply.text
    streams = [RawStream(open_gateway, f"context=s{n}", agent=f"agent-{n}") for n in range(300)]
    try:
        wait_until(lambda: open_gateway_streams(open_gateway) == 300, "300 streams open",
                   timeout=60)
        assert daemon_connections(engramd) <= 8
        ping = run_cli(engramd.env, "ping")
        assert ping.returncode == 0, ping.stderr
        assert http.get("/readyz").status_code == 200
    finally:
        for stream in streams:
            stream.close()
    # The claim lived through it all: nobody else gets the task; its token is checked.
    assert http.post(f"/tasks/{task_id}/claim", json={},
                     headers=as_agent("carol")).status_code == 409
    assert http.get(f"/tasks/{task_id}").json()["task"]["claim"]["lock_id"] == claim["lock_id"]
    for wrong in (1, 999_999):
        for verb in ("done", "release"):
            refused = http.post(f"/tasks/{task_id}/{verb}", json={"token": wrong},
                                headers=as_agent("bob"))
            assert refused.status_code == 409, refused.text
    done = http.post(f"/tasks/{task_id}/done", json={"token": claim["fencing_token"]},
                     headers=as_agent("bob"))
    assert done.status_code == 200 and done.json()["task"]["state"] == "done"


def test_a_lease_over_http_lives_by_its_ttl_and_renewals(open_gateway: Gateway) -> None:
    http = open_gateway.http
    took = http.post("/locks", json={"resources": "deploy:prod", "ttl": 1},
                     headers=as_agent("ops"))
    assert took.status_code == 201, took.text
    lease = took.json()["leases"][0]
    assert lease["holder_pid"] == 0 and not lease["bound_to_connection"]
    again = http.post("/locks", json={"resources": "deploy:prod"}, headers=as_agent("ops"))
    assert again.status_code == 409  # another request of the same agent is another session
    renewed = http.post("/locks/renew", json={"lock_id": lease["lock_id"], "ttl": 30},
                        headers=as_agent("ops"))
    assert renewed.status_code == 200, renewed.text
    time.sleep(1.5)
    held = http.get("/locks/deploy:prod").json()
    assert held["lease"]["lock_id"] == lease["lock_id"]


# -- 4. errors, metrics, inputs ------------------------------------------------------

def test_metrics_checks_the_callers_token(engramd: DaemonProcess) -> None:
    token = run_cli(engramd.env, "agent", "token", "create", "scraper").stdout.strip()
    with gateway(engramd.env, "--auth", "token") as gw:
        assert gw.http.get("/metrics").status_code == 401
        forged = gw.http.get("/metrics", headers={"Authorization": "Bearer egt_anything"})
        assert forged.status_code == 401 and error_code(forged) == "unauthenticated"
        good = gw.http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert good.status_code == 200 and "engram_gateway_daemon_up 1" in good.text


BIG = 2**64


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", f"/workunits/c?limit={BIG}", None),
    ("GET", f"/workunits/c?after={BIG}", None),
    ("GET", f"/contexts?limit={BIG}", None),
    ("GET", f"/tasks?limit={BIG}", None),
    ("GET", f"/inbox?limit={BIG}", None),
    ("POST", "/search", {"query": "x", "limit": BIG}),
    ("POST", "/search", {"query": "x", "offset": BIG}),
    ("POST", "/search/relationships", {"unit_id": "x", "depth": BIG}),
    ("POST", "/tasks", {"title": "t", "priority": BIG}),
    ("POST", "/tasks/01a20000-0000-7000-8000-000000000000/done", {"token": BIG}),
    ("POST", "/workunit", {"context_id": "c", "fence": {"resource": "r", "token": BIG}}),
    ("POST", "/search", "[" * 1000 + "]" * 1000),
    ("POST", "/workunit", '{"context_id": "c", "meta": ' + "[" * 1000 + "]" * 1000 + "}"),
    ("POST", "/contexts", '{"meta": ' + '{"a": ' * 1000 + "1" + "}" * 1001),
])
def test_huge_integers_and_deep_json_are_bad_requests(
        open_gateway: Gateway, method: str, path: str, body: object) -> None:
    content = body if isinstance(body, str) else json.dumps(body) if body else None
    reply = open_gateway.http.request(method, path, content=content)
    assert reply.status_code == 400, reply.text
    assert error_code(reply) == "bad_request"


def test_every_error_is_the_one_json_shape(open_gateway: Gateway) -> None:
    http = open_gateway.http
    for path, status, code in (("/nowhere", 404, "not_found"),
                               ("/workunit/", 404, "not_found")):
        reply = http.get(path)
        assert (reply.status_code, error_code(reply)) == (status, code), reply.text
    wrong_method = http.delete("/workunit")
    assert wrong_method.status_code == 405 and error_code(wrong_method) == "method_not_allowed"
    assert "POST" in wrong_method.headers["allow"]
    unknown = http.get("/inbox", params={"limitt": "3"})
    assert unknown.status_code == 400 and "limitt" in unknown.json()["error"]["message"]
    assert http.get("/workunits/c", params={"limit": "0"}).status_code == 400
    assert http.get("/inbox", headers={"X-Agent-ID": "bob\x1b"}).status_code == 400
    unit = http.post("/workunit", json={"context_id": "c", "payload": "p"}).json()["units"][0]
    assert unit["pid"] == 0  # not the gateway's
    sent = http.post("/messages", json={"to": "bob", "payload": "hi", "new_recipients": True})
    wrong_agent = http.post(f"/inbox/{sent.json()['id']}/ack", headers=as_agent("eve"))
    assert wrong_agent.status_code == 403


def requests_total(gw: Gateway) -> dict[tuple[str, str, str], int]:
    """``engram_gateway_http_requests_total`` by (method, route, status)."""
    found = re.findall(r'^engram_gateway_http_requests_total\{method="([^"]*)",route="([^"]*)",'
                       r'status="(\d+)"\} (\d+)$', gw.http.get("/metrics").text, re.MULTILINE)
    return {(method, route, status): int(count) for method, route, status, count in found}


def test_methods_and_paths_a_client_invents_are_one_label_each(open_gateway: Gateway) -> None:
    invented = 40
    for n in range(invented):
        with raw_request(open_gateway, f"M{n}X /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         f"Connection: close\r\n\r\n".encode()) as sock:
            assert answer_of(sock)[0] == 405
        assert open_gateway.http.get(f"/nowhere-{n}").status_code == 404
        assert open_gateway.http.request("PUT", f"/elsewhere/{n}").status_code == 404
    counted = requests_total(open_gateway)
    assert {method for method, _, _ in counted} <= {"GET", "PUT", "other"}, counted
    assert counted["other", "/healthz", "405"] == invented
    assert counted["GET", "unmatched", "404"] == invented
    assert counted["PUT", "unmatched", "404"] == invented
    routes = {route for _, route, _ in counted}
    assert routes <= {"/healthz", "/metrics", "unmatched"}, routes


def test_aborted_uploads_and_leaving_stream_clients_log_no_tracebacks(
        engramd: DaemonProcess) -> None:
    with gateway(engramd.env) as gw:
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        for _ in range(50):
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(b"POST /workunit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                             b"application/json\r\nContent-Length: 100000\r\n\r\n{\"con")
        for _ in range(10):
            stream = RawStream(gw, "context=leave")
            wait_until(lambda: open_gateway_streams(gw) >= 1, "a stream open")
            stream.close()
        wait_until(lambda: open_gateway_streams(gw) == 0, "the streams closed")
        gw.process.terminate()
        gw.process.wait(WAIT)
        assert gw.process.stderr is not None
        err = gw.process.stderr.read()
        assert "Traceback" not in err and "ExceptionGroup" not in err, err[:2000]
        assert len(err.splitlines()) <= 2, err[:2000]


def test_a_non_pem_public_key_is_refused_at_start(env: dict[str, str], scratch: str) -> None:
    not_pem = Path(scratch, "key.pem")
    not_pem.write_text("not a key\n")
    result = subprocess.run(
        [sys.executable, "-m", "engram_cli", "gateway", "--auth", "jwt",
         "--jwt-public-key", str(not_pem)], env={**env, "ENGRAM_NO_AUTOSTART": "1"},
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and "not a PEM public key" in result.stderr


# -- 3. streams end with their credentials -------------------------------------------

def _stream_error(gw: Gateway, headers: dict[str, str], then: object = None,
                  params: dict[str, str] | None = None) -> dict[str, object]:
    """Open an SSE stream, run *then* once it is open, and return its error event."""
    with httpx2.Client(base_url=gw.url, timeout=WAIT) as http, \
            http.stream("GET", "/stream-sse", params={"context": "ends", "heartbeat": "0.2",
                                                      **(params or {})},
                        headers=headers) as response:
        assert response.status_code == 200
        for event in sse_events(response.iter_lines()):
            if event["event"] == "heartbeat" and callable(then):
                then()
                then = None
            if event["event"] == "error":
                return dict(json.loads(event["data"]))
    raise AssertionError("the stream ended without an error event")


def test_a_stream_ends_at_its_jwts_exp_with_an_error_event(
        engramd: DaemonProcess, scratch: str) -> None:
    from tests.doors.test_gateway import SECRET, _claims, _hs256

    secret = Path(scratch, "secret")
    secret.write_text(SECRET)
    with gateway(engramd.env, "--auth", "jwt", "--jwt-secret-file", str(secret)) as gw:
        token = _hs256(_claims(exp=int(time.time()) + 2))
        started = time.monotonic()
        error = _stream_error(gw, {"Authorization": f"Bearer {token}"})
        assert error["code"] == "unauthenticated" and "expired" in str(error["message"])
        assert 1 <= time.monotonic() - started < 5


def test_a_ticket_lives_no_longer_than_the_jwt_behind_it(
        engramd: DaemonProcess, scratch: str) -> None:
    from tests.doors.test_gateway import SECRET, _claims, _hs256

    secret = Path(scratch, "secret")
    secret.write_text(SECRET)
    with gateway(engramd.env, "--auth", "jwt", "--jwt-secret-file", str(secret)) as gw:
        bearer = {"Authorization": f"Bearer {_hs256(_claims(exp=int(time.time()) + 3))}"}
        tickets = [gw.http.post("/stream/ticket", headers=bearer).json()["ticket"]
                   for _ in range(3)]
        # A stream opened with a ticket ends at the JWT's exp, as one opened with it does.
        with pytest.raises(ConnectionClosed) as closed, ws_connect(
                f"{gw.ws_url}/stream?context=ends&heartbeat=0.2&ticket={tickets[0]}",
                open_timeout=WAIT) as ws:
            error = _stream_error(gw, {}, params={"ticket": tickets[1]})
            assert error["code"] == "unauthenticated" and "expired" in str(error["message"])
            while (message := json.loads(ws.recv(timeout=WAIT)))["kind"] == "heartbeat":
                pass
            assert message["code"] == "unauthenticated", message
            ws.recv(timeout=WAIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        # The JWT has expired (both streams ended): its last ticket opens nothing.
        late = gw.http.get("/stream-sse", params={"ticket": tickets[2]})
        assert late.status_code == 401 and "expired" in late.json()["error"]["message"]


def test_a_stream_ends_when_its_agent_token_is_revoked(engramd: DaemonProcess) -> None:
    token = run_cli(engramd.env, "agent", "token", "create", "watcher").stdout.strip()
    with gateway(engramd.env, "--auth", "token") as gw:
        def revoke() -> None:
            assert run_cli(engramd.env, "agent", "token", "revoke", "watcher").returncode == 0

        error = _stream_error(gw, {"Authorization": f"Bearer {token}"}, revoke)
        assert error["code"] == "forbidden" and "revoked" in str(error["message"])


def test_a_websocket_whose_token_is_revoked_closes_with_1008(engramd: DaemonProcess) -> None:
    token = run_cli(engramd.env, "agent", "token", "create", "wswatcher").stdout.strip()
    with gateway(engramd.env, "--auth", "token") as gw, pytest.raises(ConnectionClosed) as \
            closed, ws_connect(f"{gw.ws_url}/stream?context=ends&heartbeat=0.2",
                               additional_headers={"Authorization": f"Bearer {token}"},
                               open_timeout=WAIT) as ws:
        assert json.loads(ws.recv(timeout=WAIT))["kind"] == "heartbeat"
        assert run_cli(engramd.env, "agent", "token", "revoke", "wswatcher").returncode == 0
        while (message := json.loads(ws.recv(timeout=WAIT)))["kind"] == "heartbeat":
            pass
        assert message["kind"] == "error" and message["code"] == "forbidden", message
        ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_two_or_an_empty_x_agent_id_is_400(open_gateway: Gateway) -> None:
    http = open_gateway.http
    two = http.get("/inbox/count", headers=[("X-Agent-ID", "alice"), ("X-Agent-ID", "bob")])
    assert two.status_code == 400 and "2 X-Agent-ID headers" in two.json()["error"]["message"]
    empty = http.get("/inbox/count", headers={"X-Agent-ID": ""})
    assert empty.status_code == 400, empty.text
    assert "X-Agent-ID is empty" in empty.json()["error"]["message"]
    with pytest.raises(InvalidStatus) as stream:
        ws_connect(f"{open_gateway.ws_url}/stream", open_timeout=WAIT,
                   additional_headers=[("X-Agent-ID", "a"), ("X-Agent-ID", "b")])
    assert stream.value.response.status_code == 400
    assert http.get("/inbox/count", headers=as_agent("alice")).status_code == 200
    assert http.get("/inbox/count").status_code == 200  # none: the gateway's agent


# -- 6. the seed's clients -----------------------------------------------------------

def test_the_seeds_bodies_parameters_and_event_names(open_gateway: Gateway) -> None:
    http = open_gateway.http
    seqs = [http.post("/workunit", json={"context_id": "seed", "payload": f"p{n}"},
                      headers=as_agent("old")).json()["units"][0]["seq"] for n in range(5)]
    first = http.get("/workunits/seed", params={"limit": 2}).json()
    older = http.get("/workunits/seed", params={"limit": 2,
                                                "cursor": first["next_cursor"]}).json()
    assert {u["seq"] for u in first["units"]} | {u["seq"] for u in older["units"]} == \
        set(seqs[1:])  # the next page, not page 1 again
    lease = http.post("/locks", json={"resource_path": "seed/file"}, headers=as_agent("old"))
    assert lease.status_code == 201 and lease.json()["leases"][0]["resource"] == "seed/file"
    wait_until(lambda: http.post("/search", json={"query": "p1", "context_id": "seed"}
                                 ).json().get("total") == 1, "the seed's search to find it")
    unit_id = first["units"][0]["id"]
    related = http.post("/search/relationships", json={"target_id": unit_id})
    assert related.status_code == 200, related.text
    pinned = http.patch("/contexts/seed", json={"pin_units": [unit_id]})
    assert pinned.status_code == 200 and unit_id in pinned.json()["context"]["pinned_units"]
    assert http.post("/workunit", json={"context_id": "seed", "agent_id": "someone"}
                     ).status_code == 400
    with httpx2.Client(base_url=open_gateway.url, timeout=WAIT) as client, \
            client.stream("GET", "/stream-sse",
                          params={"context": "seed", "after": "0", "kind": "unit.created",
                                  "events": "seed"}) as response:
        event = next(e for e in sse_events(response.iter_lines()) if "id" in e)
        assert event["event"] == "workunit" and int(event["id"]) == seqs[0]
