"""What one machine knows of the deployment's leases: the watch of the leases bucket.

Every machine watches the whole bucket (:mod:`.bucket`) and keeps from it the lease
table (who holds what, on every machine, by lock id) and the line (every waiter's
ticket, with an index of what each waits for: :mod:`engramd.claims`).
Each key's last revision seen is the basis of the next compare-and-set on it. The
view only records; what an ended lease means for its holder, and what to do with
a lease this machine granted before a restart, are the lease manager's
(:mod:`.leases`), told through two callbacks.

Every change of a lease the view takes in, from the watch, from a read at the leader
or from this machine's own write (:meth:`LeaseView.wrote`), is news for the machine's
watchers: ``lock.acquired``, ``lock.renewed``, ``lock.released`` (an ``ended`` record:
its reason and who ended it) or ``lock.expired`` (the key gone: the servers' TTL),
handed to ``news`` once per revision, whichever way the view learns of it first. Not
before the watch has shown the bucket once: the leases held then are no news.

For a release that hands its resource over in one write (:mod:`.handover`) the view
says who is next in line (:meth:`LeaseView.next_in_line`), when each ticket was last
seen written, and, for each root, the last revision under it that the watch itself
delivered (:meth:`LeaseView.root_last`): the watch delivers in stream order, so a
batch that expects that revision under the root is stored only if this view has seen
every lease that may conflict with what it grants.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable

import msgspec
import trio
from nats.js.kv import KV_PURGE

from engramd.claims import Claim, ClaimIndex
from engramd.cluster.bridge import AsyncioThread
from engramd.cluster.bucket import (
    LEASE,
    MARKER_TTL,
    TICKET,
    BucketGone,
    Ended,
    Held,
    KeyUpdate,
    LeaseBucket,
    Ticket,
    decode_lease_record,
    decode_ticket,
    holder_token,
    lease_key,
    parse_key,
    root_of_key,
    ticket_key,
)
from engramd.cluster.outage import Patience
from engramd.cluster.tickets import Tickets, checked_ticket
from engramd.grants import Grant, boottime, check_resource
from engramd.locks import Holding, LockTable, Waiting
from engramd.protocol import (
    BadRequest,
    Lease,
    LockAcquired,
    LockExpired,
    LockReleased,
    LockRenewed,
)
from engramd.protocol.model import LockEvent
from engramd.protocol.resources import parse

log = logging.getLogger("engramd.cluster.leases")

OnEnded = Callable[[Holding, str, str], None]
"""``(holding, tell, by)``: a lease ended (``tell``: ``expired`` or ``broken``)."""
OnHanded = Callable[[Holding, str], None]
"""``(holding, waiter)``: a lease handed over to a waiter of this machine, new news."""


class LeaseView:
    RETRY_SECONDS = 0.5

    def __init__(self, table: LockTable, *, machine: str, boot_id: str,
                 ended: OnEnded, found: Callable[[Holding], None],
                 news: Callable[[LockEvent], None] = lambda event: None,
                 handed: OnHanded | None = None, max_ttl: float = math.inf) -> None:
        self.table = table
        self.max_ttl = max_ttl
        """A ticket's ttl is at most this (``locks.max_ttl``), as a request's is."""
        self._said_unreadable: set[str] = set()
        """Keys logged as not engram's (once each)."""
        self.machine = machine
        self.boot_id = boot_id
        self._ended = ended
        self._found = found
        self._news = news
        self._handed = handed
        self.revisions: dict[str, int] = {}
        """Key -> the last revision seen of it (the basis of every compare-and-set)."""
        self.lock_of: dict[str, str] = {}
        """Lease key -> the lock id of the lease it holds now."""
        self._keys: dict[str, str] = {}
        """Lock id -> the key of its lease (the key names the session that took it, which
        adoption may change)."""
        self.tickets: dict[str, Ticket] = {}
        """Waiter -> its ticket (its number resolved), every machine's."""
        self.lined = ClaimIndex()
        """The claims of the tickets (their owner: the waiter)."""
        self._ticket_claims: dict[str, list[Claim]] = {}
        self.synced = trio.Event()
        """Set once the watch has seen every key's last revision."""
        self.changed = trio.Event()
        """Set (and replaced) whenever the view changes."""
        self._markers: deque[tuple[float, str, int]] = deque()
        """(when seen, key, revision) of expiry markers of lease keys, oldest first."""
        self.ticket_seen: dict[str, float] = {}
        """Waiter -> when (trio's clock) the view last saw its ticket written."""
        self.highest = 0
        """The highest revision of the bucket this view has seen (a token used, or
        another key's)."""
        self.delivered: dict[str, dict[str, int]] = {}
        """Root -> lease key -> the revision of it the watch itself delivered last (not
        a read, not this machine's write): see :meth:`root_last`."""

    async def follow(self, bridge: AsyncioThread, bucket: LeaseBucket,
                     connected: Callable[[], Awaitable[None]],
                     floor: Callable[[], int] = lambda: 0) -> None:
        """Watch the bucket for ever, again after the cluster is lost and found. A bucket
        that is not there is made, numbering its revisions after *floor()* and this
        view's highest (see :meth:`.LeaseBucket.open`)."""
        patience = Patience("watching the leases bucket")
        while True:
            try:
                await connected()
                known = max(floor(), self.highest)
                if await bridge.run(functools.partial(bucket.open, known)) and known:
                    log.warning("cluster leases: the leases bucket %s was not there (deleted?)"
                                ": made again, its fencing tokens after %d (the highest this "
                                "machine knows of); the leases it held are gone",
                                bucket.name, known)
                before = await bridge.run(bucket.watch)
                patience.succeeded()
                await self._watch(bridge, bucket, before)
            except Exception as exc:  # the cluster away, or anything else: watch again
                await patience.failed(exc)

    async def _watch(self, bridge: AsyncioThread, bucket: LeaseBucket, before: int) -> None:
        seen: set[str] | None = set()  # keys in the watch's first round
        self.delivered.clear()  # (the new watch delivers every key again)
        while True:
            try:
                updates = await bridge.run(lambda: bucket.next_updates(256, wait=5.0))
            except TimeoutError:
                # A quiet watch, or one of a bucket deleted meanwhile (its consumer went
                # with it, silently): then the watch starts again, which makes it anew.
                if await bridge.run(bucket.gone):
                    raise BucketGone(bucket.name) from None
                continue
            for update in updates:
                if update is None:
                    if seen is not None:
                        self._forget_unseen(seen, before)
                        seen = None
                    self.synced.set()
                    continue
                if seen is not None:
                    seen.add(update.key)
                try:
                    self.apply(update)
                    self._delivered(update)
                except (msgspec.DecodeError, ValueError) as exc:
                    # Once a key: a writer rewriting it (a forged ticket refreshed every
                    # second) would fill every machine's log.
                    if update.key not in self._said_unreadable and len(
                            self._said_unreadable) < 10_000:
                        self._said_unreadable.add(update.key)
                        log.warning("cluster leases: key %s revision %d is not engram's "
                                    "(%s); ignored (and its later revisions alike)",
                                    update.key, update.revision, exc)
            self.wake()

    def wake(self) -> None:
        changed, self.changed = self.changed, trio.Event()
        changed.set()

    def _delivered(self, update: KeyUpdate) -> None:
        """The watch delivered *update* (in stream order, after every revision before)."""
        if update.key.startswith(LEASE + "."):
            keys = self.delivered.setdefault(root_of_key(update.key), {})
            keys[update.key] = max(update.revision, keys.get(update.key, 0))

    def root_last(self, root: str) -> int:
        """The last revision under the root *root* that the watch delivered (0: none).

        If the stream's last message under the root is this one, every message under
        the root that is still stored is this one or older, and the watch, which
        delivers in stream order, has delivered each: the view knows every lease under
        the root. (A revision forgotten, or a message the servers removed since, makes
        it differ from the stream's: a batch that expects it fails, and nothing else.)"""
        return max(self.delivered.get(root, {}).values(), default=0)

    # -- applying ------------------------------------------------------------------------

    def apply(self, update: KeyUpdate) -> None:
        """Bring the table and the line up to *update* (older news is ignored)."""
        if update.revision <= self.revisions.get(update.key, 0):
            return
        self.highest = max(self.highest, update.revision)
        kind, _, name = parse_key(update.key)
        self.revisions[update.key] = update.revision
        if kind == LEASE:
            self._apply_lease(update.key, update)
            if update.operation == KV_PURGE:
                self._markers.append((trio.current_time(), update.key, update.revision))
            self._forget_markers()
        elif kind == TICKET:
            before = self.tickets.get(name)
            self._withdraw(name)
            self.ticket_seen.pop(name, None)
            if not update.deleted and update.value:
                ticket = checked_ticket(decode_ticket(update.value), update.revision,
                                        self.max_ttl, before)
                self._enter(name, ticket)
                self.ticket_seen[name] = trio.current_time()
            else:  # a waiter's key is never written again once withdrawn
                del self.revisions[update.key]

    def key_of(self, lease: Lease) -> str:
        """The key of *lease* (of the session that took it)."""
        return self._keys.get(lease.lock_id) or lease_key(
            lease.resource, holder_token(lease.holder, lease.session))

    def holding_at(self, key: str) -> Holding | None:
        """The lease the key holds now, as far as the view knows."""
        lock_id = self.lock_of.get(key)
        return None if lock_id is None else self.table.held.get(lock_id)

    def placed(self, key: str, lock_id: str) -> None:
        """*key* holds the lease *lock_id* (written here, perhaps not yet watched)."""
        self.lock_of[key] = lock_id
        self._keys[lock_id] = key

    def wrote(self, key: str, revision: int, record: Held | Ended, lease: Lease) -> None:
        """This machine wrote *record* (of *lease*) as *key*'s *revision*: the watch's
        echo of it is old news. (If the watch showed it first, it is applied already.)"""
        if revision <= self.revisions.get(key, 0):
            return
        self.revisions[key] = revision
        self.highest = max(self.highest, revision)
        if isinstance(record, Held):
            self.placed(key, lease.lock_id)
            # Its first write (token 0) is the grant; the others renew it.
            self._tell_held(record.lease, revision, renewed=bool(record.lease.fencing_token))
        else:
            self._tell(LockReleased(seq=0, ts=_now(), context_id="", lease=lease,
                                    reason=record.reason, by=record.by))

    def _tell(self, event: LockEvent) -> None:
        if self.synced.is_set():
            self._news(event)

    def _tell_held(self, lease: Lease, revision: int, *, renewed: bool) -> None:
        if not lease.fencing_token:
            lease = msgspec.structs.replace(lease, fencing_token=revision)
        if renewed:
            self._tell(LockRenewed(seq=0, ts=_now(), context_id="", lease=lease))
        else:
            self._tell(LockAcquired(seq=0, ts=lease.acquired_at, context_id="", lease=lease))

    def _tell_expired(self, holding: Holding) -> None:
        self._tell(LockExpired(seq=0, ts=_now(), context_id="", lease=holding.lease))

    def _apply_lease(self, key: str, update: KeyUpdate) -> None:
        current = self.holding_at(key)
        record = None if update.deleted or not update.value else decode_lease_record(
            update.value)
        if isinstance(record, Held):
            lease = record.lease
            if not lease.fencing_token:
                lease = msgspec.structs.replace(lease, fencing_token=update.revision)
            if current is not None and current.lease.lock_id == lease.lock_id:
                current.lease = lease
                if lease.machine != self.machine:
                    current.deadline = trio.current_time() + lease.ttl
                self._tell_held(lease, update.revision, renewed=True)
                return
            if current is not None:  # (its end fell between two revisions the watch showed)
                self._ended(current, "expired", "the cluster")
                self._tell_expired(current)
            self.placed(key, lease.lock_id)
            holding = self.table.held.get(lease.lock_id)  # (granted here: held already)
            if holding is None:
                holding = Holding(lease, self._deadline_of(lease))
                self.table.install(holding)
                if lease.machine == self.machine:
                    if (record.waiter and self._handed is not None
                            and self.synced.is_set()):
                        self._handed(holding, record.waiter)  # (it sets the deadline)
                    else:
                        self._found(holding)
            # A lease new to the view is news of a grant (even one renewed since).
            self._tell_held(holding.lease, update.revision, renewed=False)
        else:
            lock_id = self.lock_of.pop(key, None)
            if lock_id is not None:
                self._keys.pop(lock_id, None)
            if current is not None:
                if isinstance(record, Ended):
                    self._ended(current, "broken", record.by)
                    self._tell(LockReleased(seq=0, ts=_now(), context_id="",
                                            lease=current.lease, reason=record.reason,
                                            by=record.by))
                else:
                    self._ended(current, "expired", "the cluster")
                    self._tell_expired(current)

    def seen(self, key: str, found: KeyUpdate | None) -> None:
        """Apply a read of the lease key *key* (None: the key has no message)."""
        if found is not None:
            self.apply(found)
            return
        self.revisions[key] = 0
        current = self.holding_at(key)
        lock_id = self.lock_of.pop(key, None)
        if lock_id is not None:
            self._keys.pop(lock_id, None)
        if current is not None:
            self._ended(current, "expired", "the cluster")
            self._tell_expired(current)

    def _deadline_of(self, lease: Lease) -> float:
        """When a lease seen in the watch stops counting here, on trio's clock."""
        now = trio.current_time()
        if lease.machine == self.machine and lease.boot_id == self.boot_id and self.boot_id:
            return now + max(0.0, lease.deadline_boottime - boottime())
        return now + lease.ttl

    # -- the line of tickets ----------------------------------------------------------------

    def _enter(self, waiter: str, ticket: Ticket) -> None:
        # Checked as a request's resources are, before anything is kept: a ticket that
        # is not engram's (written by something else with the cluster's credentials)
        # must leave no trace in the line, where every lease command would meet it.
        if not ticket.resources:
            raise ValueError("a ticket for no resource")
        try:
            claims = [Claim(parse(check_resource(resource)), ticket.shared, waiter,
                            (ticket.agent, ticket.session))
                      for resource in ticket.resources]
        except BadRequest as exc:
            raise ValueError(str(exc)) from None
        self.tickets[waiter] = ticket
        self._ticket_claims[waiter] = claims
        for claim in claims:
            self.lined.add(claim)

    def age(self, now: float) -> None:
        """Take out of the line the tickets not seen written again within
        :attr:`.Tickets.STALE` (on trio's clock *now*): their waiters' machines keep
        writing them every refresh while they wait."""
        stale = [waiter for waiter, seen in self.ticket_seen.items()
                 if now - seen > Tickets.STALE]
        for waiter in stale:
            ticket = self.tickets.get(waiter)
            log.info("cluster leases: the ticket of %s (machine %.100s) for %.200s was not "
                     "written again within %gs: out of the line", waiter,
                     ticket.machine if ticket else "?",
                     ", ".join(ticket.resources) if ticket else "?", Tickets.STALE)
            self._withdraw(waiter)
            del self.ticket_seen[waiter]
        if stale:
            self.wake()

    async def age_forever(self) -> None:
        while True:
            await trio.sleep(Tickets.REFRESH)
            self.age(trio.current_time())

    def consumed(self, waiter: str) -> None:
        """*waiter*'s ticket was consumed by the batch that handed its leases over (its
        machine knows before its watch shows the ticket's revision)."""
        self._withdraw(waiter)
        self.ticket_seen.pop(waiter, None)

    def _withdraw(self, waiter: str) -> None:
        self.tickets.pop(waiter, None)
        for claim in self._ticket_claims.pop(waiter, ()):
            self.lined.remove(claim)

    # -- forgetting ------------------------------------------------------------------------

    def _forget_markers(self) -> None:
        """Forget the revisions of lease keys whose expiry markers the servers have
        dropped by now (the key then has no message), so keys used once are not
        remembered for ever."""
        horizon = trio.current_time() - MARKER_TTL
        while self._markers and self._markers[0][0] < horizon:
            _, key, revision = self._markers.popleft()
            if self.revisions.get(key) == revision:
                del self.revisions[key]
            delivered = self.delivered.get(root_of_key(key), {})
            if delivered.get(key) == revision:
                del delivered[key]

    def _forget_unseen(self, seen: set[str], before: int) -> None:
        """After a new watch's first round: what was known from before the watch and
        not shown is gone (it ended while this machine was not watching, and its
        markers with it)."""

        def gone(key: str) -> bool:
            return key not in seen and self.revisions.get(key, 0) <= before

        for waiter in [w for w in self.tickets if gone(ticket_key(w))]:
            self._withdraw(waiter)
            self.revisions.pop(ticket_key(waiter), None)
            self.ticket_seen.pop(waiter, None)
        for holding in list(self.table.held.values()):
            key = self.key_of(holding.lease)
            if gone(key):
                self.revisions.pop(key, None)
                self.lock_of.pop(key, None)
                self._keys.pop(holding.lease.lock_id, None)
                self._ended(holding, "expired", "the cluster")
                self._tell_expired(holding)

    # -- the line ----------------------------------------------------------------------------

    def line(self) -> LockTable:
        """The table with every machine's waiters in line, in ticket order."""
        return self.table.with_line([
            Waiting(t.agent, t.session, t.pid, t.resources, shared=t.shared)
            for t in sorted(self.tickets.values(), key=lambda t: t.number)])

    def free(self, grant: Grant) -> bool:
        """Nobody (but the grant's own session) holds what conflicts with the grant,
        nobody here is taking it, nobody waits for it, here or elsewhere."""
        resources, shared, session = grant.resources, grant.shared, grant.key
        return self.table.can_take(resources, shared, session) and not any(
            self.lined.blocked(parse(r), shared, session) for r in resources)

    def turn(self, waiter: str, number: int, grant: Grant) -> bool:
        """Whether the waiter with ticket *number* may take the grant's resources now:
        nothing conflicting is held, and no conflicting ticket is older."""
        return self._turn(waiter, number, grant.resources, grant.shared, grant.key)

    def _turn(self, waiter: str, number: int, resources: list[str], shared: bool,
              session: tuple[str, str]) -> bool:
        if not self.table.free(resources, shared, session):
            return False
        return not any(
            claim.owner != waiter and claim.session != session
            and self.tickets[str(claim.owner)].number < number
            for resource in resources
            for claim in self.lined.conflicting(parse(resource), shared))

    def next_in_line(self, holding: Holding) -> list[tuple[str, Ticket]]:
        """The waiters (``(waiter, ticket)``, in ticket order), whatever their machine,
        whose turn comes when *holding* ends: those it stands in the way of that
        :meth:`turn` would then let go (several readers behind a writer, files of a
        directory). A session's own lease is never in its way."""
        lease = holding.lease
        waiters = {str(claim.owner) for claim in self.lined.conflicting(
            parse(lease.resource), lease.shared) if claim.session != holding.key}
        if not waiters:
            return []
        hidden = self.table.hide(holding)
        try:
            return [(waiter, ticket) for waiter, ticket in sorted(
                ((w, self.tickets[w]) for w in waiters), key=lambda item: item[1].number)
                if self._turn(waiter, ticket.number, ticket.resources, ticket.shared,
                              (ticket.agent, ticket.session))]
        finally:
            if hidden is not None:
                self.table.taken.add(hidden)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
