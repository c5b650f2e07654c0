"""The gateway's rows of ``engram bench`` (``http.write``, ``http.identities300``,
``sse.fanout10``): a gateway process in front of the bench's daemon, HTTP writes and
SSE watcher processes, all with the standard library's HTTP client (so the bench needs
no HTTP client package). The HTTP rows say the gateway's own CPU time per request, and
the daemon connections it held, in their note."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping

from engram_cli.bench.cli import engram_command
from engram_cli.bench.harness import (
    PAYLOAD,
    BenchTarget,
    Measurement,
    cpu_seconds,
    daemon_cpu,
    timed_loop,
)
from engram_cli.bench.stream import fan_out, start_watchers

START_TIMEOUT = 30.0


class GatewayMissing(RuntimeError):
    """``engram gateway`` cannot run here (the ``engram-journal[http]`` extra is not installed)."""


@contextlib.contextmanager
def running_gateway(engram: list[str], env: Mapping[str, str]
                    ) -> Iterator[tuple[str, int, int]]:
    """``engram gateway`` on a free loopback port: yields (host, port, its pid); stopped
    afterwards."""
    process = subprocess.Popen([*engram, "gateway", "--listen", "127.0.0.1:0", "--json"],
                               env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        if not line:
            said = process.stderr.read().strip()
            raise GatewayMissing(said.splitlines()[-1] if said else "engram gateway failed")
        url = urllib.parse.urlsplit(json.loads(line)["listening"][0])
        assert url.hostname is not None and url.port is not None
        yield url.hostname, url.port, process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class HttpWriter:
    """One keep-alive HTTP connection writing one unit per ``POST /workunit``."""

    def __init__(self, host: str, port: int, context_id: str, payload: bytes,
                 identities: int = 1) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=60)
        self.body = json.dumps({"context_id": context_id,
                                "payload": payload.decode()}).encode()
        self.headers = [{"Content-Type": "application/json", "X-Agent-ID": f"bench-{n}"}
                        for n in range(identities)]
        self.written = 0

    def write(self) -> None:
        headers = self.headers[self.written % len(self.headers)]
        self.written += 1
        self.connection.request("POST", "/workunit", body=self.body, headers=headers)
        response = self.connection.getresponse()
        answer = response.read()
        if response.status != 201:
            raise RuntimeError(f"POST /workunit: {response.status} {answer[:200]!r}")

    def close(self) -> None:
        self.connection.close()


def sse_worker(host: str, port: int, context_id: str, count: int) -> None:
    """An SSE watcher process: says "ready" once subscribed (the gateway answers the
    request only then), then prints ``seq:receipt`` for *count* unit events.

    It reads the socket itself: http.client's reader of a chunked body waits for more
    than one event before it hands back a line, which would measure that buffer.
    """
    query = urllib.parse.urlencode({"context": context_id, "kind": "unit.created"})
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(f"GET /stream-sse?{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "X-Agent-ID: fan\r\n\r\n".encode())
        lines = sock.makefile("rb")
        status = lines.readline()
        if b" 200 " not in status:
            raise SystemExit(f"stream-sse: {status!r}")
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        received: list[str] = []
        while len(received) < count:
            line = lines.readline()
            if not line:
                break
            if line.startswith(b"id:"):  # chunk sizes and other fields never start so
                received.append(f"{int(line[3:])}:{time.time():.7f}")
    sys.stdout.write(" ".join(received) + "\n")


def bench_http_write(target: BenchTarget) -> Measurement:
    """One durable unit write (256 bytes) per `POST /workunit` through `engram gateway`,
    one keep-alive connection: beside write.single, the same write over the socket."""
    return _http_writes(target, "bench-http", identities=1)


def bench_http_identities300(target: BenchTarget) -> Measurement:
    """As http.write, each request from the next of 300 identities (X-Agent-ID) in turn:
    the gateway speaks for each on its few daemon connections."""
    return _http_writes(target, "bench-http-300", identities=300)


def _http_writes(target: BenchTarget, context_id: str, identities: int) -> Measurement:
    try:
        with running_gateway(engram_command(), target.env) as (host, port, pid):
            writer = HttpWriter(host, port, context_id, PAYLOAD, identities)
            try:
                for _ in range(max(50, identities)):
                    writer.write()
                with daemon_cpu(target, lambda: cpu_seconds(pid)) as gateway_cpu:
                    measurement = timed_loop(target, target.count(3000), writer.write)
                held = _daemon_connections(host, port)
            finally:
                writer.close()
    except GatewayMissing as exc:
        return Measurement([], 0.0, note=f"not run: {exc}")
    spent = gateway_cpu()
    per_request = f"{spent * 1000 / len(measurement.latencies):.3f}" if spent else "-"
    who = "X-Agent-ID" if identities == 1 else f"{identities} X-Agent-IDs in turn"
    measurement.note = (f"HTTP/1.1 keep-alive, {who}; gateway cpu ms/req {per_request} "
                        f"(cpu column: the daemon's); {held} daemon connection(s)")
    return measurement


def _daemon_connections(host: str, port: int) -> str:
    """The daemon's open connections, as the gateway's /metrics says (its own, and this
    bench's)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        for line in connection.getresponse().read().decode().splitlines():
            if line.startswith("engram_connections "):
                return str(int(float(line.split()[1])))
    finally:
        connection.close()
    return "?"


def bench_sse_fanout10(target: BenchTarget) -> Measurement:
    """A write's send (over the socket) -> its event received at each of 10 SSE clients
    of `engram gateway`: beside stream.fanout10, the same fan-out to socket watchers."""

    count = target.count(2000)
    context_id = f"bench-sse-{os.getpid()}"
    code = ("import sys; from engram_cli.bench.gateway import sse_worker; "
            "sse_worker(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))")
    try:
        with running_gateway(engram_command(), target.env) as (host, port, _):
            watchers = start_watchers(target, code, host, str(port), context_id, str(count))
            return fan_out(target, watchers, context_id, count)
    except GatewayMissing as exc:
        return Measurement([], 0.0, note=f"not run: {exc}")
