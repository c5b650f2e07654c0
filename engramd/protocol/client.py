"""The client's side of one connection, sans-IO: the one contract both clients follow.

Feed received bytes to ``receive_data`` (``b""`` at end of stream) and call
``collect``: every complete message is filed where its reader will look for it
— an answer under its request id, a :class:`Push` under its subscription, a
:class:`Notice` in arrival order — and an end of the conversation (the daemon's
goodbye, a close, a broken stream) is kept in ``ended``. Requests are numbered
here (``numbered``), each remembers the reply its type declares, and
:func:`result` turns an answer into that reply or the error it reports. The
blocking client and the trio client are thin loops around this object.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, TypeVar, get_args

import msgspec

from engramd.protocol.connection import CLOSED, NEED_DATA, State, _Sentinel, encode_message
from engramd.protocol.errors import (
    BadRequest,
    EngramError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Unavailable,
    error_for,
)
from engramd.protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder
from engramd.protocol.messages import (
    AnyServerMessage,
    ClientMessage,
    ErrorReply,
    Hello,
    Notice,
    Push,
    Reply,
    ServerMessage,
    Subscribed,
    Welcome,
    reply_type,
)

R = TypeVar("R", bound=ServerMessage)


class _ServerDecoder:
    """Decodes what the daemon sends, building a decoder per message type on first use.

    A decoder of the whole union costs a command line start-up a few milliseconds
    (msgspec reads every message type it may meet), where ``engram ping`` meets two.
    Every message starts with its tag (``msg``, the first key, as msgspec writes
    it), which names the type; anything else goes to the decoder of the union.
    """

    def __init__(self) -> None:
        self._types: dict[bytes, type[ServerMessage]] | None = None
        self._decoders: dict[type[ServerMessage], msgspec.msgpack.Decoder[Any]] = {}
        self._union: msgspec.msgpack.Decoder[Any] | None = None

    def decode(self, body: bytes) -> ServerMessage:
        kind = self._kind(body)
        if kind is None:
            if self._union is None:
                self._union = msgspec.msgpack.Decoder(AnyServerMessage)
            message: ServerMessage = self._union.decode(body)
            return message
        decoder = self._decoders.get(kind)
        if decoder is None:
            decoder = self._decoders[kind] = msgspec.msgpack.Decoder(kind)
        message = decoder.decode(body)
        return message

    def _kind(self, body: bytes) -> type[ServerMessage] | None:
        # A map (fixmap, or map16 past 15 fields) whose first key is the fixstr "msg"
        # and whose value is a fixstr: the tag.
        if body[:1] == b"\xde":
            start = 3
        elif body[:1] and 0x80 <= body[0] <= 0x8F:
            start = 1
        else:
            return None
        key, size = body[start:start + 4], body[start + 4:start + 5]
        if key != b"\xa3msg" or not size or not 0xA0 <= size[0] <= 0xBF:
            return None
        if self._types is None:
            self._types = {kind.__struct_config__.tag.encode(): kind
                           for kind in get_args(AnyServerMessage)}
        begin = start + 5
        return self._types.get(body[begin:begin + size[0] - 0xA0])


_server_decoder = _ServerDecoder()


def result(reply: ServerMessage, expected: type[R]) -> R:
    """*reply* as the *expected* answer; raises the error it reports, or if it is
    another kind of message."""
    if isinstance(reply, ErrorReply):
        raise error_for(reply.code, reply.message)
    if not isinstance(reply, expected):
        raise EngramError(f"engramd answered {type(reply).__name__} where "
                          f"{expected.__name__} was due")
    return reply


class ClientConnection:
    """The client's side of one connection."""

    def __init__(
        self, *, client_name: str, agent_id: str, token: str | None = None,
        delegated: bool = False, max_frame: int = DEFAULT_MAX_FRAME, window: int = 0,
    ) -> None:
        self._frames = FrameDecoder(max_frame)
        self.client_name = client_name
        self.agent_id = agent_id
        self.token = token
        self.delegated = delegated
        self.window = window
        self.route: Callable[[Push], bool] | None = None
        """Takes each push as it is collected, when set; a push it declines (False) is
        filed under its subscription as usual."""
        self.state = State.HANDSHAKE
        self.welcome: Welcome | None = None
        self.ended: EngramError | None = None
        """Why the conversation is over, once it is; every later wait raises it."""
        self.goodbye: EngramError | None = None
        """What the daemon said when it closed this connection, if it said anything."""
        self._hello_id: int | None = None
        self._next_id = 1
        self._pending: dict[int, type[ServerMessage]] = {}
        self._answers: dict[int, ServerMessage] = {}
        self._pushes: dict[int, collections.deque[Push]] = {}
        self._notices: collections.deque[Notice] = collections.deque()
        self.subscriptions: set[int] = set()
        """The subscriptions the daemon has confirmed and this side has not forgotten."""
        self.frame_size = 0
        """The size in bytes of the last message read (what a push costs to keep)."""

    # -- sending ------------------------------------------------------------

    def allocate_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id

    def numbered(self, request: ClientMessage[R]) -> ClientMessage[R]:
        """*request* with the next request id, unless it was given one."""
        if request.id:
            return request
        return msgspec.structs.replace(request, id=self.allocate_id())

    def hello(self, protocol_version: int) -> bytes:
        """Return the handshake frame; send it before anything else."""
        if self._hello_id is not None:
            raise LocalProtocolError("hello already sent")
        self._hello_id = self.allocate_id()
        self._pending[self._hello_id] = Welcome
        return encode_message(
            Hello(
                id=self._hello_id,
                protocol_version=protocol_version,
                client_name=self.client_name,
                agent_id=self.agent_id,
                token=self.token,
                delegated=self.delegated,
                window=self.window,
            )
        )

    @property
    def hello_id(self) -> int:
        if self._hello_id is None:
            raise LocalProtocolError("no hello sent yet")
        return self._hello_id

    def send(self, request: ClientMessage[Any]) -> bytes:
        """Return the frame for *request*; its id must be new on this connection."""
        if self.state is not State.READY:
            raise LocalProtocolError(f"cannot send a request in state {self.state.value}")
        if request.id in self._pending:
            raise LocalProtocolError(f"request id {request.id} is already in flight")
        try:
            frame = encode_message(request)
        except (OverflowError, msgspec.EncodeError) as exc:
            # A value the wire cannot carry (an int past 64 bits): the caller's request,
            # refused as the daemon would refuse one out of its bounds.
            raise BadRequest(f"the request cannot be sent: {exc}") from None
        self._pending[request.id] = reply_type(type(request))
        return frame

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- receiving, one message at a time -----------------------------------

    def receive_data(self, data: bytes) -> None:
        self._frames.receive_data(data)

    def next_event(self) -> ServerMessage | _Sentinel:
        """Return the next message from the daemon.

        Raises:
            RemoteProtocolError: the daemon sent something this client cannot
                read or did not ask for.
        """
        body = self._frames.next_frame()
        if body is None:
            if self._frames.at_eof:
                self.state = State.CLOSED
                return CLOSED
            return NEED_DATA
        self.frame_size = len(body)
        try:
            message: ServerMessage = _server_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError,
                UnicodeDecodeError) as exc:
            raise RemoteProtocolError(f"unreadable message from the daemon: {exc}") from None
        if self.state is State.HANDSHAKE:
            if isinstance(message, Welcome) and message.id == self._hello_id:
                self.state = State.READY
                self.welcome = message
            elif isinstance(message, ErrorReply):
                self.state = State.CLOSED
            else:
                raise RemoteProtocolError("the daemon did not answer the hello")
        if isinstance(message, Reply | ErrorReply) and message.id is not None:
            if message.id not in self._pending:
                raise RemoteProtocolError(f"reply to unknown request id {message.id}")
            del self._pending[message.id]
        return message

    # -- receiving, filed for whoever waits ---------------------------------

    def collect(self) -> None:
        """File every complete message received so far (see the module's docstring)."""
        while self.ended is None:
            try:
                message = self.next_event()
            except ProtocolError as exc:
                self.ended = Unavailable(f"protocol error: {exc}")
                return
            match message:
                case _Sentinel.NEED_DATA:
                    return
                case _Sentinel.CLOSED:
                    self.ended = Unavailable("engramd closed the connection")
                case Push() if self.route is not None and self.route(message):
                    pass
                case Push():
                    self._pushes.setdefault(message.subscription,
                                            collections.deque()).append(message)
                case Notice():
                    self._notices.append(message)
                case ErrorReply(id=None):  # goodbye: the daemon closes and says why
                    self.ended = self.goodbye = error_for(message.code, message.message)
                case Reply() | ErrorReply():
                    assert message.id is not None
                    if isinstance(message, Subscribed):
                        self.subscriptions.add(message.subscription)
                    self._answers[message.id] = message

    def fail(self, error: EngramError) -> None:
        """The transport broke (a reset, a closed socket): end the conversation with *error*."""
        if self.ended is None:
            self.ended = error

    def answer(self, request_id: int) -> ServerMessage | None:
        """The answer to *request_id* if it has come (once); raises ``ended`` if it never will."""
        found = self._answers.pop(request_id, None)
        if found is None and self.ended is not None:
            raise self.ended
        return found

    def push(self, subscription: int) -> Push | None:
        """The next push of *subscription* if one has come; raises ``ended`` at the end."""
        queue = self._pushes.get(subscription)
        if queue:
            return queue.popleft()
        if self.ended is not None:
            raise self.ended
        return None

    def notice(self) -> Notice | None:
        """The next notice if one has come; raises ``ended`` at the end."""
        if self._notices:
            return self._notices.popleft()
        if self.ended is not None:
            raise self.ended
        return None

    def forget(self, subscription: int) -> None:
        """Drop what *subscription* pushed and nobody read (it has ended)."""
        self._pushes.pop(subscription, None)
        self.subscriptions.discard(subscription)

    @property
    def queued_pushes(self) -> int:
        return sum(len(queue) for queue in self._pushes.values())


__all__ = ["CLOSED", "NEED_DATA", "ClientConnection", "result"]
