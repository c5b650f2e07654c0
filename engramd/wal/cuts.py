"""What recovery cut off the log, remembered until someone acknowledges it.

A torn tail is cut at start-up (SPECS §3.4). A crash in the middle of a write
leaves one, and so does damage to the last record on disk after it was
acknowledged: the two cannot always be told apart, so every cut is reported,
not only logged. For each cut, in this order:

1. its bytes are written aside, ``wal/damaged-<segment>-<offset>.bin`` (fsynced);
2. a :class:`Cut` joins ``wal/cuts.json`` (rewritten atomically);
3. only then is the segment truncated.

A crash between the steps leaves the bytes and the note; the next start finds
the same damage and cuts it again, which :meth:`CutLedger.add` and
:func:`set_aside` recognise, so nothing is noted or kept twice. ``status``
lists the notes until a ``wal.acknowledge`` request clears them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import secrets

import msgspec

log = logging.getLogger("engramd.wal")

LEDGER = "cuts.json"

UNLIKELY = "unlikely"
"""The bytes are what a write cut short leaves (a record running past the end of the
file, zeros): no fsync had covered them, so nobody was told they were written."""
POSSIBLY = "possibly"
"""A whole record whose checksum fails, or bytes that cannot start a record: a crash
while the record was written, or an acknowledged record damaged on disk since."""
YES = "yes"
"""The store had already applied the record: it was acknowledged (and its changes are
still in the store)."""


class Cut(msgspec.Struct, frozen=True, kw_only=True):
    """One torn tail cut at start-up."""

    id: str
    at: dt.datetime
    segment: str
    offset: int
    bytes: int
    reason: str
    seq: int | None
    """The seq the first cut record would have had (None: the segment held no record)."""
    last_seq: int | None
    """The last seq of the cut bytes, when they still decode."""
    unit_ids: list[str]
    """Units in the cut bytes, when they still decode."""
    acknowledged: str
    """:data:`UNLIKELY`, :data:`POSSIBLY` or :data:`YES`."""
    saved: str
    """Where the cut bytes were put."""

    @property
    def summary(self) -> str:
        where = f"record at offset {self.offset} of {self.segment}"
        if self.seq is not None:
            where += f", seq {self.seq}" if self.last_seq in (None, self.seq) else \
                f", seqs {self.seq}-{self.last_seq}"
        told = {UNLIKELY: "a write cut short by a crash, never acknowledged",
                POSSIBLY: "it may have been an acknowledged write damaged on disk",
                YES: "it had been acknowledged; the store holds its changes"}[self.acknowledged]
        return (f"the last {self.bytes} bytes of the log were cut at start-up ({where}: "
                f"{self.reason}); {told}; the bytes are kept in {self.saved}")


def judge(tail: bytes, reason: str, seq: int | None, store_seq: int) -> str:
    """How likely the record cut at the start of *tail* had been acknowledged."""
    if seq is not None and seq <= store_seq:
        return YES
    if reason.startswith(("truncated record header", "record of")) or not any(tail):
        # Cut short by the end of the file, or zeros (space the file system gave
        # before the data reached it): what an interrupted write leaves.
        return UNLIKELY
    return POSSIBLY


def set_aside(directory: str, segment: str, offset: int, data: bytes) -> str:
    """Write *data*, taken out of *segment* at *offset*, to a file of its own; its path.

    Bytes already set aside from the same place (a cut that a crash interrupted,
    done again) are not written twice.
    """
    stem = os.path.basename(segment).rsplit(".", 1)[0]
    base = os.path.join(directory, f"damaged-{stem}-{offset}")
    path, number = f"{base}.bin", 1
    while os.path.exists(path):
        with open(path, "rb") as file:
            if file.read() == data:
                return path
        number += 1
        path = f"{base}.{number}.bin"
    _write_durably(path, data)
    return path


def _write_durably(path: str, data: bytes) -> None:
    """Write a whole file under a temporary name, fsync it, rename it, fsync the directory."""
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


_cuts_decoder = msgspec.json.Decoder(list[Cut])


class CutLedger:
    """The cuts not yet acknowledged, in ``<wal dir>/cuts.json``."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, LEDGER)
        self.cuts: list[Cut] = []
        try:
            with open(self.path, "rb") as file:
                self.cuts = _cuts_decoder.decode(file.read())
        except FileNotFoundError:
            pass
        except (OSError, msgspec.MsgspecError) as exc:
            # The notes are a report, not the journal: an unreadable file must not stop
            # the daemon, nor be overwritten unseen.
            aside = f"{self.path}.unreadable-{int(dt.datetime.now(dt.UTC).timestamp())}"
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            log.error("the notes of earlier WAL cuts in %s cannot be read (%s); moved to %s",
                      self.path, exc, aside)

    def add(self, cut: Cut) -> Cut:
        """Remember *cut* (durably); the same cut made again is remembered once."""
        for known in self.cuts:
            if (known.segment, known.offset, known.bytes) == (cut.segment, cut.offset,
                                                               cut.bytes):
                return known
        self.cuts.append(cut)
        self._save()
        return cut

    def acknowledge(self, ids: list[str]) -> list[Cut]:
        """Forget the cuts named by *ids* (every one when empty); the cuts forgotten."""
        gone = [cut for cut in self.cuts if not ids or cut.id in ids]
        if gone:
            self.cuts = [cut for cut in self.cuts if cut not in gone]
            self._save()
        return gone

    def _save(self) -> None:
        if self.cuts:
            _write_durably(self.path, msgspec.json.encode(self.cuts))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def new_cut_id() -> str:
    return secrets.token_hex(4)
