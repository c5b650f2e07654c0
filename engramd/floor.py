"""A server of engramd's shape with nothing in it: the floor ``engram bench`` measures this
design against (``engram_cli.bench.floors`` is its client).

One trio event loop answers length-prefixed frames on a Unix socket. A frame whose body
starts with ``d`` is answered after 256 bytes were appended to a file and fdatasync'd in
engramd's own journal thread while the loop went on, as a durable write is; one that
starts with ``t`` after a job that does nothing ran in that thread (the thread hand-off
alone); one that starts with ``p`` after a worker process sent it back over a socket pair
(the hand-off a design on more processes would pay, SPECS §8); any other frame is sent
back at once. Run as ``python -m engramd.floor SOCKET FILE``; it says "ready" on stdout
once it listens, and serves until killed. ``python -m engramd.floor --worker FD`` is the
worker: it echoes the frames it reads on FD until the other end closes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import trio

from engramd.commit import JournalThread
from engramd.protocol.framing import FrameDecoder, encode_frame

DURABLE = b"d"
THREAD = b"t"
PROCESS = b"p"
_RECORD = b"x" * 256


class Worker:
    """The other end of a process hand-off: a Python process that echoes frames over a
    socket pair, one frame in flight at a time."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "engramd.floor", "--worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()])
        theirs.close()
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        self._decoder = FrameDecoder()
        self._lock = trio.Lock()

    async def run(self, body: bytes) -> bytes:
        async with self._lock:
            await self._stream.send_all(encode_frame(body))
            while (answer := self._decoder.next_frame()) is None:
                self._decoder.receive_data(await self._stream.receive_some(65536))
            return answer


def echo_worker(fd: int) -> None:
    """The worker's loop (blocking, as a worker's decoding or indexing would run)."""
    connection = socket.socket(fileno=fd)
    decoder = FrameDecoder()
    while data := connection.recv(65536):
        decoder.receive_data(data)
        while (body := decoder.next_frame()) is not None:
            connection.sendall(encode_frame(body))


async def serve(socket_path: str, file_path: str) -> None:
    file = os.open(file_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    journal = JournalThread()
    journal.start()
    worker = Worker()

    def append() -> None:
        os.write(file, _RECORD)
        os.fdatasync(file)

    async def answer(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        while data := await stream.receive_some(65536):
            decoder.receive_data(data)
            while (body := decoder.next_frame()) is not None:
                kind = body[:1]
                if kind == DURABLE:
                    await journal.run(append)
                elif kind == THREAD:
                    await journal.run(lambda: None)
                elif kind == PROCESS:
                    body = await worker.run(body)
                await stream.send_all(encode_frame(body))

    listen_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listen_socket.bind(socket_path)
    listen_socket.listen(128)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(listen_socket))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await trio.serve_listeners(answer, [listener])


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        echo_worker(int(sys.argv[2]))
    else:
        trio.run(serve, sys.argv[1], sys.argv[2])
