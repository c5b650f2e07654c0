"""The lease table: who holds which resource until when, and who waits in line.

Pure bookkeeping on trio's clock; the engine commits every change through the
WAL and calls in here around it. Invariants kept here:

* A resource has at most one holder, and a resource being granted (its grant
  in the WAL, not yet durable) is *reserved*: no one else can take it meanwhile.
* Waiters queue first come, first served on every resource they ask for; a
  waiter is granted only when it is first in line on all of them and they are
  all free, so no partial set is ever held while waiting (no deadlock between
  overlapping multi-resource requests).
* Holders and waiters are *sessions* of agents (``Lease.holder`` and
  ``Lease.session`` together), not agents: two scripts of one agent are two
  holders, and the wait-for graph is drawn between sessions.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from engramd.protocol import Lease, LockState, Waiter

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

    @property
    def key(self) -> SessionKey:
        return self.agent, self.session


class LockTable:
    def __init__(self) -> None:
        self.held: dict[str, Holding] = {}
        self.by_lock_id: dict[str, Holding] = {}
        self.reserved: set[str] = set()
        self.queues: dict[str, collections.deque[Waiting]] = {}
        self.deadline_changed = trio.Event()

    # -- holdings -----------------------------------------------------------------

    def install(self, holding: Holding) -> None:
        old = self.held.get(holding.lease.resource)
        if old is not None:
            self.by_lock_id.pop(old.lease.lock_id, None)
        self.held[holding.lease.resource] = holding
        self.by_lock_id[holding.lease.lock_id] = holding
        self.reserved.discard(holding.lease.resource)
        self.deadline_changed.set()

    def remove(self, holding: Holding) -> None:
        if self.held.get(holding.lease.resource) is holding:
            del self.held[holding.lease.resource]
        self.by_lock_id.pop(holding.lease.lock_id, None)

    def held_by(self, agent: str) -> list[Holding]:
        return [holding for holding in self.held.values() if holding.lease.holder == agent]

    def held_in(self, session: SessionKey, resources: list[str]) -> Holding | None:
        """The first of *resources* that *session* holds already, if any."""
        for resource in resources:
            holding = self.held.get(resource)
            if holding is not None and holding.key == session:
                return holding
        return None

    def expired(self, now: float) -> list[Holding]:
        return [holding for holding in self.held.values() if holding.deadline <= now]

    def next_deadline(self) -> float:
        return min((holding.deadline for holding in self.held.values()), default=math.inf)

    # -- waiting --------------------------------------------------------------------

    def free(self, resource: str) -> bool:
        return resource not in self.held and resource not in self.reserved

    def first_in_line(self, waiting: Waiting) -> bool:
        return all(not self.queues.get(r) or self.queues[r][0] is waiting
                   for r in waiting.resources)

    def can_take(self, resources: list[str]) -> bool:
        """Free now, with no one waiting ahead."""
        return all(self.free(r) and not self.queues.get(r) for r in resources)

    def reserve(self, resources: list[str]) -> None:
        self.reserved.update(resources)

    def unreserve(self, resources: list[str]) -> None:
        self.reserved.difference_update(resources)

    def enqueue(self, waiting: Waiting) -> None:
        for resource in waiting.resources:
            self.queues.setdefault(resource, collections.deque()).append(waiting)

    def dequeue(self, waiting: Waiting) -> None:
        for resource in waiting.resources:
            queue = self.queues.get(resource)
            if queue is not None and waiting in queue:
                queue.remove(waiting)
                if not queue:
                    del self.queues[resource]

    def pump(self) -> None:
        """Reserve resources for every waiter whose turn has come, and wake it."""
        for queue in list(self.queues.values()):
            if not queue:
                continue
            waiting = queue[0]
            if waiting.turn.is_set():
                continue
            if self.first_in_line(waiting) and all(self.free(r) for r in waiting.resources):
                self.dequeue(waiting)
                self.reserve(waiting.resources)
                waiting.turn.set()

    def successor(self, holding: Holding) -> Waiting | None:
        """The waiter whose turn comes when *holding* ends, taken out of the line with its
        resources reserved; None when no one is first in line with all else free."""
        resource = holding.lease.resource
        queue = self.queues.get(resource)
        if not queue:
            return None
        waiting = queue[0]
        others_free = all(r == resource or self.free(r) for r in waiting.resources)
        if waiting.turn.is_set() or not self.first_in_line(waiting) or not others_free:
            return None
        self.dequeue(waiting)
        self.reserve(waiting.resources)
        waiting.handed_over = True
        return waiting

    def waiting_count(self, resource: str) -> int:
        return len(self.queues.get(resource, ()))

    # -- the wait-for graph ----------------------------------------------------------

    def cycle(self, session: SessionKey, resources: list[str]
              ) -> list[tuple[str, Holding]] | None:
        """The ``(resource, holding)`` steps back to *session*, if its wait closes a cycle.

        Step one is a resource *session* wants and who holds it; each next step is
        a resource that holder waits for, and so on until a holder is *session*.
        """

        def search(wanted: list[str], path: list[tuple[str, Holding]],
                   seen: set[SessionKey]) -> list[tuple[str, Holding]] | None:
            for resource in wanted:
                holding = self.held.get(resource)
                if holding is None:
                    continue
                step = [*path, (resource, holding)]
                holder = holding.key
                if holder == session:
                    return step
                if holder in seen:
                    continue
                seen.add(holder)
                for waiting in self._waits_of(holder):
                    found = search(waiting.resources, step, seen)
                    if found:
                        return found
            return None

        return search(resources, [], {session})

    def _waits_of(self, session: SessionKey) -> list[Waiting]:
        seen: dict[int, Waiting] = {}
        for queue in self.queues.values():
            for waiting in queue:
                if waiting.key == session:
                    seen[id(waiting)] = waiting
        return list(seen.values())

    # -- views ---------------------------------------------------------------------------

    def state(self, resource: str) -> LockState:
        holding = self.held.get(resource)
        queue = self.queues.get(resource, ())
        return LockState(
            resource=resource, lease=holding.lease if holding else None,
            waiters=[Waiter(agent=w.agent, position=n, resources=list(w.resources),
                            session=w.session, pid=w.pid)
                     for n, w in enumerate(queue, start=1)])

    def resources(self) -> list[str]:
        return sorted(set(self.held) | set(self.queues))
