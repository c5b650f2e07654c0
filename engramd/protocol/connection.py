"""Sans-IO connection state for the daemon's end of the socket, in the style of h11.

Neither :class:`ServerConnection` nor the client's
:class:`~engramd.protocol.client.ClientConnection` touches a socket. Feed received
bytes to ``receive_data`` (``b""`` at end of stream), then call ``next_event``
until it returns :data:`NEED_DATA`; call ``send`` to get the bytes to write. The
trio server and both clients are thin loops around these.

The handshake::

    client                              daemon
      Hello(id, protocol_version, ...) ->
                                     <- Welcome(id, ...)  or  ErrorReply(id, version_mismatch)
      requests (pipelined) ->
                                     <- replies (any order, matched by id)
"""

from __future__ import annotations

import enum
import functools
from typing import Any, Final

import msgspec

from engramd.protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
)
from engramd.protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from engramd.protocol.messages import (
    AnyClientMessage,
    ClientMessage,
    ErrorReply,
    Hello,
    ServerMessage,
    Welcome,
)


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""``next_event`` needs more bytes before it can return a message."""
CLOSED: Final = _Sentinel.CLOSED
"""The peer closed the stream cleanly, between frames."""


class State(enum.Enum):
    HANDSHAKE = "handshake"
    READY = "ready"
    CLOSED = "closed"


_encoder = msgspec.msgpack.Encoder()


@functools.cache
def _client_decoder() -> msgspec.msgpack.Decoder[Any]:
    """Built when the first connection needs it: the command line never does."""
    return msgspec.msgpack.Decoder(AnyClientMessage)


class _IdOnly(msgspec.Struct):
    """Just enough of a client message to answer it, when the rest is invalid."""

    id: int | None = None


_id_decoder = msgspec.msgpack.Decoder(_IdOnly)
_skimmer = msgspec.msgpack.Decoder(msgspec.Raw)


def _well_formed(body: bytes) -> bool:
    """Whether *body* is one complete MessagePack object, its strings unchecked.

    Decoding to ``Raw`` walks the structure (lengths, nesting, trailing bytes)
    without looking inside strings, under every msgspec version we allow.
    """
    try:
        _skimmer.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


def encode_message(message: ClientMessage[Any] | ServerMessage) -> bytes:
    """Encode one message as a complete frame."""
    return encode_frame(_encoder.encode(message))


class InvalidMessage(msgspec.Struct, frozen=True):
    """A well-framed client message that is not a valid message.

    The stream is still in step, so the server answers with ``bad_request``
    (using ``id`` when it could be read) and carries on.
    """

    id: int | None
    reason: str


class ServerConnection:
    """The daemon's side of one client connection."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._frames = FrameDecoder(max_frame)
        self._decoder = _client_decoder()
        self.state = State.HANDSHAKE
        self.hello: Hello | None = None

    def receive_data(self, data: bytes) -> None:
        self._frames.receive_data(data)

    @property
    def mid_frame(self) -> bool:
        """Part of a frame has arrived and the rest has not (call after ``NEED_DATA``)."""
        return self._frames.buffered > 0

    def next_event(self) -> AnyClientMessage | InvalidMessage | _Sentinel:
        """Return the next client message.

        Raises:
            RemoteProtocolError: the stream is broken (bad framing, malformed
                MessagePack, a request before the handshake); send an error
                frame if possible and close.
        """
        body = self._frames.next_frame()
        if body is None:
            return CLOSED if self._frames.at_eof else NEED_DATA
        try:
            message: AnyClientMessage = self._decoder.decode(body)
        except (msgspec.ValidationError, UnicodeDecodeError) as exc:
            return self._invalid(body, exc)
        except msgspec.DecodeError as exc:
            # Invalid UTF-8 in a string is a DecodeError in msgspec 0.23 and later
            # (a UnicodeDecodeError before): a bad value in well-formed MessagePack,
            # which leaves the stream in step. Only malformed MessagePack breaks it.
            if _well_formed(body):
                return self._invalid(body, exc)
            raise RemoteProtocolError(f"malformed MessagePack frame: {exc}") from None
        except RecursionError as exc:
            # msgspec's answer to deeply nested input.
            raise RemoteProtocolError(f"malformed MessagePack frame: {exc}") from None
        if self.state is State.HANDSHAKE and not isinstance(message, Hello):
            raise RemoteProtocolError("the first message must be a hello")
        if self.state is State.READY and isinstance(message, Hello):
            return InvalidMessage(message.id, "hello sent twice on one connection")
        if isinstance(message, Hello):
            self.hello = message
        return message

    def _invalid(self, body: bytes, exc: Exception) -> InvalidMessage:
        try:
            request_id = _id_decoder.decode(body).id
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError,
                UnicodeDecodeError):
            request_id = None
        if self.state is State.HANDSHAKE:
            raise RemoteProtocolError(f"invalid hello: {exc}") from None
        return InvalidMessage(request_id, f"invalid request: {exc}")

    def send(self, message: ServerMessage) -> bytes:
        """Return the frame for *message*, updating the handshake state."""
        if self.state is State.CLOSED:
            raise LocalProtocolError("connection is closed")
        if self.state is State.HANDSHAKE:
            if isinstance(message, Welcome):
                self.state = State.READY
            elif isinstance(message, ErrorReply):
                self.state = State.CLOSED
            else:
                raise LocalProtocolError("only welcome or error may answer a hello")
        return encode_message(message)


__all__ = [
    "CLOSED",
    "NEED_DATA",
    "ErrorCode",
    "InvalidMessage",
    "ServerConnection",
    "State",
    "encode_message",
]
