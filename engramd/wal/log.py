"""WAL segment files: append with one fsync per batch, rotate, recover, trim.

Synchronous and trio-free; the group committer calls :meth:`WriteAheadLog.append`
from a worker thread. See :mod:`engramd.wal.record` for the byte format.

Durability rules kept here:

* ``append`` returns only after ``fdatasync`` covered every byte it wrote
  (unless ``sync=False``, the ``durability = "none"`` setting).
* A new segment's header is fsynced and then its directory, before any record
  goes into it, so a segment that holds acknowledged records is never lost
  from the directory.
* A failed write is cut back off the file; a failed fsync is never retried
  (the kernel may have dropped the dirty pages: see SPECS.md).
* A torn tail is never cut unseen: its bytes are set aside and the cut noted
  (:mod:`engramd.wal.cuts`) before the truncation, and when the cut record may
  have been acknowledged the log goes on past its seqs, so that none of them is
  given to another change.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from engramd.protocol.model import UnitCreated
from engramd.wal.cuts import POSSIBLY, Cut, CutLedger, judge, new_cut_id, set_aside
from engramd.wal.record import (
    AFTER_GAP,
    HEADER,
    MIN_EVENT_BYTES,
    BadHeader,
    Damage,
    Entry,
    SegmentHeader,
    decode_entry,
    decode_header,
    decode_span,
    peek_entry,
    scan_records,
)

log = logging.getLogger("engramd.wal")

SUFFIX = ".wal"


class Corruption(Exception):
    """Damage before the tail of the log: engramd refuses to start.

    Attributes:
        path: the segment file.
        offset: where the damage starts; ``engramd --repair`` cuts the log here.
        bytes_after: how many bytes of the log lie after it (lost by a repair).
    """

    def __init__(self, path: str, offset: int, reason: str, bytes_after: int) -> None:
        super().__init__(
            f"WAL damaged in {path} at offset {offset}: {reason} "
            f"({bytes_after} bytes of log after it)"
        )
        self.path = path
        self.offset = offset
        self.reason = reason
        self.bytes_after = bytes_after


class WriteFailed(Exception):
    """A write could not be completed; it was cut back off and nothing was acknowledged."""

    def __init__(self, message: str, *, disk_full: bool) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class SyncFailed(Exception):
    """fdatasync failed: what was written may or may not be on disk. Never retried."""


@dataclass
class Segment:
    path: str
    first_seq: int
    size: int


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_segments(directory: str) -> list[str]:
    return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                  if name.endswith(SUFFIX))


@dataclass(frozen=True)
class Recovery:
    """What opening the log found."""

    last_seq: int
    entries_replayed: int
    truncated_bytes: int
    """Bytes of torn tail cut off the last segment."""
    cut: Cut | None = None
    """The note of that cut (also in the ledger given to :meth:`WriteAheadLog.recover`)."""


class WriteAheadLog:
    def __init__(self, directory: str, *, segment_bytes: int, sync: bool) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.sync = sync
        self.segments: list[Segment] = []
        self.last_seq = 0
        self._fd: int | None = None

    # -- recovery -----------------------------------------------------------

    def recover(
        self, checkpoint_seq: int, apply: Callable[[list[Entry]], None], batch: int = 512,
        cuts: CutLedger | None = None,
    ) -> Recovery:
        """Read the whole log, check it, cut a torn tail, and replay what follows the checkpoint.

        Args:
            checkpoint_seq: everything up to here is already in the store.
            apply: called with consecutive entries after the checkpoint, in order.
            cuts: where a torn tail's cut is noted (its bytes are set aside in any case).

        Raises:
            Corruption: damage before the tail, a bad header, or a gap or
                repeat in sequence numbers.
        """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        paths = list_segments(self.directory)
        expected: int | None = None
        replayed = 0
        truncated = 0
        pending: list[Entry] = []
        cut: Cut | None = None
        resume: int | None = None
        for index, path in enumerate(paths):
            is_last = index == len(paths) - 1
            with open(path, "rb") as file:
                data = file.read()
            try:
                header = decode_header(data)
            except BadHeader as exc:
                if is_last and len(data) < HEADER.size:
                    # A crash while the segment was being created: it never held a record.
                    log.warning("removing incomplete new segment %s", path)
                    os.unlink(path)
                    fsync_dir(self.directory)
                    break
                raise Corruption(path, 0, str(exc), self._bytes_from(paths, index, 0)) from None
            if header.after_gap and (expected is None or header.first_seq > expected):
                # engramd --repair took damaged records out before this segment.
                log.warning("%s follows seqs that a repair dropped from the log", path)
                expected = header.first_seq
            if expected is None:
                if header.first_seq > checkpoint_seq + 1:
                    raise Corruption(path, 0, f"log starts at seq {header.first_seq} but the "
                                     f"store stops at {checkpoint_seq}: segments are missing", 0)
                expected = header.first_seq
            elif header.first_seq != expected:
                # A jump forward is fine when the store already holds everything
                # skipped (a log that fell behind the store was restarted ahead).
                if not expected < header.first_seq <= checkpoint_seq + 1:
                    raise Corruption(path, 0, f"segment starts at seq {header.first_seq}, "
                                     f"expected {expected}", self._bytes_from(paths, index, 0))
                expected = header.first_seq
            records, damage = scan_records(data, HEADER.size)
            end = HEADER.size
            for record in records:
                try:
                    span = decode_span(record.body)
                    entry = decode_entry(record.body) if span.last_seq > checkpoint_seq else span
                except msgspec.MsgspecError as exc:
                    damage = Damage(record.offset, f"undecodable entry: {exc}", is_tail=False)
                    break
                if entry.first_seq != expected or entry.last_seq < entry.first_seq:
                    raise Corruption(path, record.offset,
                                     f"entry starts at seq {entry.first_seq}, expected {expected}",
                                     self._bytes_from(paths, index, record.offset))
                expected = entry.last_seq + 1
                end = record.end
                if isinstance(entry, Entry):
                    pending.append(entry)
                    if len(pending) >= batch:
                        apply(pending)
                        replayed += len(pending)
                        pending = []
            if damage is not None:
                if not (damage.is_tail and is_last):
                    raise Corruption(path, damage.offset, damage.reason,
                                     self._bytes_from(paths, index, damage.offset))
                truncated = len(data) - damage.offset
                cut = self._set_tail_aside(path, data, damage, expected, checkpoint_seq)
                if cuts is not None:
                    cut = cuts.add(cut)
                log.warning("%s", cut.summary)
                resume = _resume_after(cut)
                with open(path, "r+b") as file:
                    file.truncate(damage.offset)
                    os.fsync(file.fileno())
                end = damage.offset
            self.segments.append(Segment(path, header.first_seq, end))
        if pending:
            apply(pending)
            replayed += len(pending)
        log_end = checkpoint_seq if expected is None else expected - 1
        self.last_seq = max(log_end, checkpoint_seq)
        if resume is not None and resume > self.last_seq + 1:
            # The cut record may have been acknowledged: its seqs (a unit's, a fencing
            # token) may be known to clients and are never given to another change.
            self.last_seq = resume - 1
            self._new_segment(resume, AFTER_GAP)
        elif not self.segments or log_end < checkpoint_seq:
            # Empty, or behind the store (durability "none" and a crash): go on
            # from the store's position in a fresh segment.
            self._new_segment(self.last_seq + 1)
        else:
            self._fd = os.open(self.segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return Recovery(self.last_seq, replayed, truncated, cut)

    def _set_tail_aside(self, path: str, data: bytes, damage: Damage, seq: int | None,
                        store_seq: int) -> Cut:
        """Keep the bytes of a torn tail before they are cut, and describe them."""
        tail = data[damage.offset:]
        saved = set_aside(self.directory, path, damage.offset, tail)
        last_seq, unit_ids = None, []
        length = int.from_bytes(tail[:4], "big") if len(tail) >= 8 else 0
        # A whole record whose checksum fails may still decode: say what it held.
        entry = peek_entry(tail[8:8 + length]) if 0 < length <= len(tail) - 8 else None
        if entry is not None and entry.first_seq == seq:
            last_seq = entry.last_seq
            unit_ids = [event.unit.id for event in entry.events
                        if isinstance(event, UnitCreated)]
        return Cut(id=new_cut_id(), at=dt.datetime.now(dt.UTC), segment=path,
                   offset=damage.offset, bytes=len(tail), reason=damage.reason, seq=seq,
                   last_seq=last_seq, unit_ids=unit_ids,
                   acknowledged=judge(tail, damage.reason, seq, store_seq), saved=saved)

    @staticmethod
    def _bytes_from(paths: list[str], index: int, offset: int) -> int:
        return os.path.getsize(paths[index]) - offset + sum(
            os.path.getsize(path) for path in paths[index + 1:])

    # -- appending ----------------------------------------------------------

    def _new_segment(self, first_seq: int, flags: int = 0) -> None:
        path = os.path.join(self.directory, segment_name(first_seq))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        try:
            _write_all(fd, SegmentHeader.new(first_seq, flags).encode())
            os.fsync(fd)
            fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self.segments.append(Segment(path, first_seq, HEADER.size))

    def append(self, first_seq: int, last_seq: int, data: bytes) -> None:
        """Write the records of entries ``first_seq..last_seq`` and make them durable.

        Raises:
            WriteFailed: nothing of *data* remains in the log (disk full, I/O error).
            SyncFailed: the fsync failed; the log must not be written again.
        """
        if first_seq != self.last_seq + 1:
            raise ValueError(f"append at seq {first_seq}, log is at {self.last_seq}")
        current = self.segments[-1]
        if current.size > HEADER.size and current.size + len(data) > self.segment_bytes:
            try:
                self._new_segment(first_seq)
            except OSError as exc:
                raise WriteFailed(f"cannot start a new WAL segment: {exc.strerror}",
                                  disk_full=exc.errno in (errno.ENOSPC, errno.EDQUOT)) from None
            current = self.segments[-1]
        assert self._fd is not None
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self._cut_back(current)
            raise WriteFailed(f"WAL write failed: {exc.strerror}",
                              disk_full=exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                              ) from None
        if self.sync:
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                # The batch is refused, so take it out of the file as well (best
                # effort, no fsync: that is what just failed); a restart then does
                # not bring back what the writers were told failed.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, current.size)
                raise SyncFailed(f"fdatasync of {current.path} failed: {exc.strerror}") from None
        current.size += len(data)
        self.last_seq = last_seq

    def _cut_back(self, segment: Segment) -> None:
        """Remove a partial write so the log ends on a record boundary again."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, segment.size)
            os.fsync(self._fd)
        except OSError as exc:
            raise SyncFailed(f"cannot cut a failed write off {segment.path}: "
                             f"{exc.strerror}") from None

    # -- trimming -----------------------------------------------------------

    def drop_through(self, seq: int) -> int:
        """Delete segments whose every entry is at or before *seq*; returns how many."""
        dropped = 0
        while len(self.segments) > 1 and self.segments[1].first_seq - 1 <= seq:
            os.unlink(self.segments.pop(0).path)
            dropped += 1
        if dropped:
            fsync_dir(self.directory)
        return dropped

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self.segments)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _resume_after(cut: Cut) -> int | None:
    """Where the log goes on after *cut*: past every seq it may have held, when it may
    have been acknowledged (None: at its own first seq, which nobody was given)."""
    if cut.acknowledged != POSSIBLY or cut.seq is None:
        return None
    if cut.last_seq is not None:
        return cut.last_seq + 1
    return cut.seq + max(1, cut.bytes // MIN_EVENT_BYTES)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of *data*, going on after short writes (a nearly full disk writes short)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
