"""Leases on paths, directories and globs, exclusive and shared, in the lease manager.

The claim index against brute force (every verdict is the rule's), then a property
test over the lease manager (its table, line and handovers as they run in engramd,
over a journal that commits at once, on trio's virtual clock):
random sets of paths, directories, globs and modes, holders coming (at once or
waiting in line) and going (released, expired, giving up). After every step:

* no two leases of different sessions conflict;
* first come, first served: no one was granted while an earlier waiter that
  conflicts with it still waits, and no waiter waits that nothing stands in front of;
* the guard's verdict equals the manager's for every pair: a lease stands in the way
  of an edit of a file in the guard's eyes (``resources.covers``) exactly when the
  manager refuses another session an exclusive lease on that file because of it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engram_cli.client import paths
from engramd.caller import Caller
from engramd.claims import Claim, ClaimIndex
from engramd.leases import LeaseManager
from engramd.protocol import AcquireLock, Lease, LockAcquired, LockHeld
from engramd.protocol import resources as names
from engramd.wal.record import Entry

T = TypeVar("T")

REPO = "file:github.com/t/r:"
OTHER = "file:/home/t/other/"
PATHS = [REPO + "/".join(parts) + slash
         for size in range(1, 4) for parts in itertools.product("ab", repeat=size)
         for slash in ("", "/")]
GLOBS = [REPO + pattern for pattern in ("*", "a/*", "a/**", "**/b", "b/?", "a/b*", "*/a")]
RESOURCES = [REPO, *PATHS, *GLOBS, OTHER + "a", OTHER + "a/b", "deploy:prod"]
FILES = [REPO + "/".join(parts) for size in range(1, 4)
         for parts in itertools.product("ab", repeat=size)] + [OTHER + "a/b"]


# -- the index ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(claims=st.lists(st.tuples(st.sampled_from(RESOURCES), st.booleans(),
                                 st.sampled_from("xyz")), max_size=12),
       probe=st.sampled_from(RESOURCES), shared=st.booleans(),
       removed=st.sets(st.integers(0, 11)))
def test_the_index_finds_exactly_what_the_rule_says(
        claims: list[tuple[str, bool, str]], probe: str, shared: bool,
        removed: set[int]) -> None:
    index = ClaimIndex()
    made = [Claim(names.parse(r), s, n, (who, who)) for n, (r, s, who) in enumerate(claims)]
    for claim in made:
        index.add(claim)
    for n in sorted(removed):
        if n < len(made):
            index.remove(made[n])
    kept = [claim for n, claim in enumerate(made) if n not in removed]
    assert len(index) == len(kept)
    wanted = names.parse(probe)
    expected = {claim.owner for claim in kept if names.conflicts(
        claim.resource, wanted, a_shared=claim.shared, b_shared=shared)}
    assert {claim.owner for claim in index.conflicting(wanted, shared)} == expected
    assert index.blocked(wanted, shared) == bool(expected)
    mine = ("x", "x")
    assert index.blocked(wanted, shared, mine) == any(
        claim.session != mine for claim in kept if claim.owner in expected)
    assert {claim.owner for claim in index.overlapping(wanted)} == {
        claim.owner for claim in kept if names.overlaps(claim.resource, wanted)}


# -- the manager ---------------------------------------------------------------------------


@dataclass
class Request:
    number: int
    who: int
    resources: list[str]
    shared: bool
    leases: list[Lease] = field(default_factory=list)
    done: bool = False


@dataclass
class World:
    leases: LeaseManager
    callers: list[Caller]
    requests: list[Request] = field(default_factory=list)
    waiting: dict[int, Request] = field(default_factory=dict)
    granted_so_far: set[int] = field(default_factory=set)
    most_held: int = 0

    def session(self, who: int) -> tuple[str, str]:
        caller = self.callers[who]
        return caller.agent_id, caller.connection_id


def conflict(a: Request, b: Request) -> bool:
    return any(names.conflicts(x, y, a_shared=a.shared, b_shared=b.shared)
               for x in a.resources for y in b.resources)


def check(world: World) -> None:
    table = world.leases.table
    held = list(table.held.values())
    world.most_held = max(world.most_held, len(held))
    # No two leases of different sessions conflict.
    for one, other in itertools.combinations(held, 2):
        if one.key != other.key:
            assert not names.conflicts(one.lease.resource, other.lease.resource,
                                       a_shared=one.lease.shared, b_shared=other.lease.shared), \
                (one.lease.resource, other.lease.resource)
    # First come, first served.
    waiting = sorted(world.waiting.values(), key=lambda r: r.number)
    newly = [r for r in world.requests if r.leases and r.number not in world.granted_so_far]
    for granted in newly:
        world.granted_so_far.add(granted.number)
        for ahead in waiting:
            assert not (ahead.number < granted.number and ahead.who != granted.who
                        and conflict(ahead, granted)), (ahead, granted)
    for n, request in enumerate(waiting):
        in_the_way = any(
            holding.key != world.session(request.who) and names.conflicts(
                holding.lease.resource, resource, a_shared=holding.lease.shared,
                b_shared=request.shared)
            for holding in held for resource in request.resources) or any(
            ahead.who != request.who and conflict(ahead, request) for ahead in waiting[:n])
        assert in_the_way, f"{request} waits with nothing in its way"
    # The guard's verdict (the function the hooks call) equals the manager's, lease by
    # lease, file by file.
    leases = [holding.lease for holding in held]
    for path in FILES:
        guard = {lease.lock_id for lease in paths.in_the_way(leases, "probe", path)}
        manager = {holding.lease.lock_id
                   for holding in table.holders_in_the_way(path, False, ("probe", "probe"))}
        assert guard == manager, path


acquires = st.tuples(st.just("acquire"), st.integers(0, 2),
                     st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=2, unique=True),
                     st.booleans(), st.sampled_from([0, 30, None, None]),
                     st.sampled_from([5, 600, 600]))
operations = st.lists(st.one_of(
    acquires, acquires, acquires, acquires,
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("advance"), st.sampled_from([1, 6, 31])),
    st.tuples(st.just("probe"), st.sampled_from(FILES))), min_size=5, max_size=40)


class Journal:
    """Commits at once, in order (the lease manager's only use of the group committer)."""

    def __init__(self) -> None:
        self.seq = 0
        self.entries: list[Entry] = []

    async def commit(self, build: Callable[[int, dt.datetime], tuple[Entry | None, T]]) -> T:
        await trio.lowlevel.checkpoint()
        entry, result = build(self.seq + 1, dt.datetime.now(dt.UTC))
        if entry is not None:
            self.seq = entry.last_seq
            self.entries.append(entry)
        return result


@settings(max_examples=int(os.environ.get("ENGRAM_LEASE_PATHS_EXAMPLES", "600")),
          deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=operations)
def test_random_holders_on_paths_directories_and_globs_keep_the_rule(
        steps: list[tuple[Any, ...]]) -> None:
    trio.run(run_steps, steps, clock=trio.testing.MockClock(autojump_threshold=0))


async def run_steps(steps: list[tuple[Any, ...]]) -> None:
    journal = Journal()
    leases = LeaseManager(None, journal, default_ttl=60, max_ttl=3600,  # type: ignore[arg-type]
                          max_per_agent=1000, max_waiters=1000)
    callers = [Caller(agent_id=agent, uid=0, pid=n + 1, connection_id=f"conn:{n + 1}@t")
               for n, agent in enumerate(["ann", "bob", "cat"])]
    world = World(leases, callers)
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        for step in steps:
            await do(world, nursery, step)
            await trio.testing.wait_all_tasks_blocked()
            check(world)
        tokens = [event.seq for entry in journal.entries for event in entry.events]
        assert tokens == sorted(set(tokens))
        event(f"granted: {sum(bool(r.leases) for r in world.requests) // 5 * 5}+")
        event(f"most held at once: {world.most_held // 2 * 2}+")
        handovers = sum(1 for entry in journal.entries if len(entry.events) > 1
                        and not isinstance(entry.events[0], LockAcquired))
        event(f"handovers: {min(handovers, 3)}")
        nursery.cancel_scope.cancel()


async def do(world: World, nursery: trio.Nursery, step: tuple[Any, ...]) -> None:
    kind = step[0]
    if kind == "acquire":
        _, who, resources, shared, wait, ttl = step
        request = Request(len(world.requests), who, resources, shared)
        world.requests.append(request)
        nursery.start_soon(acquire, world, request, wait, ttl)
    elif kind == "release":
        held = sorted(world.leases.table.held.values(), key=lambda h: h.lease.lock_id)
        if held:
            holding = held[step[1] % len(held)]
            caller = next(c for c in world.callers if c.agent_id == holding.lease.holder)
            await world.leases.release(holding.lease.lock_id, caller)
    elif kind == "advance":
        await trio.sleep(step[1])
    elif kind == "probe":  # a try-lock by a session that holds nothing
        probe = Caller(agent_id="probe", uid=0, pid=99, connection_id="conn:99@t")
        path = step[1]
        expected_free = world.leases.table.can_take([path], False, ("probe", "conn:99@t"))
        try:
            (lease,) = await world.leases.acquire(AcquireLock(resources=[path], ttl=60,
                                                              wait=0), probe)
        except LockHeld:
            assert not expected_free
            assert world.leases.table.holders_in_the_way(path) or world.leases.table.lined
        else:
            assert expected_free
            assert not any(names.covers(h.lease.resource, path)
                           for h in world.leases.table.held.values() if h.lease is not lease
                           and h.lease.holder != "probe")
            await world.leases.release(lease.lock_id, probe)


async def acquire(world: World, request: Request, wait: float | None, ttl: float) -> None:
    caller = world.callers[request.who]
    world.waiting[request.number] = request
    try:
        request.leases = await world.leases.acquire(AcquireLock(
            resources=request.resources, shared=request.shared, wait=wait, ttl=ttl), caller)
    except Exception:  # held (wait 0), timed out, deadlock refused, asked again
        pass
    finally:
        world.waiting.pop(request.number, None)
        request.done = True


def test_the_generated_names_are_canonical() -> None:
    for resource in RESOURCES:
        assert names.parse(resource).text == resource


# -- deadlock refusal and fencing across the hierarchy ------------------------------------


def manager() -> tuple[LeaseManager, list[Caller]]:
    leases = LeaseManager(None, Journal(), default_ttl=60, max_ttl=3600,  # type: ignore[arg-type]
                          max_per_agent=100, max_waiters=100)
    return leases, [Caller(agent_id=agent, uid=0, pid=n + 1, connection_id=f"conn:{n + 1}@t")
                    for n, agent in enumerate(["ann", "bob", "cat"])]


async def test_a_wait_that_closes_a_cycle_through_directories_is_refused(
        autojump_clock: trio.abc.Clock) -> None:
    from engramd.protocol import Deadlock

    leases, (ann, bob, _) = manager()
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        await leases.acquire(AcquireLock(resources=[REPO + "a/x"]), ann)
        await leases.acquire(AcquireLock(resources=[REPO + "b/"]), bob)
        nursery.start_soon(leases.acquire, AcquireLock(resources=[REPO + "b/y"], wait=None),
                           ann)  # ann waits for bob's directory...
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Deadlock, match=r"held by ann \(pid 1\) \(as file:"):
            # ...so bob waiting for a glob that meets ann's file closes a cycle.
            await leases.acquire(AcquireLock(resources=[REPO + "a/*"], wait=None), bob)
        nursery.cancel_scope.cancel()


async def test_a_write_in_a_leased_directory_is_fenced_by_its_token(
        autojump_clock: trio.abc.Clock) -> None:
    from engramd.protocol import Conflict, Fence

    leases, (ann, bob, _) = manager()
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        (directory,) = await leases.acquire(AcquireLock(resources=[REPO + "a/"]), ann)
        (glob,) = await leases.acquire(AcquireLock(resources=[REPO + "b/*.py"]), bob)
        (reader,) = await leases.acquire(AcquireLock(resources=[OTHER + "a"], shared=True),
                                         bob)
        leases.check_fence(Fence(resource=REPO + "a/b/c", token=directory.fencing_token))
        leases.check_fence(Fence(resource=REPO + "b/x.py", token=glob.fencing_token))
        with pytest.raises(Conflict, match="stale fence"):
            leases.check_fence(Fence(resource=REPO + "b/x.c", token=glob.fencing_token))
        with pytest.raises(Conflict, match="held with token"):
            leases.check_fence(Fence(resource=REPO + "a/b", token=glob.fencing_token))
        with pytest.raises(Conflict, match="fences no write"):
            leases.check_fence(Fence(resource=OTHER + "a", token=reader.fencing_token))
        await leases.release(directory.lock_id, ann)
        with pytest.raises(Conflict, match="not held"):
            leases.check_fence(Fence(resource=REPO + "a/b/c", token=directory.fencing_token))
        nursery.cancel_scope.cancel()


async def test_lock_list_by_agent_finds_every_shared_holder(
        autojump_clock: trio.abc.Clock) -> None:
    leases, (ann, bob, _) = manager()
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        for who in (ann, bob):
            await leases.acquire(AcquireLock(resources=[REPO + "a/"], shared=True), who)
        (state,) = leases.states("bob", "")
        assert [lease.holder for lease in state.leases] == ["ann", "bob"]
        assert leases.state(REPO + "a/b").overlapping == state.leases
        nursery.cancel_scope.cancel()
