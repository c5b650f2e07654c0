"""The lease manager: acquire, wait, renew, release, break and expire, through the WAL.

Every grant, renewal, release and expiry is an event committed like any other
change, so an acknowledged grant survives a restart and its fencing token (the
grant's seq) is greater than every token before it. Expiry runs on trio's
monotonic clock; the remaining time survives a restart through CLOCK_BOOTTIME
and the boot id (a reboot ends every lease: their holders are gone).

A lease that carries a process group (``lock run``'s CMD) ends only once none of
the group's processes is left (:mod:`engramd.groups`): whatever ends it waits for
the group to be stopped first, and before its expiry the group is stopped in time
(by :class:`LeaseTiming`, as its holder would) so that the expiry is not late.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable

import msgspec
import trio
from trio import TaskStatus

from engramd import validate
from engramd.caller import Caller
from engramd.commit import GroupCommitter
from engramd.grants import (
    Grant,
    acquired,
    boot_id,
    boottime,
    check_resource,
    check_wait,
    checked_ttl,
    grant_for,
)
from engramd.groups import GroupStops
from engramd.locks import Holding, LockTable, Waiting
from engramd.pidwatch import process_exit
from engramd.protocol import (
    AcquireLock,
    Conflict,
    EngramError,
    Fence,
    Forbidden,
    Lease,
    LeaseLost,
    LockExpired,
    LockHeld,
    LockReleased,
    LockRenewed,
    LockState,
    NotFound,
    Timeout,
)
from engramd.storage import Store
from engramd.wal.record import Entry

log = logging.getLogger("engramd.leases")
_lease_decoder = msgspec.msgpack.Decoder(Lease)
_push_encoder = msgspec.msgpack.Encoder()


class LeaseManager:
    def __init__(self, store: Store, committer: GroupCommitter, *, default_ttl: float,
                 max_ttl: float, max_per_agent: int, max_waiters: int) -> None:
        self.store = store
        self.committer = committer
        self.table = LockTable()
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.max_per_agent = max_per_agent
        self.max_waiters = max_waiters
        self.boot_id = boot_id()
        self.machine = ""
        """This machine's name in cluster mode (empty on one machine)."""
        self.stops = GroupStops(self.boot_id, tell=self._tell)
        """Stops the process groups leases carry (its ``groups``: a fake in tests)."""
        self.stops.held = self.table.held.values
        self._nursery: trio.Nursery | None = None
        self._keep_alive_changed = trio.Event()
        """Set when a lease held while its process lives is granted."""
        self.granted = 0
        self.expired = 0

    @property
    def synced(self) -> bool:
        """Leases can be taken and ended now (on one machine, always)."""
        return True

    async def caught_up(self) -> None:
        """Wait until this machine has applied every write acknowledged before now,
        wherever it was made (on one machine, every write is made here: at once)."""

    # -- start-up and background work ------------------------------------------------

    def restore(self) -> None:
        """Hold again what the store says is held, with the time it had left."""
        now, boot = trio.current_time(), boottime()
        for raw in self.store.leases():
            lease = _lease_decoder.decode(raw)
            if not lease.session:  # granted before sessions: a session of its own
                lease = msgspec.structs.replace(lease, session=f"lease:{lease.lock_id}")
            same_boot = lease.boot_id == self.boot_id and bool(self.boot_id)
            remaining = lease.deadline_boottime - boot if same_boot else 0.0
            self.table.install(Holding(lease, now + max(0.0, remaining)))
        log.info("%d lease(s) restored", len(self.table.held))

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = self.stops.nursery = nursery
            for holding in list(self.table.held.values()):
                if holding.lease.pid is not None:
                    nursery.start_soon(self._watch_pid, holding.lease.pid)
            task_status.started()
            nursery.start_soon(self._keep_alive_forever)
            await self._expire_forever()

    async def _expire_forever(self) -> None:
        while True:
            self.table.deadline_changed = trio.Event()
            with trio.move_on_at(self.stops.next_wakeup(self.table.held.values())):
                await self.table.deadline_changed.wait()
            now = trio.current_time()
            self.stops.stop_due(self.table.held.values(), now)
            for holding in self.table.expired(now):
                if holding.stopping is None:
                    await self._end(holding, LockExpired, reason="expired", by="engramd",
                                    tell="expired")
                elif not holding.expiring and self._nursery is not None:
                    holding.expiring = True  # its end waits for its group: not here
                    self._nursery.start_soon(functools.partial(
                        self._end, holding, LockExpired, reason="expired", by="engramd",
                        tell="expired"))

    async def _keep_alive_forever(self) -> None:
        """Renew each lease held while its process lives (``Lease.while_alive``) once
        half its ttl has gone: it never lapses while that process runs; its exit, which
        is watched, ends it. With no such lease there is nothing to wake for (and no
        deadline for a virtual clock to jump to)."""
        while True:
            kept = [holding for holding in self.table.held.values()
                    if holding.lease.while_alive and holding.lease.machine == self.machine
                    and not holding.ending and holding.stopping is None]
            self._keep_alive_changed = trio.Event()  # a grant, or a renewal with a ttl
            if not kept:
                await self._keep_alive_changed.wait()
                continue
            with trio.move_on_at(min(holding.deadline - holding.lease.ttl / 2
                                     for holding in kept)):
                await self._keep_alive_changed.wait()
                continue
            now = trio.current_time()
            for holding in kept:
                lease = holding.lease
                if holding.deadline - now > lease.ttl / 2 or holding.ending:
                    continue
                try:
                    await self.renew(lease.lock_id, _holder_of(lease), None)
                except EngramError as exc:  # ended meanwhile, the cluster away: next round
                    log.info("lease %s on %s not renewed: %s", lease.lock_id[:8],
                             lease.resource, exc)
                    await trio.sleep(KEEP_ALIVE_RETRY)

    async def _watch_pid(self, pid: int) -> None:
        """Release the leases bound to *pid* the moment it exits (a pidfd, no polling)."""
        await process_exit(pid)
        for holding in list(self.table.held.values()):
            if holding.lease.pid == pid and holding.lease.machine == self.machine:
                await self._end(holding, LockReleased, reason="process exited", by="engramd")

    # -- committing changes ------------------------------------------------------------

    async def _end(self, holding: Holding, kind: type[LockReleased] | type[LockExpired], *,
                   reason: str, by: str, tell: str | None = None) -> None:
        """End *holding* durably, hand it to the next in line in the same commit, and
        tell the holder (*tell*) when it lost it.

        The end and the grant to the waiter whose turn it makes are one WAL record:
        one fsync per handover, and a crash keeps both or neither.
        """
        lease = holding.lease
        if self.table.by_lock_id.get(lease.lock_id) is holding and not holding.ending:
            await self.stops.before_end(holding, tell, by)  # (a lease over has no group)
        followers: list[Waiting] = []
        ending = False

        def build(first_seq: int, ts: dt.datetime
                  ) -> tuple[Entry | None, list[list[Lease]]]:
            nonlocal followers, ending
            if self.table.by_lock_id.get(lease.lock_id) is not holding or holding.ending:
                return None, []  # ended meanwhile, or its end is being written already
            holding.ending = ending = True
            if kind is LockExpired:
                event: LockReleased | LockExpired = LockExpired(
                    seq=first_seq, ts=ts, context_id="", lease=lease)
            else:
                event = LockReleased(seq=first_seq, ts=ts, context_id="", lease=lease,
                                     reason=reason, by=by)
            # Every waiter this end lets go (several readers behind a writer) is granted
            # in the same record, in the order they came.
            followers = self.table.successors(holding)
            granted: list[list[Lease]] = []
            seq = first_seq + 1
            for follower in followers:
                assert isinstance(follower.grant, Grant)
                granted.append(follower.grant.leases(seq, ts, self.boot_id))
                seq += len(granted[-1])
            return Entry(first_seq=first_seq, events=[
                event, *(event for leases in granted for event in acquired(leases))]), granted

        try:
            with trio.CancelScope(shield=True):  # the table follows what the journal says
                granted = await self.committer.commit(build)
        except BaseException as exc:
            if ending:  # not written: it holds on, as the journal says
                holding.ending = False
            for follower in followers:  # the handover was not written: they hear why
                self.table.unreserve(follower.owner)
                follower.failure = exc
                follower.turn.set()
            if followers:
                self.table.pump()
            raise
        if not ending:
            return  # another end wrote it, or is writing it
        self.table.remove(holding)
        if kind is LockExpired:
            self.expired += 1
        if tell is not None:
            self._tell(holding, tell, by)
        for follower, leases in zip(followers, granted, strict=True):
            assert isinstance(follower.grant, Grant)
            self._install(follower.grant, leases)
            follower.granted = leases
            follower.turn.set()
            if follower.abandoned:
                # Its client left while the grant was written: no one has its leases.
                self.undelivered(leases)
        self.table.pump()

    def _tell(self, holding: Holding, tell: str, by: str) -> None:
        """Push ``lease.lost`` (*tell*: ``expired`` or ``broken``) to the holder of
        *holding*, in the background, once."""
        if holding.told:
            return
        holding.told = True
        if holding.push is not None and self._nursery is not None:
            notice = LeaseLost(lease=holding.lease, reason=tell, by=by)
            self._nursery.start_soon(_tell_holder, holding.push, _push_encoder.encode(notice))

    def undelivered(self, leases: list[Lease]) -> None:
        """End at once, in the background, *leases* granted to a request whose client
        left before their reply reached it: no one knows their lock ids. A process group
        they name never worked under them (``lock run`` runs CMD once it has its
        leases; it may be waiting to, asking again): it is not stopped."""
        for lease in leases:
            holding = self.table.by_lock_id.get(lease.lock_id)
            if holding is None or holding.ending or self._nursery is None:
                continue
            holding.told = True  # (there is no one to tell)
            spare_group(holding)
            self._nursery.start_soon(functools.partial(
                self._end, holding, LockReleased, reason="not granted: its client had gone",
                by="engramd"))

    async def _grant(self, grant: Grant) -> list[Lease]:
        """Commit leases on the grant's resources, already reserved for this caller."""

        def build(first_seq: int, ts: dt.datetime) -> tuple[Entry | None, list[Lease]]:
            leases = grant.leases(first_seq, ts, self.boot_id)
            return Entry(first_seq=first_seq, events=list(acquired(leases))), leases

        try:
            # Shielded: once submitted, the grant may be written; the table must
            # then hold it too (a connection-bound lease is released right after).
            with trio.CancelScope(shield=True):
                leases = await self.committer.commit(build)
        except BaseException:
            self.table.unreserve(grant)
            self.table.pump()
            raise
        self._install(grant, leases)
        return leases

    def _install(self, grant: Grant, leases: list[Lease]) -> None:
        """Hold durably granted *leases* in the table."""
        deadline = trio.current_time() + grant.ttl
        for lease in leases:
            self.table.install(Holding(lease, deadline, grant.caller.connection,
                                       grant.caller.push))
        self.table.unreserve(grant)
        self.granted += len(leases)
        if grant.request.pid is not None and self._nursery is not None:
            self._nursery.start_soon(self._watch_pid, grant.request.pid)
        if grant.while_alive:
            self._keep_alive_changed.set()

    # -- operations ----------------------------------------------------------------------

    def _grant_for(self, request: AcquireLock, caller: Caller) -> tuple[Grant, float]:
        grant = grant_for(request, caller, self.table, default_ttl=self.default_ttl,
                          max_ttl=self.max_ttl, max_per_agent=self.max_per_agent,
                          machine=self.machine)
        if request.pgid is not None and request.pid is not None:
            self.stops.groups.check(request.pgid, request.pid)
        return grant

    def _may_wait(self, grant: Grant) -> None:
        check_wait(grant, self._line(), self.max_waiters)

    def _line(self) -> LockTable:
        """Who holds and who waits, as far as this daemon sees: its own table here."""
        return self.table

    async def acquire(self, request: AcquireLock, caller: Caller) -> list[Lease]:
        grant, wait = self._grant_for(request, caller)
        resources = grant.resources
        if self.table.can_take(resources, grant.shared, grant.key):
            self.table.reserve(grant, resources, grant.shared, grant.key)
            return await self._grant(grant)
        if wait == 0:
            raise LockHeld(self._why_held(grant))
        self._may_wait(grant)
        agent, session, holder_pid = caller.agent_id, grant.session, grant.holder_pid
        waiting = Waiting(agent, session, holder_pid, resources, grant, shared=grant.shared)
        self.table.enqueue(waiting)
        settled = False
        try:
            with trio.move_on_after(wait):
                await waiting.turn.wait()
            if waiting.handed_over:
                # Chosen by a holder's end being written now: its outcome is ours,
                # whatever our deadline says (the grant may be durable already).
                await waiting.turn.wait()
                settled = True
                if waiting.failure is not None:
                    raise waiting.failure
                assert waiting.granted is not None
                return waiting.granted
            if waiting.turn.is_set():
                settled = True  # from here _grant owns the reservation
                return await self._grant(grant)
        finally:
            if not settled:
                # Timed out, or cancelled (the client left) perhaps just as our turn
                # came: give the line, or the reservation made for us, back. A
                # handover under way finishes, and ends what it grants us.
                if waiting.handed_over:
                    waiting.abandoned = True
                elif waiting.turn.is_set():
                    self.table.unreserve(grant)
                else:
                    self.table.dequeue(waiting)
                self.table.pump()
        raise Timeout(f"waited {round(wait, 1):g}s; {self._why_held(grant)}")

    def _why_held(self, grant: Grant) -> str:
        """Who stands in the way of *grant*: holders (their resource when another one,
        shared when so), else the waiters ahead, else a grant being written."""
        parts, line = [], self._line()
        for resource in grant.resources:
            holdings = line.holders_in_the_way(resource, grant.shared, grant.key)
            for holding in holdings[:3]:
                left = max(0.0, holding.deadline - trio.current_time())
                lease = holding.lease
                until = (f"while its session (pid {lease.holder_pid}) lives"
                         if lease.while_alive else
                         f"until {lease.expires_at.isoformat(timespec='seconds')} "
                         f"({left:.1f}s left)")
                parts.append(f"{lease.resource} is held{' shared' if lease.shared else ''} by "
                             f"{holding.holder} {until}"
                             + ("" if lease.resource == resource else
                                f", in the way of {resource}"))
            if len(holdings) > 3:
                parts.append(f"{resource}: {len(holdings) - 3} more lease(s) in the way")
            if holdings:
                continue
            ahead = line.waiting_in_the_way(resource, grant.shared, grant.key)
            if ahead:
                named = ", ".join(
                    f"{waiting.holder}{' (shared)' if waiting.shared else ''}"
                    + ("" if wanted == resource else f" for {wanted:.200}")
                    for waiting, wanted in ahead[:3])
                more = f" and {len(ahead) - 3} more" if len(ahead) > 3 else ""
                parts.append(f"{resource} has {len(ahead)} request(s) waiting ahead: "
                             f"{named}{more}")
            elif not self.table.free([resource], grant.shared, grant.key):
                parts.append(f"{resource} is being granted to someone else")
        return "; ".join(parts) or "held"

    def _held(self, lock_id: str, caller: Caller, resource: str | None) -> Holding:
        holding = self.table.by_lock_id.get(lock_id)
        if holding is None or holding.deadline <= trio.current_time():
            raise NotFound(f"no lease with lock id {lock_id:.40}: it expired, was released, "
                           "or never existed")
        if resource is not None and holding.lease.resource != resource:
            raise NotFound(f"{resource:.200} has no lease with lock id {lock_id:.40} (that "
                           f"lock id is a lease on {holding.lease.resource:.200})")
        if holding.lease.holder != caller.agent_id:
            raise Forbidden(f"lease {lock_id:.40} is held by {holding.lease.holder}, not you")
        if holding.stopping is not None:
            raise NotFound(f"lease {lock_id:.40} is ending: its processes (group "
                           f"{holding.lease.pgid}) are being stopped")
        return holding

    async def release(self, lock_id: str, caller: Caller, resource: str | None = None
                      ) -> Lease:
        holding = self._held(lock_id, caller, resource)
        await self._end(holding, LockReleased, reason="released", by=caller.agent_id)
        return holding.lease

    async def renew(self, lock_id: str, caller: Caller, ttl: float | None,
                    resource: str | None = None) -> Lease:
        """Extend a lease by *ttl* from now; a lease whose connection has gone
        (a restart, a reconnect) is adopted by the renewing connection."""
        holding = self._held(lock_id, caller, resource)
        ttl, session, holder_pid, adopt = self._renewal(holding, caller, ttl)
        boot = boottime()

        def build(first_seq: int, ts: dt.datetime) -> tuple[Entry | None, Lease]:
            if self.table.by_lock_id.get(lock_id) is not holding or holding.ending:
                raise NotFound(f"lease {lock_id:.40} ended while being renewed")
            lease = msgspec.structs.replace(
                holding.lease, expires_at=ts + dt.timedelta(seconds=ttl), ttl=ttl,
                deadline_boottime=boot + ttl, session=session, holder_pid=holder_pid)
            event = LockRenewed(seq=first_seq, ts=ts, context_id="", lease=lease)
            return Entry(first_seq=first_seq, events=[event]), lease

        with trio.CancelScope(shield=True):  # the table follows what the journal says
            lease = await self.committer.commit(build)
        self._renewed(holding, lease, trio.current_time() + ttl, caller, adopt)
        return lease

    def _renewal(self, holding: Holding, caller: Caller, ttl: float | None
                 ) -> tuple[float, str, int, bool]:
        """The ttl a renewal of *holding* sets, the session and process that hold it
        then, and whether *caller* adopts it (its own connection has gone)."""
        ttl = checked_ttl(holding.lease.ttl if ttl is None else ttl, self.max_ttl)
        adopt = holding.connection is None and caller.connection is not None
        session, holder_pid = holding.lease.session, holding.lease.holder_pid
        if adopt and holding.lease.pid is None:
            session, holder_pid = caller.connection_id, caller.pid
        return ttl, session, holder_pid, adopt

    def _renewed(self, holding: Holding, lease: Lease, deadline: float, caller: Caller,
                 adopt: bool) -> None:
        """Hold the durably renewed *lease* until *deadline* (trio's clock)."""
        holding.lease, holding.deadline = lease, deadline
        if adopt and holding.connection is None:
            holding.connection, holding.push = caller.connection, caller.push
        self.table.deadline_changed.set()
        if lease.while_alive:
            self._keep_alive_changed.set()  # renewed with a ttl of its own: look again

    async def break_lease(self, resource: str, reason: str, agent: str, *,
                          lock_id: str | None = None, token: int | None = None) -> Lease:
        """End every lease on *resource*; with *lock_id* or *token*, only the lease
        they name (:meth:`to_break`)."""
        validate.reason(reason)
        holdings = self.to_break(resource, lock_id, token)
        for holding in holdings:  # every shared lease on it, or the one named
            await self._end(holding, LockReleased, reason=f"broken: {reason}", by=agent,
                            tell="broken")
        return holdings[0].lease

    def to_break(self, resource: str, lock_id: str | None, token: int | None
                 ) -> list[Holding]:
        """The leases a break of *resource* ends: every one on it, or the one *lock_id*
        and *token* name. That one gone (its holder let go and the next took the
        resource) is ``conflict``: the breaker was shown a lease that has ended, and
        the lease there now is someone else's, which nobody asked to break."""
        holdings = self.table.on(check_resource(resource))
        if not holdings:
            raise NotFound(f"{resource} is not held")
        if lock_id is None and token is None:
            return holdings
        named = [h for h in holdings if (lock_id is None or h.lease.lock_id == lock_id)
                 and (token is None or h.lease.fencing_token == token)]
        if not named:
            asked = " and ".join(part for part in (
                f"lock id {lock_id:.40}" if lock_id is not None else "",
                f"fencing token {token}" if token is not None else "") if part)
            now = ", ".join(f"{h.lease.holder} (lock id {h.lease.lock_id}, fencing token "
                            f"{h.lease.fencing_token})" for h in holdings)
            raise Conflict(f"{resource} is no longer held by the lease with {asked}: "
                           f"{now} holds it now; nothing broken")
        return named

    async def connection_closed(self, connection: object) -> None:
        """Release the connection-bound leases of a connection that has gone."""
        for holding in list(self.table.held.values()):
            if holding.connection is not connection:
                continue
            if holding.lease.bound_to_connection:
                await self._end(holding, LockReleased, reason="disconnected",
                                by=holding.lease.holder)
            else:
                holding.connection = holding.push = None  # no one left to tell; adoptable

    def check_fence(self, fence: Fence) -> Lease:
        """Raise Conflict unless an exclusive lease with this token holds the resource
        now: a lease on it, on a directory it is in, or a glob that matches it; that
        lease."""
        covering = [holding for holding in self.table.covering(check_resource(fence.resource))
                    if not holding.ending and holding.stopping is None
                    and holding.deadline > trio.current_time()]
        mine = [h for h in covering if h.lease.fencing_token == fence.token]
        if mine and mine[0].lease.shared:
            raise Conflict(f"stale fence: token {fence.token} is a shared lease on "
                           f"{mine[0].lease.resource}, which fences no write")
        if mine:
            return mine[0].lease
        if not covering:
            raise Conflict(f"stale fence: {fence.resource} is not held (token {fence.token})")
        raise Conflict(f"stale fence: {fence.resource} is held with token "
                       f"{covering[0].lease.fencing_token}, not {fence.token}")

    def state(self, resource: str) -> LockState:
        return self._line().state(check_resource(resource), overlapping=True)

    def states(self, agent: str | None, prefix: str) -> list[LockState]:
        line = self._line()
        states = [line.state(r) for r in line.resources() if r.startswith(prefix)]
        if agent is not None:
            states = [s for s in states if any(lease.holder == agent for lease in s.leases)
                      or any(w.agent == agent for w in s.waiters)]
        return states


KEEP_ALIVE_RETRY = 1.0
"""Seconds before a lease held while its process lives is tried again after a renewal
that failed (the cluster away, a full disk)."""


def spare_group(holding: Holding) -> None:
    """Mark *holding*'s process group as stopped already: its end stops nothing."""
    if holding.stopping is None:
        holding.stopping = trio.Event()
        holding.stopping.set()


def _holder_of(lease: Lease) -> Caller:
    """The holder of *lease* as the daemon renews it for it: no connection of its own."""
    return Caller(agent_id=lease.holder, uid=-1, pid=lease.holder_pid,
                  connection_id=lease.session)


async def _tell_holder(push: Callable[[bytes], Awaitable[None]], body: bytes) -> None:
    """Best effort: a holder that cannot be told learns it at its next renewal."""
    with trio.move_on_after(5):
        try:
            await push(body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, EngramError):
            pass
