"""``engram unit import``'s reading of its input (the layer's own logic: no daemon)."""

from __future__ import annotations

import gzip
import io

from engram_cli.cli.commands.unit import _unpacked


class Trickle(io.RawIOBase):
    """A pipe whose reads bring one byte at a time (a slow writer's)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        taken, self._data = self._data[:1], self._data[1:]
        buffer[:len(taken)] = taken
        return len(taken)


def test_gzip_is_told_on_a_pipe_whose_first_read_brings_one_byte() -> None:
    text = b'{"context_id": "c", "payload": "ok"}\n' * 3
    piped = io.BufferedReader(Trickle(gzip.compress(text)))
    assert piped.peek(2)[:2] != b"\x1f\x8b"  # what the peek alone saw

    assert _unpacked(io.BufferedReader(Trickle(gzip.compress(text)))).read() == text


def test_plain_lines_from_a_pipe_come_through_whole() -> None:
    text = b'{"context_id": "c", "payload": "ok"}\n' * 3
    assert _unpacked(io.BufferedReader(Trickle(text))).read() == text
