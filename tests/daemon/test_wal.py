"""The write-ahead log, byte by byte: what recovery keeps, cuts and refuses."""

from __future__ import annotations

import datetime as dt
import errno
import os
import random
from pathlib import Path

import pytest

from engramd.protocol import Unit, UnitCreated
from engramd.wal import log as wal_log
from engramd.wal.log import Corruption, SyncFailed, WriteAheadLog, WriteFailed
from engramd.wal.record import HEADER, Entry, encode_batch, encode_record, scan_records

WHEN = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


def entry(seq: int, payload: bytes = b"x") -> Entry:
    unit = Unit(id=f"u{seq}", seq=seq, context_id="c", agent_id="a", type="MESSAGE", ts=WHEN,
                meta={}, payload=payload, relationships=[], uid=0, pid=1)
    return Entry(first_seq=seq, events=[UnitCreated(seq=seq, ts=WHEN, context_id="c",
                                                    unit=unit)])


def open_log(directory: Path, checkpoint: int = 0, segment_bytes: int = 1 << 20
             ) -> tuple[WriteAheadLog, list[Entry], wal_log.Recovery]:
    replayed: list[Entry] = []
    wal = WriteAheadLog(str(directory), segment_bytes=segment_bytes, sync=True)
    recovery = wal.recover(checkpoint, replayed.extend)
    return wal, replayed, recovery


def write(directory: Path, count: int, segment_bytes: int = 1 << 20) -> list[Entry]:
    wal, _, _ = open_log(directory, segment_bytes=segment_bytes)
    entries = [entry(wal.last_seq + 1 + i, b"payload %d" % i) for i in range(count)]
    for item in entries:
        wal.append(item.first_seq, item.last_seq, encode_record(item))
    wal.close()
    return entries


def reset(directory: Path, segment: Path, data: bytes) -> None:
    """The log as one segment holding *data*, and nothing a recovery left beside it."""
    for other in directory.iterdir():
        other.unlink()
    segment.write_bytes(data)


def only_segment(directory: Path) -> Path:
    (path,) = sorted(directory.glob("*.wal"))
    return path


def test_written_entries_replay_in_order(tmp_path: Path) -> None:
    entries = write(tmp_path, 5)
    _, replayed, recovery = open_log(tmp_path)
    assert replayed == entries
    assert recovery.last_seq == 5 and recovery.truncated_bytes == 0


def test_replay_starts_after_the_checkpoint(tmp_path: Path) -> None:
    entries = write(tmp_path, 5)
    _, replayed, _ = open_log(tmp_path, checkpoint=3)
    assert replayed == entries[3:]


def test_replay_is_idempotent(tmp_path: Path) -> None:
    write(tmp_path, 4)
    first = open_log(tmp_path)[1]
    second = open_log(tmp_path)[1]
    assert first == second


def test_torn_tail_record_is_cut_at_every_byte(tmp_path: Path) -> None:
    write(tmp_path, 3)
    path = only_segment(tmp_path)
    whole = path.read_bytes()
    last = len(encode_record(entry(3, b"payload 2")))
    boundary = len(whole) - last
    for cut in range(1, last):
        path.write_bytes(whole[: boundary + cut])
        wal, replayed, recovery = open_log(tmp_path)
        wal.close()
        assert [e.first_seq for e in replayed] == [1, 2], cut
        assert recovery.truncated_bytes == cut
        assert path.stat().st_size == boundary


@pytest.mark.parametrize("tail", [b"\0" * 4096, random.Random(37).randbytes(37),
                                  b"\xff\xff\xff\xff" + b"x" * 9],
                         ids=["zeros", "garbage", "a huge length"])
def test_zeros_or_garbage_after_the_last_record_are_cut(tmp_path: Path, tail: bytes) -> None:
    write(tmp_path, 3)
    path = only_segment(tmp_path)
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(tail)
    _, replayed, recovery = open_log(tmp_path)
    assert len(replayed) == 3
    assert recovery.truncated_bytes == len(tail)
    assert path.stat().st_size == size


def test_bad_crc_before_the_tail_stops_recovery(tmp_path: Path) -> None:
    write(tmp_path, 3)
    path = only_segment(tmp_path)
    data = bytearray(path.read_bytes())
    offset = HEADER.size + len(encode_record(entry(1, b"payload 0")))
    data[offset + 12] ^= 0x40  # inside the second record's body
    path.write_bytes(bytes(data))
    with pytest.raises(Corruption) as caught:
        open_log(tmp_path)
    assert caught.value.path == str(path)
    assert caught.value.offset == offset
    assert "checksum" in caught.value.reason


def test_a_missing_record_is_a_gap(tmp_path: Path) -> None:
    write(tmp_path, 3)
    path = only_segment(tmp_path)
    data = path.read_bytes()
    first = len(encode_record(entry(1, b"payload 0")))
    second = len(encode_record(entry(2, b"payload 1")))
    path.write_bytes(data[: HEADER.size + first] + data[HEADER.size + first + second:])
    with pytest.raises(Corruption, match="expected 2"):
        open_log(tmp_path)


def test_a_repeated_record_is_refused(tmp_path: Path) -> None:
    write(tmp_path, 2)
    path = only_segment(tmp_path)
    with path.open("ab") as file:
        file.write(encode_record(entry(2, b"payload 1")))
        file.write(encode_record(entry(3)))
    with pytest.raises(Corruption, match="expected 3"):
        open_log(tmp_path)


def test_segments_rotate_and_recover_across_files(tmp_path: Path) -> None:
    entries = write(tmp_path, 100, segment_bytes=4096)
    assert len(list(tmp_path.glob("*.wal"))) > 3
    _, replayed, recovery = open_log(tmp_path, segment_bytes=4096)
    assert replayed == entries and recovery.last_seq == 100


def test_dropping_segments_keeps_what_follows_the_checkpoint(tmp_path: Path) -> None:
    write(tmp_path, 100, segment_bytes=4096)
    wal, _, _ = open_log(tmp_path, segment_bytes=4096)
    before = len(wal.segments)
    assert wal.drop_through(80) > 0
    assert len(wal.segments) < before
    assert wal.segments[0].first_seq <= 81
    wal.close()
    _, replayed, _ = open_log(tmp_path, checkpoint=80, segment_bytes=4096)
    assert [e.first_seq for e in replayed] == list(range(81, 101))


def test_missing_early_segments_are_refused(tmp_path: Path) -> None:
    write(tmp_path, 100, segment_bytes=4096)
    os.unlink(sorted(tmp_path.glob("*.wal"))[0])
    with pytest.raises(Corruption, match="segments are missing"):
        open_log(tmp_path, segment_bytes=4096)


def test_a_failed_write_is_cut_back_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal, _, _ = open_log(tmp_path)
    wal.append(1, 1, encode_record(entry(1)))
    size = only_segment(tmp_path).stat().st_size
    real_write = os.write

    def short_then_full(fd: int, data: bytes) -> int:
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))  # a short write, like a nearly full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wal_log.os, "write", short_then_full)
    with pytest.raises(WriteFailed) as caught:
        wal.append(2, 2, encode_record(entry(2)))
    assert caught.value.disk_full
    assert only_segment(tmp_path).stat().st_size == size
    monkeypatch.setattr(wal_log.os, "write", real_write)
    wal.append(2, 2, encode_record(entry(2)))  # space is back: writes go on
    wal.close()
    assert [e.first_seq for e in open_log(tmp_path)[1]] == [1, 2]


def test_a_failed_fsync_is_reported_not_retried(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    wal, _, _ = open_log(tmp_path)
    calls = []

    def failing_fdatasync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(wal_log.os, "fdatasync", failing_fdatasync)
    with pytest.raises(SyncFailed):
        wal.append(1, 1, encode_record(entry(1)))
    assert len(calls) == 1


def test_incomplete_new_segment_is_removed(tmp_path: Path) -> None:
    write(tmp_path, 2)
    (tmp_path / wal_log.segment_name(3)).write_bytes(b"ENGR")
    _, replayed, recovery = open_log(tmp_path)
    assert recovery.last_seq == 2 and len(replayed) == 2


def test_a_batch_is_one_record_so_damage_anywhere_in_the_last_batch_is_a_tail(
        tmp_path: Path) -> None:
    """One write + one fsync per batch: a power loss can garble only the last batch, and
    written as one record it is cut whole, wherever the damage lies in it."""
    kept = write(tmp_path, 2)
    wal, _, _ = open_log(tmp_path)
    batch = [entry(3 + i, b"batched %d" % i) for i in range(4)]
    data = encode_batch(batch)
    assert len(scan_records(data, 0)[0]) == 1
    wal.append(3, 6, data)
    wal.close()
    path = only_segment(tmp_path)
    whole = path.read_bytes()
    start = len(whole) - len(data)
    for offset in range(start, len(whole), 7):
        damaged = bytearray(whole)
        damaged[offset] ^= 0x40
        reset(tmp_path, path, bytes(damaged))
        wal, replayed, recovery = open_log(tmp_path)
        wal.close()
        assert replayed == kept, offset
        assert recovery.truncated_bytes == len(data)
    reset(tmp_path, path, whole)
    _, replayed, _ = open_log(tmp_path)
    assert [event.seq for item in replayed for event in item.events] == [1, 2, 3, 4, 5, 6]
