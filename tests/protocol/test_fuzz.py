"""Hostile bytes against the daemon's side of the protocol (sans-IO, so thousands per second).

Whatever arrives, ``ServerConnection`` returns a message, an ``InvalidMessage``
to answer, or raises ``RemoteProtocolError`` (answer and close): never another
exception, and never a decode that allocates far beyond the frame.
"""

from __future__ import annotations

import struct
import tracemalloc

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engramd.protocol import (
    NEED_DATA,
    PROTOCOL_VERSION,
    Hello,
    InvalidMessage,
    RemoteProtocolError,
    ServerConnection,
    Welcome,
    encode_frame,
    encode_message,
)
from engramd.protocol.messages import ClientMessage
from tests.fuzzing import encode, request_maps, values


def ready_connection(max_frame: int = 1 << 20) -> ServerConnection:
    connection = ServerConnection(max_frame=max_frame)
    connection.receive_data(encode_message(
        Hello(id=1, protocol_version=PROTOCOL_VERSION, client_name="fuzz", agent_id="f")))
    connection.next_event()
    connection.send(Welcome(id=1, protocol_version=PROTOCOL_VERSION, daemon_version="t",
                            pid=1, instance_id="i"))
    return connection


def drain(connection: ServerConnection) -> list[object]:
    """Every event until more data is needed; stops at a protocol error like the server."""
    events: list[object] = []
    try:
        while (event := connection.next_event()) is not NEED_DATA:
            events.append(event)
            if not isinstance(event, ClientMessage | InvalidMessage):
                break
    except RemoteProtocolError as exc:
        events.append(exc)
    return events


@given(st.lists(st.binary(min_size=1, max_size=64), max_size=20))
def test_random_bytes_in_random_chunks(chunks: list[bytes]) -> None:
    connection = ready_connection()
    for chunk in chunks:
        connection.receive_data(chunk)
        if any(isinstance(event, RemoteProtocolError) for event in drain(connection)):
            return


@given(values)
def test_any_messagepack_value_as_a_frame(value: object) -> None:
    connection = ready_connection()
    connection.receive_data(encode_frame(encode(value) or b"\xc0"))
    events = drain(connection)
    assert len(events) == 1
    assert isinstance(events[0], InvalidMessage | ClientMessage | RemoteProtocolError)


@given(request_maps())
def test_request_shaped_maps_are_decoded_or_answered(body: dict[str, object]) -> None:
    connection = ready_connection()
    connection.receive_data(encode_frame(encode(body)))
    (event,) = drain(connection)
    assert isinstance(event, InvalidMessage | ClientMessage)


@given(st.binary(min_size=1, max_size=200), st.integers(1, 200))
def test_truncated_frames_wait_for_more_then_fail_at_end_of_stream(body: bytes,
                                                                   cut: int) -> None:
    frame = encode_frame(body)
    connection = ready_connection()
    connection.receive_data(frame[: min(cut, len(frame) - 1)])
    assert drain(connection) == []
    assert connection.mid_frame
    connection.receive_data(b"")
    events = drain(connection)
    assert len(events) == 1 and isinstance(events[0], RemoteProtocolError)


@given(st.integers((1 << 20) + 1, 2**32 - 1))
def test_huge_length_prefixes_are_refused_before_any_body(length: int) -> None:
    connection = ready_connection()
    connection.receive_data(struct.pack(">I", length) + b"\x80")
    (event,) = drain(connection)
    assert isinstance(event, RemoteProtocolError) and event.code == "too_large"


def invalid_utf8_string(raw: bytes) -> bytes:
    return b"\xd9" + bytes([len(raw)]) + raw


@pytest.mark.parametrize("raw", [b"\xff", b"\xc3\x28", b"a\xed\xa0\x80z", b"\xf8\x88\x80\x80"])
@pytest.mark.parametrize("where", ["value", "key", "tag"])
def test_invalid_utf8_anywhere_is_a_bad_request_not_a_crash(raw: bytes, where: str) -> None:
    bad = invalid_utf8_string(raw)
    if where == "value":
        body = b"\x83" + encode("msg") + encode("unit.get") + encode("id") + b"\x07" \
            + encode("ids") + b"\x91" + bad
    elif where == "key":
        body = b"\x83" + encode("msg") + encode("ping") + encode("id") + b"\x07" + bad + b"\x01"
    else:
        body = b"\x82" + encode("msg") + bad + encode("id") + b"\x07"
    connection = ready_connection()
    connection.receive_data(encode_frame(body))
    (event,) = drain(connection)
    assert isinstance(event, InvalidMessage)
    assert where == "key" or event.id == 7


@pytest.mark.parametrize("depth", [100, 10_000, 100_000])
def test_deep_nesting_is_refused(depth: int) -> None:
    body = b"\x83" + encode("msg") + encode("ping") + encode("id") + b"\x02" + encode("x") \
        + b"\x91" * depth + b"\xc0"
    connection = ready_connection()
    connection.receive_data(encode_frame(body))
    (event,) = drain(connection)
    assert isinstance(event, InvalidMessage | RemoteProtocolError)


N = 1 << 20
HEAD = b"\x83" + encode("msg") + encode("unit.get") + encode("id") + b"\x02" + encode("ids")
AMPLIFIERS = {
    "array of empty maps": b"\xdd" + N.to_bytes(4, "big") + b"\x80" * (N - 8),
    "unknown field of empty maps": b"\x83" + encode("msg") + encode("ping") + encode("id")
    + b"\x02" + encode("junk") + b"\xdd" + N.to_bytes(4, "big") + b"\x80" * (N - 40),
    "ids of empty strings": HEAD + b"\xdd" + N.to_bytes(4, "big") + b"\xa0" * (N - 40),
    "ids of 2-byte strings": HEAD + b"\xdd" + (N // 3).to_bytes(4, "big")
    + b"\xa2ab" * (N // 3 - 20),
    "meta of many keys": b"\x83" + encode("msg") + encode("subscribe") + encode("id") + b"\x02"
    + encode("meta") + b"\xdf" + (N // 8).to_bytes(4, "big")
    + b"".join(encode(f"{i:05x}") + b"\xa0" for i in range(N // 8 - 10)),
}


@pytest.mark.parametrize("name", AMPLIFIERS)
def test_frames_that_blow_up_when_decoded_are_refused_cheaply(name: str) -> None:
    body = AMPLIFIERS[name]
    connection = ready_connection(max_frame=2 * N)
    connection.receive_data(encode_frame(body))
    tracemalloc.start()
    try:
        events = drain(connection)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(events) == 1
    assert isinstance(events[0], InvalidMessage | RemoteProtocolError), events[0]
    assert peak < 4 * len(body), f"{name}: {peak / 2**20:.1f} MiB decoding {len(body)} bytes"


def test_the_largest_valid_lists_stay_within_a_small_multiple_of_the_frame() -> None:
    body = msgspec.msgpack.encode({"msg": "unit.get", "id": 3,
                                   "ids": [f"{i:x}" for i in range(10_000)]})
    connection = ready_connection()
    connection.receive_data(encode_frame(body))
    tracemalloc.start()
    try:
        (event,) = drain(connection)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not isinstance(event, InvalidMessage)
    assert peak < 2 * 2**20
