"""The engine: the daemon's parts, their lifecycle, and its statistics.

:func:`open_engine` gives an :class:`Engine` at once, opens the store and the log
and replays the log in the background (``status`` says ``recovering``
meanwhile), and then builds the :class:`Parts` that serve requests: the write
path (:mod:`engramd.writes`), the reads (:mod:`engramd.queries`), the leases
(:mod:`engramd.leases`), the event hub and the search index. They exist only
once the journal is open, so nothing in them is optional; ``Engine.ready()`` is
the one door to them. On exit the store is flushed and closed, so that the next
start has nothing to replay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import trio
from trio import TaskStatus

from engramd import __version__, integrity, validate
from engramd.briefing import Briefing
from engramd.caller import Caller
from engramd.clock import anchored_clock
from engramd.commit import GroupCommitter, ReadOnlyCommitter
from engramd.config import DaemonConfig
from engramd.diskuse import DiskWatch, measure
from engramd.errors import StartupError
from engramd.events import EventHub
from engramd.indexer import Indexer
from engramd.leases import LeaseManager
from engramd.mail import Mailbox
from engramd.metrics import Metrics
from engramd.opening import Opened, open_storage
from engramd.presence import Presence
from engramd.protocol import (
    ClusterStatus,
    EngramError,
    JournalStatus,
    LocksGranted,
    SpooledUnit,
    StoreDamage,
    StreamStatus,
    Unavailable,
    VerifyReport,
    WalCut,
    cuts_notice,
)
from engramd.queries import Queries
from engramd.recent import RecentUnits
from engramd.retention import Retention
from engramd.rocks import StoreDamaged
from engramd.storage import Store, StoreFigures
from engramd.taskboard import TaskBoard
from engramd.wal.cuts import Cut, CutLedger
from engramd.wal.log import WriteAheadLog
from engramd.wal.record import Entry
from engramd.writes import InFlight, StoredContexts, Writer, published

if TYPE_CHECKING:
    from engramd.cluster.journal import ClusterJournal
    from engramd.cluster.marks import SharedMarks

log = logging.getLogger("engramd.engine")

_spool_decoder = msgspec.json.Decoder(SpooledUnit)
LEASE_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Parts:
    """What serves requests once the journal is open."""

    store: Store
    wal: WriteAheadLog | None
    """None in cluster mode: the journal is the cluster's stream (:attr:`cluster`)."""
    indexer: Indexer
    hub: EventHub
    committer: GroupCommitter
    leases: LeaseManager
    writer: Writer
    queries: Queries
    mailbox: Mailbox
    board: TaskBoard
    briefing: Briefing
    recent: RecentUnits
    retention: Retention
    cluster: ClusterJournal | None = None
    marks: SharedMarks | None = None
    """Cluster mode: the agents' marks and cursors shared through the cluster."""


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
        self.presence = Presence()
        self.limits = validate.WriteLimits(
            max_payload_bytes=config.max_payload_bytes,
            max_batch_units=config.max_batch_units,
            max_meta_entries=config.max_meta_entries,
            max_meta_key_bytes=config.max_meta_key_bytes,
            max_meta_value_bytes=config.max_meta_value_bytes,
            max_relationships=config.max_relationships,
        )
        self._parts: Parts | None = None
        self.cuts: CutLedger | None = None
        """Torn tails cut at start-up and not yet acknowledged (None in cluster mode)."""
        self._noticed = False
        self.read_only: str | None = None
        """Why the journal was opened read-only (a full disk at start), or None."""
        self._walks = trio.CapacityLimiter(1)
        self.disk = DiskWatch(
            functools.partial(measure, config.data_dir, config.archive_on_disk,
                              local_log=not self.clustered),
            interval=config.sample_seconds, window=config.growth_window)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started_monotonic

    def request_shutdown(self) -> None:
        """Begin a graceful stop; idempotent."""
        self.shutdown_requested.set()

    def ready(self) -> Parts:
        """The parts that serve requests; ``unavailable`` while the journal is replayed."""
        if self._parts is None or self.state != "ready":
            raise Unavailable(f"engramd is {self.state}; try again in a moment")
        return self._parts

    # -- lifecycle ------------------------------------------------------------------

    @property
    def clustered(self) -> bool:
        return bool(self.config.cluster_servers)

    def _assemble(self, opened: Opened) -> Parts:
        store, wal, indexer = opened.store, opened.wal, opened.indexer
        config, histograms = self.config, self.metrics.histograms
        hub = EventHub(store, buffer=config.buffer_events, max_lag=config.max_lag_events,
                       head=store.applied_seq, fanout=histograms["fanout_seconds"])
        in_flight, contexts = InFlight(), StoredContexts(store, config.contexts)
        followers: list[Callable[[list[Entry]], None]] = []
        options: dict[str, Any] = dict(batch_size=config.batch_size, window=config.window_ms / 1000,
                       checkpoint_bytes=config.checkpoint_bytes,
                       on_applied=published(in_flight, contexts, hub, indexer, followers),
                       on_aborted=in_flight.clear)
        cluster = None
        committer: GroupCommitter
        if opened.read_only is not None:
            committer = ReadOnlyCommitter(opened.read_only, store, **options)
        elif wal is None:
            try:
                from engramd.cluster.journal import ClusterCommitter, open_cluster_journal
            except ImportError as exc:
                raise StartupError(f"cluster mode needs the engram-journal[cluster] extra ({exc}): "
                                   "pip install 'engram-journal[cluster]'") from None
            cluster = open_cluster_journal(config, store, self.version)
            self.presence.machine = cluster.machine
            committer = ClusterCommitter(cluster, store, **options)
        else:
            committer = GroupCommitter(wal, store, fsync=histograms["fsync_seconds"],
                                       **options)
        lease_options: dict[str, Any] = dict(
            default_ttl=config.default_ttl, max_ttl=config.max_ttl,
            max_per_agent=config.max_leases_per_agent,
            max_waiters=config.max_waiters_per_resource)
        leases: LeaseManager
        prepare_fences = None
        if cluster is not None:
            from engramd.cluster.leases import ClusterLeaseManager

            leases = ClusterLeaseManager(cluster, news=hub.publish_passing,
                                         count=self.metrics.count, **lease_options)
            prepare_fences = leases.prepare_fences
        else:
            leases = LeaseManager(store, committer, **lease_options)
        if opened.read_only is None:
            # (Read-only, leases are not served: their expiry could not be written.)
            leases.restore()
        writer = Writer(store, committer, in_flight, contexts, self.limits, leases.check_fence,
                        prepare_fences)
        recent = RecentUnits(store, config.recent_units, config.recent_contexts,
                             config.recent_bytes)
        queries = Queries(store, hub, indexer, config.heartbeat_seconds, recent)
        mailbox = Mailbox(store, writer)
        marks = None
        if cluster is not None:
            from engramd.cluster.marks import SharedMarks

            marks = mailbox.marks = queries.marks = SharedMarks(
                cluster, store, inbox_changed=mailbox.mark_changed)
        board = TaskBoard(store, writer, leases)
        followers += [recent.applied, mailbox.applied, board.applied]
        briefing = Briefing(store, mailbox, board, leases, self.presence)
        refused = ("the journal is the cluster's stream (cluster mode): keep its size with "
                   "the stream's own limits" if cluster is not None
                   else opened.read_only)
        committer.clock = now = anchored_clock()
        retention = Retention(store, committer, writer.context, config.policies,
                              config.archive_path, config.interval, refused=refused, now=now,
                              data_dir=config.data_dir, reserve_bytes=config.reserve_bytes)
        return Parts(store, wal, indexer, hub, committer, leases, writer, queries, mailbox,
                     board, briefing, recent, retention, cluster, marks)

    async def _run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        opened = await trio.to_thread.run_sync(open_storage, self.config)
        self.read_only, self.cuts = opened.read_only, opened.cuts
        try:
            parts = self._parts = self._assemble(opened)
        except BaseException:
            self._close(opened.store, opened.wal, opened.indexer)
            raise
        async with trio.open_nursery() as nursery:
            await nursery.start(self.presence.run)
            await nursery.start(parts.committer.run)
            if parts.cluster is not None:
                await nursery.start(parts.cluster.run)
            if parts.marks is not None:
                await nursery.start(parts.marks.run)
            await nursery.start(self._run_leases, parts.leases)
            if self.read_only is None:
                nursery.start_soon(self._checkpoints, parts)
            nursery.start_soon(parts.indexer.run)
            nursery.start_soon(parts.retention.run)
            self.state = "ready"
            log.info("ready")
            nursery.start_soon(self.disk.run)  # (from the journal as opened)
            nursery.start_soon(self._deliver_spool, parts.writer)
            if self.config.verify_on_start:
                nursery.start_soon(self._read_store, parts.store)
                nursery.start_soon(parts.indexer.verify)

    async def _run_leases(self, leases: LeaseManager, *,
                          task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The lease manager's loops, started again when a lease's end could not be
        written (a full disk): the lease is held on, as the journal says, and its end is
        tried again, rather than the daemon stopping."""
        said = ""
        while True:
            failed: list[Exception] = []
            try:
                await leases.run(task_status=task_status)
            except* EngramError as group:  # (trio hands errors on in exception groups)
                failed = list(group.exceptions)
            if not failed:
                return
            if str(failed[0]) != said:  # once, not every second of a full disk
                said = str(failed[0])
                log.warning("a lease's end could not be written (%s); trying again every "
                            "%gs", said, LEASE_RETRY_SECONDS)
            task_status = trio.TASK_STATUS_IGNORED
            await trio.sleep(LEASE_RETRY_SECONDS)

    async def _deliver_spool(self, writer: Writer) -> None:
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
                await writer.create_units([spooled.draft], Caller(
                    agent_id=spooled.agent_id, uid=os.getuid(), pid=0))
            except (OSError, msgspec.MsgspecError, EngramError) as exc:
                log.warning("spooled unit %s not delivered: %s", name, exc)
                continue
            os.unlink(path)
            delivered += 1
        if delivered:
            log.info("delivered %d spooled unit(s)", delivered)

    async def _read_store(self, store: Store) -> None:
        """Read the whole store once, so that damage shows at once (status, log): RocksDB
        checks each file's index at open, but a data block only when it is read."""
        started = time.monotonic()
        try:
            keys = await trio.to_thread.run_sync(integrity.read_all, store,
                                                limiter=self._walks)
        except StoreDamaged:
            return  # logged, and reported by status from now on
        log.info("store read in full: %d keys, no damage, %.3fs", keys,
                 time.monotonic() - started)

    async def _checkpoints(self, parts: Parts) -> None:
        """Flush the store now and then, so that old log segments can go."""
        committer, store = parts.committer, parts.store
        while True:
            await committer.checkpoint_wanted.wait()
            committer.checkpoint_wanted = trio.Event()
            committer.bytes_since_checkpoint = 0
            try:
                flushed = await trio.to_thread.run_sync(store.flush)
            except Exception as exc:
                flushed, why = False, str(exc)
            else:
                why = "no room on the disk for the store's files"
            if not flushed:  # the log keeps its segments meanwhile
                log.warning("checkpoint skipped (%s); the log keeps its segments", why)
                continue
            wal = parts.wal
            # (The committer may have stopped while the store flushed: the daemon is
            # stopping, and its close drops the segments.)
            if wal is not None and committer.thread.running:
                dropped = await committer.thread.run(
                    functools.partial(wal.drop_through, store.checkpoint_seq))
                log.debug("checkpoint at seq %d, %d segment(s) dropped",
                          store.checkpoint_seq, dropped)

    @staticmethod
    def _close(store: Store, wal: WriteAheadLog | None, indexer: Indexer) -> None:
        try:
            flushed = store.flush()
        except Exception as exc:
            log.warning("store not flushed at the stop (%s)", exc)
            flushed = False
        if not flushed and not store.read_only and store.checkpoint_seq < store.applied_seq:
            log.warning("the store was not flushed at the stop (no room on the disk): the "
                        "next start replays the log from seq %d", store.checkpoint_seq + 1)
        if wal is not None:
            wal.drop_through(store.checkpoint_seq)
            wal.close()
        store.close()
        indexer.close()

    def _close_storage(self) -> None:
        if self._parts is not None:
            self._close(self._parts.store, self._parts.wal, self._parts.indexer)

    def reply_lost(self, reply: object) -> None:
        """A reply did not reach its client (it left meanwhile): leases it granted end
        at once, since no one knows their lock ids."""
        if isinstance(reply, LocksGranted) and self._parts is not None:
            self._parts.leases.undelivered(reply.leases)

    async def connection_closed(self, connection: object) -> None:
        """A connection has gone: its connection-bound leases end with it."""
        if self._parts is not None and self.state == "ready":
            await self._parts.leases.connection_closed(connection)

    # -- statistics --------------------------------------------------------------------

    def journal_status(self) -> JournalStatus | None:
        parts = self._parts
        if parts is None:
            return None
        committer, wal = parts.committer, parts.wal
        return JournalStatus(
            last_seq=committer.last_seq, checkpoint_seq=parts.store.checkpoint_seq,
            units=parts.store.unit_count, contexts=parts.store.context_count,
            wal_segments=len(wal.segments) if wal else 0, wal_bytes=wal.size if wal else 0,
            durability=self.config.durability, write_error=committer.write_error,
            indexed_seq=parts.indexer.indexed_seq, commit_batches=committer.stats.batches,
            commit_entries=committer.stats.entries,
            fsync_seconds=round(committer.stats.fsync_seconds, 6),
            vector_seq=parts.indexer.vector_seq,
            approximate_lag=parts.indexer.approximate_lag, read_only=self.read_only is not None,
            store_damage=None if parts.store.damage is None else str(parts.store.damage),
            index_paused=None if self.read_only else parts.indexer.paused)

    def store_figures(self) -> StoreFigures | None:
        """What RocksDB says the store holds (its properties: nothing is walked)."""
        parts = self._parts
        return None if parts is None or self.state != "ready" else parts.store.figures()

    def recent_held(self) -> tuple[int, int, int] | None:
        """Contexts, units and bytes in the recent units' cache."""
        return None if self._parts is None else self._parts.recent.held()

    def wal_cuts(self) -> list[WalCut]:
        """Log tails cut at a start and not yet acknowledged."""
        return [] if self.cuts is None else [self.wal_cut(cut) for cut in self.cuts.cuts]

    def notice_once(self) -> str:
        """The log tails cut at this start, for the first client told of them after it
        (``status`` and ``doctor`` go on showing them until they are acknowledged)."""
        if self._noticed:
            return ""
        notice = cuts_notice(self.wal_cuts())
        self._noticed = bool(notice)
        return notice

    def noticed(self) -> None:
        """A client has been shown the cuts (a ``status`` reply lists them)."""
        self._noticed = self._noticed or bool(self.wal_cuts())

    @staticmethod
    def wal_cut(cut: Cut) -> WalCut:
        return WalCut(id=cut.id, at=cut.at, segment=cut.segment, offset=cut.offset,
                      bytes=cut.bytes, reason=cut.reason, seq=cut.seq, last_seq=cut.last_seq,
                      unit_ids=cut.unit_ids, acknowledged=cut.acknowledged, saved=cut.saved,
                      summary=cut.summary)

    def stream_status(self) -> StreamStatus | None:
        parts = self._parts
        if parts is None:
            return None
        hub = parts.hub.statistics()
        return StreamStatus(subscribers=hub.subscribers, live=hub.live,
                            published=hub.published, delivered=hub.delivered,
                            detached_for_lag=hub.detached_for_lag,
                            leases_held=len(parts.leases.table.held),
                            leases_granted=parts.leases.granted,
                            leases_expired=parts.leases.expired)

    def stale(self) -> str:
        """Why answers may be stale (cluster mode, the cluster unreachable), or empty."""
        parts = self._parts
        if parts is None or parts.cluster is None or parts.cluster.reachable:
            return ""
        return (f"{parts.cluster.unreachable()}: writes are refused, and answers come from "
                "this machine's view of the journal, which may be stale")

    def cluster_status(self) -> ClusterStatus | None:
        parts = self._parts
        if parts is None or parts.cluster is None:
            return None
        return msgspec.structs.replace(parts.cluster.status(),
                                       leases_synced=parts.leases.synced)

    async def verify(self, request_id: int) -> VerifyReport:
        """Walk the whole store against the log (one walk at a time, in a worker thread)."""
        parts = self.ready()
        log_dir = parts.wal.directory if parts.wal is not None else (
            None if self.clustered else os.path.join(self.config.data_dir, "wal"))
        found = await trio.to_thread.run_sync(integrity.check, parts.store, log_dir,
                                              limiter=self._walks)
        walk, summary = found.walk, found.log
        log.info("store walk: %d keys in %.3fs, %d problem(s)", walk.keys, found.seconds,
                 len(found.problems))
        return VerifyReport(
            id=request_id, ok=found.ok, applied_seq=walk.applied_seq, keys=walk.keys,
            units=walk.units, units_expected=walk.units_expected, contexts=walk.contexts,
            contexts_expected=walk.contexts_expected, events=walk.events,
            walked_all=walk.walked_all,
            damage=[StoreDamage(file=d.file, reason=d.reason, after_key=d.after_key,
                                resumed_at=d.resumed_at) for d in walk.damage],
            log_first_seq=summary.first_seq, log_last_seq=summary.last_seq,
            log_units=summary.units, missing=[list(r) for r in found.missing],
            unrecoverable=[list(r) for r in found.unrecoverable],
            rebuild_complete=found.rebuild_complete, problems=found.problems,
            seconds=found.seconds)

    def commit_queue(self) -> int | None:
        return self._parts.committer.queue_depth if self._parts is not None else None


@contextlib.asynccontextmanager
async def open_engine(config: DaemonConfig) -> AsyncIterator[Engine]:
    """An engine whose journal opens (and replays) in the background; see the module."""
    engine = Engine(config)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine._run)
            yield engine
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(engine._close_storage)
