"""The engine: the daemon's state and every operation on it.

The write path, in order: validate -> group commit (build: number, time-stamp
and check against current state; write; fsync: durable from here; apply to the
store) -> reply. Reads go straight to the store, which only ever holds durable
changes. :func:`open_engine` opens the store and the log, replays the log in the
background (``status`` says ``recovering`` meanwhile), and closes both on exit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import cast

import msgspec
import trio
from trio_typing import TaskStatus

from engramd import __version__, ids, validate
from engramd.caller import Caller
from engramd.commit import GroupCommitter
from engramd.config import DaemonConfig
from engramd.errors import StartupError
from engramd.events import EventHub, Filter, Subscriber, describe_live
from engramd.indexer import Indexer, open_index
from engramd.leases import LeaseManager
from engramd.metrics import Metrics
from engramd.protocol import (
    BadRequest,
    Conflict,
    CreateContext,
    EngramError,
    JournalStatus,
    ListContexts,
    ListUnits,
    NotFound,
    RelatedEdge,
    RelatedFound,
    RelatedUnits,
    Search,
    SearchHit,
    SearchResults,
    SpooledUnit,
    StreamStatus,
    Subscribe,
    TooLarge,
    Unavailable,
    UnitDraft,
    UnitPage,
    UnitsCreated,
    UnitsFound,
    UpdateContext,
)
from engramd.protocol.model import (
    Context,
    ContextChange,
    ContextCreated,
    ContextUpdated,
    Unit,
    UnitCreated,
)
from engramd.search import QueryError, plain_query
from engramd.storage import SchemaMismatch, Store, seq_from
from engramd.wal.log import Corruption, WriteAheadLog
from engramd.wal.record import Entry

log = logging.getLogger("engramd.engine")

_unit_decoder = msgspec.msgpack.Decoder(Unit)
_spool_decoder = msgspec.json.Decoder(SpooledUnit)
_context_decoder = msgspec.msgpack.Decoder(Context)
MAX_PAGE = 10_000
EVENT_KINDS = ("unit.created", "context.created", "context.updated", "lock.acquired",
               "lock.renewed", "lock.released", "lock.expired")
MAX_DEPTH = 16
MAX_EDGES = 10_000


class _UnitHeader(msgspec.Struct):
    """The fields list filters look at, decoded without the payload."""

    agent_id: str
    type: str
    ts: dt.datetime


_header_decoder = msgspec.msgpack.Decoder(_UnitHeader)


def _micros(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1_000_000)


def _raw_units(encoded: list[bytes]) -> list[Unit]:
    """Stored unit bytes, sent on as they are: msgspec embeds Raw values verbatim."""
    return cast(list[Unit], [msgspec.Raw(data) for data in encoded])


class Engine:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.version = __version__
        self.instance_id = uuid.uuid4().hex
        self.started_at = dt.datetime.now(dt.UTC)
        self._started_monotonic = time.monotonic()
        self.state = "recovering"
        self.shutdown_requested = trio.Event()
        self.metrics = Metrics()
        self.limits = validate.WriteLimits(
            max_payload_bytes=config.max_payload_bytes,
            max_batch_units=config.max_batch_units,
            max_meta_entries=config.max_meta_entries,
            max_meta_key_bytes=config.max_meta_key_bytes,
            max_meta_value_bytes=config.max_meta_value_bytes,
            max_relationships=config.max_relationships,
        )
        self.store: Store | None = None
        self.wal: WriteAheadLog | None = None
        self.committer: GroupCommitter | None = None
        self.hub: EventHub | None = None
        self.leases: LeaseManager | None = None
        self.indexer: Indexer | None = None
        # Changes built into the batch being written, not yet in the store.
        self._units_in_flight: dict[str, Unit] = {}
        self._keys_in_flight: dict[str, str] = {}
        self._contexts_in_flight: dict[str, Context] = {}

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started_monotonic

    def request_shutdown(self) -> None:
        """Begin a graceful stop; idempotent."""
        self.shutdown_requested.set()

    # -- lifecycle ----------------------------------------------------------

    def _open_storage(self) -> None:
        """Open the store and the log and replay the log (in a worker thread)."""
        started = time.monotonic()
        try:
            store = Store(os.path.join(self.config.data_dir, "store"))
        except SchemaMismatch as exc:
            raise StartupError(str(exc)) from None
        wal = WriteAheadLog(os.path.join(self.config.data_dir, "wal"),
                            segment_bytes=self.config.segment_bytes,
                            sync=self.config.durability == "fsync")
        try:
            recovery = wal.recover(store.applied_seq, store.apply)
        except Corruption as exc:
            store.close()
            raise StartupError(
                f"{exc}. Nothing was changed; 'engramd --repair' cuts the log there, "
                "losing what follows") from None
        self.indexer = Indexer(store, open_index(self.config.data_dir, store,
                                                 rebuild=self.config.reindex))
        self.store, self.wal = store, wal
        log.info("journal open: seq %d, %d entries replayed, %d torn bytes cut, %.3fs",
                 recovery.last_seq, recovery.entries_replayed, recovery.truncated_bytes,
                 time.monotonic() - started)

    async def _run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.to_thread.run_sync(self._open_storage)
        assert self.store is not None and self.wal is not None and self.indexer is not None
        self.hub = EventHub(self.store, buffer=self.config.buffer_events,
                            max_lag=self.config.max_lag_events, head=self.wal.last_seq,
                            fanout=self.metrics.histograms["fanout_seconds"])
        self.committer = GroupCommitter(
            self.wal, self.store, batch_size=self.config.batch_size,
            window=self.config.window_ms / 1000,
            checkpoint_bytes=self.config.checkpoint_bytes,
            on_applied=self._applied, on_aborted=self._forget_in_flight,
            fsync=self.metrics.histograms["fsync_seconds"])
        self.leases = LeaseManager(
            self.store, self.committer, default_ttl=self.config.default_ttl,
            max_ttl=self.config.max_ttl, max_per_agent=self.config.max_leases_per_agent,
            max_waiters=self.config.max_waiters_per_resource)
        self.leases.restore()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.committer.run)
            await nursery.start(self.leases.run)
            nursery.start_soon(self._checkpoints)
            nursery.start_soon(self.indexer.run)
            self.state = "ready"
            log.info("ready")
            nursery.start_soon(self._deliver_spool)

    async def _deliver_spool(self) -> None:
        """Write the units clients spooled while this daemon was away (git hooks)."""
        directory = os.path.join(self.config.data_dir, "spool")
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
        except FileNotFoundError:
            return
        delivered = 0
        for name in names:
            path = os.path.join(directory, name)
            try:
                data = await trio.Path(path).read_bytes()
                spooled = _spool_decoder.decode(data)
                await self.create_units([spooled.draft],
                                        Caller(agent_id=spooled.agent_id, uid=os.getuid(), pid=0))
            except (OSError, msgspec.MsgspecError, EngramError) as exc:
                log.warning("spooled unit %s not delivered: %s", name, exc)
                continue
            os.unlink(path)
            delivered += 1
        if delivered:
            log.info("delivered %d spooled unit(s)", delivered)

    def _applied(self, entries: list[Entry]) -> None:
        """A batch is durable and in the store: drop its in-flight state, publish it."""
        self._forget_in_flight()
        assert self.hub is not None
        self.hub.publish(describe_live(event) for entry in entries for event in entry.events)
        assert self.indexer is not None
        self.indexer.wake()

    async def reindex(self) -> None:
        self._ready()
        assert self.indexer is not None
        await self.indexer.rebuild()

    async def search(self, request: Search) -> SearchResults:
        self._ready()
        assert self.indexer is not None
        if not 1 <= request.limit <= 1000 or request.offset < 0:
            raise BadRequest("limit must be 1 to 1000 and offset at least 0")
        if len(request.query) > 4096:
            raise TooLarge("query over 4096 characters")
        query = request.query if request.advanced else plain_query(request.query)
        if request.advanced and not request.query.strip():
            raise BadRequest("an advanced query needs some FTS5 syntax")
        unit_ids: set[str] | None = None
        if request.related_to is not None:
            related = self.related_units(RelatedUnits(
                id=0, unit_id=request.related_to, types=request.related_types,
                direction=request.related_direction, depth=request.related_depth))
            unit_ids = {edge.source for edge in related.edges} | {
                edge.target for edge in related.edges}
            unit_ids.discard(related.root)

        try:
            total, hits = await self.indexer.search(
                query, contexts=request.contexts, agents=request.agents,
                types=[validate.unit_type(kind) for kind in request.types],
                meta=request.meta, since_us=_micros(request.since),
                until_us=_micros(request.until), unit_ids=unit_ids, limit=request.limit,
                offset=request.offset)
        except QueryError as exc:
            raise BadRequest(f"cannot read the query: {exc}") from None
        return SearchResults(id=request.id, total=total, hits=[
            SearchHit(unit_id=hit.unit_id, seq=hit.seq, score=round(hit.score, 6),
                      snippet=hit.snippet) for hit in hits])

    def _forget_in_flight(self) -> None:
        self._units_in_flight.clear()
        self._keys_in_flight.clear()
        self._contexts_in_flight.clear()

    async def _checkpoints(self) -> None:
        """Flush the store now and then, so that old log segments can go."""
        committer = self.committer
        assert committer is not None and self.store is not None and self.wal is not None
        while True:
            await committer.checkpoint_wanted.wait()
            committer.checkpoint_wanted = trio.Event()
            committer.bytes_since_checkpoint = 0
            await trio.to_thread.run_sync(self.store.flush)
            dropped = await trio.to_thread.run_sync(
                self.wal.drop_through, self.store.checkpoint_seq, limiter=committer.limiter)
            log.debug("checkpoint at seq %d, %d segment(s) dropped",
                      self.store.checkpoint_seq, dropped)

    def _close_storage(self) -> None:
        if self.store is not None:
            self.store.flush()
            if self.wal is not None:
                self.wal.drop_through(self.store.checkpoint_seq)
                self.wal.close()
            self.store.close()
        if self.indexer is not None:
            self.indexer.close()

    def lease_manager(self) -> LeaseManager:
        self._ready()
        assert self.leases is not None
        return self.leases

    async def connection_closed(self, connection: object) -> None:
        if self.leases is not None and self.state == "ready":
            await self.leases.connection_closed(connection)

    def _ready(self) -> tuple[Store, GroupCommitter]:
        if self.state != "ready" or self.store is None or self.committer is None:
            raise Unavailable(f"engramd is {self.state}; try again in a moment")
        return self.store, self.committer

    def journal_status(self) -> JournalStatus | None:
        if self.store is None or self.wal is None:
            return None
        return JournalStatus(
            last_seq=self.wal.last_seq, checkpoint_seq=self.store.checkpoint_seq,
            units=self.store.unit_count, contexts=self.store.context_count,
            wal_segments=len(self.wal.segments), wal_bytes=self.wal.size,
            durability=self.config.durability,
            write_error=self.committer.failure if self.committer else None,
            indexed_seq=self.indexer.indexed_seq if self.indexer else 0,
            commit_batches=self.committer.stats.batches if self.committer else 0,
            commit_entries=self.committer.stats.entries if self.committer else 0,
            fsync_seconds=round(self.committer.stats.fsync_seconds, 6) if self.committer else 0.0)

    def stream_status(self) -> StreamStatus | None:
        if self.hub is None or self.leases is None:
            return None
        hub = self.hub.statistics()
        return StreamStatus(subscribers=hub.subscribers, live=hub.live,
                            published=hub.published, delivered=hub.delivered,
                            detached_for_lag=hub.detached_for_lag,
                            leases_held=len(self.leases.table.held),
                            leases_granted=self.leases.granted,
                            leases_expired=self.leases.expired)

    # -- state lookups, in-flight first --------------------------------------

    def _context(self, store: Store, context_id: str) -> Context | None:
        found = self._contexts_in_flight.get(context_id)
        if found is not None:
            return found
        raw = store.context(context_id)
        return None if raw is None else _context_decoder.decode(raw)

    def _unit_exists(self, store: Store, unit_id: str) -> bool:
        return unit_id in self._units_in_flight or store.unit_location(unit_id) is not None

    def _unit(self, store: Store, unit_id: str) -> Unit:
        found = self._units_in_flight.get(unit_id)
        if found is not None:
            return found
        (raw,) = store.units_by_id([unit_id])
        assert raw is not None
        return _unit_decoder.decode(raw)

    # -- units ----------------------------------------------------------------

    async def create_units(self, drafts: list[UnitDraft], caller: Caller) -> UnitsCreated:
        store, committer = self._ready()
        if not drafts:
            raise BadRequest("no units to create")
        if len(drafts) > self.limits.max_batch_units:
            raise TooLarge(f"{len(drafts)} units in one request, limit "
                           f"{self.limits.max_batch_units}")
        checked = [validate.draft(draft, self.limits) for draft in drafts]
        validate.name(caller.agent_id, "agent id")

        def build(first_seq: int, ts: dt.datetime) -> tuple[Entry | None, UnitsCreated]:
            seq = first_seq
            events: list[UnitCreated | ContextCreated | ContextUpdated] = []
            units: list[Unit] = []
            reused: list[str] = []
            new_units: dict[str, Unit] = {}
            keys: dict[str, str] = {}
            contexts: dict[str, Context] = {}
            for draft in checked:
                if draft.fence is not None:
                    assert self.leases is not None
                    self.leases.check_fence(draft.fence)
                key = draft.idempotency_key
                if key is not None:
                    known = keys.get(key) or self._keys_in_flight.get(key) \
                        or store.idempotent_unit(key)
                    if known is not None:
                        units.append(new_units.get(known) or self._unit(store, known))
                        reused.append(known)
                        continue
                for rel in draft.relationships:
                    if rel.target not in new_units and not self._unit_exists(store, rel.target):
                        raise BadRequest(f"relationship {rel.type} to unknown unit {rel.target}")
                context = contexts.get(draft.context_id) or self._context(store, draft.context_id)
                if context is None:
                    context = Context(id=draft.context_id, display_name=draft.context_id,
                                      agent_ids=[caller.agent_id], pinned_units=[], meta={},
                                      created_at=ts, updated_at=ts)
                    events.append(ContextCreated(seq=seq, ts=ts, context_id=context.id,
                                                 context=context))
                    seq += 1
                elif caller.agent_id not in context.agent_ids:
                    context = msgspec.structs.replace(
                        context, agent_ids=[*context.agent_ids, caller.agent_id], updated_at=ts)
                    events.append(ContextUpdated(
                        seq=seq, ts=ts, context_id=context.id, context=context,
                        changes=[ContextChange(kind="agent_joined", value=caller.agent_id)]))
                    seq += 1
                contexts[context.id] = context
                unit = Unit(id=ids.uuid7(), seq=seq, context_id=draft.context_id,
                            agent_id=caller.agent_id, type=draft.type, ts=ts, meta=draft.meta,
                            payload=draft.payload, relationships=draft.relationships,
                            uid=caller.uid, pid=caller.pid)
                events.append(UnitCreated(seq=seq, ts=ts, context_id=unit.context_id, unit=unit))
                seq += 1
                units.append(unit)
                new_units[unit.id] = unit
                if key is not None:
                    keys[key] = unit.id
            self._units_in_flight.update(new_units)
            self._keys_in_flight.update(keys)
            self._contexts_in_flight.update(contexts)
            entry = Entry(first_seq=first_seq, events=list(events), idempotency_keys=keys)
            return (entry if events else None), UnitsCreated(id=0, units=units, reused=reused)

        return await committer.commit(build)

    def get_units(self, unit_ids: list[str]) -> UnitsFound:
        store, _ = self._ready()
        if len(unit_ids) > MAX_PAGE:
            raise TooLarge(f"{len(unit_ids)} ids in one request, limit {MAX_PAGE}")
        found = store.units_by_id([validate.unit_id(unit_id) for unit_id in unit_ids])
        missing = [unit_id for unit_id, raw in zip(unit_ids, found, strict=True) if raw is None]
        return UnitsFound(id=0, units=_raw_units([raw for raw in found if raw is not None]),
                          missing=missing)

    def list_units(self, request: ListUnits) -> UnitPage:
        store, _ = self._ready()
        validate.context_id(request.context_id)
        if not 1 <= request.limit <= MAX_PAGE:
            raise BadRequest(f"limit must be 1 to {MAX_PAGE}")
        if request.before is not None and request.after is not None:
            raise BadRequest("give before or after, not both")
        types = {validate.unit_type(kind) for kind in request.types}
        agents = set(request.agents)
        filtering = bool(types or agents or request.since or request.until)
        forward = request.after is not None
        rows = store.scan_context(request.context_id, after=request.after,
                                  before=request.before, newest_first=not forward)
        picked: list[tuple[int, bytes]] = []
        more = False
        for key, raw in rows:
            if filtering:
                header = _header_decoder.decode(raw)
                if ((types and header.type not in types)
                        or (agents and header.agent_id not in agents)
                        or (request.since and header.ts < request.since)
                        or (request.until and header.ts > request.until)):
                    continue
            if len(picked) == request.limit:
                more = True
                break
            picked.append((seq_from(key), raw))
        next_cursor = picked[-1][0] if more else None
        if forward == request.reverse:  # stored order is the wrong way round
            picked.reverse()
        return UnitPage(id=0, units=_raw_units([raw for _, raw in picked]),
                        next_cursor=next_cursor)

    def related_units(self, request: RelatedUnits) -> RelatedFound:
        store, _ = self._ready()
        root = validate.unit_id(request.unit_id)
        if store.unit_location(root) is None:
            raise NotFound(f"no unit {root}")
        if request.direction not in ("out", "in", "both"):
            raise BadRequest("direction must be out, in or both")
        if not 1 <= request.depth <= MAX_DEPTH:
            raise BadRequest(f"depth must be 1 to {MAX_DEPTH}")
        types = {validate.relationship_type(kind) for kind in request.types}
        directions = {"out": "o", "in": "i", "both": "oi"}[request.direction]
        edges: list[RelatedEdge] = []
        seen_edges: set[tuple[str, str, str]] = set()
        visited = {root}
        frontier = [root]
        for depth in range(1, request.depth + 1):
            following = []
            for unit_id in frontier:
                for direction in directions:
                    for source, kind, target in store.relationships(unit_id, direction):
                        if (types and kind not in types) or (source, kind, target) in seen_edges:
                            continue
                        seen_edges.add((source, kind, target))
                        edges.append(RelatedEdge(source=source, type=kind, target=target,
                                                 depth=depth))
                        other = target if source == unit_id else source
                        if other not in visited:
                            visited.add(other)
                            following.append(other)
                        if len(edges) >= MAX_EDGES:
                            raise TooLarge(f"more than {MAX_EDGES} relationships; lower the depth")
            frontier = following
        found = store.units_by_id(sorted(visited))
        return RelatedFound(id=0, root=root, edges=edges,
                            units=_raw_units([raw for raw in found if raw is not None]))

    # -- the live stream -----------------------------------------------------------

    def subscriber(self, request: Subscribe, caller: Caller) -> Subscriber:
        """A subscriber for *request*, its cursor resolved (named cursor, after, or now)."""
        store, _ = self._ready()
        assert self.hub is not None
        for context_id in request.contexts:
            validate.context_id(context_id)
        unknown = set(request.kinds) - set(EVENT_KINDS)
        if unknown:
            raise BadRequest(f"unknown event kind {', '.join(sorted(unknown))} "
                             f"(one of {', '.join(EVENT_KINDS)})")
        for kind in request.types:
            validate.unit_type(kind)
        if request.heartbeat is not None and request.heartbeat < 0.01:
            raise BadRequest("heartbeat must be at least 0.01 seconds")
        cursor = self.hub.head if request.after is None else request.after
        if request.after is not None and not request.after >= 0:
            raise BadRequest("after must be a sequence number (0 for the start)")
        if request.cursor is not None:
            validate.name(request.cursor, "cursor name")
            stored = store.cursor(request.cursor)
            if stored is not None:
                cursor = stored
        return Subscriber(id=request.id, agent_id=caller.agent_id, filter=Filter.of(request),
                          cursor=cursor, heartbeat=request.heartbeat or
                          self.config.heartbeat_seconds, cursor_name=request.cursor)

    def ack_cursor(self, name: str, seq: int) -> None:
        store, _ = self._ready()
        validate.name(name, "cursor name")
        if seq < 0:
            raise BadRequest("seq must not be negative")
        store.set_cursor(name, seq)

    def watchers(self, context_id: str) -> list[str]:
        return self.hub.watchers(context_id) if self.hub is not None else []

    # -- contexts ---------------------------------------------------------------

    async def create_context(self, request: CreateContext, caller: Caller) -> Context:
        store, committer = self._ready()
        context_id = validate.context_id(request.context_id) if request.context_id \
            else ids.context_slug()
        display_name = validate.name(request.display_name or context_id, "display name")
        meta = validate.meta(request.meta, self.limits)

        def build(first_seq: int, ts: dt.datetime) -> tuple[Entry | None, Context]:
            if self._context(store, context_id) is not None:
                raise Conflict(f"context {context_id} already exists")
            context = Context(id=context_id, display_name=display_name,
                              agent_ids=[caller.agent_id], pinned_units=[], meta=meta,
                              created_at=ts, updated_at=ts)
            self._contexts_in_flight[context_id] = context
            event = ContextCreated(seq=first_seq, ts=ts, context_id=context_id, context=context)
            return Entry(first_seq=first_seq, events=[event]), context

        return await committer.commit(build)

    def get_context(self, context_id: str) -> Context:
        store, _ = self._ready()
        raw = store.context(validate.context_id(context_id))
        if raw is None:
            raise NotFound(f"no context {context_id}")
        return _context_decoder.decode(raw)

    def list_contexts(self, request: ListContexts) -> tuple[list[Context], str | None]:
        store, _ = self._ready()
        if not 1 <= request.limit <= MAX_PAGE:
            raise BadRequest(f"limit must be 1 to {MAX_PAGE}")
        contexts: list[Context] = []
        for raw in store.contexts(prefix=request.prefix, after=request.after):
            if len(contexts) == request.limit:
                return contexts, contexts[-1].id
            contexts.append(_context_decoder.decode(raw))
        return contexts, None

    async def update_context(self, request: UpdateContext, caller: Caller) -> Context:
        store, committer = self._ready()
        validate.context_id(request.context_id)
        for agent in [*request.add_agents, *request.remove_agents]:
            validate.name(agent, "agent id")
        for unit_id in [*request.pin, *request.unpin]:
            validate.unit_id(unit_id)
        if request.display_name is not None:
            validate.name(request.display_name, "display name")
        validate.meta(request.set_meta, self.limits)

        def build(first_seq: int, ts: dt.datetime) -> tuple[Entry | None, Context]:
            context = self._context(store, request.context_id)
            if context is None:
                raise NotFound(f"no context {request.context_id}")
            changes: list[ContextChange] = []
            agents = list(context.agent_ids)
            pinned = list(context.pinned_units)
            meta = dict(context.meta)
            name = context.display_name
            if request.display_name is not None and request.display_name != name:
                name = request.display_name
                changes.append(ContextChange(kind="renamed", value=name))
            for agent in request.add_agents:
                if agent not in agents:
                    agents.append(agent)
                    changes.append(ContextChange(kind="agent_joined", value=agent))
            for agent in request.remove_agents:
                if agent in agents:
                    agents.remove(agent)
                    changes.append(ContextChange(kind="agent_left", value=agent))
            for unit_id in request.pin:
                if not self._unit_exists(store, unit_id):
                    raise NotFound(f"cannot pin unknown unit {unit_id}")
                if unit_id not in pinned:
                    pinned.append(unit_id)
                    changes.append(ContextChange(kind="unit_pinned", value=unit_id))
            for unit_id in request.unpin:
                if unit_id in pinned:
                    pinned.remove(unit_id)
                    changes.append(ContextChange(kind="unit_unpinned", value=unit_id))
            for key, value in request.set_meta.items():
                if meta.get(key) != value:
                    meta[key] = value
                    changes.append(ContextChange(kind="meta_set", value=key))
            for key in request.unset_meta:
                if key in meta:
                    del meta[key]
                    changes.append(ContextChange(kind="meta_unset", value=key))
            if len(meta) > self.limits.max_meta_entries:
                raise TooLarge(f"{len(meta)} metadata entries, limit "
                               f"{self.limits.max_meta_entries}")
            if not changes:
                return None, context
            updated = msgspec.structs.replace(context, display_name=name, agent_ids=agents,
                                              pinned_units=pinned, meta=meta, updated_at=ts)
            self._contexts_in_flight[updated.id] = updated
            event = ContextUpdated(seq=first_seq, ts=ts, context_id=updated.id,
                                   context=updated, changes=changes)
            return Entry(first_seq=first_seq, events=[event]), updated

        return await committer.commit(build)


@contextlib.asynccontextmanager
async def open_engine(config: DaemonConfig) -> AsyncIterator[Engine]:
    """An engine whose journal opens (and replays) in the background.

    On exit the store is flushed and closed, so that the next start has
    nothing to replay.
    """
    engine = Engine(config)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine._run)
            yield engine
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(engine._close_storage)
