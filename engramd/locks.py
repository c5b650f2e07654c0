"""The lease table: who holds which resource until when, and who waits in line.

Pure bookkeeping on trio's clock; the engine commits every change through the
WAL and calls in here around it. Resources nest (a directory and the files in it,
a glob and what it matches) and leases are exclusive or shared: two leases
*conflict* by :func:`engramd.protocol.resources.conflicts`, and the table finds
the conflicts through an index of the tree of resources (:mod:`engramd.claims`),
in O(depth) for a path. Invariants kept here:

* No two leases held by different sessions conflict (a session's own leases may
  overlap: they never stand in its way), and a grant being written
  (in the WAL, not yet durable) is *reserved*: nothing that conflicts with it is
  granted meanwhile.
* Waiters are served first come, first served: a waiter is granted only when
  nothing held or reserved conflicts with any resource it asks for and no waiter
  that came before it conflicts with it (so a shared request waits behind a
  waiting exclusive one: no writer starves behind a stream of readers). Nothing is
  held while waiting, so requests for overlapping sets in any order cannot
  deadlock each other; a session that holds something and waits may, and the
  wait-for graph (:meth:`LockTable.cycle`) refuses the wait that closes a cycle,
  counting a waiter ahead in line as in the way, as it is.
* Holders and waiters are *sessions* of agents (``Lease.holder`` and
  ``Lease.session`` together), not agents: two scripts of one agent are two
  holders, and the wait-for graph is drawn between sessions.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

import trio

from engramd.claims import Claim, ClaimIndex
from engramd.protocol import Lease, LockState, Waiter
from engramd.protocol.resources import contains, parse

SessionKey = tuple[str, str]
"""``(agent, session)``: one running instance of one agent."""


def describe(agent: str, pid: int) -> str:
    """How a person tells sessions apart: ``alice (pid 4242)``."""
    return f"{agent} (pid {pid})" if pid else agent


@dataclass(eq=False)
class Holding:
    lease: Lease
    deadline: float
    """When the lease expires, on trio's (monotonic) clock."""
    connection: object | None = None
    """The connection that took (or last adopted) it, while that connection is open."""
    push: Callable[[bytes], Awaitable[None]] | None = None
    """Tells the holder's connection about a lost lease."""
    ending: bool = False
    """Its end is built into the batch being written: nothing may end, renew or fence
    with it again (it stays in the table until that end is durable)."""
    stopping: trio.Event | None = None
    """Its process group (``Lease.pgid``) is being stopped before it ends: set once none
    of the group's processes is left. Meanwhile it is held, but ending: no renewal,
    release or fenced write is taken."""
    expiring: bool = False
    """Its expiry is under way (waiting for its process group), not to be begun again."""
    told: bool = False
    """Its holder has been told it lost it (one ``lease.lost`` per lease)."""

    @property
    def holder(self) -> str:
        return describe(self.lease.holder, self.lease.holder_pid)

    @property
    def key(self) -> SessionKey:
        return self.lease.holder, self.lease.session


@dataclass(eq=False)
class Waiting:
    agent: str
    session: str
    pid: int
    resources: list[str]
    grant: object = None
    """What its leases are made of (the lease manager's; the table never looks inside)."""
    turn: trio.Event = field(default_factory=trio.Event)
    """Set when the resources have been reserved for this waiter, or handed over to it."""
    handed_over: bool = False
    """Chosen to follow a holder in the same commit that ends the holder's lease."""
    granted: list[Lease] | None = None
    """The leases a handover granted it, once durable."""
    failure: BaseException | None = None
    """Why the handover that chose it was not written."""
    abandoned: bool = False
    """It stopped waiting (its client left) after a handover had chosen it."""
    shared: bool = False
    """It asks for shared leases."""

    @property
    def key(self) -> SessionKey:
        return self.agent, self.session

    @property
    def holder(self) -> str:
        return describe(self.agent, self.pid)

    @property
    def owner(self) -> object:
        """Whose reservation its turn makes: its grant (the table's own: itself)."""
        return self.grant if self.grant is not None else self


Blocker = Holding | Waiting
"""A session in a request's way: a lease it holds, or a request of it ahead in line."""

Owner = object
"""Whose claim it is: a :class:`Holding`, a :class:`Waiting`, or a grant's reservation."""


def claims_of(resources: Iterable[str], shared: bool, owner: Owner,
              session: SessionKey | None) -> list[Claim]:
    return [Claim(parse(resource), shared, owner, session) for resource in resources]


class LockTable:
    def __init__(self) -> None:
        self.held: dict[str, Holding] = {}
        """Every lease held, by lock id."""
        self.taken = ClaimIndex()
        """The claims of the leases held and of the grants being written."""
        self.lined = ClaimIndex()
        """The claims of the waiters."""
        self.line: dict[Waiting, None] = {}
        """The waiters in the order they came."""
        self.reserved: dict[Owner, list[Claim]] = {}
        """The claims of the grants being written, by grant."""
        self._claims: dict[str, Claim] = {}
        """Lock id -> the claim of its lease."""
        self._on: dict[str, list[Holding]] = {}
        """Resource -> the leases on exactly it (several: shared)."""
        self._waits: dict[Waiting, list[Claim]] = {}
        self._queued: Counter[str] = Counter()
        """Resource -> how many waiters ask for exactly it."""
        self.deadline_changed = trio.Event()

    @property
    def by_lock_id(self) -> dict[str, Holding]:
        return self.held

    # -- holdings -----------------------------------------------------------------

    def install(self, holding: Holding) -> None:
        lease = holding.lease
        old = self.held.get(lease.lock_id)
        if old is not None:
            self.remove(old)
        self.held[lease.lock_id] = holding
        claim = self._claims[lease.lock_id] = Claim(parse(lease.resource), lease.shared,
                                                     holding, holding.key)
        self.taken.add(claim)
        self._on.setdefault(lease.resource, []).append(holding)
        self.deadline_changed.set()

    def remove(self, holding: Holding) -> None:
        lock_id = holding.lease.lock_id
        if self.held.get(lock_id) is not holding:
            return
        del self.held[lock_id]
        self.taken.remove(self._claims.pop(lock_id))
        on = self._on[holding.lease.resource]
        on.remove(holding)
        if not on:
            del self._on[holding.lease.resource]

    def on(self, resource: str) -> list[Holding]:
        """The leases on exactly *resource* (more than one only when shared)."""
        return list(self._on.get(resource, ()))

    def holding_on(self, resource: str) -> Holding | None:
        """The first lease on exactly *resource*, if any."""
        on = self._on.get(resource)
        return on[0] if on else None

    def held_by(self, agent: str) -> list[Holding]:
        return [holding for holding in self.held.values() if holding.lease.holder == agent]

    def held_in(self, session: SessionKey, resources: list[str]) -> Holding | None:
        """The first of *resources* that *session* holds already, if any."""
        for resource in resources:
            for holding in self._on.get(resource, ()):
                if holding.key == session:
                    return holding
        return None

    def holders_in_the_way(self, resource: str, shared: bool = False,
                           session: SessionKey | None = None) -> list[Holding]:
        """The leases held (not by *session*) that conflict with a lease on *resource*."""
        return [claim.owner for claim in self.taken.conflicting(parse(resource), shared)
                if isinstance(claim.owner, Holding) and claim.session != session]

    def covering(self, resource: str) -> list[Holding]:
        """The leases held on *resource* or on what contains it (a directory it is in, a
        glob that matches it or a directory of it): those that fence a write to it."""
        inner = parse(resource)
        return [claim.owner for claim in self.taken.overlapping(inner)
                if isinstance(claim.owner, Holding) and contains(claim.resource, inner)]

    def expired(self, now: float) -> list[Holding]:
        return [holding for holding in self.held.values() if holding.deadline <= now]

    def next_deadline(self) -> float:
        return min((holding.deadline for holding in self.held.values()), default=math.inf)

    # -- waiting --------------------------------------------------------------------

    def free(self, resources: list[str], shared: bool = False,
             session: SessionKey | None = None) -> bool:
        """Nothing held or being granted (but *session*'s) conflicts with leases on
        *resources*."""
        return not any(self.taken.blocked(parse(r), shared, session) for r in resources)

    def can_take(self, resources: list[str], shared: bool = False,
                 session: SessionKey | None = None) -> bool:
        """Free now, with no waiter (of another session) that conflicts ahead."""
        return self.free(resources, shared, session) and not any(
            self.lined.blocked(parse(r), shared, session) for r in resources)

    def reserve(self, owner: Owner, resources: list[str], shared: bool = False,
                session: SessionKey | None = None) -> None:
        """Hold *resources* for the grant *owner* is writing in *session* (until it is
        installed or given back with :meth:`unreserve`)."""
        self.unreserve(owner)
        claims = self.reserved[owner] = claims_of(resources, shared, owner, session)
        for claim in claims:
            self.taken.add(claim)

    def unreserve(self, owner: Owner) -> None:
        for claim in self.reserved.pop(owner, ()):
            self.taken.remove(claim)

    def enqueue(self, waiting: Waiting) -> None:
        claims = self._waits[waiting] = claims_of(waiting.resources, waiting.shared,
                                                  waiting, waiting.key)
        self.line[waiting] = None
        for claim in claims:
            self.lined.add(claim)
        self._queued.update(waiting.resources)

    def dequeue(self, waiting: Waiting) -> None:
        if self.line.pop(waiting, False) is False:
            return
        for claim in self._waits.pop(waiting):
            self.lined.remove(claim)
        self._queued.subtract(waiting.resources)
        for resource in waiting.resources:
            if self._queued[resource] <= 0:
                del self._queued[resource]

    def pump(self) -> None:
        """Reserve resources for every waiter whose turn has come, and wake it."""
        for waiting in self._turns():
            waiting.turn.set()

    def hide(self, holding: Holding) -> Claim | None:
        """Take the claim of *holding* out of the index, to see what its end would let
        go; the caller puts it back (``taken.add``). None when it is not held."""
        claim = self._claims.get(holding.lease.lock_id)
        if claim is not None:
            self.taken.remove(claim)
        return claim

    def successors(self, holding: Holding) -> list[Waiting]:
        """The waiters whose turn comes when *holding* ends, taken out of the line with
        their resources reserved (to be granted in the commit that ends it)."""
        claim = self.hide(holding)
        if claim is None:
            return []
        try:
            chosen = self._turns()
        finally:
            self.taken.add(claim)
        for waiting in chosen:
            waiting.handed_over = True
        return chosen

    def _turns(self) -> list[Waiting]:
        """The waiters, in the order they came, that nothing held or reserved and no one
        ahead of them stands in the way of: reserved for and taken out of the line."""
        if not self.line:
            return []
        ahead = ClaimIndex()  # the waiters passed over so far
        chosen = []
        for waiting in list(self.line):
            claims = self._waits[waiting]
            if waiting.turn.is_set() or any(
                    self.taken.blocked(c.resource, c.shared, waiting.key)
                    or ahead.blocked(c.resource, c.shared, waiting.key) for c in claims):
                for claim in claims:
                    ahead.add(claim)
                continue
            self.dequeue(waiting)
            self.reserve(waiting.owner, waiting.resources, waiting.shared, waiting.key)
            chosen.append(waiting)
        return chosen

    def waiting_count(self, resource: str) -> int:
        return self._queued.get(resource, 0)

    def waiting_in_the_way(self, resource: str, shared: bool = False,
                           session: SessionKey | None = None) -> list[tuple[Waiting, str]]:
        """The waiters (of other sessions) that conflict with a lease on *resource*, in
        the order they came, each with the resource of its that does."""
        found: dict[Waiting, str] = {}
        for claim in self.lined.conflicting(parse(resource), shared):
            if claim.session != session and isinstance(claim.owner, Waiting):
                found.setdefault(claim.owner, claim.resource.text)
        order = {waiting: position for position, waiting in enumerate(self.line)}
        return sorted(found.items(), key=lambda item: order.get(item[0], len(order)))

    # -- the wait-for graph ----------------------------------------------------------

    def cycle(self, session: SessionKey, resources: list[str], shared: bool = False
              ) -> list[tuple[str, Blocker]] | None:
        """The ``(resource, blocker)`` steps back to *session*, if its wait closes a cycle.

        Step one is a resource *session* wants and a session in its way: a holder of a
        lease that conflicts with it, or a waiter ahead of it in line that does (first
        come, first served: that one goes first, so this one waits for it as well). Each
        next step is what that session waits for, and so on until one is *session*.
        """
        order = {waiting: position for position, waiting in enumerate(self.line)}

        def in_the_way(want: Claim, before: int) -> Iterator[Blocker]:
            for claim in self.taken.conflicting(want.resource, want.shared):
                if isinstance(claim.owner, Holding):  # (a grant being written holds
                    yield claim.owner                 # nothing yet)
            for claim in self.lined.conflicting(want.resource, want.shared):
                if isinstance(claim.owner, Waiting) and order[claim.owner] < before:
                    yield claim.owner

        def search(wanted: list[Claim], before: int, path: list[tuple[str, Blocker]],
                   seen: set[SessionKey]) -> list[tuple[str, Blocker]] | None:
            for want in wanted:
                for blocker in list(in_the_way(want, before)):
                    step = [*path, (want.resource.text, blocker)]
                    if blocker.key == session:
                        if not path:
                            continue  # its own lease or request: not in its way
                        return step
                    if blocker.key in seen:
                        continue
                    seen.add(blocker.key)
                    for waiting in self._waits_of(blocker.key):
                        found = search(self._waits[waiting], order[waiting], step, seen)
                        if found:
                            return found
            return None

        return search(claims_of(resources, shared, None, session), len(self.line), [],
                      {session})

    def _waits_of(self, session: SessionKey) -> list[Waiting]:
        return [waiting for waiting in self.line if waiting.key == session]

    # -- views ---------------------------------------------------------------------------

    def state(self, resource: str, *, overlapping: bool = False) -> LockState:
        """Who holds *resource*, who waits for it (and with *overlapping*, the leases on
        other resources that overlap it)."""
        on = self.on(resource)
        queue = [waiting for waiting in self.line if resource in waiting.resources]
        around: list[Lease] = []
        if overlapping:
            around = sorted((claim.owner.lease for claim in self.taken.overlapping(
                parse(resource)) if isinstance(claim.owner, Holding)
                and claim.owner.lease.resource != resource),
                key=lambda lease: (lease.resource, lease.fencing_token))
        return LockState(
            resource=resource, lease=on[0].lease if on else None,
            waiters=[Waiter(agent=w.agent, position=n, resources=list(w.resources),
                            session=w.session, pid=w.pid)
                     for n, w in enumerate(queue, start=1)],
            leases=[holding.lease for holding in on], overlapping=around)

    def resources(self) -> list[str]:
        return sorted(set(self._on) | set(self._queued))

    def with_line(self, line: Iterable[Waiting]) -> LockTable:
        """This table's leases and reservations with another line of waiters (cluster
        mode: every machine's, in ticket order), for the wait-for graph and the views."""
        table = LockTable()
        table.held, table.taken, table.reserved = self.held, self.taken, self.reserved
        table._claims, table._on = self._claims, self._on
        for waiting in line:
            table.enqueue(waiting)
        return table

