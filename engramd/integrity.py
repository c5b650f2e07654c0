"""The store walk: every key read with its checksum, counted, and checked against the log.

The store is a view of the log (SPECS §3.4): every event has its ``e/<seq>`` key, every
unit its ``u/`` and ``c/`` keys, and the counters say how many there are. The walk
reads the whole store through one snapshot (the daemon goes on writing), notes each
damaged stretch (the file RocksDB names and the keys it could not read, then carries on
past that file's last key), checks those invariants, and compares the events with the
ones the log still holds. It also says what ``engramd --rebuild-store`` could rebuild:
everything when the log begins at seq 1, else the seqs the log holds plus those the
store can still give back.

Synchronous and trio-free; the log is only read (never cut or written).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from engramd.rocks import CheckedIter, StoreDamaged, damage_of
from engramd.storage import REMOVED as REMOVED_UNIT
from engramd.storage import Store, seq_from
from engramd.wal.log import list_segments
from engramd.wal.record import HEADER, BadHeader, decode_header, scan_records

ABSENT, EVENT, UNIT, REMOVED = 0, 1, 2, 3


class _EventKind(msgspec.Struct):
    kind: str
    seq: int


class _Kinds(msgspec.Struct, array_like=True):
    """A WAL entry with only what the walk compares: each event's seq and kind."""

    first_seq: int
    events: list[_EventKind]


_kinds = msgspec.msgpack.Decoder(_Kinds)


@dataclass
class Damaged:
    file: str
    reason: str
    after_key: str
    """The last key read before the damage ('' from the start)."""
    resumed_at: str
    """The first key read after it ('' when nothing after it could be read): the keys
    in between were not."""


@dataclass
class LogSummary:
    first_seq: int = 0
    """The first seq the log still holds (0: none); 1 means the whole journal."""
    last_seq: int = 0
    units: int = 0
    problem: str | None = None


@dataclass
class Walk:
    """What the store walk found (the daemon turns it into ``verify.report``)."""

    applied_seq: int = 0
    keys: int = 0
    units: int = 0
    unit_bodies: int = 0
    units_expected: int = 0
    contexts: int = 0
    contexts_expected: int = 0
    events: int = 0
    event_units: int = 0
    damage: list[Damaged] = field(default_factory=list)
    walked_all: bool = True
    kinds: bytearray = field(default_factory=bytearray)
    """By seq: ABSENT, EVENT, UNIT or REMOVED (retention), as the store's event log has it."""


def show_key(key: bytes) -> str:
    """A key as a person reads it: text parts joined by '/', a trailing seq as a number."""
    if key[:2] == b"e/" and len(key) == 10:
        return f"e/ seq {seq_from(key)}"
    if len(key) > 10 and key[-9] == 0:
        return f"{key[:-9].decode(errors='replace').replace(chr(0), '/')} seq {seq_from(key)}"
    return key.decode(errors="replace").replace("\0", "/")


PREFIXES = (b"a/", b"b/", b"c/", b"e/", b"g/", b"i/", b"j/", b"k/", b"l/", b"m/", b"n/",
            b"q/", b"r/", b"t/", b"u/", b"v/", b"x/", b"z/")
"""The store's key families (see :mod:`engramd.storage`): where a walk may pick up again."""


def read_all(store: Store) -> int:
    """Read every key and value of *store* (each block's checksum verified); how many keys.

    Raises:
        StoreDamaged: at the first damage (the store keeps it for ``status``).
    """
    iterator = store.iterator()
    iterator.seek_to_first()
    keys = 0
    while iterator.valid():
        keys += 1
        iterator.next()
    return keys


def walk_store(store: Store) -> Walk:
    """Read every key of *store* (one snapshot), noting damage and stepping over it."""
    snapshot = store.db.snapshot()
    walk = Walk()
    walk.applied_seq = _counter(snapshot, b"m/applied")
    walk.units_expected = _counter(snapshot, b"m/units")
    walk.contexts_expected = _counter(snapshot, b"m/contexts")
    walk.kinds = bytearray(walk.applied_seq + 1)
    ends = {os.path.join(store.path, info["name"].lstrip("/")): info["end_key"]
            for info in store.db.live_files()}
    last = b""
    iterator = CheckedIter(snapshot.iter(), lambda exc: damage_of(exc, store.path))
    iterator.seek_to_first()
    while True:
        try:
            for key, value in _pairs(iterator):
                last = key
                _count(walk, key, value)
            return walk
        except StoreDamaged as exc:
            damage = Damaged(exc.path, exc.reason, show_key(last) if last else "", "")
            walk.damage.append(damage)
            resumed = _step_over(snapshot, store.path, last, ends.get(exc.path))
            if resumed is None or isinstance(resumed, bool):
                walk.walked_all = bool(resumed)  # True: nothing follows the damage
                return walk
            iterator, damage.resumed_at = resumed[0], show_key(resumed[1])


def _step_over(snapshot: Any, path: str, last: bytes, end: bytes | None
               ) -> tuple[CheckedIter, bytes] | bool | None:
    """An iterator at the first readable key after damage met past *last*: tried at the
    next name of *last*'s family, at each later family, then past the damaged file.
    True when no key follows; None when every try met damage (or none could be made)."""
    candidates = [prefix for prefix in PREFIXES if prefix > last]
    if b"\0" in last[2:]:
        candidates.append(last[:last.index(b"\0", 2)] + b"\1")
    if end is not None:
        candidates.append(end + b"\0")
    damaged = end is None
    for start in sorted(key for key in set(candidates) if key > last):
        iterator = CheckedIter(snapshot.iter(), lambda exc: damage_of(exc, path))
        iterator.seek(start)
        try:
            if iterator.valid():
                return iterator, iterator.key()
        except StoreDamaged:
            damaged = True
            continue
    return None if damaged else True


def _pairs(iterator: CheckedIter) -> Iterator[tuple[bytes, bytes]]:
    while iterator.valid():
        yield iterator.key(), iterator.value()
        iterator.next()


def _counter(snapshot: Any, key: bytes) -> int:
    try:
        raw = snapshot[key]
    except KeyError:
        return 0
    return 0 if raw is None else seq_from(raw)


def _count(walk: Walk, key: bytes, value: bytes) -> None:
    walk.keys += 1
    prefix = key[:2]
    if prefix == b"e/" and len(key) == 10:
        seq = seq_from(key)
        walk.events += 1
        is_unit = value[:1] == b"U"
        walk.event_units += is_unit
        if seq < len(walk.kinds):
            walk.kinds[seq] = (UNIT if is_unit else REMOVED if value == REMOVED_UNIT
                               else EVENT)
    elif prefix == b"u/":
        walk.units += 1
    elif prefix == b"c/":
        walk.unit_bodies += 1
    elif prefix == b"x/":
        walk.contexts += 1


def log_first_seq(directory: str) -> int | None:
    """The first seq the log holds (from its first segment's header), None if empty."""
    for path in list_segments(directory) if os.path.isdir(directory) else []:
        with open(path, "rb") as file:
            try:
                return decode_header(file.read(HEADER.size)).first_seq
            except BadHeader:
                return None
    return None


def read_log(directory: str, up_to: int) -> Iterator[tuple[int, str]]:
    """``(seq, kind)`` of every event the log holds up to *up_to*, in order; read only.

    A segment deleted meanwhile (a checkpoint) is skipped; the end of the last one may
    be a record being written. Damage before that raises ``ValueError``.
    """
    paths = list_segments(directory) if os.path.isdir(directory) else []
    for path in paths:
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            continue
        decode_header(data)
        records, damage = scan_records(data, HEADER.size)
        for record in records:
            entry = _kinds.decode(record.body)
            for event in entry.events:
                if event.seq > up_to:
                    return
                yield event.seq, event.kind
        if damage is not None and not (damage.is_tail and path == paths[-1]):
            raise ValueError(f"the log is damaged in {path} at offset {damage.offset}: "
                             f"{damage.reason}")


def compare_with_log(walk: Walk, directory: str) -> tuple[LogSummary, list[tuple[int, int]]]:
    """What the log holds up to the walk's applied seq, and the seq ranges it holds
    that the store's event log lacks or has as another kind."""
    summary = LogSummary()
    wrong: list[tuple[int, int]] = []
    try:
        for seq, kind in read_log(directory, walk.applied_seq):
            if not summary.first_seq:
                summary.first_seq = seq
            summary.last_seq = seq
            is_unit = kind == "unit.created"
            summary.units += is_unit
            # (A unit retention removed keeps its seq in the event log, as removed.)
            if walk.kinds[seq] != (UNIT if is_unit else EVENT) and not (
                    is_unit and walk.kinds[seq] == REMOVED):
                _add(wrong, seq)
    except (ValueError, BadHeader, msgspec.MsgspecError) as exc:
        summary.problem = str(exc)
    return summary, wrong


def missing_before(walk: Walk, seq: int) -> list[tuple[int, int]]:
    """Seq ranges below *seq* that the store's event log lacks."""
    ranges: list[tuple[int, int]] = []
    for number in range(1, min(seq, len(walk.kinds))):
        if walk.kinds[number] == ABSENT:
            _add(ranges, number)
    return ranges


def _add(ranges: list[tuple[int, int]], seq: int) -> None:
    if ranges and ranges[-1][1] == seq - 1:
        ranges[-1] = (ranges[-1][0], seq)
    else:
        ranges.append((seq, seq))


@dataclass
class Check:
    """The walk, the log's side and what they mean (``verify.report``'s fields)."""

    walk: Walk
    log: LogSummary
    missing: list[tuple[int, int]]
    unrecoverable: list[tuple[int, int]]
    rebuild_complete: bool
    problems: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems


def check(store: Store, log_directory: str | None) -> Check:
    """Walk *store* and compare it with the log in *log_directory* (None: cluster mode,
    where the journal is the cluster's stream)."""
    started = time.monotonic()
    walk = walk_store(store)
    problems = [f"damaged: {d.file}: {d.reason}; the keys after {d.after_key or 'the start'} "
                f"{'before ' + d.resumed_at if d.resumed_at else 'to the end'} could not be "
                "read" for d in walk.damage]
    if not walk.walked_all:
        problems.append("the walk stopped at the damage: the rest of the store was not read")
    for what, found, expected in (("units", walk.units, walk.units_expected),
                                  ("unit bodies", walk.unit_bodies, walk.units_expected),
                                  ("contexts", walk.contexts, walk.contexts_expected),
                                  ("events", walk.events, walk.applied_seq)):
        if found != expected:
            problems.append(f"{what}: {found} in the store, {expected} expected")
    if log_directory is None:
        summary = LogSummary(problem=None)
        missing = missing_before(walk, walk.applied_seq + 1)
        unrecoverable: list[tuple[int, int]] = []
        complete = True  # the cluster's stream holds everything (SPECS §9)
    else:
        summary, missing = compare_with_log(walk, log_directory)
        if summary.problem:
            problems.append(summary.problem)
        held_from = summary.first_seq or walk.applied_seq + 1
        unrecoverable = missing_before(walk, held_from)
        missing = sorted(unrecoverable + missing)
        complete = held_from <= 1 and summary.problem is None
    if missing:
        problems.append(f"the store lacks {sum(b - a + 1 for a, b in missing)} event(s) of "
                        f"seqs {_ranges(missing)}")
    if unrecoverable:
        problems.append(f"seqs {_ranges(unrecoverable)} are in neither the store nor the log "
                        "(checkpointed segments are deleted): a rebuild cannot restore them")
    return Check(walk, summary, missing, unrecoverable, complete, problems,
                 round(time.monotonic() - started, 3))


def _ranges(ranges: list[tuple[int, int]], shown: int = 5) -> str:
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges[:shown])
    return text + (f" and {len(ranges) - shown} more ranges" if len(ranges) > shown else "")
