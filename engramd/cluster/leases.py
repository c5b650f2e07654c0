"""Leases in cluster mode: exclusion across every machine of a deployment.

A lease is a key of the deployment's leases bucket (:mod:`.bucket`),
``l.<root>.<resource>.<holder>`` (its session's), and the servers decide who holds it:

* Acquire writes the lease's key (compare-and-set: it must hold no lease), with the
  lease's ttl as the key's TTL. The fencing token is the revision that write got:
  the bucket's sequence, strictly increasing across every resource, machine,
  restart and failover. Then it reads, from the stream's leader, every lease key
  under the same root whose resource overlaps its own, and keeps its lease only if
  no conflicting lease of another session has a smaller token; else it gives it
  back. Of two conflicting leases the later write (the larger token) reads after
  the earlier one was stored, so it always sees it and gives way: never both are
  kept (both may give way, and then wait in line). This one read carries the
  hierarchy (a directory and what is in it), globs and shared leases across
  machines, and an exclusive lease on one plain name is the same as before.
* Renew writes the key again with the revision it holds as the expected one: the
  token stays, the TTL starts again. Release writes an *ended* record the same
  way (with a short TTL of its own, so nothing of it is kept), and expiry is the
  key's TTL running out on the servers. No machine's clock ends a lease anywhere
  but on the machine that watches its holder, and only for that machine's
  answers (it stops using a lease at the deadline it promised its holder).
* A request for several resources writes them one at a time in lexical order; if
  one is taken, the ones written are given back, and nothing stays held while it
  waits.

Waiting: a waiter takes its place in a line of *tickets* (:mod:`.tickets`) and takes its
resources when none is held and no live ticket on any of them is older than its own:
first come, first served, whatever their machine; no one starves.

Handing over: a release that lets waiters go (any machine's) grants them in the same
write, one atomic batch (:mod:`.handover`), when it can; their machine learns of the
grant from its watch and answers its waiter with no write of its own, promising a
deadline that never passes the servers' expiry, or ends the grant at once when the
waiter has gone.

Every machine watches the whole bucket and keeps the lease table (who holds
what, cluster-wide) and the line from it (:mod:`.leaseview`): deadlock refusal,
``lock show`` and ``lock list`` see every machine's holders and waiters as of that
watch.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
import trio
from trio import TaskStatus

from engramd import validate
from engramd.caller import Caller
from engramd.cluster.bucket import (
    ENDED_TTL,
    BatchRefused,
    BucketGone,
    Ended,
    Held,
    KeyChanged,
    KeyUpdate,
    LeaseBucket,
    encode_record,
    parse_key,
    root_filter,
)
from engramd.cluster.handover import Handover, plan
from engramd.cluster.leaseview import LeaseView
from engramd.cluster.outage import (
    ClusterAway,
    Patience,
    cluster_away,
    transient,
    worth_waiting,
)
from engramd.cluster.owngroups import OwnGroups
from engramd.cluster.tickets import Tickets, patiently
from engramd.grants import Grant, boottime, check_resource
from engramd.leases import LeaseManager, spare_group
from engramd.locks import Holding, LockTable, Waiting
from engramd.pidwatch import process_exit
from engramd.protocol import (
    AcquireLock,
    Fence,
    Forbidden,
    Lease,
    LeaseTiming,
    LockExpired,
    LockHeld,
    LockReleased,
    NotFound,
    Timeout,
    Unavailable,
)
from engramd.protocol import resources as names
from engramd.protocol.model import LockEvent

if TYPE_CHECKING:
    from engramd.cluster.journal import ClusterJournal

log = logging.getLogger("engramd.cluster.leases")
T = TypeVar("T")

RENEWAL_ROOM = 1.0
"""The least time a lease handed over with a process group must leave its holder before
its group would be stopped (its answer, and the renewal it makes at once when little
of its ttl is left): a grant seen later than that is not made (the waiter waits on)."""


@dataclass(eq=False)
class Awaited:
    """A waiter of this machine as a release elsewhere may grant it: the lock ids its
    ticket names, and the leases handed over to it so far."""

    grant: Grant
    lock_ids: list[str]
    received: dict[str, Holding] = field(default_factory=dict)
    handed_at: int = 0
    """The revision of the batch that handed its leases over (0: none yet)."""
    delivered: bool = False
    """Its waiter was answered with the leases handed over."""

    @property
    def complete(self) -> bool:
        return len(self.received) == len(self.lock_ids)


class ClusterLeaseManager(LeaseManager):
    """The lease manager of a machine in cluster mode (see the module)."""

    RETRY_SECONDS = 0.5
    ATTEMPT_SECONDS = 2.0

    def __init__(self, journal: ClusterJournal, *,
                 news: Callable[[LockEvent], None] = lambda event: None,
                 count: Callable[[str], None] = lambda name: None,
                 **options: Any) -> None:
        """*news*: where the lease changes this machine sees go (every machine's, as
        ``lock.*`` events that are not in the journal: the hub's live subscribers);
        *count*: the daemon's counters (``stats``)."""
        super().__init__(journal.store, None, **options)  # type: ignore[arg-type]
        self.journal = journal
        self.machine = self.stops.machine = journal.machine
        self.bucket = LeaseBucket(journal.link)
        self.timeout = journal.settings.timeout
        self._count = count
        self.tickets = Tickets(self.bucket, self._ticket_call, self.machine, self.timeout,
                               self.boot_id)
        self.view = LeaseView(self.table, machine=self.machine, boot_id=self.boot_id,
                              ended=self._lost, found=self._found, news=news,
                              handed=self._handed, max_ttl=self.max_ttl)
        self._ending: set[str] = set()
        """Lock ids whose end this machine is writing (their end is not news to it)."""
        self._awaited: dict[str, Awaited] = {}
        """This machine's waiters, by waiter (ticket), while they wait."""
        self.own_groups = OwnGroups(journal.store, self.boot_id)
        self.stops.vouches = self.own_groups.vouches

    # -- start-up and the watch -------------------------------------------------------

    def restore(self) -> None:
        """Nothing to read here: the bucket's watch fills the table."""

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = self.stops.nursery = nursery
            task_status.started()
            nursery.start_soon(self._keep_own_groups_held)
            nursery.start_soon(self._for_ever, "ageing the line's tickets",
                               self.view.age_forever)
            nursery.start_soon(self._for_ever, "ending leases at their deadlines",
                               self._expire_forever)
            nursery.start_soon(self._for_ever, "renewing leases held while their process "
                               "lives", self._keep_alive_forever)
            await self._for_ever("watching the leases bucket", functools.partial(
                self.view.follow, self.journal.bridge, self.bucket, self.journal.connected,
                lambda: max(self.journal.fences.tokens.values(), default=0)))

    async def _keep_own_groups_held(self) -> None:
        """Once the watch has shown the bucket: forget the groups noted before this
        start whose leases ended meanwhile."""
        await self.view.synced.wait()
        self.own_groups.keep_held(self.table.by_lock_id)

    @staticmethod
    async def _for_ever(what: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run *loop* (which never returns) again after whatever it raises: no failure,
        of the cluster or not, ends the daemon (see :mod:`.outage`)."""
        patience = Patience(what)
        while True:
            try:
                await loop()
            except Exception as exc:
                await patience.failed(exc)

    async def _in_background(self, what: str, job: Callable[[], Awaitable[None]]) -> None:
        """*job* once, in the manager's nursery; what it raises is logged, not raised."""
        try:
            await job()
        except Exception as exc:
            Patience(what).note(exc)

    async def _end_owed(self, holding: Holding, *, reason: str, by: str) -> None:
        """End *holding* (its holder is gone), however long the cluster is away: tried
        again with growing pauses until it is written, or the lease ended otherwise (the
        servers' TTL, a break elsewhere). Meanwhile it counts for nobody here: no renewal,
        no fence (``ending``)."""
        lease = holding.lease
        patience = Patience(f"ending the lease on {lease.resource} ({reason})")
        holding.ending = True
        while self.table.by_lock_id.get(lease.lock_id) is holding:
            try:
                await self._end(holding, LockReleased, reason=reason, by=by)
            except Exception as exc:
                await patience.failed(exc)
                continue
            break
        patience.succeeded()

    async def _watch_pid(self, pid: int) -> None:
        """End the leases bound to *pid* the moment it exits, when the cluster is back
        if it is away then."""
        await process_exit(pid)
        async with trio.open_nursery() as nursery:
            for holding in list(self.table.held.values()):
                if holding.lease.pid == pid and holding.lease.machine == self.machine:
                    nursery.start_soon(functools.partial(
                        self._end_owed, holding, reason="process exited", by="engramd"))

    async def connection_closed(self, connection: object) -> None:
        """End the connection-bound leases of a connection that has gone, in the
        background (when the cluster is back if it is away now)."""
        for holding in list(self.table.held.values()):
            if holding.connection is not connection:
                continue
            if holding.lease.bound_to_connection and self._nursery is not None:
                self._nursery.start_soon(functools.partial(
                    self._end_owed, holding, reason="disconnected", by=holding.lease.holder))
            else:
                holding.connection = holding.push = None  # no one left to tell; adoptable

    def _found(self, holding: Holding) -> None:
        """A lease this machine granted, seen in a new watch (after a restart)."""
        if self._nursery is None:
            return
        if holding.lease.while_alive:
            self._keep_alive_changed.set()
        if holding.lease.boot_id != self.boot_id:  # its holder did not outlive the reboot
            self._nursery.start_soon(functools.partial(
                self._end_owed, holding, reason="machine rebooted", by="engramd"))
        elif holding.lease.pid is not None:
            self._nursery.start_soon(self._watch_pid, holding.lease.pid)

    def _lost(self, holding: Holding, tell: str, by: str) -> None:
        """*holding* ended: out of the table, and its holder told (unless this machine
        is writing its end itself, or told it at its deadline already). A process group
        of a lease granted here that is still running (its lease ended elsewhere, or by
        the servers' TTL before the group was stopped) is killed at once."""
        self.table.remove(holding)
        if holding.lease.lock_id in self._ending:
            return
        if not holding.ending:
            self._tell(holding, tell, by)
        if self.stops.stops(holding.lease) and self._nursery is not None:
            self.stops.begin(holding, kill_at=trio.current_time())
        self._ended_here(holding.lease.lock_id)

    def _ended_here(self, lock_id: str) -> None:
        """The lease *lock_id* is out of the table: its group is no longer one to stop,
        unless a waiter here still waits for a lease of that lock id (one handed over
        and seen too late: its ticket names it again)."""
        if not any(lock_id in awaited.lock_ids for awaited in self._awaited.values()):
            self.own_groups.forget([lock_id])

    def _tell(self, holding: Holding, tell: str, by: str) -> None:
        """Count an expiry of a lease granted here (the servers end it: there is no
        commit of it to count at), and tell the holder (once)."""
        if holding.told:
            return
        if tell == "expired" and holding.lease.machine == self.machine:
            self.expired += 1
        super()._tell(holding, tell, by)

    async def _expire_forever(self) -> None:
        """Stop this machine's leases at the deadlines promised their holders: they are
        told, and no renewal or fence counts any more. The resource stays held until the
        servers' TTL (a little later) ends the lease for everyone: no waiter here takes
        it before a waiter elsewhere could. The process group of a lease about to expire
        is stopped before its deadline (the servers' TTL does not wait for it)."""
        while True:
            self.table.deadline_changed = trio.Event()
            local = [h for h in self.table.held.values()
                     if h.lease.machine == self.machine and not h.ending]
            with trio.move_on_at(self.stops.next_wakeup(local)):
                await self.table.deadline_changed.wait()
            now = trio.current_time()
            self.stops.stop_due(local, now)
            for holding in local:
                if holding.deadline <= now and self.table.held.get(
                        holding.lease.lock_id) is holding and not holding.ending:
                    holding.ending = True
                    self._tell(holding, "expired", "engramd")

    # -- talking to the bucket --------------------------------------------------------

    async def _call(self, coroutine: Callable[[], Awaitable[T]]) -> T:
        """Run a bucket operation, again while the cluster does not answer (a leader
        being elected, a server gone), for the write timeout, or while a quorum of the
        servers answers for longer (:func:`.outage.worth_waiting`). Each attempt gets
        a few seconds: one sent to a server that has just died would otherwise wait out
        the whole timeout. Writes carry a message id, so one sent again is stored once."""
        started = trio.current_time()
        while True:
            try:
                with trio.fail_after(min(self.timeout, self.ATTEMPT_SECONDS)):
                    return await self.journal.bridge.run(coroutine)
            except (nats.errors.Error, OSError, TimeoutError, trio.TooSlowError) as exc:
                # No quorum, a leader being elected, a server gone: again, until the
                # deadline. (An earlier attempt of a write awaiting a quorum answers
                # "duplicate message id is in process": that too.)
                # (No stream to answer, or "stream not found" just after its deletion:
                # the bucket may be gone, which is said as such.)
                if (isinstance(exc, (nats.js.errors.NoStreamResponseError,
                                     nats.js.errors.NotFoundError))
                        and not isinstance(exc, nats.js.errors.KeyNotFoundError)
                        and await self.journal.bridge.run(self.bucket.gone)):
                    raise Unavailable(f"{BucketGone(self.bucket.name)}; nothing was done; "
                                      "try again in a few seconds") from None
                if not transient(exc):
                    raise Unavailable(f"the cluster refused: {exc}") from None
                if not await worth_waiting(self.journal.settings.servers, started,
                                           self.timeout):
                    raise (await cluster_away(
                        self.journal.settings.servers, exc,
                        "the change may or may not have been made; try again")) from None
                await trio.sleep(self.RETRY_SECONDS / 5)

    async def _ticket_call(self, coroutine: Callable[[], Awaitable[T]]) -> T:
        """:meth:`_call` for a ticket's write (counted)."""
        self._count('cluster_lease_writes_total{what="ticket"}')
        return await self._call(coroutine)

    async def _write_lease(self, lease: Lease, record: Held | Ended, ttl: float,
                           expect: Callable[[Holding | None], bool]) -> int:
        """Write *record* as the key of *lease* if the lease it holds passes *expect*
        (None: it holds none); the new revision. KeyChanged when it does not."""
        key, body = self.view.key_of(lease), encode_record(record)
        for _ in range(3):
            last = self.view.revisions.get(key, 0)
            self._count('cluster_lease_writes_total{what="lease"}')
            try:
                revision = await self._call(functools.partial(
                    self.bucket.write, key, body, last=last, ttl=ttl,
                    msg_id=secrets.token_hex(12)))
            except KeyChanged:
                await self._read_key(key)  # the watch is behind: look again
                if not expect(self.view.holding_at(key)):
                    raise
                continue
            self.view.wrote(key, revision, record, lease)
            return revision
        raise KeyChanged(key)

    @property
    def synced(self) -> bool:
        """The watch has seen the bucket once."""
        return self.view.synced.is_set()

    async def caught_up(self) -> None:
        await self.journal.caught_up(None)

    async def _connected(self) -> None:
        """Wait (as long as a write would) until the watch has seen the bucket."""
        with trio.move_on_after(self.timeout):
            await self.view.synced.wait()
        if not self.view.synced.is_set():
            if self.journal.link.refused:
                raise Unavailable(f"{self.journal.unreachable()}: leases cannot be taken "
                                  "or ended now; nothing was done")
            raise (await cluster_away(
                self.journal.settings.servers, TimeoutError("the leases are not read yet"),
                "leases cannot be taken or ended now; nothing was done; try again"))

    # -- acquiring --------------------------------------------------------------------

    def _line(self) -> LockTable:
        return self.view.line()

    async def acquire(self, request: AcquireLock, caller: Caller) -> list[Lease]:
        try:
            return await self._acquire(request, caller)
        except ClusterAway as away:  # (what was written was given back, or lapses)
            raise away.having("nothing was granted; try again") from None

    async def _acquire(self, request: AcquireLock, caller: Caller) -> list[Lease]:
        await self._connected()
        grant, wait = self._grant_for(request, caller)
        if not self.view.free(grant):
            # A release made on another machine a moment ago may not have reached the
            # watch yet: read what is in the way from the leader.
            await self._read_around(grant.resources)
        if self.view.free(grant):
            leases = await self._take(grant)
            if leases is not None:
                return leases
        if wait == 0:
            raise LockHeld(self._why_held(grant))
        self._may_wait(grant)
        return await self._wait(grant, wait)

    async def _read_key(self, key: str) -> None:
        """Bring the view up to *key* as the stream's leader has it."""
        found = await self._call(functools.partial(self.bucket.read, key))
        self.view.seen(key, found)

    async def _read_around(self, resources: list[str], mine: frozenset[str] = frozenset()
                           ) -> set[str]:
        """Bring the view up to every lease key that overlaps one of *resources* as the
        stream's leader has them (but the keys *mine*); the keys it lists under their
        roots."""
        listed: set[str] = set()
        # One listing per root (a repository, the file system, a plain name).
        roots: dict[str, list[str]] = {}
        for resource in resources:
            roots.setdefault(names.parse(resource).root, []).append(resource)
        for here in roots.values():
            keys, as_of = await self._call(functools.partial(self.bucket.keys,
                                                             root_filter(here[0])))
            listed.update(keys)
            for holding in list(self.table.held.values()):  # held in the view, gone there
                lease = holding.lease
                key = self.view.key_of(lease)
                if (key not in listed and self.view.revisions.get(key, 0) <= as_of
                        and any(names.overlaps(lease.resource, wanted) for wanted in here)):
                    self.view.seen(key, None)
            for key in keys:
                try:
                    _, resource, _ = parse_key(key)
                except ValueError:
                    continue
                if key in mine or not any(names.overlaps(resource, wanted)
                                          for wanted in resources):
                    continue
                await self._read_key(key)
        return listed

    async def _take(self, grant: Grant) -> list[Lease] | None:
        """Write leases on all of the grant's resources and keep them if no conflicting
        lease came first (see the module); None (nothing held) when one did."""
        resources, caller, request = grant.resources, grant.caller, grant.request
        self.table.reserve(grant, resources, grant.shared, grant.key)
        taken: list[Lease] = []
        try:
            # Shielded: a lease written must be in the table (or given back) whatever
            # the client does meanwhile; every write is bounded by the timeout.
            with trio.CancelScope(shield=True):
                start, boot = trio.current_time(), boottime()
                ts = dt.datetime.now(dt.UTC)
                for resource in resources:
                    # Token 0: the token is this write's revision (see Held).
                    lease = grant.lease(resource, 0, ts, boot, self.boot_id, self.machine)
                    if request.pgid is not None:  # (checked: _grant_for)
                        self.own_groups.note([lease.lock_id], request.pgid)
                    try:
                        revision = await self._write_lease(
                            lease, Held(lease), grant.ttl,
                            expect=lambda holding: holding is None)
                    except KeyChanged:  # a lease of this session on it came first
                        self.own_groups.forget([lease.lock_id])
                        await self._give_back(taken, "not granted: one of this session's "
                                              f"came first on {resource}", caller.agent_id)
                        return None
                    taken.append(msgspec.structs.replace(lease, fencing_token=revision))
                first = await self._came_first(grant, taken)
                if first is not None:
                    log.info("cluster leases: %s gives way: %s came first",
                             ", ".join(grant.resources), first)
                    await self._give_back(taken, f"not granted: {first} came first",
                                          caller.agent_id)
                    return None
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(self.timeout):
                await self._give_back(taken, "not granted", caller.agent_id)
            raise
        finally:
            self.table.unreserve(grant)
            self.view.wake()
        for lease in taken:
            self._hold(lease, start + grant.ttl, caller)
        self.granted += len(taken)
        if request.pid is not None and self._nursery is not None:
            self._nursery.start_soon(self._watch_pid, request.pid)
        return taken

    async def _came_first(self, grant: Grant, taken: list[Lease]) -> str | None:
        """A lease of another session, stored before one of *taken*, that conflicts with
        it (its resource), as the stream's leader has them; None when there is none."""
        mine = frozenset(self.view.key_of(lease) for lease in taken)
        ids = frozenset(lease.lock_id for lease in taken)
        for _ in range(3):
            listed = await self._read_around(grant.resources, mine)
            if mine <= listed:
                break
        else:  # the leader does not show our own writes: we cannot tell, so give way
            return "an answer the leader did not give"
        for lease in taken:
            for holding in self.table.holders_in_the_way(lease.resource, lease.shared,
                                                         grant.key):
                if (holding.lease.lock_id not in ids
                        and holding.lease.fencing_token < lease.fencing_token):
                    return holding.lease.resource
        return None

    def _hold(self, lease: Lease, deadline: float, caller: Caller) -> None:
        if lease.while_alive:
            self._keep_alive_changed.set()
        holding = self.table.held.get(lease.lock_id)
        if holding is None or holding.lease.lock_id != lease.lock_id:
            holding = Holding(lease, deadline)
            self.table.install(holding)
        holding.lease, holding.deadline = lease, deadline
        holding.connection, holding.push = caller.connection, caller.push
        self.table.deadline_changed.set()

    async def _give_back(self, leases: list[Lease], reason: str, by: str) -> None:
        self.own_groups.forget(lease.lock_id for lease in leases)
        for lease in leases:
            try:
                await self._write_end(lease, reason, by)
            except (KeyChanged, Unavailable):
                pass  # its TTL ends it
            holding = self.table.held.get(lease.lock_id)  # the watch may have shown it
            if holding is not None:
                self.table.remove(holding)

    async def _wait(self, grant: Grant, wait: float) -> list[Lease]:
        """Wait in line (see the module) for at most *wait* seconds: until the leases are
        handed over by a release (seen in the view), or it is this waiter's turn and it
        takes them itself."""
        resources = grant.resources
        waiter = secrets.token_hex(8)
        awaited = self._awaited[waiter] = Awaited(
            grant, [secrets.token_hex(16) for _ in resources])
        if grant.request.pgid is not None:  # (checked: _grant_for) a release may grant it
            self.own_groups.note(awaited.lock_ids, grant.request.pgid)
        waiting = Waiting(grant.caller.agent_id, grant.session, grant.holder_pid, resources,
                          grant, shared=grant.shared)
        self.table.enqueue(waiting)  # the requests that come after it here wait behind it
        done = trio.Event()
        kept = False
        deadline = trio.current_time() + wait
        try:
            with trio.move_on_at(deadline):
                # The cluster failing for a moment (a leader being elected) does not end
                # a wait: it is tried again until the wait's own deadline.
                number = await patiently(
                    lambda: self.tickets.register(waiter, grant, 0, awaited.lock_ids),
                    self.RETRY_SECONDS)
                assert self._nursery is not None
                self._nursery.start_soon(
                    self._in_background, "keeping a waiter's ticket",
                    functools.partial(self.tickets.keep, done, waiter, grant, number,
                                      awaited.lock_ids, lambda: awaited.handed_at))
                kept = True
                while True:
                    while not awaited.received and not self.view.turn(waiter, number, grant):
                        await self.view.changed.wait()
                    if awaited.received:  # handed over: the rest of its batch follows
                        while not awaited.complete:
                            await self.view.changed.wait()
                        return self._answer(awaited)
                    leases = await patiently(lambda: self._take(grant), self.RETRY_SECONDS)
                    if leases is not None:
                        return leases
        finally:
            done.set()
            self.table.dequeue(waiting)
            del self._awaited[waiter]
            self.own_groups.forget(lock_id for lock_id in awaited.lock_ids
                                   if lock_id not in awaited.received)
            if not awaited.delivered:  # it gave up (or its client left): what was
                for holding in awaited.received.values():  # handed over ends at once
                    self._end_at_once(holding, "not granted: its waiter had gone")
            if not kept and self._nursery is not None:
                self._nursery.start_soon(self._in_background, "withdrawing a ticket",
                                         functools.partial(self.tickets.withdraw, waiter))
        raise Timeout(f"waited {round(wait, 1):g}s; {self._why_held(grant)}")

    def _handed(self, holding: Holding, waiter: str) -> None:
        """A lease handed over to *waiter* of this machine, new in the view (the view
        installed it). Its waiter gets it, held until the deadline this machine can
        promise; a lease whose waiter has gone is ended at once.

        The promise: the servers' TTL (ttl + the slack) starts when the batch is stored,
        after the ticket revision it expects was sent (``deadline_boottime`` = that
        sending + ttl + the slack, on this machine's boot clock): so never later than
        that, and never more than ttl from now."""
        awaited = self._awaited.get(waiter)
        lease = holding.lease
        if awaited is None or lease.lock_id not in awaited.lock_ids:
            self._end_at_once(holding, "not granted: its waiter had gone")
            return
        boot, now = boottime(), trio.current_time()
        promise = min(boot + lease.ttl, lease.deadline_boottime)
        if promise <= boot or (self.stops.stops(lease) and LeaseTiming(lease.ttl).backstop(
                promise)[0] - boot <= min(RENEWAL_ROOM, lease.ttl / 4)):
            # Seen after its promise had passed (this machine's watch far behind), or
            # so near it that its group would be stopped before its holder could renew
            # it: it is ended, and the waiter waits on (its ticket written again).
            self._end_at_once(holding, "not granted: seen too late")
            return
        left = promise - boot
        holding.lease = msgspec.structs.replace(
            lease, deadline_boottime=promise,
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=left))
        holding.deadline = now + left
        holding.connection, holding.push = awaited.grant.caller.connection, \
            awaited.grant.caller.push
        awaited.received[lease.lock_id] = holding
        # Its ticket was consumed in the same batch: out of the line at once (the watch
        # shows it next), so that what this machine says of the line is true when the
        # waiter is answered.
        awaited.handed_at = awaited.handed_at or lease.fencing_token
        self.view.consumed(waiter)
        self.table.deadline_changed.set()

    def _answer(self, awaited: Awaited) -> list[Lease]:
        """The leases handed over to *awaited*, now its waiter's."""
        awaited.delivered = True
        leases = [awaited.received[lock_id].lease for lock_id in awaited.lock_ids]
        grant = awaited.grant
        self.granted += len(leases)
        if grant.request.pid is not None and self._nursery is not None:
            self._nursery.start_soon(self._watch_pid, grant.request.pid)
        if grant.while_alive:
            self._keep_alive_changed.set()
        log.debug("cluster leases: %s handed over", ", ".join(grant.resources))
        return leases

    def undelivered(self, leases: list[Lease]) -> None:
        for lease in leases:
            holding = self.table.by_lock_id.get(lease.lock_id)
            if holding is not None and not holding.ending:
                self._end_at_once(holding, "not granted: its client had gone")

    def _end_at_once(self, holding: Holding, reason: str) -> None:
        """End *holding*, granted here to no one, in the background (it counts for no
        one meanwhile); its end hands it over to the next in line in turn. Its process
        group never worked under it (its waiter never had it): it is not stopped (the
        group may be waiting to run under the grant of a request made again)."""
        holding.told = True  # (there is no one to tell)
        spare_group(holding)
        if self._nursery is not None:
            self._nursery.start_soon(functools.partial(
                self._end_owed, holding, reason=reason, by="engramd"))

    # -- renewing and ending ----------------------------------------------------------

    async def renew(self, lock_id: str, caller: Caller, ttl: float | None,
                    resource: str | None = None) -> Lease:
        await self._connected()
        holding = self._held(lock_id, caller, resource)
        if holding.lease.machine != self.machine:
            raise Forbidden(f"lease {lock_id:.40} was granted through machine "
                            f"{holding.lease.machine}: renew it there")
        ttl, session, holder_pid, adopt = self._renewal(holding, caller, ttl)
        start, boot = trio.current_time(), boottime()
        ts = dt.datetime.now(dt.UTC)
        lease = msgspec.structs.replace(
            holding.lease, expires_at=ts + dt.timedelta(seconds=ttl), ttl=ttl,
            deadline_boottime=boot + ttl, session=session, holder_pid=holder_pid)
        with trio.CancelScope(shield=True):
            try:
                await self._write_lease(lease, Held(lease), ttl, expect=_holding(lock_id))
            except KeyChanged:
                raise NotFound(f"lease {lock_id:.40} ended before it was renewed") from None
        self._renewed(holding, lease, start + ttl, caller, adopt)
        return lease

    async def release(self, lock_id: str, caller: Caller, resource: str | None = None
                      ) -> Lease:
        await self._connected()
        holding = self.table.by_lock_id.get(lock_id)
        if holding is not None:
            self._stoppable_here(holding, "release")
        return await super().release(lock_id, caller, resource)

    async def break_lease(self, resource: str, reason: str, agent: str, *,
                          lock_id: str | None = None, token: int | None = None) -> Lease:
        await self._connected()
        # A lease taken on another machine a moment ago may not have reached this
        # machine's view yet: "not held" is said only of what the leader says.
        await self._read_around([check_resource(resource)])
        validate.reason(reason)
        for holding in self.to_break(resource, lock_id, token):
            self._stoppable_here(holding, "break")
        return await super().break_lease(resource, reason, agent, lock_id=lock_id,
                                         token=token)

    def _stoppable_here(self, holding: Holding, what: str) -> None:
        """Refuse to end here a lease with a process group granted on another machine:
        only that machine can stop the group, and the lease may not end while it runs."""
        lease = holding.lease
        if lease.pgid is not None and lease.machine != self.machine:
            raise Forbidden(f"{lease.resource} is leased through machine {lease.machine} by "
                            f"{holding.holder}, whose processes only that machine can stop: "
                            f"{what} it there, or wait for its expiry")

    async def _end(self, holding: Holding, kind: type[LockReleased] | type[LockExpired], *,
                   reason: str, by: str, tell: str | None = None) -> None:
        lease = holding.lease
        if self.table.by_lock_id.get(lease.lock_id) is not holding:
            return
        if kind is LockExpired:  # the servers end it; here it stops counting
            self._lost(holding, "expired", by)
            return
        await self.stops.before_end(holding, tell, by)
        if self.table.by_lock_id.get(lease.lock_id) is not holding:
            return  # ended meanwhile
        try:
            with trio.CancelScope(shield=True):
                await self._write_end(lease, reason, by, holding=holding)
        except KeyChanged:
            pass  # it ended meanwhile: the watch says how
        self.table.remove(holding)
        self._ended_here(lease.lock_id)
        if tell is not None:
            self._tell(holding, tell, by)
        self.view.wake()

    async def _write_end(self, lease: Lease, reason: str, by: str,
                         holding: Holding | None = None) -> None:
        """Write the end of *lease*; with the *holding* it ends, handing it over to the
        next in line in the same write when it can (:mod:`.handover`)."""
        self._ending.add(lease.lock_id)
        try:
            if holding is not None and await self._hand_over(holding, reason, by):
                return
            await self._write_lease(lease, Ended(reason=reason, by=by), ENDED_TTL,
                                    expect=_holding(lease.lock_id))
        finally:
            self._ending.discard(lease.lock_id)

    async def _hand_over(self, holding: Holding, reason: str, by: str) -> bool:
        """End *holding* and grant the waiters whose turn that makes in one atomic
        batch; whether it was stored (False: nothing was, and the end is to be written
        alone: its waiters take their leases themselves)."""
        if not self.bucket.atomic or not self.view.synced.is_set():
            return False
        handover = plan(self.view, holding, Ended(reason=reason, by=by),
                        now=trio.current_time(), ts=dt.datetime.now(dt.UTC),
                        fresh=Tickets.FRESH)
        if handover is None:
            return False
        self._count('cluster_lease_writes_total{what="handover"}')
        try:
            last = await self._call(functools.partial(self.bucket.write_batch,
                                                      handover.writes))
        except (KeyChanged, BatchRefused) as exc:
            # An expectation failed (a write under the root since this view, a ticket
            # written again), or an earlier copy of this batch whose answer was lost
            # was stored: the waiter's first key tells which.
            if not await self._stored(handover):
                log.info("cluster leases: %s not handed over in its release (%s): its "
                         "waiter takes it", holding.lease.resource,
                         "stale view" if isinstance(exc, KeyChanged) else exc)
                return False
        else:
            first = last - len(handover.writes) + 1
            for revision, write in enumerate(handover.writes, start=first):
                if write.key == handover.own_key:
                    self.view.wrote(write.key, revision, handover.ended, holding.lease)
                else:  # the waiters' grants and tickets, as the watch will show them
                    self.view.apply(KeyUpdate(write.key, revision, write.value))
        self._count("leases_handed_over_total")
        return True

    async def _stored(self, handover: Handover) -> bool:
        """Whether *handover* was stored (by an earlier copy of it, whose answer was
        lost): its first grant's key, as the stream's leader has it (the view takes it
        in), holds that grant's message, by its message id. (The same grant by another
        release's batch, which a waiter's lock ids would not tell apart, is not this
        one: this end was not written. A message id not found when the batch was
        stored, its grant renewed since, only makes the end be written alone again,
        which then finds it written.)"""
        key, _ = handover.grants[0]
        (write,) = [write for write in handover.writes if write.key == key]
        found = await self._call(functools.partial(self.bucket.read, key))
        self.view.seen(key, found)
        if found is None or found.msg_id != write.msg_id:
            return False
        await self._read_key(handover.own_key)
        return True

    def check_fence(self, fence: Fence) -> Lease:
        """As on one machine, against the table (brought up to the leader's tokens by
        :meth:`prepare_fences`), and then against the fence marks of the journal as
        the batch being built sees it, which no lease's end between this check and the
        journal write can get past (:mod:`.fences`)."""
        lease = super().check_fence(fence)
        self.journal.fences.check(lease)
        return lease

    async def prepare_fences(self, fences: list[Fence]) -> None:
        """Read the lease keys that may cover *fences* from the leader, so the fence
        check that follows is made against the cluster's current tokens."""
        for fence in fences:
            await self._read_around([check_resource(fence.resource)])


def _holding(lock_id: str) -> Callable[[Holding | None], bool]:
    return lambda holding: holding is not None and holding.lease.lock_id == lock_id
