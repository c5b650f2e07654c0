from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from engramd.protocol import (
    CLOSED,
    NEED_DATA,
    PROTOCOL_VERSION,
    ClientConnection,
    ErrorCode,
    ErrorReply,
    GetStatus,
    Hello,
    InvalidMessage,
    LocalProtocolError,
    Ping,
    Pong,
    RemoteProtocolError,
    ServerConnection,
    State,
    Welcome,
    encode_frame,
)


def welcome(hello_id: int) -> Welcome:
    return Welcome(id=hello_id, protocol_version=PROTOCOL_VERSION, daemon_version="t",
                   pid=1, instance_id="i")


def pong(request_id: int) -> Pong:
    return Pong(id=request_id, daemon_version="t", uptime=1.0,
                server_time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def handshake() -> tuple[ClientConnection, ServerConnection]:
    client = ClientConnection(client_name="test", agent_id="a1")
    server = ServerConnection()
    server.receive_data(client.hello(PROTOCOL_VERSION))
    hello = server.next_event()
    assert isinstance(hello, Hello)
    assert (hello.agent_id, hello.client_name) == ("a1", "test")
    client.receive_data(server.send(welcome(hello.id)))
    assert isinstance(client.next_event(), Welcome)
    assert client.state is State.READY and server.state is State.READY
    return client, server


def test_handshake_then_request_and_reply() -> None:
    client, server = handshake()
    server.receive_data(client.send(Ping(id=client.allocate_id())))
    request = server.next_event()
    assert isinstance(request, Ping)
    assert server.next_event() is NEED_DATA
    client.receive_data(server.send(pong(request.id)))
    reply = client.next_event()
    assert isinstance(reply, Pong) and reply.id == request.id
    assert client.in_flight == 0


def test_pipelined_replies_may_come_in_any_order() -> None:
    client, server = handshake()
    ids = [client.allocate_id() for _ in range(3)]
    for request_id in ids:
        server.receive_data(client.send(Ping(id=request_id)))
    received = [server.next_event() for _ in ids]
    assert [r.id for r in received] == ids  # type: ignore[union-attr]
    for request_id in reversed(ids):
        client.receive_data(server.send(pong(request_id)))
    assert [client.next_event().id for _ in ids] == list(reversed(ids))  # type: ignore[union-attr]


def test_request_before_hello_breaks_the_connection() -> None:
    server = ServerConnection()
    server.receive_data(encode_frame(msgspec.msgpack.encode({"msg": "ping", "id": 1})))
    with pytest.raises(RemoteProtocolError, match="hello"):
        server.next_event()


def test_invalid_request_is_answerable_with_its_id() -> None:
    _, server = handshake()
    server.receive_data(encode_frame(msgspec.msgpack.encode({"msg": "ping", "id": 7, "x": 1})))
    event = server.next_event()
    assert isinstance(event, InvalidMessage)
    assert event.id == 7


def test_unknown_operation_is_an_invalid_message() -> None:
    _, server = handshake()
    server.receive_data(encode_frame(msgspec.msgpack.encode({"msg": "fly", "id": 9})))
    event = server.next_event()
    assert isinstance(event, InvalidMessage) and event.id == 9
    assert "fly" in event.reason


def test_wrong_shape_without_id_is_invalid_without_id() -> None:
    _, server = handshake()
    server.receive_data(encode_frame(msgspec.msgpack.encode([{}] * 10)))
    event = server.next_event()
    assert isinstance(event, InvalidMessage) and event.id is None


def test_malformed_msgpack_breaks_the_connection() -> None:
    _, server = handshake()
    server.receive_data(encode_frame(b"\xc1garbage"))
    with pytest.raises(RemoteProtocolError, match="malformed"):
        server.next_event()


DEEP = b"\x91" * 100_000 + b"\xc0"


@pytest.mark.parametrize("body", [
    DEEP,
    # {"id": 1, "x": [[[...]]]}: the nesting hides in a field to be skipped
    b"\x82\xa2id\x01\xa1x" + DEEP,
    # {"msg": "ping", "id": [[[...]]]}
    b"\x82\xa3msg\xa4ping\xa2id" + DEEP,
], ids=["top-level", "unknown-field", "typed-field"])
def test_deep_nesting_never_escapes_as_recursion_error(body: bytes) -> None:
    _, server = handshake()
    server.receive_data(encode_frame(body))
    try:
        event = server.next_event()
    except RemoteProtocolError:
        return
    assert isinstance(event, InvalidMessage)


def test_second_hello_is_invalid() -> None:
    _, server = handshake()
    server.receive_data(encode_frame(msgspec.msgpack.encode(
        Hello(id=50, protocol_version=1, client_name="x", agent_id="y"))))
    event = server.next_event()
    assert isinstance(event, InvalidMessage) and event.id == 50


def test_client_refuses_a_reply_to_an_unknown_id() -> None:
    client, server = handshake()
    client.receive_data(server.send(pong(999)))
    with pytest.raises(RemoteProtocolError, match="unknown request id"):
        client.next_event()


def test_client_cannot_send_before_the_handshake() -> None:
    client = ClientConnection(client_name="t", agent_id="a")
    with pytest.raises(LocalProtocolError):
        client.send(Ping(id=1))


def test_client_cannot_reuse_an_id_in_flight() -> None:
    client, _ = handshake()
    client.send(Ping(id=5))
    with pytest.raises(LocalProtocolError):
        client.send(GetStatus(id=5))


def test_refused_hello_closes_the_client() -> None:
    client = ClientConnection(client_name="t", agent_id="a")
    server = ServerConnection()
    server.receive_data(client.hello(PROTOCOL_VERSION + 1))
    hello = server.next_event()
    assert isinstance(hello, Hello)
    client.receive_data(server.send(ErrorReply(id=hello.id, code=ErrorCode.VERSION_MISMATCH,
                                               message="no")))
    reply = client.next_event()
    assert isinstance(reply, ErrorReply) and reply.code == "version_mismatch"
    assert client.state is State.CLOSED and server.state is State.CLOSED


def test_server_must_answer_hello_with_welcome_or_error() -> None:
    server = ServerConnection()
    with pytest.raises(LocalProtocolError):
        server.send(pong(1))


def test_clean_close_between_frames() -> None:
    _, server = handshake()
    server.receive_data(b"")
    assert server.next_event() is CLOSED


# -- the client's inbox: what arrives is filed for whoever waits ---------------------


def test_answers_pushes_and_notices_are_filed_where_their_readers_look() -> None:
    from engramd.protocol import Heartbeat, Subscribe, Subscribed

    client, server = handshake()
    subscribe = client.numbered(Subscribe())
    ping = client.numbered(Ping())
    assert (subscribe.id, ping.id) == (2, 3)  # numbered after the hello
    server.receive_data(client.send(subscribe) + client.send(ping))
    frames = [server.send(Subscribed(id=2, subscription=2, after=0, head_seq=0)),
              encode_frame(msgspec.msgpack.encode(Heartbeat(subscription=2, head_seq=0,
                                                            cursor=0))),
              server.send(pong(3))]
    client.receive_data(b"".join(frames))
    client.collect()
    assert isinstance(client.answer(3), Pong) and client.answer(3) is None  # once
    assert isinstance(client.answer(2), Subscribed) and client.subscriptions == {2}
    assert isinstance(client.push(2), Heartbeat) and client.push(2) is None
    assert client.notice() is None and client.ended is None


def test_a_goodbye_ends_the_conversation_and_is_kept_apart_from_a_plain_close() -> None:
    client, server = handshake()
    client.receive_data(server.send(ErrorReply(id=None, code=ErrorCode.UNAVAILABLE,
                                               message="too many connections")))
    client.collect()
    assert client.goodbye is client.ended and "too many" in str(client.ended)
    with pytest.raises(type(client.ended)):
        client.answer(5)
    closed, _ = handshake()
    closed.receive_data(b"")
    closed.collect()
    assert closed.ended is not None and closed.goodbye is None
