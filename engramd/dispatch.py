"""From a request to an engine call to a reply: one ``match``.

This is the one place where :class:`~engramd.errors.EngramError` becomes an
error frame; anything else raised here is a bug, logged and reported as
``internal``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
import trio

from engramd.caller import Caller
from engramd.engine import Engine
from engramd.metrics import resident_bytes
from engramd.protocol import (
    PROTOCOL_VERSION,
    AckCursor,
    AcquireLock,
    BadRequest,
    BreakLock,
    ClientMessage,
    ContextFound,
    ContextPage,
    CreateContext,
    CreateUnits,
    DaemonStats,
    DaemonStatus,
    Done,
    EngramError,
    ErrorCode,
    ErrorReply,
    GetContext,
    GetLock,
    GetStats,
    GetStatus,
    GetUnits,
    LeaseRenewed,
    Limits,
    ListContexts,
    ListLocks,
    ListUnits,
    LockFound,
    LockPage,
    LocksGranted,
    Ping,
    Pong,
    Reindex,
    RelatedUnits,
    ReleaseLock,
    RenewLock,
    Search,
    ServerMessage,
    Shutdown,
    ShuttingDown,
    UpdateContext,
)

log = logging.getLogger("engramd.dispatch")


class ServerView(Protocol):
    """What dispatch needs to know of the server (connection counts)."""

    @property
    def connection_count(self) -> int: ...

    @property
    def requests_served(self) -> int: ...

    @property
    def requests_in_flight(self) -> int: ...


class Dispatcher:
    def __init__(self, engine: Engine, server: ServerView) -> None:
        self.engine = engine
        self.server = server


    async def guard(self, request: ClientMessage[Any],
                    handle: Callable[[], Awaitable[ServerMessage]]) -> ServerMessage:
        """Run *handle*, turning its errors into the error reply to *request*."""
        started = time.perf_counter()
        reply: ServerMessage
        try:
            reply = await handle()
        except EngramError as exc:
            reply = ErrorReply(id=request.id, code=exc.code, message=str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise  # the connection is gone: nothing to answer, not a bug
        except Exception:
            log.exception("internal error while handling %s", type(request).__name__)
            reply = ErrorReply(
                id=request.id,
                code=ErrorCode.INTERNAL,
                message="internal error; see the daemon log",
            )
        metrics = self.engine.metrics
        op = request.__struct_config__.tag
        metrics.observe(f'request_seconds{{op="{op}"}}', time.perf_counter() - started)
        metrics.count(f'requests_total{{op="{op}"}}')
        if isinstance(reply, ErrorReply):
            metrics.count(f'errors_total{{code="{reply.code}"}}')
        return reply

    async def handle(self, request: ClientMessage[Any], caller: Caller) -> ServerMessage:
        """Answer *request*; raises :class:`EngramError` (call it inside :meth:`guard`)."""
        engine = self.engine
        replace = msgspec.structs.replace
        match request:
            case CreateUnits():
                return replace(await engine.create_units(request.units, caller), id=request.id)
            case GetUnits():
                return replace(engine.get_units(request.ids), id=request.id)
            case ListUnits():
                return replace(engine.list_units(request), id=request.id)
            case RelatedUnits():
                return replace(engine.related_units(request), id=request.id)
            case CreateContext():
                context = await engine.create_context(request, caller)
                return ContextFound(id=request.id, context=context, created=True)
            case GetContext():
                return ContextFound(id=request.id, context=engine.get_context(request.context_id),
                                    watching=engine.watchers(request.context_id))
            case AckCursor():
                engine.ack_cursor(request.cursor, request.seq)
                return Done(id=request.id)
            case Search():
                return await engine.search(request)
            case Reindex():
                await engine.reindex()
                return Done(id=request.id)
            case AcquireLock():
                leases = await engine.lease_manager().acquire(request, caller)
                return LocksGranted(id=request.id, leases=leases)
            case ReleaseLock():
                await engine.lease_manager().release(request.lock_id, caller, request.resource)
                return Done(id=request.id)
            case RenewLock():
                lease = await engine.lease_manager().renew(request.lock_id, caller, request.ttl,
                                                           request.resource)
                return LeaseRenewed(id=request.id, lease=lease)
            case BreakLock():
                await engine.lease_manager().break_lease(request.resource, request.reason,
                                                         caller.agent_id)
                return Done(id=request.id)
            case GetLock():
                state = engine.lease_manager().state(request.resource)
                return LockFound(id=request.id, state=state)
            case ListLocks():
                states = engine.lease_manager().states(request.agent, request.prefix)
                return LockPage(id=request.id, locks=states)
            case ListContexts():
                contexts, cursor = engine.list_contexts(request)
                return ContextPage(id=request.id, contexts=contexts, next_cursor=cursor)
            case UpdateContext():
                context = await engine.update_context(request, caller)
                return ContextFound(id=request.id, context=context)
            case Ping():
                return Pong(
                    id=request.id,
                    daemon_version=engine.version,
                    uptime=engine.uptime,
                    server_time=dt.datetime.now(dt.UTC),
                )
            case GetStatus():
                return self._status(request.id)
            case GetStats():
                return self._stats(request.id)
            case Shutdown():
                log.info("shutdown requested by a client")
                engine.request_shutdown()
                return ShuttingDown(id=request.id, pid=os.getpid())
            case _:
                raise BadRequest(f"unsupported request {type(request).__name__}")

    def _stats(self, request_id: int) -> DaemonStats:
        engine = self.engine
        metrics = engine.metrics
        counters = dict(metrics.counters)
        gauges: dict[str, float] = {
            "uptime_seconds": round(engine.uptime, 3),
            "resident_memory_bytes": resident_bytes(),
            "connections": self.server.connection_count,
            "requests_in_flight": self.server.requests_in_flight,
        }
        journal = engine.journal_status()
        if journal is not None:
            gauges.update(units=journal.units, contexts=journal.contexts,
                          last_seq=journal.last_seq, wal_bytes=journal.wal_bytes,
                          wal_segments=journal.wal_segments,
                          index_lag_events=journal.last_seq - journal.indexed_seq,
                          journal_failed=int(journal.write_error is not None))
            counters.update(commit_batches_total=journal.commit_batches,
                            commit_entries_total=journal.commit_entries)
        if engine.committer is not None:
            gauges["commit_queue"] = engine.committer.queue_depth
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

    def _status(self, request_id: int) -> DaemonStatus:
        engine = self.engine
        config = engine.config
        return DaemonStatus(
            id=request_id,
            state=engine.state,
            daemon_version=engine.version,
            protocol_version=PROTOCOL_VERSION,
            pid=os.getpid(),
            instance_id=engine.instance_id,
            started_at=engine.started_at,
            uptime=engine.uptime,
            socket=config.socket,
            data_dir=config.data_dir,
            config_file=config.config_file,
            log_file=config.log_file,
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
        )

