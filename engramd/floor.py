"""A server of engramd's shape with nothing in it: the floor ``engram bench`` measures this
design against (``engram_cli.bench.floors`` is its client).

One trio event loop answers length-prefixed frames on a Unix socket. A frame whose body
starts with ``d`` is answered after 256 bytes were appended to a file and fdatasync'd in
engramd's own journal thread while the loop went on, as a durable write is; any other
frame is sent back at once. Run as ``python -m engramd.floor SOCKET FILE``; it says
"ready" on stdout once it listens, and serves until killed.
"""

from __future__ import annotations

import os
import socket
import sys

import trio

from engramd.commit import JournalThread
from engramd.protocol.framing import FrameDecoder, encode_frame

DURABLE = b"d"
_RECORD = b"x" * 256


async def serve(socket_path: str, file_path: str) -> None:
    file = os.open(file_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    journal = JournalThread()
    journal.start()

    def append() -> None:
        os.write(file, _RECORD)
        os.fdatasync(file)

    async def answer(stream: trio.SocketStream) -> None:
        decoder = FrameDecoder()
        while data := await stream.receive_some(65536):
            decoder.receive_data(data)
            while (body := decoder.next_frame()) is not None:
                if body[:1] == DURABLE:
                    await journal.run(append)
                await stream.send_all(encode_frame(body))

    listen_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listen_socket.bind(socket_path)
    listen_socket.listen(128)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(listen_socket))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await trio.serve_listeners(answer, [listener])


if __name__ == "__main__":
    trio.run(serve, sys.argv[1], sys.argv[2])
