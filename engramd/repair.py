"""``engramd --repair [--yes]``: salvage a damaged log, with the daemon stopped.

It says what it keeps and what it drops (seqs, unit ids, bytes, and where the
dropped bytes go) before it changes anything; it changes the log only when
confirmed on a terminal or given ``--yes``. The rules are
:mod:`engramd.wal.salvage`'s. Exit status: 0 when the log is intact or was
repaired, 1 when it was left as it was (not confirmed, the daemon running, a
store that cannot be opened).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import msgspec

from engramd.config import DaemonConfig
from engramd.errors import EXIT_FAILURE, StartupError
from engramd.runtime import LockFile
from engramd.storage import Store
from engramd.wal.log import WriteAheadLog
from engramd.wal.record import encode_record
from engramd.wal.salvage import Drop, Plan, apply_salvage, plan_salvage, remake_contexts

EXIT_OK = 0
SHOWN_IDS = 20


class _UnitId(msgspec.Struct):
    id: str


_unit_id = msgspec.msgpack.Decoder(_UnitId)


def repair(config: DaemonConfig, *, assume_yes: bool) -> int:
    data_lock = LockFile(os.path.join(config.data_dir, "engramd.lock"),
                         what=f"data dir {config.data_dir}")
    try:
        data_lock.acquire()
    except (StartupError, OSError) as exc:
        print(f"engramd: error: {exc}; stop the daemon first", file=sys.stderr)
        return EXIT_FAILURE
    try:
        try:
            store = Store(os.path.join(config.data_dir, "store"))
        except Exception as exc:  # rocksdict reports a damaged store as a plain Exception
            print(f"engramd: error: cannot open the store in {config.data_dir}: {exc}",
                  file=sys.stderr)
            return EXIT_FAILURE
        try:
            return _salvage(config, store, assume_yes=assume_yes)
        finally:
            store.close()
    finally:
        data_lock.release()


def _salvage(config: DaemonConfig, store: Store, *, assume_yes: bool) -> int:
    directory = os.path.join(config.data_dir, "wal")
    plan = plan_salvage(directory, store.applied_seq) if os.path.isdir(directory) else None
    if plan is None or not plan.damaged:
        last = plan.last_seq if plan is not None else None
        print(f"the journal is intact (seq {max(last or 0, store.applied_seq)})")
        return EXIT_OK
    for line in describe(plan, store):
        print(line)
    if not assume_yes:
        if not sys.stdin.isatty():
            print("engramd: error: nothing changed; run with --yes to repair",
                  file=sys.stderr)
            return EXIT_FAILURE
        if input("Repair the log so? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return EXIT_FAILURE
    apply_salvage(plan)
    for drop in plan.drops:
        if drop.aside:
            print(f"set aside: {drop.aside}")
    orphans = plan.orphans(lambda context_id: store.context(context_id) is not None)
    if orphans:
        wal = WriteAheadLog(directory, segment_bytes=config.segment_bytes, sync=True)
        try:
            wal.recover(store.applied_seq, lambda entries: None)
            entry = remake_contexts(orphans, wal.last_seq + 1)
            wal.append(entry.first_seq, entry.last_seq, encode_record(entry))
        finally:
            wal.close()
        print(f"made again (seqs {entry.first_seq}-{entry.last_seq}): "
              + ", ".join(context.id for context in orphans))
    print("repaired; engramd starts from the records kept")
    return EXIT_OK


def describe(plan: Plan, store: Store) -> Iterator[str]:
    """What the repair of *plan* keeps and drops, for people, one line each."""
    lost = [drop for drop in plan.drops if not drop.repeats]
    yield (f"the log is damaged in {len(plan.drops)} place(s); a repair keeps every "
           "record whose checksum holds and whose seqs continue the log:")
    for drop in plan.drops:
        yield "  " + _drop_line(drop, store.applied_seq)
        ids = drop.unit_ids or _stored_units(drop, store)
        if ids:
            shown = ", ".join(ids[:SHOWN_IDS])
            more = f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
            yield f"    units: {shown}{more}"
    orphans = plan.orphans(lambda context_id: store.context(context_id) is not None)
    if orphans:
        yield ("kept units are in contexts whose creation was dropped; the repair makes "
               "them again at the end of the log: "
               + ", ".join(context.id for context in orphans))
    size, first, last = plan.kept_after_damage()
    if first is not None:
        yield f"kept after the damage: {size} bytes of records, seqs {first}-{last}"
    else:
        yield "nothing after the damage can be kept"
    if lost:
        yield ("the dropped bytes go to wal/damaged-<segment>-<offset>.bin; the log goes on "
               "after the seqs they held, which are never given again")


def _drop_line(drop: Drop, store_seq: int) -> str:
    name = os.path.basename(drop.segment)
    where = f"{name} at offset {drop.offset}, {drop.size} bytes ({drop.reason})" \
        if drop.size else f"{name}: {drop.reason}"
    if drop.repeats:
        return f"{where}: dropped, nothing lost (the log holds those seqs)"
    if drop.first_seq is None:
        return f"{where}: dropped, no seq lost"
    if drop.last_seq is None:
        seqs = f"seqs from {drop.first_seq} on (as many as the bytes held)"
    elif drop.last_seq == drop.first_seq:
        seqs = f"seq {drop.first_seq}"
    else:
        seqs = f"seqs {drop.first_seq}-{drop.last_seq}"
    if drop.last_seq is not None and drop.last_seq <= store_seq:
        return f"{where}: {seqs} dropped from the log; the store holds them, nothing lost"
    return f"{where}: {seqs} lost"


def _stored_units(drop: Drop, store: Store) -> list[str]:
    """Units of the drop's seqs that the store holds (it applied them before the damage)."""
    if drop.first_seq is None or drop.repeats:
        return []
    last = min(drop.last_seq if drop.last_seq is not None else store.applied_seq,
               store.applied_seq)
    ids = []
    for seq in range(drop.first_seq, last + 1):
        unit = store.unit_at(seq)
        if unit is not None:
            ids.append(_unit_id.decode(unit).id)
    return ids
