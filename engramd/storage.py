"""The RocksDB store: units, contexts, indexes and the event log, derived from the WAL.

Synchronous and trio-free. Everything here can be rebuilt by replaying the
WAL; :meth:`Store.apply` writes a batch of entries and the new applied
sequence number in one atomic RocksDB write, with RocksDB's own WAL off (ours
is the source of truth). :meth:`Store.flush` makes the store's files durable,
after which WAL segments up to :attr:`Store.checkpoint_seq` may go.

Key layout (one column family, raw bytes; ``<seq>`` is 8 bytes big-endian so
keys sort by sequence; ``\\0`` separates text parts, which never contain NUL)::

    m/schema, m/applied, m/units, m/contexts     store metadata
    m/stream, m/deployment, m/stream_made        cluster mode: the stream sequence of the
                                                 view, the deployment and the stream (when
                                                 it was made) it is a view of
    u/<unit id>               -> <context>\\0<seq>   where the unit lives
    c/<context>\\0<seq>        -> unit (wire encoding)   per-context order
    e/<seq>                   -> event (wire encoding), or b"U" + unit location
    a/<agent>\\0<seq>          -> ""                  agent index
    t/<TYPE>\\0<seq>           -> ""                  type index
    k/<key>\\0<value>\\0<seq>   -> ""                  metadata inverted index
    r/o/<src>\\0<TYPE>\\0<dst>  -> ""                  relationships, outgoing
    r/i/<dst>\\0<TYPE>\\0<src>  -> ""                  relationships, incoming
    x/<context>               -> context (wire encoding)
    i/<idempotency key>       -> unit id
    n/<agent>\\0<cursor name> -> seq                  named cursors, each an agent's (written
                                                     with RocksDB's WAL; n/<cursor name>: one
                                                     stored before cursors had owners)
    l/<resource>\\0<lock id>   -> lease (wire encoding)   leases held now (several on one
                                                     resource when shared; a store from
                                                     before shared leases has l/<resource>)
    b/<agent or *>\0<seq>     -> flag + sender       mailboxes: messages by recipient
    v/<message id>\0<agent>   -> ack unit id         acknowledgements given
    j/<task id>               -> StoredTask          tasks and their state
    q/<mark>\0<agent>         -> seq                 read marks (written with RocksDB's WAL)
    g/<lock id>               -> pgid, boot id       cluster mode: the process groups this
                                                     engramd checked for its own requests
                                                     (written with RocksDB's WAL)
    z/<unit id>               -> archive file        a unit retention removed, and where it
                                                     was archived (``e/<seq>`` of its
                                                     creation is then b"R")

A mailbox entry's flag is ``A`` when the message asks for an acknowledgement, else
``-``; the sender follows, so a broadcast is not delivered to its own sender. The
agents' keys (``b/``, ``v/``, ``j/``, ``q/``) are kept by :mod:`engramd.agentstore`.

Every read answers in full or raises :class:`~engramd.rocks.StoreDamaged`
(:mod:`engramd.rocks`): a damaged store is never read as a shorter answer.
"""

from __future__ import annotations

import datetime as dt
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
from rocksdict import WriteBatch, WriteOptions

from engramd.agentstore import AgentRecords, StoredTask
from engramd.protocol import agentwork
from engramd.protocol.model import (
    ContextCreated,
    ContextUpdated,
    LockAcquired,
    LockRenewed,
    Unit,
    UnitCreated,
    UnitsRemoved,
)
from engramd.rocks import (
    CheckedIter,
    StoreDamaged,
    StoreFull,
    StoreMemory,
    damage_of,
    is_disk_full,
    open_rocks,
    read_options,
    rocks_get,
)
from engramd.runtime import free_bytes
from engramd.wal.record import Entry

log = logging.getLogger("engramd.storage")

SCHEMA_VERSION = 1
FLUSH_MARGIN = 4 * 1024 * 1024
"""Room a flush leaves besides its files (RocksDB's manifest, log, compactions)."""
_SEQ = struct.Struct(">Q")
_encoder = msgspec.msgpack.Encoder()


class _LeaseId(msgspec.Struct):
    lock_id: str


_lease_id = msgspec.msgpack.Decoder(_LeaseId)


class _Stamped(msgspec.Struct):
    """What a stored unit or event is read for when the log is searched by time."""

    ts: dt.datetime


class _Kind(msgspec.Struct):
    kind: str


_stamp = msgspec.msgpack.Decoder(_Stamped)
_unit = msgspec.msgpack.Decoder(Unit)
REMOVED = b"R"
"""The event log's value at the seq of a unit retention removed (SPECS §3.4, *Retention*):
the seq stays taken, its unit is gone."""
_kind = msgspec.msgpack.Decoder(_Kind)
LEASE_CHANGES = frozenset(("lock.acquired", "lock.released", "lock.expired"))
"""The kinds of the lease events a lease's history is made of (renewals are not)."""


def seq_bytes(seq: int) -> bytes:
    return _SEQ.pack(seq)


def seq_from(key: bytes) -> int:
    return int(_SEQ.unpack_from(key, len(key) - 8)[0])


def _text(value: str) -> bytes:
    return value.encode()


def _cursor_key(agent: str, name: str) -> bytes:
    """``n/<agent>\\0<name>``: cursors belong to agents (neither part holds a NUL)."""
    return b"n/" + _text(agent) + b"\0" + _text(name)


@dataclass(frozen=True)
class StoreFigures:
    """The store's size and memory as RocksDB counts them (``engram stats``)."""

    sst_bytes: int
    """Its live table files."""
    memtable_bytes: int
    """Writes applied since the last flush, in memory (and in our log)."""
    keys: int
    """RocksDB's estimate of the keys it holds."""
    block_cache_bytes: int
    block_cache_capacity: int
    table_readers_bytes: int
    """Memory its open table files take outside the block cache."""


class SchemaMismatch(Exception):
    """The store was written by an incompatible version of engramd."""


class Store(AgentRecords):
    """The store; every read either answers in full or raises :class:`StoreDamaged`.

    ``read_only``: opened without writing anything (engramd on a full disk); writes
    raise :class:`StoreFull`.
    """

    def __init__(self, path: str, *, read_only: bool = False,
                 memory: StoreMemory | None = None) -> None:
        self.path = path
        self.read_only = read_only
        self.damage: StoreDamaged | None = None
        """The first damage a read met since the store opened (status reports it)."""
        self.db = open_rocks(path, read_only=read_only, memory=memory or StoreMemory())
        self._write = WriteOptions()
        self._write.disable_wal = True  # type: ignore[method-assign,assignment]
        # Cursor acks are not in our WAL: let RocksDB's own log keep them across a crash.
        self._logged_write = WriteOptions()
        schema = self._get(b"m/schema")
        if schema is None:
            if not read_only:
                self.db.put(b"m/schema", seq_bytes(SCHEMA_VERSION), self._write)
        elif seq_from(schema) != SCHEMA_VERSION:
            raise SchemaMismatch(f"store schema {seq_from(schema)}, this engramd needs "
                                 f"{SCHEMA_VERSION}")
        self.applied_seq = self._counter(b"m/applied")
        self.unit_count = self._counter(b"m/units")
        self.context_count = self._counter(b"m/contexts")
        self.checkpoint_seq = self.applied_seq
        """The applied seq as of the last flush: what survives a crash of the store."""
        self.stream_seq = self._counter(b"m/stream")
        """Cluster mode: the stream sequence of the last message applied."""

    def _counter(self, key: bytes) -> int:
        raw = self._get(key)
        return 0 if raw is None else seq_from(raw)

    # -- checked access: damage is an error, never a shorter answer --------------------

    def _damaged(self, exc: BaseException) -> StoreDamaged:
        damage = exc if isinstance(exc, StoreDamaged) else damage_of(exc, self.path)
        if self.damage is None:
            self.damage = damage
            log.error("%s", damage)
        return damage

    def _iter(self) -> CheckedIter:
        """An iterator over the store that raises :class:`StoreDamaged` at damage."""
        return CheckedIter(self.db.iter(), self._damaged)

    iterator = _iter

    def _get(self, key: Any) -> Any:
        return rocks_get(self.db, key, self._damaged)

    def _put_logged(self, key: bytes, value: bytes) -> None:
        """A write outside the journal (cursors, marks), with RocksDB's own log."""
        if self.read_only:
            raise StoreFull("engramd started read-only (the disk is full): nothing can be "
                            "stored until there is space and engramd is restarted")
        try:
            self.db.put(key, value, self._logged_write)
        except Exception as exc:
            if is_disk_full(exc):
                raise StoreFull(f"the disk is full: {exc}") from None
            raise

    # -- writing ------------------------------------------------------------

    def apply(self, entries: list[Entry], stream_seq: int | None = None,
              fences: dict[bytes, tuple[int, bytes]] | None = None) -> None:
        """Write *entries* (consecutive, after :attr:`applied_seq`) atomically; in cluster
        mode with the stream position they bring the store to, and the fence marks their
        messages carried (``f/<key>``: mark key -> (token, mark); a key keeps its
        largest token; see :mod:`engramd.cluster.fences`)."""
        batch = WriteBatch(raw_mode=True)
        for mark_key, (token, mark) in (fences or {}).items():
            stored = self._get(b"f/" + mark_key)
            if stored is None or int.from_bytes(stored[:8], "big") < token:
                batch.put(b"f/" + mark_key, seq_bytes(token) + mark)
        units = self.unit_count
        contexts = self.context_count
        # Units this batch writes, and the keys of theirs a removal finds by prefix: a
        # replay applies a unit and its removal in one batch, unread by the store yet.
        created: dict[str, Unit] = {}
        owned: dict[str, list[bytes]] = {}
        leases: dict[bytes, str | None] = {}  # lease key -> lock id held, as of this batch
        tasks: dict[str, StoredTask] = {}  # tasks changed by this batch
        for entry in entries:
            for event in entry.events:
                seq = seq_bytes(event.seq)
                if isinstance(event, UnitCreated):
                    unit = event.unit
                    location = _text(unit.context_id) + b"\0" + seq
                    batch.put(b"u/" + _text(unit.id), location)
                    batch.put(b"c/" + location, _encoder.encode(unit))
                    batch.put(b"e/" + seq, b"U" + location)
                    batch.put(b"a/" + _text(unit.agent_id) + b"\0" + seq, b"")
                    batch.put(b"t/" + _text(unit.type) + b"\0" + seq, b"")
                    for key, value in unit.meta.items():
                        batch.put(b"k/" + _text(key) + b"\0" + _text(value) + b"\0" + seq, b"")
                    for rel in unit.relationships:
                        kind = _text(rel.type)
                        source, target = _text(unit.id), _text(rel.target)
                        outgoing = b"r/o/" + source + b"\0" + kind + b"\0" + target
                        incoming = b"r/i/" + target + b"\0" + kind + b"\0" + source
                        batch.put(outgoing, b"")
                        batch.put(incoming, b"")
                        owned.setdefault(unit.id, []).append(outgoing)
                        owned.setdefault(rel.target, []).append(incoming)
                    created[unit.id] = unit
                    if unit.type == "MESSAGE":
                        self._file_message(batch, unit, seq)
                        acked = unit.meta.get(agentwork.ACK_OF)
                        if acked:
                            owned.setdefault(acked, []).append(
                                b"v/" + _text(acked) + b"\0" + _text(unit.agent_id))
                    elif unit.type == "TASK_STATUS" and agentwork.STATE in unit.meta:
                        self._track_task(tasks, unit)
                    units += 1
                elif isinstance(event, UnitsRemoved):
                    units -= self._remove_units(batch, event, created, owned)
                    batch.put(b"e/" + seq, _encoder.encode(event))
                elif isinstance(event, ContextCreated | ContextUpdated):
                    batch.put(b"x/" + _text(event.context.id), _encoder.encode(event.context))
                    batch.put(b"e/" + seq, _encoder.encode(event))
                    if isinstance(event, ContextCreated):
                        contexts += 1
                else:
                    lease = event.lease
                    lease_key = b"l/" + _text(lease.resource) + b"\0" + _text(lease.lock_id)
                    if isinstance(event, LockAcquired | LockRenewed):
                        batch.put(lease_key, _encoder.encode(lease))
                    else:
                        batch.delete(lease_key)
                        before = b"l/" + _text(lease.resource)  # a lease stored as before
                        if self._holds(leases, before, lease.lock_id):
                            # (An end of a lease that no longer holds the resource — a
                            # late duplicate — must not take its successor's record.)
                            batch.delete(before)
                            leases[before] = None
                    batch.put(b"e/" + seq, _encoder.encode(event))
            for key, unit_id in entry.idempotency_keys.items():
                batch.put(b"i/" + _text(key), _text(unit_id))
        for task in tasks.values():
            batch.put(b"j/" + _text(task.id), _encoder.encode(task))
        last = entries[-1].last_seq
        batch.put(b"m/applied", seq_bytes(last))
        batch.put(b"m/units", seq_bytes(units))
        batch.put(b"m/contexts", seq_bytes(contexts))
        if stream_seq is not None:
            batch.put(b"m/stream", seq_bytes(stream_seq))
        self.db.write(batch, self._write)
        if stream_seq is not None:
            self.stream_seq = stream_seq
        self.applied_seq = last
        self.unit_count = units
        self.context_count = contexts

    def _remove_units(self, batch: WriteBatch, event: UnitsRemoved, created: dict[str, Unit],
                      owned: dict[str, list[bytes]]) -> int:
        """Every key of the units *event* removes, into *batch*; how many were here (a
        replay of a removal the store already holds finds none). Relationships are
        removed on the removed unit's side only (``r/o/<id>``, ``r/i/<id>``): a kept
        unit's edge to it stays, so a trace from the kept unit still shows it was there."""
        removed = 0
        archive = _text(event.archive)
        for unit_id in event.unit_ids:
            unit: Unit | None = created.pop(unit_id, None)
            if unit is None:
                location = self.unit_location(unit_id)
                if location is None:
                    continue  # (removed already: a replay over a flushed store)
                unit = _unit.decode(self._unit_at_location(location, f"unit {unit_id}"))
            seq = seq_bytes(unit.seq)
            location = _text(unit.context_id) + b"\0" + seq
            batch.delete(b"u/" + _text(unit_id))
            batch.delete(b"c/" + location)
            batch.put(b"e/" + seq, REMOVED)
            batch.put(b"z/" + _text(unit_id), archive)
            batch.delete(b"a/" + _text(unit.agent_id) + b"\0" + seq)
            batch.delete(b"t/" + _text(unit.type) + b"\0" + seq)
            for key, value in unit.meta.items():
                batch.delete(b"k/" + _text(key) + b"\0" + _text(value) + b"\0" + seq)
            for prefix in (b"r/o/", b"r/i/", b"v/"):
                for owned_key in self._keys(prefix + _text(unit_id) + b"\0"):
                    batch.delete(owned_key)
            for owned_key in owned.pop(unit_id, ()):
                batch.delete(owned_key)
            if unit.type == "MESSAGE":
                for recipient in agentwork.recipients(unit.meta):
                    batch.delete(b"b/" + _text(recipient) + b"\0" + seq)
            removed += 1
        return removed

    def _keys(self, prefix: bytes) -> Iterator[bytes]:
        """Every key that begins with *prefix* (which ends in NUL), read by an iterator
        bounded to it: a removal's seeks would otherwise walk the tombstones the
        removals before it left after the prefix (0.5 ms a seek after 20,000)."""
        options = read_options()  # (checksums verified, as every read of the store)
        options.set_iterate_lower_bound(prefix)
        options.set_iterate_upper_bound(prefix[:-1] + bytes([prefix[-1] + 1]))
        iterator = CheckedIter(self.db.iter(options), self._damaged)
        iterator.seek(prefix)
        while iterator.valid():
            yield iterator.key()
            iterator.next()

    def archived(self, unit_id: str) -> str | None:
        """The archive file of a unit retention removed; None for one it did not."""
        raw = self._get(b"z/" + _text(unit_id))
        return None if raw is None else bytes(raw).decode(errors="replace")

    def fence_marks(self) -> Iterator[bytes]:
        """Cluster mode: every fence mark applied (as :meth:`apply` was given it)."""
        for value in self._values(b"f/"):
            yield value[8:]

    def set_stream_seq(self, stream_seq: int) -> None:
        """Cluster mode: the view is at *stream_seq* without new entries (it skipped some)."""
        self.db.put(b"m/stream", seq_bytes(stream_seq), self._write)
        self.stream_seq = stream_seq

    def _holds(self, leases: dict[bytes, str | None], key: bytes, lock_id: str) -> bool:
        """Whether the lease stored under *key* (this batch's changes first) is *lock_id*."""
        if key in leases:
            return leases[key] == lock_id
        raw: bytes | None = self._get(key)
        return raw is not None and _lease_id.decode(raw).lock_id == lock_id

    def flush(self) -> bool:
        """Make everything applied durable in the store's own files; False (nothing done)
        when the disk has no room for them: RocksDB would stop taking writes after a
        flush that failed for want of space, and the log keeps what is not flushed."""
        if self.read_only:
            return False
        memtables = self.db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
        if free_bytes(self.path) < 2 * memtables + FLUSH_MARGIN:
            return False
        seq = self.applied_seq  # everything applied so far is in the memtables being flushed
        self.db.flush(True)
        self.checkpoint_seq = seq
        return True

    def close(self) -> None:
        self.db.close()

    def figures(self) -> StoreFigures:
        """What RocksDB says it holds, from its properties (no walk of the store)."""
        value = self.db.property_int_value
        return StoreFigures(
            sst_bytes=value("rocksdb.live-sst-files-size") or 0,
            memtable_bytes=value("rocksdb.cur-size-all-mem-tables") or 0,
            keys=value("rocksdb.estimate-num-keys") or 0,
            block_cache_bytes=value("rocksdb.block-cache-usage") or 0,
            block_cache_capacity=value("rocksdb.block-cache-capacity") or 0,
            table_readers_bytes=value("rocksdb.estimate-table-readers-mem") or 0)

    # -- reading ------------------------------------------------------------

    def _unit_at_location(self, location: bytes, what: str) -> bytes:
        unit: bytes | None = self._get(b"c/" + location)
        if unit is None:  # an index that points at nothing: keys were lost
            raise self._damaged(StoreDamaged(self.path, f"{what} points at a unit the store "
                                             "does not hold"))
        return unit

    def unit_location(self, unit_id: str) -> bytes | None:
        value: bytes | None = self._get(b"u/" + _text(unit_id))
        return value

    def unit_ids_with_prefix(self, prefix: str, limit: int) -> list[str]:
        """Up to *limit* unit ids that begin with *prefix*, in id (time) order."""
        start = b"u/" + _text(prefix)
        iterator = self._iter()
        iterator.seek(start)
        found: list[str] = []
        while iterator.valid() and len(found) < limit:
            key: bytes = iterator.key()
            if not key.startswith(start):
                break
            found.append(key[2:].decode())
            iterator.next()
        return found

    def units_by_id(self, unit_ids: list[str]) -> list[bytes | None]:
        """Encoded units, ``None`` where an id is unknown."""
        if not unit_ids:
            return []
        keys: list[Any] = [b"u/" + _text(unit_id) for unit_id in unit_ids]
        locations: list[bytes | None] = self._get(keys)
        wanted: list[Any] = [b"c/" + location for location in locations if location is not None]
        found: list[bytes | None] = self._get(wanted) if wanted else []
        if None in found:
            located = [unit_id for unit_id, location in zip(unit_ids, locations, strict=True)
                       if location is not None]
            raise self._damaged(StoreDamaged(
                self.path, f"unit {located[found.index(None)]} points at a unit the store "
                "does not hold"))
        units = iter(found)
        return [None if location is None else next(units) for location in locations]

    def scan_context(
        self, context_id: str, *, after: int | None = None, before: int | None = None,
        newest_first: bool = True,
    ) -> Iterator[tuple[bytes, bytes]]:
        """``(key, encoded unit)`` of a context, within ``(after, before)`` exclusive."""
        prefix = b"c/" + _text(context_id) + b"\0"
        low = after or 0
        high = min(before if before is not None else 1 << 64, (1 << 64) - 1)
        # Keys compare as their seqs do (big-endian), so bounds are checked on bytes.
        low_key, high_key = prefix + seq_bytes(low), prefix + seq_bytes(high)
        if before is None:
            high_key += b"\0"  # the largest seq is in range too
        size = len(prefix) + 8
        iterator = self._iter()
        if newest_first:
            iterator.seek_for_prev(prefix + seq_bytes(high))
            step = iterator.prev
        else:
            iterator.seek(prefix + seq_bytes(low + 1))
            step = iterator.next
        while iterator.valid():
            key: bytes = iterator.key()
            if len(key) != size or not key.startswith(prefix):
                return
            if key <= low_key or key >= high_key:
                if newest_first and key >= high_key:
                    step()
                    continue
                return
            yield key, iterator.value()
            step()

    def context(self, context_id: str) -> bytes | None:
        value: bytes | None = self._get(b"x/" + _text(context_id))
        return value

    def contexts(self, *, prefix: str = "", after: str | None = None) -> Iterator[bytes]:
        start = b"x/" + _text(prefix)
        iterator = self._iter()
        iterator.seek(b"x/" + _text(after) + b"\0" if after is not None else start)
        while iterator.valid() and iterator.key().startswith(start):
            yield iterator.value()
            iterator.next()

    def events_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to *limit* ``(seq, stored event)`` after *seq*, in order (see the key layout)."""
        iterator = self._iter()
        iterator.seek(b"e/" + seq_bytes(seq + 1))
        found: list[tuple[int, bytes]] = []
        while iterator.valid() and len(found) < limit:
            key: bytes = iterator.key()
            if not key.startswith(b"e/"):
                break
            value: bytes = iterator.value()
            if value == REMOVED:  # (its unit is archived: nothing to deliver or index)
                iterator.next()
                continue
            if value[:1] == b"U":
                value = b"U" + self._unit_at_location(value[1:], f"seq {seq_from(key)}")
            found.append((seq_from(key), value))
            iterator.next()
        return found

    def first_event_at(self, when: dt.datetime) -> int:
        """The seq of the first event journaled at or after *when* (the next seq when
        none is): a bisection of the event log, whose events are in time order (a
        clock set back makes the bound approximate, nothing worse)."""
        low, high = 1, self.applied_seq + 1
        while low < high:
            middle = (low + high) // 2
            iterator = self._iter()
            iterator.seek(b"e/" + seq_bytes(middle))
            while (iterator.valid() and iterator.key().startswith(b"e/")
                   and iterator.value() == REMOVED):
                iterator.next()  # a removed unit's seq has no time: the next event's
            key: bytes | None = iterator.key() if iterator.valid() else None
            if key is None or not key.startswith(b"e/"):
                high = middle  # (no event from *middle* on)
                continue
            seq = seq_from(key)
            value: bytes = iterator.value()
            if value[:1] == b"U":
                value = self._unit_at_location(value[1:], f"seq {seq}")
            if _stamp.decode(value).ts >= when:
                high = middle
            else:
                low = seq + 1
        return low

    def lease_events(self, after: int, limit: int, walk: int
                     ) -> tuple[list[tuple[int, bytes]], int | None]:
        """Up to *limit* ``(seq, stored event)`` lease grants and ends
        (:data:`LEASE_CHANGES`) after seq *after*, in order, walking at most *walk*
        events (units are passed over unread); and the seq to go on after, None when
        the log was read to its end."""
        iterator = self._iter()
        iterator.seek(b"e/" + seq_bytes(after + 1))
        found: list[tuple[int, bytes]] = []
        last = after
        for _ in range(walk):
            if not iterator.valid():
                return found, None
            key: bytes = iterator.key()
            if not key.startswith(b"e/"):
                return found, None
            if len(found) == limit:
                return found, last
            last = seq_from(key)
            value: bytes = iterator.value()
            if value[:1] not in (b"U", REMOVED) and _kind.decode(value).kind in LEASE_CHANGES:
                found.append((last, value))
            iterator.next()
        ended = not iterator.valid() or not iterator.key().startswith(b"e/")
        return found, None if ended else last

    def _values(self, prefix: bytes) -> Iterator[bytes]:
        """The values of every key that begins with *prefix*, in key order."""
        iterator = self._iter()
        iterator.seek(prefix)
        while iterator.valid() and iterator.key().startswith(prefix):
            yield iterator.value()
            iterator.next()

    def leases(self) -> Iterator[bytes]:
        """Every lease held as of the last applied event."""
        return self._values(b"l/")

    def deployment(self) -> str:
        """Cluster mode: the deployment this store is a view of (empty: not recorded)."""
        raw = self._get(b"m/deployment")
        return "" if raw is None else bytes(raw).decode(errors="replace")

    def set_deployment(self, deployment: str) -> None:
        self._put_logged(b"m/deployment", _text(deployment))

    def stream_made(self) -> str:
        """Cluster mode: when the stream this store is a view of was made (empty: not
        recorded)."""
        raw = self._get(b"m/stream_made")
        return "" if raw is None else bytes(raw).decode(errors="replace")

    def set_stream_made(self, made: str) -> None:
        self._put_logged(b"m/stream_made", _text(made))

    def own_groups(self) -> Iterator[tuple[str, bytes]]:
        """Cluster mode: ``(lock id, record)`` of each process group this engramd
        checked for a request of its own (:mod:`engramd.cluster.owngroups`)."""
        iterator = self._iter()
        iterator.seek(b"g/")
        while iterator.valid() and iterator.key().startswith(b"g/"):
            yield iterator.key()[2:].decode(), iterator.value()
            iterator.next()

    def put_own_group(self, lock_id: str, record: bytes) -> None:
        self._put_logged(b"g/" + _text(lock_id), record)

    def drop_own_group(self, lock_id: str) -> None:
        if not self.read_only:
            self.db.delete(b"g/" + _text(lock_id), self._logged_write)

    def cursor(self, agent: str, name: str) -> int | None:
        """*agent*'s cursor *name*. A name stored before cursors had owners
        (``n/<name>``, no agent) is where each agent's first use of it starts."""
        raw = self._get(_cursor_key(agent, name))
        if raw is None:
            raw = self._get(b"n/" + _text(name))
        return None if raw is None else seq_from(raw)

    def set_cursor(self, agent: str, name: str, seq: int) -> None:
        self._put_logged(_cursor_key(agent, name), seq_bytes(seq))

    def unit_at(self, seq: int) -> bytes | None:
        """The encoded unit whose ``unit.created`` event has this seq."""
        event: bytes | None = self._get(b"e/" + seq_bytes(seq))
        if event is None or event[:1] != b"U":
            return None
        return self._unit_at_location(event[1:], f"seq {seq}")

    def idempotent_unit(self, key: str) -> str | None:
        value = self._get(b"i/" + _text(key))
        return None if value is None else bytes(value).decode()

    def relationships(self, unit_id: str, direction: str) -> Iterator[tuple[str, str, str]]:
        """``(source, TYPE, target)`` edges touching *unit_id*; direction ``o`` or ``i``."""
        prefix = b"r/" + direction.encode() + b"/" + _text(unit_id) + b"\0"
        iterator = self._iter()
        iterator.seek(prefix)
        while iterator.valid() and iterator.key().startswith(prefix):
            kind, other = iterator.key()[len(prefix):].decode().split("\0", 1)
            yield (unit_id, kind, other) if direction == "o" else (other, kind, unit_id)
            iterator.next()
