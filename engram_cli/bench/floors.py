"""This design's floors for ``engram bench`` (the ``floor.*`` rows): what a request
costs before engram does any of its own work.

The server is :mod:`engramd.floor` (engramd's shape with nothing in it); its client here
is a blocking Python socket, as engram's client library is. A row of engramd minus the
matching floor is engram's own work (building the change, ids, encoding, the store, the
index); the floor itself is what one Python event loop, one Python client and the
kernel's wake-ups cost on this machine.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

from engram_cli.bench.harness import (
    PAYLOAD,
    BenchTarget,
    Measurement,
    cpu_seconds,
    daemon_cpu,
    ready,
    report,
    sockets_beside,
    timed_loop,
    timed_processes,
    workers,
)
from engramd.protocol.framing import FrameDecoder, encode_frame

ECHO = b"e"
"""A request answered at once."""
DURABLE = b"d"
"""A request answered after 256 bytes were appended to a file and fdatasync'd."""
THREAD = b"t"
"""A request answered after a job that does nothing ran in the journal thread."""
PROCESS = b"p"
"""A request answered after a worker process sent it back."""


@contextlib.contextmanager
def floor_server(directory: str, sockets: str | None = None) -> Iterator[tuple[str, int]]:
    """The floor server on a socket in *sockets* (else *directory*), writing in
    *directory*: (socket path, pid); killed afterwards."""
    socket_path = os.path.join(sockets or directory, "floor.sock")
    server = subprocess.Popen(
        [sys.executable, "-m", "engramd.floor", socket_path, os.path.join(directory, "floor.log")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the bench's floor server failed to start")
        yield socket_path, server.pid
    finally:
        server.kill()
        server.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)


class FloorClient:
    """A blocking client of the floor server: one request at a time, as engram's client."""

    def __init__(self, socket_path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(socket_path)
        self._decoder = FrameDecoder()

    def request(self, kind: bytes) -> None:
        self._sock.sendall(encode_frame(kind))
        while self._decoder.next_frame() is None:
            self._decoder.receive_data(self._sock.recv(65536))

    def close(self) -> None:
        self._sock.close()


def bench_floor_fdatasync(target: BenchTarget) -> Measurement:
    """The disk's floor: append 256 bytes and fdatasync, in the data dir's file system."""
    directory = target.data_dir or tempfile.gettempdir()
    fd, path = tempfile.mkstemp(dir=directory, prefix="bench-fsync-")
    try:
        def append() -> None:
            os.write(fd, PAYLOAD)
            os.fdatasync(fd)

        measurement = timed_loop(target, target.count(2000), append)
    finally:
        os.close(fd)
        os.unlink(path)
    measurement.note = "floor under every durable write"
    return measurement


def _on_floor_server(target: BenchTarget,
                     measure: Callable[[str, Callable[[], float | None]], Measurement]
                     ) -> Measurement:
    """``measure(socket, cpu)`` against the floor server (``engramd.floor``), which fsyncs
    in the data dir's file system; *cpu* reads its CPU seconds."""
    with tempfile.TemporaryDirectory(dir=target.data_dir, prefix="bench-floor-") as scratch, \
            sockets_beside(scratch) as sockets, \
            floor_server(scratch, sockets) as (socket_path, pid):
        return measure(socket_path, lambda: cpu_seconds(pid))


def _floor_one_client(target: BenchTarget, kind: bytes, count: int, note: str
                      ) -> Measurement:
    def measure(socket_path: str, cpu: Callable[[], float | None]) -> Measurement:
        client = FloorClient(socket_path)
        try:
            for _ in range(100):
                client.request(kind)
            measurement = timed_loop(target, target.count(count),
                                      lambda: client.request(kind), cpu)
        finally:
            client.close()
        measurement.note = note
        return measurement

    return _on_floor_server(target, measure)


def bench_floor_roundtrip(target: BenchTarget) -> Measurement:
    """This design's floor under every request: a trio server of engramd's shape that does
    nothing, one blocking Python client (cpu: the server's)."""
    return _floor_one_client(target, ECHO, 5000,
                             "floor: a request to a trio server that answers at once")


def bench_floor_durable(target: BenchTarget) -> Measurement:
    """This design's floor under a durable write: the same server appends 256 bytes and
    fdatasyncs in a long-lived thread before it answers (cpu: the server's)."""
    return _floor_one_client(target, DURABLE, 3000,
                             "floor: the same, answered after an append + fdatasync in a "
                             "journal thread")


def bench_floor_handoff_thread(target: BenchTarget) -> Measurement:
    """The hand-off to engramd's journal thread and back alone: the same server runs a job
    that does nothing there before it answers (cpu: the server's)."""
    return _floor_one_client(target, THREAD, 5000,
                             "floor: the same, answered after an empty job in the journal "
                             "thread")


def bench_floor_handoff_process(target: BenchTarget) -> Measurement:
    """The hand-off a design on more processes would pay: the same server sends the
    request to a worker process over a socket pair and answers with what comes back (cpu:
    the server's, the worker's not counted)."""
    return _floor_one_client(target, PROCESS, 5000,
                             "floor: the same, answered after a worker process echoed it")


def bench_floor_roundtrip_8procs(target: BenchTarget) -> Measurement:
    """This design's floor under 8 serial clients: 8 processes, one request to the
    do-nothing server at a time each (cpu: the server's)."""
    def measure(socket_path: str, cpu_of: Callable[[], float | None]) -> Measurement:
        with daemon_cpu(target, cpu_of) as cpu:
            outputs, wall = workers(target, _floor_worker, [
                [socket_path, ECHO.decode(), str(target.count(2000))] for _ in range(8)])
        latencies = [float(value) for out in outputs for value in out.split()]
        return Measurement(latencies, wall, daemon_cpu=cpu(),
                           note="floor: requests/s a trio server answers 8 serial clients")

    return _on_floor_server(target, measure)


def _floor_worker(socket_path: str, kind_text: str, count_text: str) -> None:
    """A client of the floor server: waits for "go" on stdin, makes its requests one at a
    time, prints their latencies."""
    client = FloorClient(socket_path)
    client.request(ECHO)
    ready()
    latencies = []
    for _ in range(int(count_text)):
        started = time.perf_counter()
        client.request(kind_text.encode())
        latencies.append(time.perf_counter() - started)
    client.close()
    report(latencies)


def bench_floor_flock(target: BenchTarget) -> Measurement:
    """Wall time of `flock FILE true`: the classic tool's floor."""
    path = os.path.join(target.data_dir or tempfile.gettempdir(), "bench.flock")
    measurement = timed_processes(target, target.count(30), ["flock", path, "true"])
    measurement.note = "floor: flock FILE true"
    return measurement
