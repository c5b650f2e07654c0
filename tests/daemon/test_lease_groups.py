"""A lease's process group is stopped before the lease ends, on trio's virtual clock.

The lease manager runs over a real store and log (as in test_components); the process
groups are a fake that records every signal with the time it was sent and dies as
told: some processes stop on SIGTERM after a while, some trap it and die only of
SIGKILL, some never die. Times are exact: a 60-second ttl takes no real time.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from engramd.caller import Caller
from engramd.commit import GroupCommitter
from engramd.groups import KILL_WAIT_SECONDS, stop_group
from engramd.leases import LeaseManager
from engramd.protocol import (
    AcquireLock,
    BadRequest,
    Conflict,
    Fence,
    Lease,
    LeaseLost,
    LeaseTiming,
    NotFound,
)
from engramd.protocol.messages import AnyServerMessage
from engramd.storage import Store
from engramd.wal.log import WriteAheadLog
from engramd.wal.record import Entry
from tests.daemon.test_components import committer_over

GROUP = 4250
ME = os.getpid()
"""The holder's pid: a process that outlives the test, so its lease is not ended by it."""
_push = msgspec.msgpack.Decoder(AnyServerMessage)


@dataclass
class Group:
    term_takes: float | None
    """How long its processes take to exit after SIGTERM (None: they trap it)."""
    unkillable: bool = False
    dead_at: float = math.inf


class FakeGroups:
    """Process groups on trio's clock: ``signals`` is every (time, pgid, signal) sent."""

    def __init__(self) -> None:
        self.groups: dict[int, Group] = {}
        self.signals: list[tuple[float, int, str]] = []

    def add(self, pgid: int, term_takes: float | None, *, unkillable: bool = False) -> None:
        self.groups[pgid] = Group(term_takes, unkillable)

    def check(self, pgid: int, pid: int) -> None:
        if pgid not in self.groups:
            raise BadRequest(f"process group {pgid} is not led by a process in the session "
                             f"of process {pid}")

    def signal(self, pgid: int, signum: int) -> None:
        now = trio.current_time()
        self.signals.append((now, pgid, signal.Signals(signum).name))
        group = self.groups.get(pgid)
        if group is None or group.unkillable:
            return
        if signum == signal.SIGKILL:
            group.dead_at = min(group.dead_at, now)
        elif signum == signal.SIGTERM and group.term_takes is not None:
            group.dead_at = min(group.dead_at, now + group.term_takes)

    async def alive(self, pgid: int) -> list[int]:
        group = self.groups.get(pgid)
        return [pgid] if group is not None and trio.current_time() < group.dead_at else []

    def sent(self, start: float) -> list[tuple[float, str]]:
        """The signals sent, each with its time from *start*, CONTs left out."""
        return [(round(at - start, 3), name) for at, _, name in self.signals
                if name != "SIGCONT"]


# -- stopping a group ---------------------------------------------------------------------


async def test_a_group_that_stops_on_sigterm_gets_no_sigkill(
        autojump_clock: trio.abc.Clock) -> None:
    groups = FakeGroups()
    groups.add(GROUP, term_takes=1.5)
    start = trio.current_time()
    assert await stop_group(groups, GROUP, kill_at=start + 5) == []  # type: ignore[arg-type]
    assert trio.current_time() - start == pytest.approx(1.5, abs=0.06)
    assert groups.sent(start) == [(0.0, "SIGTERM")]
    assert [name for _, _, name in groups.signals] == ["SIGTERM", "SIGCONT"]


async def test_a_group_that_traps_sigterm_is_killed_at_the_deadline(
        autojump_clock: trio.abc.Clock) -> None:
    groups = FakeGroups()
    groups.add(GROUP, term_takes=None)
    start = trio.current_time()
    assert await stop_group(groups, GROUP, kill_at=start + 5) == []  # type: ignore[arg-type]
    assert groups.sent(start) == [(0.0, "SIGTERM"), (5.0, "SIGKILL")]
    assert trio.current_time() - start == pytest.approx(5, abs=0.02)


async def test_processes_that_outlive_sigkill_are_named_after_a_bound(
        autojump_clock: trio.abc.Clock) -> None:
    groups = FakeGroups()
    groups.add(GROUP, term_takes=None, unkillable=True)
    start = trio.current_time()
    left = await stop_group(groups, GROUP, kill_at=start + 2)  # type: ignore[arg-type]
    assert left == [GROUP]
    assert trio.current_time() - start == pytest.approx(2 + KILL_WAIT_SECONDS, abs=0.02)


async def test_a_group_with_no_process_left_is_not_signalled(
        autojump_clock: trio.abc.Clock) -> None:
    groups = FakeGroups()
    start = trio.current_time()
    assert await stop_group(groups, GROUP, kill_at=start + 5) == []  # type: ignore[arg-type]
    assert groups.signals == [] and trio.current_time() == start


# -- leases carrying a group ------------------------------------------------------------


class Pushes:
    """A holder's connection: the notices pushed to it, each with its time."""

    def __init__(self) -> None:
        self.notices: list[tuple[float, LeaseLost]] = []

    async def __call__(self, body: bytes) -> None:
        message = _push.decode(body)
        assert isinstance(message, LeaseLost)
        self.notices.append((trio.current_time(), message))


Journal = tuple[Store, GroupCommitter, list[Entry]]


@pytest.fixture
def patient_clock() -> trio.testing.MockClock:
    """Virtual time that jumps once every task has waited 20 ms of real time: a commit's
    worker thread finishes first, so time never runs past a renewal being written (as
    it does not for a daemon whose disk answers)."""
    return trio.testing.MockClock(autojump_threshold=0.02)


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    """A store and a log, and their committer running."""
    store = Store(str(tmp_path / "store"))
    wal = WriteAheadLog(str(tmp_path / "wal"), segment_bytes=1 << 20, sync=False)
    wal.recover(store.applied_seq, store.apply)
    committer, applied = committer_over((store, wal), window=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        yield store, committer, applied
        nursery.cancel_scope.cancel()
    wal.close()
    store.close()


def manager(store: Store, committer: GroupCommitter, groups: FakeGroups) -> LeaseManager:
    leases = LeaseManager(store, committer, default_ttl=60, max_ttl=3600,
                          max_per_agent=10, max_waiters=10)
    leases.stops.groups = groups  # type: ignore[assignment]
    return leases


def alice(pushes: Pushes | None = None) -> Caller:
    return Caller(agent_id="alice", uid=0, pid=ME, connection_id="conn:1@t",
                  connection=object(), push=pushes)


BOB = Caller(agent_id="bob", uid=0, pid=2, connection_id="conn:2@t")


def with_group(ttl: float = 60) -> AcquireLock:
    return AcquireLock(resources=["r"], ttl=ttl, pid=ME, pgid=GROUP)


async def test_a_broken_lease_ends_only_once_its_group_is_gone(
        journal: Journal, autojump_clock: trio.abc.Clock) -> None:
    store, committer, applied = journal
    groups = FakeGroups()
    groups.add(GROUP, term_takes=None)  # traps SIGTERM: killed after the grace
    leases, pushes = manager(store, committer, groups), Pushes()
    granted: list[tuple[float, Lease]] = []

    async def bob_waits() -> None:
        (lease,) = await leases.acquire(AcquireLock(resources=["r"], ttl=60, wait=None), BOB)
        granted.append((trio.current_time(), lease))

    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        (held,) = await leases.acquire(with_group(), alice(pushes))
        assert held.pgid == GROUP and held.pid == ME
        nursery.start_soon(bob_waits)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        async with trio.open_nursery() as breaking:
            breaking.start_soon(leases.break_lease, "r", "stuck", "ops")
            await trio.testing.wait_all_tasks_blocked()
            # Told at once, and meanwhile the lease is held but ending.
            assert [n.reason for _, n in pushes.notices] == ["broken"]
            assert leases.state("r").lease == held
            with pytest.raises(NotFound, match="is ending: its processes"):
                await leases.renew(held.lock_id, alice(), None)
            with pytest.raises(Conflict, match="stale fence"):
                leases.check_fence(Fence(resource="r", token=held.fencing_token))
        grace = LeaseTiming(60).grace
        assert groups.sent(start) == [(0.0, "SIGTERM"), (grace, "SIGKILL")]
        await trio.testing.wait_all_tasks_blocked()
        (at, lease), = granted
        assert lease.holder == "bob" and at - start >= grace
        ends = [e for entry in applied for e in entry.events
                if type(e).__name__ == "LockReleased"]
        assert [e.reason for e in ends] == ["broken: stuck"]  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


async def test_an_unrenewed_lease_stops_its_group_in_time_for_its_expiry(
        journal: Journal, autojump_clock: trio.abc.Clock) -> None:
    store, committer, _ = journal
    groups = FakeGroups()
    groups.add(GROUP, term_takes=None)
    leases, pushes = manager(store, committer, groups), Pushes()
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        start = trio.current_time()
        (held,) = await leases.acquire(with_group(ttl=60), alice(pushes))
        (bob,) = await leases.acquire(AcquireLock(resources=["r"], ttl=60, wait=None), BOB)
        term, kill = LeaseTiming(60).backstop(start + 60)
        # SIGTERM and SIGKILL as the holder would have sent them, half a margin later:
        # the group is gone when the lease expires, and the expiry is not late for it.
        assert term - start == 60 - 1 - 5 + 0.5 and kill - start == 60 - 1 + 0.5
        assert groups.sent(start) == [(pytest.approx(term - start), "SIGTERM"),
                                      (pytest.approx(kill - start), "SIGKILL")]
        assert [(round(at - start, 3), n.reason) for at, n in pushes.notices] == [
            (pytest.approx(term - start), "expired")]
        assert bob.holder == "bob" and bob.fencing_token > held.fencing_token
        assert trio.current_time() - start == pytest.approx(60, abs=0.05)
        assert leases.expired == 1
        nursery.cancel_scope.cancel()


async def test_a_lease_renewed_in_time_leaves_its_group_running(
        journal: Journal, patient_clock: trio.abc.Clock) -> None:
    store, committer, _ = journal
    groups = FakeGroups()
    groups.add(GROUP, term_takes=0.5)
    leases = manager(store, committer, groups)
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        (held,) = await leases.acquire(with_group(ttl=30), alice())
        for _ in range(6):  # every ttl/3, as lock run does: three minutes
            await trio.sleep(LeaseTiming(30).renew_every)
            await leases.renew(held.lock_id, alice(), None)
        assert groups.signals == []
        # Released by its holder once its group is gone: nothing to stop, no time taken.
        groups.groups[GROUP].dead_at = trio.current_time()
        before = trio.current_time()
        await leases.release(held.lock_id, alice())
        assert groups.signals == [] and trio.current_time() - before < 0.01
        nursery.cancel_scope.cancel()


async def test_a_release_while_the_group_runs_stops_it_first(
        journal: Journal, autojump_clock: trio.abc.Clock) -> None:
    store, committer, _ = journal
    groups = FakeGroups()
    groups.add(GROUP, term_takes=0.8)
    leases = manager(store, committer, groups)
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        (held,) = await leases.acquire(with_group(), alice())
        start = trio.current_time()
        await leases.release(held.lock_id, alice())
        assert groups.sent(start) == [(0.0, "SIGTERM")]
        assert trio.current_time() - start >= 0.8
        assert leases.state("r").lease is None
        nursery.cancel_scope.cancel()


async def test_a_group_that_is_not_the_holders_is_refused(
        journal: Journal, autojump_clock: trio.abc.Clock) -> None:
    store, committer, _ = journal
    leases = manager(store, committer, FakeGroups())
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        with pytest.raises(BadRequest, match="not led by a process in the session"):
            await leases.acquire(with_group(), alice())
        with pytest.raises(BadRequest, match="given with the pid"):
            await leases.acquire(AcquireLock(resources=["r"], pgid=GROUP), alice())
        assert leases.state("r").lease is None
        nursery.cancel_scope.cancel()


async def test_groups_from_before_a_reboot_are_left_alone(
        journal: Journal, autojump_clock: trio.abc.Clock) -> None:
    store, committer, _ = journal
    groups = FakeGroups()
    groups.add(GROUP, term_takes=None)
    leases = manager(store, committer, groups)
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        (held,) = await leases.acquire(with_group(), alice())
        nursery.cancel_scope.cancel()
    # The store holds the lease; a daemon of another boot restores it, expired.
    again = manager(store, committer, groups)
    again.boot_id = again.stops.boot_id = "another-boot"
    again.restore()
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        (bob,) = await again.acquire(AcquireLock(resources=["r"], ttl=60, wait=None), BOB)
        assert bob.fencing_token > held.fencing_token
        assert groups.signals == []  # that number names nothing in this boot
        nursery.cancel_scope.cancel()
