"""This design's floors for ``engram bench``: what a request costs before engram does any of
its own work.

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
from collections.abc import Iterator

from engramd.protocol.framing import FrameDecoder, encode_frame

ECHO = b"e"
"""A request answered at once."""
DURABLE = b"d"
"""A request answered after 256 bytes were appended to a file and fdatasync'd."""


@contextlib.contextmanager
def floor_server(directory: str) -> Iterator[tuple[str, int]]:
    """The floor server on a socket in *directory*: (socket path, pid); killed afterwards."""
    socket_path = os.path.join(directory, "floor.sock")
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
