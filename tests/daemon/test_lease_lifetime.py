"""A lease bound to a session process and asked without a ttl is held as long as that
process lives (agents work for hours); one asked with a ttl lapses at it. On trio's
virtual clock over a real store and log: hours take no time."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from engramd.caller import Caller
from engramd.commit import GroupCommitter
from engramd.leases import LeaseManager
from engramd.protocol import AcquireLock, BadRequest, LockRenewed, NotFound
from engramd.storage import Store
from engramd.wal.log import WriteAheadLog
from engramd.wal.record import Entry
from tests.daemon.test_components import committer_over

ME = os.getpid()
"""The session process: it outlives the test, so nothing ends its leases."""
HOUR = 3600.0
AGENT = Caller(agent_id="claude-a", uid=0, pid=ME, connection_id="conn:1@t",
               connection=object())


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[tuple[GroupCommitter, list[Entry]]]:
    store = Store(str(tmp_path / "store"))
    wal = WriteAheadLog(str(tmp_path / "wal"), segment_bytes=1 << 20, sync=False)
    wal.recover(store.applied_seq, store.apply)
    committer, applied = committer_over((store, wal))
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        yield committer, applied
        nursery.cancel_scope.cancel()
    wal.close()
    store.close()


@pytest.fixture
def patient_clock() -> trio.testing.MockClock:
    """Virtual time that jumps once every task has waited 20 ms of real time: a renewal's
    commit (in the journal's worker thread) is written first, as on a disk that answers."""
    return trio.testing.MockClock(autojump_threshold=0.02)


async def test_a_session_lease_without_a_ttl_outlives_the_longest_ttl(
        journal: tuple[GroupCommitter, list[Entry]], tmp_path: Path,
        patient_clock: trio.abc.Clock) -> None:
    committer, applied = journal
    leases = LeaseManager(committer.store, committer, default_ttl=60, max_ttl=HOUR,
                          max_per_agent=10, max_waiters=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        (held,) = await leases.acquire(AcquireLock(resources=["task:1"], pid=ME), AGENT)
        (timed,) = await leases.acquire(AcquireLock(resources=["src/a.py"], ttl=600, pid=ME),
                                        AGENT)
        assert held.while_alive and held.ttl == HOUR and not timed.while_alive
        await trio.sleep(2 * HOUR + 60)  # an agent's long afternoon
        state = leases.state("task:1")
        assert state.lease is not None and state.lease.lock_id == held.lock_id
        assert state.lease.fencing_token == held.fencing_token  # the same lease, renewed
        # (Its expiry in wall time follows the wall clock, which this clock does not move.)
        assert leases.table.held[held.lock_id].deadline > trio.current_time() + HOUR / 2
        assert leases.state("src/a.py").lease is None  # its ttl was asked for: it lapsed
        renewals = [event for entry in applied for event in entry.events
                    if isinstance(event, LockRenewed) and event.lease.lock_id == held.lock_id]
        assert 2 <= len(renewals) <= 8  # about every half hour, no more
        await leases.release(held.lock_id, AGENT)
        with pytest.raises(NotFound):
            await leases.renew(held.lock_id, AGENT, None)
        nursery.cancel_scope.cancel()


async def test_renewed_with_a_ttl_it_is_still_held_while_its_process_lives(
        journal: tuple[GroupCommitter, list[Entry]], patient_clock: trio.abc.Clock) -> None:
    committer, _ = journal
    leases = LeaseManager(committer.store, committer, default_ttl=60, max_ttl=HOUR,
                          max_per_agent=10, max_waiters=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        (held,) = await leases.acquire(AcquireLock(resources=["r"], pid=ME), AGENT)
        renewed = await leases.renew(held.lock_id, AGENT, 5)  # a short ttl of its own
        assert renewed.while_alive and renewed.ttl == 5
        await trio.sleep(60)  # twelve of its ttls
        state = leases.state("r")
        assert state.lease is not None and state.lease.lock_id == held.lock_id
        nursery.cancel_scope.cancel()


async def test_a_lease_for_a_process_that_is_not_running_is_refused(
        journal: tuple[GroupCommitter, list[Entry]], patient_clock: trio.abc.Clock) -> None:
    committer, _ = journal
    leases = LeaseManager(committer.store, committer, default_ttl=60, max_ttl=HOUR,
                          max_per_agent=10, max_waiters=10)
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)
    dead = int(exited.stdout)
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        with pytest.raises(BadRequest, match=f"process {dead} is not running"):
            await leases.acquire(AcquireLock(resources=["r"], pid=dead), AGENT)
        assert leases.state("r").lease is None
        nursery.cancel_scope.cancel()
