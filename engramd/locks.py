"""The lease table: who holds which resource until when, and who waits in line.

Pure bookkeeping on trio's clock; the engine commits every change through the
WAL and calls in here around it. Invariants kept here:

* A resource has at most one holder, and a resource being granted (its grant
  in the WAL, not yet durable) is *reserved*: no one else can take it meanwhile.
* Waiters queue first come, first served on every resource they ask for; a
  waiter is granted only when it is first in line on all of them and they are
  all free, so no partial set is ever held while waiting (no deadlock between
  overlapping multi-resource requests).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import trio

from engramd.protocol import Lease, LockState, Waiter


@dataclass(eq=False)
class Holding:
    lease: Lease
    deadline: float
    """When the lease expires, on trio's (monotonic) clock."""
    session: object | None = None
    """The connection that took it, while that connection is open."""
    push: Callable[[bytes], Awaitable[None]] | None = None
    """Tells the holder's connection about a lost lease."""


@dataclass(eq=False)
class Waiting:
    agent: str
    resources: list[str]
    turn: trio.Event = field(default_factory=trio.Event)
    """Set when the resources have been reserved for this waiter."""


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

    def waiting_count(self, resource: str) -> int:
        return len(self.queues.get(resource, ()))

    # -- the wait-for graph ----------------------------------------------------------

    def cycle(self, agent: str, resources: list[str]) -> list[tuple[str, str, str]] | None:
        """``(waiter, resource, holder)`` steps back to *agent*, if its wait closes a cycle."""

        def holders(of: list[str]) -> Iterator[tuple[str, str]]:
            for resource in of:
                holding = self.held.get(resource)
                if holding is not None:
                    yield resource, holding.lease.holder

        def search(waiter: str, wanted: list[str], path: list[tuple[str, str, str]],
                   seen: set[str]) -> list[tuple[str, str, str]] | None:
            for resource, holder in holders(wanted):
                step = [*path, (waiter, resource, holder)]
                if holder == agent:
                    return step
                if holder in seen:
                    continue
                seen.add(holder)
                for waiting in self._waits_of(holder):
                    found = search(holder, waiting.resources, step, seen)
                    if found:
                        return found
            return None

        return search(agent, resources, [], {agent})

    def _waits_of(self, agent: str) -> list[Waiting]:
        seen: dict[int, Waiting] = {}
        for queue in self.queues.values():
            for waiting in queue:
                if waiting.agent == agent:
                    seen[id(waiting)] = waiting
        return list(seen.values())

    # -- views ---------------------------------------------------------------------------

    def state(self, resource: str) -> LockState:
        holding = self.held.get(resource)
        queue = self.queues.get(resource, ())
        return LockState(
            resource=resource, lease=holding.lease if holding else None,
            waiters=[Waiter(agent=w.agent, position=n, resources=list(w.resources))
                     for n, w in enumerate(queue, start=1)])

    def resources(self) -> list[str]:
        return sorted(set(self.held) | set(self.queues))
