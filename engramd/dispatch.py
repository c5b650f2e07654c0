"""The one way in: from a request to the part that serves it, and back to a reply.

:meth:`Dispatcher.answer` is where every request goes, whatever it is: it checks
that the connection may send it (:mod:`engramd.tokens`), that the journal is
open if the request needs it, runs one ``match`` over every request type, builds
the reply, turns an :class:`~engramd.protocol.EngramError` into an error frame
(the only place that does; anything else raised here is a bug, logged and
reported as ``internal``), and counts it all for ``engram stats``. The server
around it only moves frames.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgspec
import trio

from engramd import validate
from engramd.backup import make_backup, verify_backup
from engramd.caller import Caller
from engramd.engine import Engine
from engramd.events import EventHub, Subscriber
from engramd.mail import recipients
from engramd.metrics import resident_bytes
from engramd.protocol import (
    PROTOCOL_VERSION,
    TOO_MANY_SUBSCRIPTIONS,
    AckCursor,
    AckMessage,
    AcknowledgeCuts,
    AcquireLock,
    AddTask,
    AgentPage,
    AnnounceSession,
    BadRequest,
    BreakLock,
    ClaimTask,
    ClusterReport,
    Conflict,
    ContextFound,
    ContextPage,
    CountUnread,
    CreateContext,
    CreateToken,
    CreateUnits,
    CutsAcknowledged,
    DaemonStats,
    DaemonStatus,
    DiskFull,
    Done,
    EngramError,
    ErrorCode,
    ErrorReply,
    FinishTask,
    GetBrief,
    GetCluster,
    GetContext,
    GetLock,
    GetStats,
    GetStatus,
    GetTask,
    GetUnits,
    GrantPushes,
    ImportUnits,
    InboxPage,
    LeaseRenewed,
    Limits,
    ListAgents,
    ListContexts,
    ListLocks,
    ListTasks,
    ListTokens,
    ListUnits,
    LockFound,
    LockHistory,
    LockHistoryPage,
    LockPage,
    LocksGranted,
    MakeBackup,
    NotFound,
    Ping,
    Pong,
    ReadInbox,
    Reindex,
    RelatedFound,
    RelatedUnits,
    ReleaseLock,
    ReleaseTask,
    RenewLock,
    Request,
    ResolveUnitIds,
    RevokeTokens,
    RunRetention,
    Search,
    SearchResults,
    SendMessage,
    ServerMessage,
    Shutdown,
    ShuttingDown,
    SpeakFor,
    Subscribe,
    Subscribed,
    TaskFound,
    TaskPage,
    TokenCreated,
    TokenPage,
    TokensRevoked,
    TooLarge,
    UnitIdsResolved,
    UnitPage,
    UnitsCreated,
    UnitsFound,
    UnreadCount,
    Unsubscribe,
    UpdateContext,
    Verify,
    VerifyBackup,
)
from engramd.queries import raw_units
from engramd.tokens import Authenticator

log = logging.getLogger("engramd.dispatch")
T = TypeVar("T")

# Requests that do not need the journal open: answered while it is replayed.
_ALWAYS = (Ping, GetStatus, GetStats, Shutdown, CreateToken, ListTokens, RevokeTokens,
           VerifyBackup)
# Not served while read-only: the lease table is not restored (no expiry can be written).
_LEASES = (AcquireLock, ReleaseLock, RenewLock, BreakLock, GetLock, ListLocks, ClaimTask,
           FinishTask, ReleaseTask)


class Connection(Protocol):
    """What dispatch needs of the connection a request came on."""

    async def send(self, message: ServerMessage) -> None: ...

    def follow(self, subscriber: Subscriber, hub: EventHub, token_id: str | None) -> None:
        """Push *subscriber*'s events from *hub* on this connection, from now on
        (*token_id*: the agent token it was made with, which ends it when revoked)."""

    def grant(self, subscription: int, count: int) -> bool:
        """Let *subscription* push *count* more; False when there is no such subscription."""

    def unfollow(self, subscription: int) -> bool:
        """Stop pushing *subscription*; False when there is no such subscription."""

    @property
    def subscriptions(self) -> int: ...


class ServerView(Protocol):
    """What dispatch needs of the server: its counts, and closing connections."""

    @property
    def connection_count(self) -> int: ...

    @property
    def requests_served(self) -> int: ...

    @property
    def requests_in_flight(self) -> int: ...

    async def close_connections_of(self, token_ids: set[str]) -> None: ...


class Dispatcher:
    def __init__(self, engine: Engine, server: ServerView, authenticator: Authenticator,
                 max_subscriptions: int) -> None:
        self.engine = engine
        self.server = server
        self.authenticator = authenticator
        self.max_subscriptions = max_subscriptions
        self._token_writes = trio.CapacityLimiter(1)
        self._ledger_writes = trio.CapacityLimiter(1)
        self._backup = trio.Lock()

    async def answer(self, request: Request | SpeakFor, caller: Caller,
                     connection: Connection) -> ServerMessage | None:
        """The reply to *request*; None when it has been sent already (``subscribed``)."""
        started = time.perf_counter()
        reply: ServerMessage | None
        try:
            assert caller.identity is not None, "requests come after the hello"
            spoken = isinstance(request, SpeakFor)
            if isinstance(request, SpeakFor):
                caller, request = self._spoken(request, caller)
            assert caller.identity is not None
            self.authenticator.check_allowed(caller.identity, request)
            # A name a gateway passed on with nothing to prove it (--auth none: whatever
            # X-Agent-ID said) is not an agent by that alone (SPECS §2.12).
            named_only = spoken and not (caller.identity.bound or caller.identity.admin)
            self.engine.presence.saw(caller.agent_id, time.time(), proven=not named_only)
            reply = await self._handle(request, caller, connection)
        except EngramError as exc:
            reply = ErrorReply(id=request.id, code=exc.code, message=str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise  # the connection is gone: nothing to answer, not a bug
        except Exception:
            log.exception("internal error while handling %s", type(request).__name__)
            reply = ErrorReply(id=request.id, code=ErrorCode.INTERNAL,
                               message="internal error; see the daemon log")
        metrics = self.engine.metrics
        op = request.__struct_config__.tag
        metrics.observe(f'request_seconds{{op="{op}"}}', time.perf_counter() - started)
        metrics.count(f'requests_total{{op="{op}"}}')
        if isinstance(reply, ErrorReply):
            metrics.count(f'errors_total{{code="{reply.code}"}}')
        return reply

    async def _handle(self, request: Request, caller: Caller,
                      connection: Connection) -> ServerMessage | None:
        if isinstance(request, _ALWAYS):
            return await self._without_journal(request)
        parts = self.engine.ready()
        if self.engine.read_only is not None and isinstance(request, _LEASES):
            raise DiskFull(f"leases are not served: {self.engine.read_only}")
        queries, writer, leases = parts.queries, parts.writer, parts.leases
        match request:
            case CreateUnits():
                written = await writer.create_units(request.units, caller)
                return UnitsCreated(id=request.id, units=written.units, reused=written.reused)
            case ImportUnits():
                written = await writer.create_units(request.units, caller, request.agents,
                                                    request.origins)
                return UnitsCreated(id=request.id, units=written.units, reused=written.reused)
            case GetUnits():
                units, missing = queries.get_units(request.ids)
                return UnitsFound(id=request.id, units=units, missing=missing)
            case ResolveUnitIds():
                return UnitIdsResolved(id=request.id,
                                       ids=queries.resolve_unit_ids(request.prefixes))
            case ListUnits():
                units, cursor = queries.list_units(request)
                return UnitPage(id=request.id, units=units, next_cursor=cursor)
            case RelatedUnits():
                related = queries.related(request.unit_id, request.types, request.direction,
                                          request.depth)
                return RelatedFound(id=request.id, root=related.root, edges=related.edges,
                                    units=related.units)
            case CreateContext():
                context = await writer.create_context(request, caller)
                return ContextFound(id=request.id, context=context, created=True)
            case GetContext():
                return ContextFound(id=request.id,
                                    context=queries.get_context(request.context_id),
                                    watching=queries.watchers(request.context_id))
            case ListContexts():
                contexts, after = queries.list_contexts(request.limit, request.after,
                                                        request.prefix)
                return ContextPage(id=request.id, contexts=contexts, next_cursor=after)
            case UpdateContext():
                context = await writer.update_context(request)
                return ContextFound(id=request.id, context=context)
            case Subscribe():
                if connection.subscriptions >= self.max_subscriptions:
                    raise TooLarge(f"{TOO_MANY_SUBSCRIPTIONS} (limit "
                                   f"{self.max_subscriptions})")
                if request.cursor is not None:
                    validate.name(request.cursor, "cursor name")
                    await queries.marks.fresh_cursor(caller.agent_id, request.cursor)
                subscriber = queries.subscriber(request, caller)
                # The reply goes out before the first event.
                await connection.send(Subscribed(id=request.id, subscription=request.id,
                                                 after=subscriber.cursor,
                                                 head_seq=parts.hub.head))
                connection.follow(subscriber, parts.hub, caller.identity.token_id
                                  if caller.identity is not None else None)
                return None
            case Unsubscribe():
                if not connection.unfollow(request.subscription):
                    raise NotFound(f"no subscription {request.subscription} on this connection")
                return Done(id=request.id)
            case GrantPushes():
                if request.count < 1:
                    raise BadRequest("count must be 1 or more")
                if not connection.grant(request.subscription, request.count):
                    raise NotFound(f"no subscription {request.subscription} on this connection")
                return Done(id=request.id)
            case AckCursor():
                queries.ack_cursor(request.cursor, request.seq, caller)
                await queries.marks.cursor_shared(caller.agent_id, request.cursor)
                return Done(id=request.id)
            case AcquireLock():
                return LocksGranted(id=request.id, leases=await leases.acquire(request, caller))
            case ReleaseLock():
                await leases.release(request.lock_id, caller, request.resource)
                return Done(id=request.id)
            case RenewLock():
                lease = await leases.renew(request.lock_id, caller, request.ttl,
                                           request.resource)
                return LeaseRenewed(id=request.id, lease=lease)
            case BreakLock():
                await leases.break_lease(request.resource, request.reason, caller.agent_id,
                                         lock_id=request.lock_id, token=request.token)
                return Done(id=request.id)
            case GetLock():
                return LockFound(id=request.id, state=leases.state(request.resource))
            case ListLocks():
                return LockPage(id=request.id, locks=leases.states(request.agent,
                                                                   request.prefix))
            case LockHistory():
                # (From the journal, not the lease table: served while read-only too.)
                events, next_seq = queries.lock_history(request)
                return LockHistoryPage(id=request.id, events=events,  # type: ignore[arg-type]
                                       next_cursor=next_seq)
            case Search():
                total, hits = await queries.search(request)
                return SearchResults(id=request.id, total=total, hits=hits)
            case Reindex():
                await parts.indexer.rebuild()
                return Done(id=request.id)
            case SendMessage():
                if not request.new_recipients:
                    parts.briefing.check_recipients(recipients(request.to))
                message = await parts.mailbox.send(request, caller)
                return UnitsCreated(id=request.id, units=[message])
            case ReadInbox():
                messages, unread = await parts.mailbox.read(request, caller)
                return InboxPage(id=request.id, messages=raw_units(messages), unread=unread)
            case CountUnread():
                return UnreadCount(id=request.id, unread=parts.mailbox.unread(caller.agent_id),
                                   pending_acks=parts.mailbox.pending_count(
                                       caller.agent_id))
            case AckMessage():
                ack = await parts.mailbox.acknowledge(request.message_id, caller)
                return UnitsCreated(id=request.id, units=[ack])
            case AddTask():
                return TaskFound(id=request.id, task=await parts.board.add(request, caller))
            case GetTask():
                return TaskFound(id=request.id, task=parts.board.get(request.task_id))
            case ListTasks():
                return TaskPage(id=request.id, tasks=parts.board.list_tasks(
                    request.states, request.ready, request.contexts, request.limit))
            case ClaimTask():
                return TaskFound(id=request.id, task=await parts.board.claim(request, caller))
            case FinishTask():
                return TaskFound(id=request.id, task=await parts.board.finish(
                    request.task_id, "done", request.pid, request.token, caller))
            case ReleaseTask():
                return TaskFound(id=request.id, task=await parts.board.finish(
                    request.task_id, "open", request.pid, request.token, caller))
            case AnnounceSession():
                self.engine.presence.announce(caller.agent_id, request.pid or caller.pid,
                                              request.harness)
                return Done(id=request.id)
            case ListAgents():
                return AgentPage(id=request.id, agents=parts.briefing.agents())
            case GetBrief():
                return parts.briefing.brief(request, caller)
            case Verify():
                return await self.engine.verify(request.id)
            case RunRetention():
                return await parts.retention.apply(dry_run=request.dry_run,
                                                   request_id=request.id)
            case GetCluster():
                if parts.cluster is None:
                    raise BadRequest("engramd is not in cluster mode (cluster.servers is "
                                     "not set)")
                # Never waits on the cluster for long: what does not answer within a
                # moment is shown as last seen, with its age.
                await parts.cluster.look()
                status = self.engine.cluster_status()
                assert status is not None
                return ClusterReport(id=request.id, status=status,
                                     machines=parts.cluster.machines_seen)
            case AcknowledgeCuts():
                ledger = self.engine.cuts
                cleared = [] if ledger is None else await trio.to_thread.run_sync(
                    ledger.acknowledge, request.ids, limiter=self._ledger_writes)
                return CutsAcknowledged(id=request.id, cuts=[self.engine.wal_cut(cut)
                                                             for cut in cleared])
            case MakeBackup():
                if self._backup.locked():
                    raise Conflict("a backup is being made; wait for it to finish")
                async with self._backup:
                    return await make_backup(parts, self.engine.config.data_dir,
                                             self.engine.version, request.path, request.id)
        raise AssertionError(f"no arm for {type(request).__name__}")

    def _spoken(self, envelope: SpeakFor, speaker: Caller) -> tuple[Caller, Request]:
        """The caller and the request an ``as`` envelope carries: the agent it proves,
        on no connection of its own (its session is the request), with no process."""
        assert speaker.identity is not None
        identity = self.authenticator.authenticate_spoken(speaker.identity, envelope)
        inner = envelope.request
        if isinstance(inner, AnnounceSession) or getattr(inner, "pid", None) is not None:
            raise BadRequest(f"{inner.__struct_config__.tag}: a request made for an agent "
                             "('as') names no process of this machine (pid)")
        caller = Caller(agent_id=identity.agent_id, uid=speaker.uid, pid=0,
                        connection_id=f"{speaker.connection_id}/{envelope.id}",
                        identity=identity)
        return caller, msgspec.structs.replace(inner, id=envelope.id)

    async def _without_journal(self, request: Request) -> ServerMessage:
        engine, registry = self.engine, self.authenticator.registry
        match request:
            case Ping():
                return Pong(id=request.id, daemon_version=engine.version,
                            uptime=engine.uptime, server_time=dt.datetime.now(dt.UTC))
            case GetStatus():
                self.engine.noticed()
                return self._status(request.id)
            case GetStats():
                return await self._stats(request.id)
            case Shutdown():
                log.info("shutdown requested by a client")
                engine.request_shutdown()
                return ShuttingDown(id=request.id, pid=os.getpid())
            case CreateToken():
                secret, stored = await self._on_token_file(registry.create, request.agent)
                return TokenCreated(id=request.id, token=secret, info=stored.info)
            case ListTokens():
                return TokenPage(id=request.id, tokens=[token.info for token in registry])
            case RevokeTokens():
                revoked = await self._on_token_file(
                    lambda: registry.revoke(agent=request.agent, token_id=request.token_id))
                await self.server.close_connections_of({token.id for token in revoked})
                return TokensRevoked(id=request.id, tokens=[token.info for token in revoked])
            case VerifyBackup():
                if not os.path.isabs(request.path):
                    raise BadRequest(f"the backup path must be absolute, not {request.path!r}")
                return await trio.to_thread.run_sync(verify_backup, request.path, request.id)
        raise AssertionError(f"no arm for {type(request).__name__}")

    async def _on_token_file(self, change: Callable[..., T], *args: Any) -> T:
        """The token file is rewritten with fsyncs: off the event loop, one at a time."""
        return await trio.to_thread.run_sync(change, *args, limiter=self._token_writes)

    # -- status and statistics ----------------------------------------------------------

    def _status(self, request_id: int) -> DaemonStatus:
        engine = self.engine
        config = engine.config
        return DaemonStatus(
            id=request_id, state=engine.state, daemon_version=engine.version,
            protocol_version=PROTOCOL_VERSION, pid=os.getpid(),
            instance_id=engine.instance_id, started_at=engine.started_at,
            uptime=engine.uptime, socket=config.socket, data_dir=config.data_dir,
            config_file=config.config_file, log_file=config.log_file,
            connections=self.server.connection_count,
            requests_served=self.server.requests_served,
            limits=Limits(
                max_frame_bytes=config.max_frame_bytes,
                max_connections=config.max_connections,
                max_inflight_per_connection=config.max_inflight_per_connection,
                max_payload_bytes=config.max_payload_bytes,
                max_batch_units=config.max_batch_units,
            ),
            journal=engine.journal_status(),
            stream=engine.stream_status(),
            cluster=engine.cluster_status(),
            wal_cuts=engine.wal_cuts(),
        )

    async def _disk_gauges(self) -> dict[str, float]:
        """The journal's parts on disk, its growth, and the store's and caches' memory."""
        engine = self.engine
        disk = await engine.disk.now()
        gauges: dict[str, float] = {}
        if disk is not None:
            gauges.update({f'disk_bytes{{part="{part}"}}': size
                           for part, size in disk.parts.items()})
            gauges["disk_free_bytes"] = disk.free
        growth = engine.disk.growth()
        if growth is not None:
            gauges.update(disk_growth_bytes_per_second=round(growth.bytes_per_second, 3),
                          disk_growth_window_seconds=round(growth.seconds, 3))
        else:
            gauges["disk_growth_known_in_seconds"] = round(engine.disk.growth_known_in(), 3)
        store = engine.store_figures()
        if store is not None:
            gauges.update(store_sst_bytes=store.sst_bytes,
                          store_memtable_bytes=store.memtable_bytes,
                          store_keys=store.keys, store_block_cache_bytes=store.block_cache_bytes,
                          store_block_cache_capacity_bytes=store.block_cache_capacity,
                          store_table_readers_bytes=store.table_readers_bytes)
        recent = engine.recent_held()
        if recent is not None:
            gauges.update(zip(("recent_cache_contexts", "recent_cache_units",
                               "recent_cache_bytes"), recent, strict=True))
        return gauges

    async def _stats(self, request_id: int) -> DaemonStats:
        engine = self.engine
        metrics = engine.metrics
        counters = dict(metrics.counters)
        gauges: dict[str, float] = {
            "uptime_seconds": round(engine.uptime, 3),
            "resident_memory_bytes": resident_bytes(),
            "connections": self.server.connection_count,
            "requests_in_flight": self.server.requests_in_flight,
        }
        gauges.update(await self._disk_gauges())
        journal = engine.journal_status()
        if journal is not None:
            gauges.update(units=journal.units, contexts=journal.contexts,
                          last_seq=journal.last_seq, wal_bytes=journal.wal_bytes,
                          wal_segments=journal.wal_segments,
                          index_lag_events=journal.last_seq - journal.indexed_seq,
                          journal_failed=int(journal.write_error is not None))
            if journal.vector_seq is not None:
                gauges["vector_lag_events"] = journal.last_seq - journal.vector_seq
            elif engine.config.semantic == "off":
                gauges["search_semantic_off"] = 1
            counters.update(commit_batches_total=journal.commit_batches,
                            commit_entries_total=journal.commit_entries)
        cluster = engine.cluster_status()
        if cluster is not None:
            gauges.update(cluster_reachable=int(cluster.reachable),
                          cluster_view_stream_seq=cluster.view_stream_seq)
            if cluster.lag is not None:
                gauges["cluster_view_lag_messages"] = cluster.lag
        queue = engine.commit_queue()
        if queue is not None:
            gauges["commit_queue"] = queue
        stream = engine.stream_status()
        if stream is not None:
            gauges.update(subscribers=stream.subscribers, live_subscribers=stream.live,
                          leases_held=stream.leases_held)
            counters.update(events_published_total=stream.published,
                            events_delivered_total=stream.delivered,
                            subscribers_detached_total=stream.detached_for_lag,
                            leases_granted_total=stream.leases_granted,
                            leases_expired_total=stream.leases_expired)
        return DaemonStats(
            id=request_id, counters=dict(sorted(counters.items())), gauges=gauges,
            histograms={name: histogram.data()
                        for name, histogram in sorted(metrics.histograms.items())})
