"""The process groups that leases carry: checked at the grant, stopped before the end.

``engram lock run`` runs CMD as the leader of a process group of its own and names
that group in its lease (``Lease.pgid``). Such a lease does not end while a process of
the group runs, whatever ends it (a release, a break, an expiry, its holder's exit):
the daemon that granted it first stops the group, SIGTERM (with SIGCONT, so that a
stopped process acts on it) and SIGKILL to what is left at a deadline, and waits,
polling on trio's clock, until none of its processes is left. The daemon runs as the
user of its clients, so it may signal their processes.

*Left* means alive: a zombie (exited, not yet reaped) runs nothing, and an orphan's
zombie is never reaped where the machine's init does not reap (some containers), so
when ``kill(-pgid, 0)`` still finds the group its members are read from /proc. A
group's number is not given to another group while any member of it exists, zombies
included: the group stopped is the group that was named.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
from collections.abc import Callable, Iterable

import trio

from engramd.locks import Holding
from engramd.protocol import BadRequest, Lease, LeaseTiming

log = logging.getLogger("engramd.leases")

POLL_SECONDS = 0.05
"""How often a group being stopped is looked at."""
KILL_WAIT_SECONDS = 5.0
"""How long processes may take to die after SIGKILL before the lease ends regardless
(each has SIGKILL pending: none of them runs its own code again)."""


class ProcessGroups:
    """This machine's process groups, as the lease manager sees them (tests use a fake)."""

    def __init__(self) -> None:
        self._proc = trio.CapacityLimiter(1)  # /proc is read by one thread at a time

    def check(self, pgid: int, pid: int) -> None:
        """Refuse a group that is not led by a process in the session of *pid* (the
        holder), or that is the daemon's own."""
        try:
            ours = os.getpgid(pgid) == pgid and os.getsid(pgid) == os.getsid(pid)
        except OSError:  # no such process, or not ours to look at
            ours = False
        if not ours or pgid == os.getpgrp():
            raise BadRequest(f"process group {pgid} is not led by a process in the session "
                             f"of process {pid}")

    def signal(self, pgid: int, signum: int) -> None:
        """Send *signum* to every process of the group that may be signalled."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    async def alive(self, pgid: int) -> list[int]:
        """The processes of the group that are not zombies (empty: none is left)."""
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass  # processes of another user (a setuid program): they are there
        return await trio.to_thread.run_sync(living_members, pgid, limiter=self._proc)


def living_members(pgid: int) -> list[int]:
    """The processes of group *pgid* that are not zombies, from /proc."""
    found = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as file:
                    stat = file.read()
            except OSError:  # it has gone meanwhile
                continue
            # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
            fields = stat[stat.rindex(b")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                found.append(int(entry.name))
    return found


async def stop_group(groups: ProcessGroups, pgid: int, kill_at: float) -> list[int]:
    """Stop process group *pgid*: SIGTERM now, SIGKILL at *kill_at* (trio's clock) to
    what is left; return once none of its processes is left, or KILL_WAIT_SECONDS after
    SIGKILL with the processes still there (empty when none is)."""
    left = await groups.alive(pgid)
    if not left:
        return left
    groups.signal(pgid, signal.SIGTERM)
    groups.signal(pgid, signal.SIGCONT)
    while (now := trio.current_time()) < kill_at:
        await trio.sleep(min(POLL_SECONDS, kill_at - now))
        left = await groups.alive(pgid)
        if not left:
            return left
    give_up = trio.current_time() + KILL_WAIT_SECONDS
    while True:
        groups.signal(pgid, signal.SIGKILL)  # again each time: a fork may have raced it
        await trio.sleep(POLL_SECONDS / 5)
        left = await groups.alive(pgid)
        if not left or trio.current_time() >= give_up:
            return left


class GroupStops:
    """The stops of one lease manager's process groups: when each begins, and each begun
    once, in the manager's nursery."""

    def __init__(self, boot_id: str, tell: Callable[[Holding, str, str], None]) -> None:
        self.groups = ProcessGroups()
        self.tell = tell
        """Tells a holder it lost its lease (``expired``, ``broken``), by whom."""
        self.boot_id = boot_id
        self.machine = ""
        """The manager's machine (cluster mode): only its leases' groups are its own."""
        self.vouches: Callable[[Lease], bool] = lambda lease: True
        """Whether this daemon checked *lease*'s group itself (cluster mode: a record in
        the cluster's bucket names a group, but anyone with its credentials may write
        one; on one machine every lease is this daemon's own)."""
        self.nursery: trio.Nursery | None = None
        self.held: Callable[[], Iterable[Holding]] = tuple
        """The manager's leases held now (its table's)."""

    def covered(self, holding: Holding) -> bool:
        """Whether a later grant of this daemon, live, names *holding*'s group: the group
        works under that one now, and *holding* (ending) is a grant its holder never
        got (``lock run`` asked again, with the same group, after its first request's
        connection went) whose stop must not hit it. Later: a larger token, of another
        grant (one request's leases share their grant's moment, ``acquired_at``: their
        group is still stopped when one of them ends)."""
        lease = holding.lease
        return lease.pgid is not None and any(
            other is not holding and other.lease.pgid == lease.pgid
            and other.lease.fencing_token > lease.fencing_token
            and other.lease.acquired_at != lease.acquired_at
            and self.stops(other.lease) and not other.ending and other.stopping is None
            for other in self.held())

    def stops(self, lease: Lease) -> bool:
        """Whether *lease*'s process group is stopped here before the lease ends: this
        daemon granted it in this boot (a group number from before a reboot, or from
        another machine, names nothing here)."""
        return (lease.pgid is not None and lease.machine == self.machine
                and bool(self.boot_id) and lease.boot_id == self.boot_id
                and self.vouches(lease))

    def stop_at(self, holding: Holding) -> float:
        """When *holding*'s group gets SIGTERM unless the lease is renewed before."""
        if not self.stops(holding.lease) or holding.stopping is not None:
            return math.inf
        return LeaseTiming(holding.lease.ttl).backstop(holding.deadline)[0]

    def next_wakeup(self, holdings: Iterable[Holding]) -> float:
        """The next expiry, or the next moment a group must begin to stop."""
        return min((min(holding.deadline, self.stop_at(holding))
                    for holding in holdings if not holding.expiring), default=math.inf)

    def stop_due(self, holdings: Iterable[Holding], now: float) -> None:
        """Stop the groups of leases about to expire unrenewed, so that none of their
        processes is left at the expiry; their holders are told."""
        for holding in [h for h in holdings if self.stop_at(h) <= now and not h.ending]:
            self.begin(holding, LeaseTiming(holding.lease.ttl).backstop(holding.deadline)[1])
            self.tell(holding, "expired", "engramd")

    async def before_end(self, holding: Holding, tell: str | None, by: str) -> None:
        """Before *holding* ends: stop its group, if it has one here, and wait until none
        of its processes is left. The holder is told (*tell*) as the stop begins."""
        if self.stops(holding.lease):
            stopping = self.begin(holding)
            if tell is not None:
                self.tell(holding, tell, by)
            await stopping.wait()

    def begin(self, holding: Holding, kill_at: float | None = None) -> trio.Event:
        """Begin (once) to stop *holding*'s group, SIGKILL at *kill_at* (by default
        after the grace, or at the expiry's margin if that comes first); the event is
        set once none of its processes is left."""
        if holding.stopping is None and self.covered(holding):
            log.info("process group %d of the lease on %s not stopped: a later lease of "
                     "this daemon names it", holding.lease.pgid, holding.lease.resource)
            holding.stopping = trio.Event()
            holding.stopping.set()
        if holding.stopping is None:
            timing, now = LeaseTiming(holding.lease.ttl), trio.current_time()
            if kill_at is None:
                kill_at = max(now, min(now + timing.grace, timing.kill_at(holding.deadline)))
            holding.stopping = trio.Event()
            assert self.nursery is not None, "the lease manager runs"
            self.nursery.start_soon(self._stop, holding, kill_at)
        return holding.stopping

    async def _stop(self, holding: Holding, kill_at: float) -> None:
        lease, stopping = holding.lease, holding.stopping
        assert lease.pgid is not None and stopping is not None
        left = await stop_group(self.groups, lease.pgid, kill_at)
        if left:
            log.warning("process group %d of the lease on %s: processes %s still there "
                        "after SIGKILL; the lease ends regardless", lease.pgid,
                        lease.resource, " ".join(map(str, left[:20])))
        stopping.set()
