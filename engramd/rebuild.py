"""``engramd --rebuild-store``: a new store from the log, the damaged one kept aside.

The store is a view of the log (SPECS §3.4), so a store built by replaying the log
holds what the old one should have held. Two things are not in the log, and are
carried over from the old store as far as it can still be read: the named cursors and
the read marks (written with RocksDB's own log), and the entries older than the log's
first segment (checkpoints delete segments the store holds). What cannot be read is
named, by seq, before anything changes; losing any of it needs a confirmation.

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
from engramd.storage import Store, seq_bytes
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
    """What the old store gives back."""

    entries: list[Entry] = field(default_factory=list)
    lost: list[tuple[int, int]] = field(default_factory=list)
    idempotency: dict[bytes, bytes] = field(default_factory=dict)
    contexts: dict[bytes, bytes] = field(default_factory=dict)
    """The old store's contexts: those whose creation was lost are kept as they were."""
    kept: dict[bytes, bytes] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    """Damage met while copying keys (file: reason)."""


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


def salvage(db: Rdict, path: str, before: int) -> Salvage:
    """Events 1..*before*-1 by point reads (each seq on its own: damage costs only the
    seqs it covers), and the keys the log does not hold."""
    found = Salvage()
    for seq in range(1, before):
        try:
            event = _stored_event(db, seq)
        except Exception:
            event = None
        if event is None:
            if found.lost and found.lost[-1][1] == seq - 1:
                found.lost[-1] = (found.lost[-1][0], seq)
            else:
                found.lost.append((seq, seq))
            continue
        found.entries.append(Entry(first_seq=seq, events=[event]))
    if before > 1:
        found.idempotency = dict(_family(db, path, b"i/", found.unreadable))
        found.contexts = dict(_family(db, path, b"x/", found.unreadable))
    for prefix in KEPT:
        found.kept.update(_family(db, path, prefix, found.unreadable))
    return found


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
    wal_dir = os.path.join(data_dir, "wal")
    first = log_first_seq(wal_dir)
    before = first if first is not None else 1
    old, how = open_old(path, os.path.join(data_dir, "store.repairing"))
    found = Salvage()
    if old is not None:
        try:
            applied = _applied(old)
            found = salvage(old, path, before if first is not None else applied + 1)
        finally:
            old.close()
    elif first is None or first > 1:
        found.lost = [(1, (first or 1) - 1)] if first and first > 1 else []
    say(f"the log holds seqs from {first} on" if first else "the log is empty")
    say(f"the old store: {how}")
    if found.entries:
        say(f"seqs 1-{before - 1}: {len(found.entries)} event(s) taken from the old store "
            "(the log's older segments were deleted at checkpoints)")
    problems = [f"seqs {_ranges(found.lost)} are in neither the log nor the readable part of "
                "the old store: they will be missing"] if found.lost else []
    problems += [f"not carried over: {what}" for what in found.unreadable]
    if old is None and os.path.isdir(path):
        problems.append("named cursors and read marks are lost (the old store is unreadable)")
    for line in problems:
        say(line)
    if problems and not assume_yes:
        if not sys.stdin.isatty():
            print("engramd: error: not rebuilt; run with --yes to accept the loss",
                  file=sys.stderr)
            return EXIT_FAILURE
        if input("Rebuild the store anyway? [y/N] ").strip().lower() not in ("y", "yes"):
            say("not rebuilt")
            return EXIT_FAILURE
    shutil.rmtree(building, ignore_errors=True)
    store = Store(building)
    try:
        replayed = _fill(store, found, before, config, wal_dir)
        store.flush()
    finally:
        store.close()
    shutil.rmtree(os.path.join(data_dir, "store.repairing"), ignore_errors=True)
    aside = f"{path}.damaged-{int(time.time())}"
    if os.path.exists(path):
        os.replace(path, aside)
    os.replace(building, path)
    fsync_dir(data_dir)
    say(f"rebuilt the store: {len(found.entries)} event(s) from the old store, {replayed} "
        f"log entries replayed, {len(found.kept)} cursor(s) and mark(s) kept")
    if os.path.exists(aside):
        say(f"the old store is kept at {aside}; delete it once you are satisfied")
    if found.lost:  # the search index holds units the store no longer has: start it over
        SearchIndex.destroy(os.path.join(data_dir, "search.db"))
        say("the search index will be rebuilt at the next start")
    return EXIT_OK


def _applied(db: Rdict) -> int:
    raw = db.get(b"m/applied")
    return 0 if raw is None else int.from_bytes(raw, "big")


def _fill(store: Store, found: Salvage, before: int, config: DaemonConfig,
          wal_dir: str) -> int:
    """Apply what was salvaged, then replay the log; the log's entries replayed."""
    for start in range(0, len(found.entries), BATCH):
        store.apply(found.entries[start:start + BATCH])
    copied = {**found.idempotency, **found.kept}
    for key, value in copied.items():
        store.db.put(key, value)
    if before > 1 and store.applied_seq != before - 1:
        store.db.put(b"m/applied", seq_bytes(before - 1))  # lost seqs at the end
        store.applied_seq = before - 1
    wal = WriteAheadLog(wal_dir, segment_bytes=config.segment_bytes, sync=True)
    try:
        replayed = wal.recover(store.applied_seq, store.apply).entries_replayed
    finally:
        wal.close()
    lost = {key: value for key, value in found.contexts.items() if store.db.get(key) is None}
    for key, value in lost.items():
        store.db.put(key, value)
    if lost:
        store.db.put(b"m/contexts", seq_bytes(store.context_count + len(lost)))
    return replayed
