"""What one machine knows of the deployment's leases: the watch of the leases bucket.

Every machine watches the whole bucket (:mod:`.bucket`) and keeps from it the lease
table (who holds what, on every machine) and the line (every waiter's ticket).
Each key's last revision seen is the basis of the next compare-and-set on it. The
view only records; what an ended lease means for its holder, and what to do with
a lease this machine granted before a restart, are the lease manager's
(:mod:`.leases`), told through two callbacks.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
import trio
from nats.js.kv import KV_PURGE

from engramd.cluster.bridge import AsyncioThread
from engramd.cluster.bucket import (
    LEASE,
    MARKER_TTL,
    TICKET,
    Ended,
    Held,
    KeyUpdate,
    LeaseBucket,
    Ticket,
    decode_lease_record,
    decode_ticket,
    lease_key,
    parse_key,
    ticket_key,
)
from engramd.grants import boottime
from engramd.locks import Holding, LockTable, Waiting
from engramd.protocol import Lease

log = logging.getLogger("engramd.cluster.leases")

OnEnded = Callable[[Holding, str, str], None]
"""``(holding, tell, by)``: a lease ended (``tell``: ``expired`` or ``broken``)."""


class LeaseView:
    RETRY_SECONDS = 0.5

    def __init__(self, table: LockTable, *, machine: str, boot_id: str,
                 ended: OnEnded, found: Callable[[Holding], None]) -> None:
        self.table = table
        self.machine = machine
        self.boot_id = boot_id
        self._ended = ended
        self._found = found
        self.revisions: dict[str, int] = {}
        """Key -> the last revision seen of it (the basis of every compare-and-set)."""
        self.tickets: dict[str, dict[str, Ticket]] = {}
        """Resource -> waiter -> its ticket (its number resolved), every machine's."""
        self.synced = trio.Event()
        """Set once the watch has seen every key's last revision."""
        self.changed = trio.Event()
        """Set (and replaced) whenever the view changes."""
        self._markers: deque[tuple[float, str, int]] = deque()
        """(when seen, key, revision) of expiry markers of lease keys, oldest first."""

    async def follow(self, bridge: AsyncioThread, bucket: LeaseBucket,
                     connected: Callable[[], Awaitable[None]]) -> None:
        """Watch the bucket for ever, again after the cluster is lost and found."""
        while True:
            try:
                await connected()
                await bridge.run(bucket.open)
                before = await bridge.run(bucket.watch)
                await self._watch(bridge, bucket, before)
            except (nats.errors.Error, OSError) as exc:
                log.warning("cluster leases: %s; watching again", exc or type(exc).__name__)
                await trio.sleep(self.RETRY_SECONDS)

    async def _watch(self, bridge: AsyncioThread, bucket: LeaseBucket, before: int) -> None:
        seen: set[str] | None = set()  # keys in the watch's first round
        while True:
            try:
                updates = await bridge.run(lambda: bucket.next_updates(256, wait=5.0))
            except TimeoutError:
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
                except (msgspec.DecodeError, ValueError) as exc:
                    log.warning("cluster leases: key %s revision %d is not engram's (%s); "
                                "ignored", update.key, update.revision, exc)
            self.wake()

    def wake(self) -> None:
        changed, self.changed = self.changed, trio.Event()
        changed.set()

    # -- applying ------------------------------------------------------------------------

    def apply(self, update: KeyUpdate) -> None:
        """Bring the table and the line up to *update* (older news is ignored)."""
        if update.revision <= self.revisions.get(update.key, 0):
            return
        self.revisions[update.key] = update.revision
        kind, resource, waiter = parse_key(update.key)
        if kind == LEASE:
            self._apply_lease(resource, update)
            if update.operation == KV_PURGE:
                self._markers.append((trio.current_time(), update.key, update.revision))
            self._forget_markers()
        elif kind == TICKET:
            line = self.tickets.setdefault(resource, {})
            line.pop(waiter, None)
            if not update.deleted and update.value:
                ticket = decode_ticket(update.value)
                line[waiter] = ticket if ticket.number else msgspec.structs.replace(
                    ticket, number=update.revision)
            else:  # a waiter's key is never written again once withdrawn
                del self.revisions[update.key]
            if not line:
                del self.tickets[resource]

    def _apply_lease(self, resource: str, update: KeyUpdate) -> None:
        current = self.table.held.get(resource)
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
                return
            if current is not None:
                self._ended(current, "expired", "the cluster")
            holding = Holding(lease, self._deadline_of(lease))
            self.table.install(holding)
            if lease.machine == self.machine:
                self._found(holding)
        elif current is not None:
            if isinstance(record, Ended):
                self._ended(current, "broken", record.by)
            else:
                self._ended(current, "expired", "the cluster")

    def seen(self, resource: str, found: KeyUpdate | None) -> None:
        """Apply a read of the lease key of *resource* (None: the key has no message)."""
        if found is not None:
            self.apply(found)
            return
        self.revisions[lease_key(resource)] = 0
        current = self.table.held.get(resource)
        if current is not None:
            self._ended(current, "expired", "the cluster")

    def _deadline_of(self, lease: Lease) -> float:
        """When a lease seen in the watch stops counting here, on trio's clock."""
        now = trio.current_time()
        if lease.machine == self.machine and lease.boot_id == self.boot_id and self.boot_id:
            return now + max(0.0, lease.deadline_boottime - boottime())
        return now + lease.ttl

    # -- forgetting ------------------------------------------------------------------------

    def _forget_markers(self) -> None:
        """Forget the revisions of lease keys whose expiry markers the servers have
        dropped by now (the key then has no message: a write expects 0), so resources
        used once are not remembered for ever."""
        horizon = trio.current_time() - MARKER_TTL
        while self._markers and self._markers[0][0] < horizon:
            _, key, revision = self._markers.popleft()
            if self.revisions.get(key) == revision:
                del self.revisions[key]

    def _forget_unseen(self, seen: set[str], before: int) -> None:
        """After a new watch's first round: what was known from before the watch and
        not shown is gone (it ended while this machine was not watching, and its
        markers with it)."""

        def gone(key: str) -> bool:
            return key not in seen and self.revisions.get(key, 0) <= before

        for resource, line in list(self.tickets.items()):
            for waiter in [w for w in line if gone(ticket_key(resource, w))]:
                del line[waiter]
                self.revisions.pop(ticket_key(resource, waiter), None)
            if not line:
                del self.tickets[resource]
        for resource, holding in list(self.table.held.items()):
            if gone(lease_key(resource)):
                self.revisions.pop(lease_key(resource), None)
                self._ended(holding, "expired", "the cluster")

    # -- the line ----------------------------------------------------------------------------

    def line(self) -> LockTable:
        """The table with every machine's waiters in line, in ticket order."""
        line = LockTable()
        line.held, line.reserved = self.table.held, self.table.reserved
        for resource, tickets in self.tickets.items():
            line.queues[resource] = deque(
                Waiting(t.agent, t.session, t.pid, t.resources)
                for t in sorted(tickets.values(), key=lambda t: t.number))
        return line

    def free(self, resources: list[str]) -> bool:
        """Nobody holds them, nobody here is taking them, nobody waits for them."""
        return all(self.table.free(r) and not self.tickets.get(r)
                   and not self.table.queues.get(r) for r in resources)

    def turn(self, waiter: str, number: int, resources: list[str]) -> bool:
        """Whether the waiter with ticket *number* may take *resources* now."""
        return all(self.table.free(r) and all(
            t.number >= number for w, t in self.tickets.get(r, {}).items() if w != waiter)
            for r in resources)
