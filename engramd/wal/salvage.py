"""``engramd --repair``: take damaged bytes out of the log and keep every intact record.

:func:`plan_salvage` reads the log without changing it and says what a repair
keeps and drops; :func:`apply_salvage` does it. The rules:

* A record is kept when its checksum holds, it decodes, and its seqs continue
  the log: they start where the last kept record ended, or, right after damage,
  later by no more seqs than the damaged bytes could have held
  (:func:`~engramd.wal.record.find_record`: an event takes at least
  :data:`~engramd.wal.record.MIN_EVENT_BYTES`).
* After damage the log re-synchronises at the first byte where such a record
  starts (a byte-by-byte scan: records carry no markers, and a damaged length
  says nothing about where the next record begins). Everything in between is
  dropped: written aside to ``wal/damaged-<segment>-<offset>.bin`` first.
* A record whose seqs the log already holds (a repeat) is dropped; nothing is
  lost with it.
* Kept records that follow dropped ones go to a segment of their own, whose
  header starts at their first seq and carries
  :data:`~engramd.wal.record.AFTER_GAP`, so that recovery accepts the seqs
  that are missing before it. What precedes the first damage of a segment stays
  in that file, which is cut there.

Order on disk (a crash in the middle leaves no record lost, only work to do
again): the dropped bytes are set aside, the new segments are written under a
temporary name, fsynced and renamed, then damaged files are cut or removed.
A repair interrupted so and run again finds the kept records twice and drops
the second copy as repeats.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from engramd.protocol.model import Context, ContextCreated, ContextUpdated, UnitCreated
from engramd.wal.cuts import set_aside
from engramd.wal.log import fsync_dir, list_segments, segment_name
from engramd.wal.record import (
    AFTER_GAP,
    HEADER,
    MIN_EVENT_BYTES,
    RECORD_HEAD,
    BadHeader,
    Entry,
    Record,
    SegmentHeader,
    decode_header,
    find_record,
    peek_entry,
    record_at,
)


@dataclass
class Drop:
    """Bytes taken out of the log, or seqs that no segment holds (``size`` 0)."""

    segment: str
    offset: int
    size: int
    reason: str
    first_seq: int | None = None
    """The seqs lost with these bytes run from here (None: none, or not known)..."""
    last_seq: int | None = None
    """... to here (None with a first_seq: as many as the bytes held, at the log's end)."""
    unit_ids: list[str] = field(default_factory=list)
    """Units in the dropped bytes that still decode."""
    repeats: bool = False
    """The bytes are records whose seqs the log holds already: nothing is lost."""
    aside: str = ""
    """Where the bytes went (once applied)."""


@dataclass
class Run:
    """Consecutive kept records of one segment file."""

    source: str
    start: int
    end: int
    first_seq: int
    last_seq: int
    after_gap: bool
    in_place: bool
    """The source's own first records: the file stays (cut at ``end``)."""

    @property
    def records(self) -> bool:
        return self.end > self.start


@dataclass
class Plan:
    directory: str
    runs: list[Run] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    """Each segment file's size as read."""
    resume_seq: int | None = None
    """When damage ends the log: the seq it goes on from, in a new segment."""
    unit_contexts: dict[str, Context] = field(default_factory=dict)
    """Contexts of kept units, as a context made for them would be (first unit's time,
    the agents that wrote there)."""
    contexts_made: set[str] = field(default_factory=set)
    """Contexts whose creation (or a later change) the kept records hold."""

    def orphans(self, stored: Callable[[str], bool]) -> list[Context]:
        """Contexts that kept units are in but that neither the kept records nor the
        store (*stored*) hold: their creation was in the dropped bytes."""
        return [context for context_id, context in self.unit_contexts.items()
                if context_id not in self.contexts_made and not stored(context_id)]

    @property
    def damaged(self) -> bool:
        return bool(self.drops)

    @property
    def last_seq(self) -> int | None:
        kept = [run for run in self.runs if run.records]
        return kept[-1].last_seq if kept else None

    def kept_after_damage(self) -> tuple[int, int | None, int | None]:
        """Bytes of records kept after the first drop, and their first and last seq."""
        if not self.drops:
            return 0, None, None
        first = self.drops[0]
        after = [run for run in self.runs if run.records and
                 (run.source, run.start) > (first.segment, first.offset)]
        if not after:
            return 0, None, None
        return (sum(run.end - run.start for run in after), after[0].first_seq,
                after[-1].last_seq)


class _Planner:
    def __init__(self, directory: str, store_seq: int) -> None:
        self.plan = Plan(directory)
        self.store_seq = store_seq
        self.expected: int | None = None
        self.unresolved: list[Drop] = []
        """Dropped bytes whose lost seqs end where the log resumes (not known yet)."""
        self.damaged = 0
        """Bytes dropped since the last kept record: the most seqs they could hold."""
        self.run: Run | None = None

    def segment(self, path: str, data: bytes) -> None:
        self.run = None
        self.plan.sizes[path] = len(data)
        try:
            header = decode_header(data)
        except BadHeader as exc:
            self._scan(path, data, 0, f"bad segment header: {exc}", own_header=False)
            return
        gap = header.after_gap
        if self.expected is None:
            if header.first_seq > self.store_seq + 1 and not header.after_gap:
                self._missing(path, self.store_seq + 1, header.first_seq - 1)
                gap = True
            self.expected = header.first_seq
        elif header.first_seq > self.expected:
            # The header says where this segment's records start; the seqs before
            # it went with the damage before it, or with a lost segment.
            if self.unresolved:
                self._resolve(header.first_seq)
            elif not header.after_gap:
                self._missing(path, self.expected, header.first_seq - 1)
            self.expected = header.first_seq
            gap = True
        self._scan(path, data, HEADER.size, None, own_header=True, after_gap=gap,
                   in_place=header.after_gap or not gap)

    def _missing(self, path: str, first: int, last: int) -> None:
        self.plan.drops.append(Drop(path, 0, 0, f"seqs {first}-{last} are in no segment",
                                    first, last))

    def _scan(self, path: str, data: bytes, offset: int, damage: str | None, *,
              own_header: bool, after_gap: bool = False, in_place: bool = False) -> None:
        """Walk *data* from *offset*: keep what continues the log, drop the rest.

        *in_place*: the file's own header can stay (its first records stay in it).
        """
        drop_at = 0 if damage is not None else None
        while offset < len(data):
            if drop_at is None:
                found = record_at(data, offset)
                entry = peek_entry(found.body) if isinstance(found, Record) else None
                if isinstance(found, Record) and entry is not None and entry.events:
                    if self.expected is None or entry.first_seq == self.expected:
                        self._keep(path, found, entry, in_place, after_gap)
                        offset, after_gap = found.end, False
                        continue
                    if entry.first_seq < self.expected:
                        self._drop(path, offset, found.end, data,
                                   f"repeats seqs {entry.first_seq}-{entry.last_seq}",
                                   repeats=True)
                        in_place, offset = False, found.end
                        continue
                    # Whole records missing exactly on their boundaries.
                    self._missing(path, self.expected, entry.first_seq - 1)
                    self.expected = entry.first_seq
                    self.run, in_place, after_gap = None, False, True
                    continue
                drop_at = offset
                damage = found if isinstance(found, str) else "undecodable entry"
                in_place = False
            resume = find_record(data, drop_at + 1, self.expected,
                                 self.damaged) if drop_at + 1 < len(data) else None
            end = len(data) if resume is None else resume[0].offset
            assert damage is not None
            self._drop(path, drop_at, end, data, damage)
            if resume is None:
                return
            record, entry = resume
            after_gap = self.expected is not None and entry.first_seq > self.expected
            self.run = None
            self._keep(path, record, entry, False, after_gap)
            offset, drop_at, damage, after_gap = record.end, None, None, False
        if own_header and offset == HEADER.size:
            # An empty segment stays (appends continue there), marked when a gap precedes
            # it so that the seqs of the gap are never given again.
            first = self.expected if self.expected is not None else 1
            self.plan.runs.append(Run(path, HEADER.size, HEADER.size, first, first - 1,
                                      after_gap, in_place))

    def _resolve(self, resumed_at: int) -> None:
        """The log resumes at seq *resumed_at*: the unresolved drops lost the seqs before."""
        if self.expected is not None and resumed_at > self.expected:
            self.unresolved[0].first_seq = self.expected
            self.unresolved[0].last_seq = resumed_at - 1
        self.unresolved, self.damaged = [], 0

    def _keep(self, path: str, record: Record, entry: Entry, in_place: bool,
              after_gap: bool) -> None:
        if self.unresolved:
            after_gap = after_gap or (self.expected is not None
                                      and entry.first_seq > self.expected)
            self._resolve(entry.first_seq)
        self._note_contexts(entry)
        run = self.run
        if run is None or run.end != record.offset:
            run = Run(path, record.offset, record.end, entry.first_seq, entry.last_seq,
                      after_gap, in_place and record.offset == HEADER.size)
            self.plan.runs.append(run)
            self.run = run
        else:
            run.end, run.last_seq = record.end, entry.last_seq
        self.expected = entry.last_seq + 1

    def _note_contexts(self, entry: Entry) -> None:
        plan = self.plan
        for event in entry.events:
            if isinstance(event, ContextCreated | ContextUpdated):
                plan.contexts_made.add(event.context_id)
            elif isinstance(event, UnitCreated):
                unit = event.unit
                known = plan.unit_contexts.get(unit.context_id)
                if known is None:
                    plan.unit_contexts[unit.context_id] = Context(
                        id=unit.context_id, display_name=unit.context_id,
                        agent_ids=[unit.agent_id], pinned_units=[], meta={},
                        created_at=unit.ts, updated_at=unit.ts)
                elif unit.agent_id not in known.agent_ids:
                    known.agent_ids.append(unit.agent_id)

    def _drop(self, path: str, start: int, end: int, data: bytes, reason: str, *,
              repeats: bool = False) -> None:
        self.run = None
        drop = Drop(path, start, end - start, reason, repeats=repeats,
                    unit_ids=readable_units(data[start:end]))
        self.plan.drops.append(drop)
        if not repeats:
            self.unresolved.append(drop)
            self.damaged += end - start

    def finish(self) -> Plan:
        if self.unresolved and self.expected is not None:
            # Nothing kept follows: the bytes held seqs from here, as many as they could.
            # The log goes on past all of them, so that no seq a client may have been
            # given (a unit's, a fencing token) is ever given again.
            self.unresolved[0].first_seq = self.expected
            self.plan.resume_seq = self.expected + max(1, self.damaged // MIN_EVENT_BYTES)
        return self.plan


# A unit's id as msgspec encodes it in a record: the key "id", then a 36-byte str.
_UNIT_ID = re.compile(rb"\xa2id\xd9\x24([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                      rb"[0-9a-f]{12})")


def readable_units(data: bytes) -> list[str]:
    """Ids of the units in damaged bytes: from the records that still decode (checksums
    aside), else from what still looks like a unit's id in them."""
    ids: list[str] = []
    offset = 0
    while len(data) - offset >= RECORD_HEAD.size:
        length = int.from_bytes(data[offset:offset + 4], "big")
        end = offset + RECORD_HEAD.size + length
        entry = peek_entry(data[offset + RECORD_HEAD.size:end]) if length > 0 and \
            end <= len(data) else None
        if entry is None:
            found = [match.decode() for match in _UNIT_ID.findall(data, offset)]
            return ids + [unit_id for unit_id in found if unit_id not in ids]
        ids += [event.unit.id for event in entry.events if isinstance(event, UnitCreated)]
        offset = end
    return ids


def plan_salvage(directory: str, store_seq: int) -> Plan:
    """What a repair of the log in *directory* keeps and drops; changes nothing."""
    planner = _Planner(directory, store_seq)
    for path in list_segments(directory):
        with open(path, "rb") as file:
            planner.segment(path, file.read())
    return planner.finish()


def apply_salvage(plan: Plan) -> None:
    """Carry *plan* out (see the module for the order); fills in each drop's ``aside``."""
    directory = plan.directory
    contents: dict[str, bytes] = {}
    for path in plan.sizes:
        with open(path, "rb") as file:
            contents[path] = file.read()
    if any(len(data) != plan.sizes[path] for path, data in contents.items()):
        raise RuntimeError("the log changed since it was read; run the repair again")
    for drop in plan.drops:
        if drop.size:
            data = contents[drop.segment][drop.offset:drop.offset + drop.size]
            drop.aside = set_aside(directory, drop.segment, drop.offset, data)
    written: set[str] = set()
    kept_in_place: dict[str, int] = {}
    for run in plan.runs:
        if run.in_place:
            kept_in_place[run.source] = run.end
            continue
        path = os.path.join(directory, segment_name(run.first_seq))
        header = SegmentHeader.new(run.first_seq, AFTER_GAP if run.after_gap else 0)
        temporary = path + ".repair"
        with open(temporary, "wb") as file:
            file.write(header.encode() + contents[run.source][run.start:run.end])
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        written.add(path)
    if plan.resume_seq is not None:
        path = os.path.join(directory, segment_name(plan.resume_seq))
        with open(path + ".repair", "wb") as file:
            file.write(SegmentHeader.new(plan.resume_seq, AFTER_GAP).encode())
            file.flush()
            os.fsync(file.fileno())
        os.replace(path + ".repair", path)
        written.add(path)
    fsync_dir(directory)
    for path, end in kept_in_place.items():
        if path in written:
            continue  # an empty segment that a segment of kept records replaced
        if end < plan.sizes[path]:
            with open(path, "r+b") as file:
                file.truncate(end)
                os.fsync(file.fileno())
    for path in plan.sizes:
        if path not in kept_in_place and path not in written:
            os.unlink(path)
    fsync_dir(directory)


def remake_contexts(orphans: list[Context], first_seq: int) -> Entry:
    """An entry that creates *orphans* again, to be appended to the repaired log: without
    it their kept units would be in the store but in no context a listing finds."""
    now = dt.datetime.now(dt.UTC)
    return Entry(first_seq=first_seq, events=[
        ContextCreated(seq=first_seq + index, ts=now, context_id=context.id, context=context)
        for index, context in enumerate(orphans)])
