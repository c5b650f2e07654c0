from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engramd.protocol import (
    FrameDecoder,
    FrameTooLarge,
    RemoteProtocolError,
    encode_frame,
)
from engramd.protocol.framing import PREFIX


def drain(decoder: FrameDecoder) -> list[bytes]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


BODIES = [b"a", b"hello", bytes(range(256)) * 3, b"\x00" * 70_000]
STREAM = b"".join(encode_frame(body) for body in BODIES)


def test_frame_is_big_endian_length_then_body() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_empty_body_cannot_be_framed() -> None:
    with pytest.raises(ValueError):
        encode_frame(b"")


@pytest.mark.parametrize("split", range(len(encode_frame(b"hello")) + 1))
def test_every_split_point_of_one_frame(split: int) -> None:
    data = encode_frame(b"hello")
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for part in (data[:split], data[split:]):
        if part:  # an empty chunk would mean end of stream
            decoder.receive_data(part)
        frames += drain(decoder)
    assert frames == [b"hello"]


def test_every_split_point_of_a_stream_of_frames() -> None:
    for split in range(len(STREAM) + 1):
        decoder = FrameDecoder()
        frames = []
        for part in (STREAM[:split], STREAM[split:]):
            if part:
                decoder.receive_data(part)
            frames += drain(decoder)
        assert frames == BODIES, f"split at {split}"


def test_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    frames = []
    for index in range(len(STREAM)):
        decoder.receive_data(STREAM[index : index + 1])
        frames += drain(decoder)
    assert frames == BODIES
    assert decoder.buffered == 0


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1))
def test_any_chunking_gives_the_same_frames(bodies: list[bytes], sizes: list[int]) -> None:
    data = b"".join(encode_frame(body) for body in bodies)
    decoder = FrameDecoder()
    frames: list[bytes] = []
    position = 0
    index = 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        decoder.receive_data(data[position : position + size])
        frames += drain(decoder)
        position += size
        index += 1
    assert frames == bodies


def test_oversized_frame_is_refused_from_its_prefix_alone() -> None:
    decoder = FrameDecoder(max_frame=1024)
    decoder.receive_data(PREFIX.pack(1025))
    with pytest.raises(FrameTooLarge) as caught:
        decoder.next_frame()
    assert caught.value.length == 1025
    assert caught.value.code == "too_large"


def test_huge_length_does_not_allocate() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()
    assert decoder.buffered == 4


def test_frame_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame=1024)
    decoder.receive_data(encode_frame(b"x" * 1024))
    assert decoder.next_frame() == b"x" * 1024


def test_zero_length_frame_is_a_protocol_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_end_of_stream_inside_a_frame_is_a_truncated_frame() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(b"hello")[:-1])
    decoder.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        decoder.next_frame()


def test_end_of_stream_between_frames_is_clean() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(b"hello"))
    decoder.receive_data(b"")
    assert decoder.next_frame() == b"hello"
    assert decoder.next_frame() is None
    assert decoder.at_eof
