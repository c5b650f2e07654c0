"""``engramd --rebuild-store``: a new store from the log, the damaged one kept aside.

The store is a view of the log (SPECS §3.4), so a store built by replaying the log
holds what the old one should have held. Two things are not in the log, and are
carried over from the old store as far as it can still be read: the named cursors and
the read marks (written with RocksDB's own log), and the entries older than the log's
first segment (checkpoints delete segments the store holds). What cannot be read is
named, by seq, before the new store replaces the old one; losing any of it needs a
confirmation (refused: the new store is deleted and nothing has changed).

Safe by construction: the new store is built beside the old one (``store.rebuild``),
and only a complete build is swapped in, by two renames; the old store is kept as
``store.damaged-<time>`` and never deleted. An interrupted rebuild leaves the old
store in place (run it again).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec
from rocksdict import AccessType, Options, Rdict

from engramd.config import DaemonConfig
from engramd.errors import StartupError
from engramd.integrity import log_first_seq
from engramd.protocol.model import AnyEvent, Unit, UnitCreated
from engramd.rocks import CheckedIter, StoreDamaged, damage_of
from engramd.runtime import LockFile
from engramd.search import SearchIndex
from engramd.storage import REMOVED, Store, seq_bytes
from engramd.wal.log import Corruption, WriteAheadLog, fsync_dir
from engramd.wal.record import Entry

EXIT_OK, EXIT_FAILURE = 0, 1
BATCH = 512
KEPT = (b"n/", b"q/")
"""Key families not in the log: named cursors, read marks."""
_event = msgspec.msgpack.Decoder(AnyEvent)
_unit = msgspec.msgpack.Decoder(Unit)


@dataclass
class Salvage:
    """What the old store gave back, and what it could not."""

    events: int = 0
    lost: list[tuple[int, int]] = field(default_factory=list)
    kept: int = 0
    """Named cursors and read marks carried over."""
    unreadable: list[str] = field(default_factory=list)
    """Damage met while copying keys (which keys, where)."""


def open_old(path: str, scratch: str) -> tuple[Rdict | None, str]:
    """The old store, read only; if RocksDB cannot open it, a copy of it repaired by
    RocksDB's RepairDB (which rebuilds a lost MANIFEST from the table files)."""
    if not os.path.isdir(path):
        return None, "missing"
    options = Options(raw_mode=True)
    try:
        return Rdict(path, options, access_type=AccessType.read_only()), "as it is"
    except Exception as exc:
        first = str(damage_of(exc, path))
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(path, scratch)
    try:
        Rdict.repair(scratch, options)
        return Rdict(scratch, options), f"repaired by RocksDB ({first})"
    except Exception as exc:
        return None, f"unreadable ({first}; repair: {exc})"


def salvage_events(db: Rdict, store: Store, before: int, found: Salvage) -> None:
    """Apply events 1..*before*-1 of the old store to *store*, read one seq at a time by
    point reads (damage costs only the seqs it covers), in batches (memory stays small)."""
    batch: list[Entry] = []
    for seq in range(1, before):
        try:
            if db.get(b"e/" + seq_bytes(seq)) == REMOVED:
                # Retention removed its unit: the seq stays taken, as removed (nothing lost).
                store.db.put(b"e/" + seq_bytes(seq), REMOVED)
                continue
            event = _stored_event(db, seq)
        except Exception:
            event = None
        if event is None:
            if found.lost and found.lost[-1][1] == seq - 1:
                found.lost[-1] = (found.lost[-1][0], seq)
            else:
                found.lost.append((seq, seq))
            continue
        batch.append(Entry(first_seq=seq, events=[event]))
        if len(batch) == BATCH:
            store.apply(batch)
            batch = []
    if batch:
        store.apply(batch)
    found.events = before - 1 - sum(last - first + 1 for first, last in found.lost)
    if store.applied_seq != before - 1:
        store.db.put(b"m/applied", seq_bytes(before - 1))  # the last seqs were lost
        store.applied_seq = before - 1


def _stored_event(db: Rdict, seq: int) -> AnyEvent | None:
    value = db.get(b"e/" + seq_bytes(seq))
    if value is None:
        return None
    if value[:1] != b"U":
        return _event.decode(value)
    raw = db.get(b"c/" + value[1:])
    if raw is None:
        return None
    unit = _unit.decode(raw)
    return UnitCreated(seq=seq, ts=unit.ts, context_id=unit.context_id, unit=unit)


def _family(db: Rdict, path: str, prefix: bytes, unreadable: list[str]
            ) -> Iterator[tuple[bytes, bytes]]:
    iterator = CheckedIter(db.iter(), lambda exc: damage_of(exc, path))
    iterator.seek(prefix)
    try:
        while iterator.valid() and iterator.key().startswith(prefix):
            yield iterator.key(), iterator.value()
            iterator.next()
    except StoreDamaged as exc:
        unreadable.append(f"{prefix.decode()} keys after the damage in {exc.path} "
                          f"({exc.reason})")


def _ranges(ranges: list[tuple[int, int]]) -> str:
    shown = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges[:10])
    return shown + (" …" if len(ranges) > 10 else "")


def rebuild_store(config: DaemonConfig, *, assume_yes: bool,
                  say: Callable[[str], None] = print) -> int:
    """Rebuild the store of a stopped daemon; returns the exit status."""
    data_lock = LockFile(os.path.join(config.data_dir, "engramd.lock"),
                         what=f"data dir {config.data_dir}")
    try:
        data_lock.acquire()
    except (StartupError, OSError) as exc:
        print(f"engramd: error: {exc}; stop the daemon first", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return _rebuild(config, assume_yes, say)
    except Corruption as exc:
        print(f"engramd: error: store not rebuilt: {exc}; the log itself is damaged: "
              "'engramd --repair' first", file=sys.stderr)
        return EXIT_FAILURE
    except (StartupError, OSError) as exc:
        print(f"engramd: error: store not rebuilt: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        data_lock.release()


def _rebuild(config: DaemonConfig, assume_yes: bool, say: Callable[[str], None]) -> int:
    data_dir = config.data_dir
    path, building = os.path.join(data_dir, "store"), os.path.join(data_dir, "store.rebuild")
    repairing = os.path.join(data_dir, "store.repairing")
    wal_dir = os.path.join(data_dir, "wal")
    first = log_first_seq(wal_dir)
    old, how = open_old(path, repairing)
    say(f"the log holds seqs from {first} on" if first else "the log is empty")
    say(f"the old store: {how}")
    shutil.rmtree(building, ignore_errors=True)
    store = Store(building)
    found = Salvage()
    try:
        before = first if first is not None else (_applied(old) + 1 if old else 1)
        if old is not None:
            salvage_events(old, store, before, found)
            if before > 1:  # the log's idempotency keys of those seqs are gone with it,
                _copy(old, path, b"i/", store, found)
                _copy(old, path, b"z/", store, found)  # and its removals' archive names
        elif before > 1:
            found.lost = [(1, before - 1)]
            store.db.put(b"m/applied", seq_bytes(before - 1))
            store.applied_seq = before - 1
        replayed = _replay(store, config, wal_dir)
        if old is not None:
            if before > 1:  # contexts whose creation was lost, as the old store had them
                _copy(old, path, b"x/", store, found, only_missing=True)
            for prefix in KEPT:
                found.kept += _copy(old, path, prefix, store, found)
        if not store.flush():  # (what was applied is in memory only until flushed)
            shutil.rmtree(building, ignore_errors=True)
            raise StartupError(f"no room on the disk of {data_dir} for the new store; free "
                               "some space and run it again")
    finally:
        store.close()
        if old is not None:
            old.close()
        shutil.rmtree(repairing, ignore_errors=True)
    if found.events:
        say(f"seqs 1-{before - 1}: {found.events} event(s) taken from the old store (the "
            "log's older segments were deleted at checkpoints)")
    problems = [f"seqs {_ranges(found.lost)} are in neither the log nor the readable part of "
                "the old store: they will be missing"] if found.lost else []
    problems += [f"not carried over: {what}" for what in found.unreadable]
    if old is None and os.path.isdir(path):
        problems.append("named cursors and read marks are lost (the old store is unreadable)")
    for line in problems:
        say(line)
    if problems and not _confirmed(assume_yes):
        shutil.rmtree(building, ignore_errors=True)
        return EXIT_FAILURE
    aside = f"{path}.damaged-{int(time.time())}"
    if os.path.exists(path):
        os.replace(path, aside)
    os.replace(building, path)
    fsync_dir(data_dir)
    say(f"rebuilt the store: {found.events} event(s) from the old store, {replayed} log "
        f"entries replayed, {found.kept} cursor(s) and mark(s) kept")
    if os.path.exists(aside):
        say(f"the old store is kept at {aside}; delete it once you are satisfied")
    if found.lost:  # the search index holds units the store no longer has: start it over
        SearchIndex.destroy(os.path.join(data_dir, "search.db"))
        say("the search index will be rebuilt at the next start")
    return EXIT_OK


def _confirmed(assume_yes: bool) -> bool:
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        print("engramd: error: not rebuilt; run with --yes to accept the loss",
              file=sys.stderr)
        return False
    if input("Rebuild the store anyway? [y/N] ").strip().lower() in ("y", "yes"):
        return True
    print("not rebuilt")
    return False


def _applied(db: Rdict) -> int:
    raw = db.get(b"m/applied")
    return 0 if raw is None else int.from_bytes(raw, "big")


def _replay(store: Store, config: DaemonConfig, wal_dir: str) -> int:
    """Replay the log after the store's applied seq; the log's entries replayed."""
    wal = WriteAheadLog(wal_dir, segment_bytes=config.segment_bytes, sync=True)
    try:
        return wal.recover(store.applied_seq, store.apply).entries_replayed
    finally:
        wal.close()


def _copy(db: Rdict, path: str, prefix: bytes, store: Store, found: Salvage, *,
          only_missing: bool = False) -> int:
    """Copy the old store's *prefix* keys (as far as they can be read); how many."""
    copied = 0
    for key, value in _family(db, path, prefix, found.unreadable):
        if only_missing and store.db.get(key) is not None:
            continue
        store.db.put(key, value)
        copied += 1
    if only_missing and copied:
        store.db.put(b"m/contexts", seq_bytes(store.context_count + copied))
    return copied
