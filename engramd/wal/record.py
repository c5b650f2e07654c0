"""WAL segment and record format. Pure: bytes in, records out.

A segment file starts with a 32-byte header::

    +----------+---------+-----------+---------------+---------------+
    | magic 8  | ver u32 | flags u32 | first_seq u64 | segment_id 8  |
    | ENGRAMWL |   1     |  0 or 1   | big-endian    | random bytes  |
    +----------+---------+-----------+---------------+---------------+

``flags`` is 0, or :data:`AFTER_GAP` on a segment that ``engramd --repair`` wrote
after taking damaged records out: the seqs between the previous segment's end and
this header's ``first_seq`` are known to be gone, and recovery accepts the jump.

followed by records::

    +------------+-----------+----------------------------------------+
    | length u32 | crc32 u32 | body: `length` bytes of MessagePack     |
    +------------+-----------+----------------------------------------+

Rules:

* ``crc32`` is zlib's CRC-32 of the 4 length bytes followed by the body, so a
  damaged length cannot point at a region that happens to check out.
* A body is one :class:`Entry`: the events of one group-commit batch (one or
  more commits, see :func:`encode_batch`), with consecutive sequence numbers
  starting at ``first_seq``. Entries are contiguous across
  the whole log: each starts where the previous one ended, and the first entry
  of a segment starts at the header's ``first_seq``.
* A record is never larger than :data:`MAX_RECORD`; a length above it is damage.
* A record holds at least one event, and no event encodes to fewer than
  :data:`MIN_EVENT_BYTES`: a run of damaged bytes cannot have held more events
  than its length allows (what :func:`find_record` relies on to re-synchronise).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from engramd.protocol.model import AnyEvent

MAGIC = b"ENGRAMWL"
VERSION = 1
HEADER = struct.Struct(">8sIIQ8s")
RECORD_HEAD = struct.Struct(">II")
MAX_RECORD = 256 * 1024 * 1024
AFTER_GAP = 1
MIN_EVENT_BYTES = 32


class Entry(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One commit: every event it made, in sequence order."""

    first_seq: int
    events: list[AnyEvent]
    idempotency_keys: dict[str, str] = {}
    """Idempotency key -> id of the unit first written with it."""

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.events) - 1


class EntrySpan(msgspec.Struct, frozen=True, array_like=True):
    """Just the sequence range of an entry: recovery's view of entries it need not replay."""

    first_seq: int
    events: msgspec.Raw

    @property
    def last_seq(self) -> int:
        return self.first_seq + _array_length(self.events) - 1


def _array_length(raw: msgspec.Raw) -> int:
    """The element count of an encoded MessagePack array, read from its header."""
    data = memoryview(raw)[:5].tobytes()
    tag = data[0]
    if 0x90 <= tag <= 0x9F:
        return tag & 0x0F
    if tag == 0xDC:
        return int.from_bytes(data[1:3], "big")
    if tag == 0xDD:
        return int.from_bytes(data[1:5], "big")
    raise msgspec.DecodeError("entry events are not an array")


_entry_encoder = msgspec.msgpack.Encoder()
_ENTRY_ARRAY = 0x93
"""The first byte of every entry's body: a MessagePack array of three (array_like)."""
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_span_decoder = msgspec.msgpack.Decoder(EntrySpan)


@dataclass(frozen=True)
class SegmentHeader:
    first_seq: int
    segment_id: bytes
    flags: int = 0

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.flags, self.first_seq, self.segment_id)

    @property
    def after_gap(self) -> bool:
        return bool(self.flags & AFTER_GAP)

    @staticmethod
    def new(first_seq: int, flags: int = 0) -> SegmentHeader:
        return SegmentHeader(first_seq, os.urandom(8), flags)


class BadHeader(ValueError):
    """A segment that does not start with a valid header."""


def decode_header(data: bytes) -> SegmentHeader:
    if len(data) < HEADER.size:
        raise BadHeader(f"header is {len(data)} bytes, expected {HEADER.size}")
    magic, version, flags, first_seq, segment_id = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadHeader("not an engram WAL segment (bad magic)")
    if version != VERSION:
        raise BadHeader(f"unsupported WAL version {version}")
    if flags & ~AFTER_GAP:
        raise BadHeader(f"unknown segment flags {flags:#x}")
    return SegmentHeader(first_seq, segment_id, flags)


def encode_record(entry: Entry) -> bytes:
    body = _entry_encoder.encode(entry)
    length = struct.pack(">I", len(body))
    return length + struct.pack(">I", zlib.crc32(body, zlib.crc32(length))) + body


def merge_entries(entries: list[Entry]) -> Entry:
    """Consecutive entries as one: their events in order, their idempotency keys."""
    if len(entries) == 1:
        return entries[0]
    keys: dict[str, str] = {}
    for entry in entries:
        keys.update(entry.idempotency_keys)
    return Entry(first_seq=entries[0].first_seq,
                 events=[event for entry in entries for event in entry.events],
                 idempotency_keys=keys)


def encode_batch(entries: list[Entry]) -> bytes:
    """The records for one group-commit batch: a single record when it fits.

    One write and one fsync cover a batch, so a crash can leave only the batch
    being written undurable. Written as one record, that batch is all or
    nothing to recovery: damage anywhere in it is damage at the tail, cut
    without losing anything that was acknowledged.
    """
    body = _entry_encoder.encode(merge_entries(entries))
    if len(body) > MAX_RECORD and len(entries) > 1:
        half = len(entries) // 2
        return encode_batch(entries[:half]) + encode_batch(entries[half:])
    length = struct.pack(">I", len(body))
    return length + struct.pack(">I", zlib.crc32(body, zlib.crc32(length))) + body


def decode_entry(body: bytes) -> Entry:
    return _entry_decoder.decode(body)


def decode_span(body: bytes) -> EntrySpan:
    """Only the seq range: fast, for entries the store already holds."""
    return _span_decoder.decode(body)


@dataclass(frozen=True)
class Record:
    offset: int
    end: int
    body: bytes


@dataclass(frozen=True)
class Damage:
    """Why reading stopped before the end of the data."""

    offset: int
    reason: str
    is_tail: bool
    """True when no valid record follows: a torn write, not corruption."""


def record_at(data: bytes, offset: int) -> Record | str:
    """The valid record at *offset*, or a reason it is not one."""
    if len(data) - offset < RECORD_HEAD.size:
        return "truncated record header"
    length, crc = RECORD_HEAD.unpack_from(data, offset)
    if length == 0 or length > MAX_RECORD:
        return f"implausible record length {length}"
    end = offset + RECORD_HEAD.size + length
    if end > len(data):
        return f"record of {length} bytes runs past the end of the file"
    view = memoryview(data)  # a scan tries many offsets: copy only a record that checks out
    if zlib.crc32(view[offset + RECORD_HEAD.size : end],
                  zlib.crc32(view[offset : offset + 4])) != crc:
        return "checksum mismatch"
    return Record(offset, end, data[offset + RECORD_HEAD.size : end])


def scan_records(data: bytes, start: int) -> tuple[list[Record], Damage | None]:
    """Read the records of *data* from *start* until the end or the first damage.

    Damage is a torn tail when no valid record can be found anywhere after it
    (a crash cut the last write short, or left zeros or garbage behind);
    otherwise it is corruption in the middle of the log.
    """
    records: list[Record] = []
    offset = start
    while offset < len(data):
        found = record_at(data, offset)
        if isinstance(found, str):
            return records, Damage(offset, found, is_tail=not _any_record_after(data, offset))
        records.append(found)
        offset = found.end
    return records, None


def _any_record_after(data: bytes, offset: int) -> bool:
    return any(isinstance(record_at(data, position), Record)
               for position in range(offset + 1, len(data) - RECORD_HEAD.size + 1))


def iter_entries(records: list[Record]) -> Iterator[tuple[Record, Entry]]:
    for record in records:
        yield record, decode_entry(record.body)


def find_record(data: bytes, start: int, expected: int | None,
                damaged_before: int = 0) -> tuple[Record, Entry] | None:
    """The first record at or after *start* that can resume the log after damage.

    It must check out (length and CRC), decode, and continue the log: its first
    seq is *expected* or later (None: anything), but no further past it than the
    damaged bytes could have held events (those from *start* to it, plus
    *damaged_before*, dropped earlier). That rule keeps a record copied inside a
    unit's payload (a WAL file stored as a unit) from being taken for the log's
    own when it claims more seqs than the gap could have held.
    """
    for position in range(start, len(data) - RECORD_HEAD.size + 1):
        # Cheap checks first, so that damaged bytes cost no checksum of their own: a body
        # holds at least one event, and an entry is a MessagePack array of three.
        length = int.from_bytes(data[position:position + 4], "big")
        if length < MIN_EVENT_BYTES or position + RECORD_HEAD.size + length > len(data) \
                or data[position + RECORD_HEAD.size] != _ENTRY_ARRAY:
            continue
        found = record_at(data, position)
        if isinstance(found, str):
            continue
        entry = peek_entry(found.body)
        if entry is None or not entry.events:
            continue
        if expected is not None:
            lost = entry.first_seq - expected
            if lost < 0 or lost > (damaged_before + position - start) // MIN_EVENT_BYTES:
                continue
        return found, entry
    return None


def peek_entry(body: bytes) -> Entry | None:
    """The entry *body* encodes, or None: for bytes whose checksum may not hold."""
    try:
        return decode_entry(body)
    except (msgspec.MsgspecError, ValueError):
        return None
