"""Length-prefixed framing.

A frame on the socket is::

    +----------------+----------------------------------+
    | length: u32 BE | body: `length` bytes (MessagePack) |
    +----------------+----------------------------------+

Rules:

* ``length`` counts the body only and is never 0.
* A length over the configured maximum is refused from the prefix alone,
  before any buffer for the body exists.
* The decoder accepts bytes in any chunking; end of input in the middle of a
  frame is a truncated frame.
"""

from __future__ import annotations

import struct

from engramd.protocol.errors import FrameTooLarge, RemoteProtocolError

PREFIX = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
# Compact the buffer once this much consumed data sits at its front; keeps
# `next_frame` O(frame) instead of O(buffer) per call.
_COMPACT_AT = 64 * 1024


def encode_frame(body: bytes) -> bytes:
    """Prefix *body* with its length."""
    if not body:
        raise ValueError("a frame body is never empty")
    return PREFIX.pack(len(body)) + body


class FrameDecoder:
    """Turns a byte stream into frame bodies.

    Feed it with :meth:`receive_data`, then call :meth:`next_frame` until it
    returns ``None``. Passing ``b""`` to :meth:`receive_data` marks the end of
    the stream.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._start = 0
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._start

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            raise RuntimeError("data received after end of stream")
        if not data:
            self._eof = True
            return
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """Return the next complete frame body, or ``None`` if more bytes are needed.

        Raises:
            FrameTooLarge: the next length prefix exceeds ``max_frame``.
            RemoteProtocolError: a zero length, or the stream ended inside a frame.
        """
        available = len(self._buffer) - self._start
        if available >= PREFIX.size:
            (length,) = PREFIX.unpack_from(self._buffer, self._start)
            if length == 0:
                raise RemoteProtocolError("zero-length frame")
            if length > self.max_frame:
                raise FrameTooLarge(length, self.max_frame)
            end = self._start + PREFIX.size + length
            if end <= len(self._buffer):
                body = bytes(self._buffer[self._start + PREFIX.size : end])
                self._start = end
                if self._start >= _COMPACT_AT or self._start == len(self._buffer):
                    del self._buffer[: self._start]
                    self._start = 0
                return body
        if self._eof and available:
            raise RemoteProtocolError(
                f"connection closed inside a frame ({available} bytes pending)"
            )
        return None

    @property
    def at_eof(self) -> bool:
        """True once the stream has ended and every frame has been taken."""
        return self._eof and self.buffered == 0


__all__ = [
    "DEFAULT_MAX_FRAME", "encode_frame", "FrameDecoder",
]
