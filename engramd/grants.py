"""A lease request made into a grant: its resources and times checked, the session it
is made in, the limits it must keep (what the session holds already, how many leases
an agent holds, a wait that would deadlock or join too long a line), the boot clock its
deadline is kept on, and the leases it gives.

Shared by the lease manager of one machine (:mod:`engramd.leases`) and of a cluster
(:mod:`engramd.cluster.leases`): the same rules, whoever decides who holds.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import secrets
import time
from dataclasses import dataclass

from engramd.caller import Caller
from engramd.locks import Blocker, Holding, LockTable, describe
from engramd.protocol import (
    AcquireLock,
    BadRequest,
    Conflict,
    Deadlock,
    Lease,
    LockAcquired,
    TooLarge,
)
from engramd.protocol import resources as names
from engramd.protocol.bounds import MAX_RESOURCE_BYTES, MAX_RESOURCES, MIN_TTL


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip()
    except OSError:
        return ""


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def check_resource(resource: str) -> str:
    """*resource*, or BadRequest: 1 to 1024 bytes without NUL; a ``file:`` name must be
    canonical (:mod:`engramd.protocol.resources`)."""
    if not resource or "\0" in resource or len(resource.encode()) > MAX_RESOURCE_BYTES:
        raise BadRequest(f"a resource is 1 to {MAX_RESOURCE_BYTES} bytes without NUL, "
                         f"got {resource!r:.60}")
    try:
        names.parse(resource)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return resource


@dataclass(frozen=True, eq=False)
class Grant:
    """What the leases of one acquire are made of, built once their seqs are known.
    (Compared by identity: it owns the reservation of its resources, :mod:`.locks`.)"""

    resources: list[str]
    ttl: float
    request: AcquireLock
    caller: Caller
    session: str
    holder_pid: int
    while_alive: bool = False
    """Renewed by the daemon while the bound process lives (see ``Lease.while_alive``)."""

    @property
    def shared(self) -> bool:
        return self.request.shared

    @property
    def key(self) -> tuple[str, str]:
        """The session it is made in: ``(agent, session)``."""
        return self.caller.agent_id, self.session

    def leases(self, first_seq: int, ts: dt.datetime, boot_id: str) -> list[Lease]:
        # CLOCK_BOOTTIME read now, before the commit: the deadline it gives is never
        # later than the one the table will hold (see engram_cli.cli.lockrun).
        boot = boottime()
        return [self.lease(resource, first_seq + index, ts, boot, boot_id)
                for index, resource in enumerate(self.resources)]

    def lease(self, resource: str, token: int, ts: dt.datetime, boot: float, boot_id: str,
              machine: str = "") -> Lease:
        """The lease on *resource*, granted at *ts* (and *boot* on CLOCK_BOOTTIME)."""
        return Lease(resource=resource, holder=self.caller.agent_id,
                     lock_id=secrets.token_hex(16), fencing_token=token, acquired_at=ts,
                     expires_at=ts + dt.timedelta(seconds=self.ttl), ttl=self.ttl,
                     boot_id=boot_id, deadline_boottime=boot + self.ttl, pid=self.request.pid,
                     bound_to_connection=self.request.bind_connection, session=self.session,
                     holder_pid=self.holder_pid, machine=machine, pgid=self.request.pgid,
                     while_alive=self.while_alive, shared=self.request.shared)


def acquired(leases: list[Lease]) -> list[LockAcquired]:
    return [LockAcquired(seq=lease.fencing_token, ts=lease.acquired_at, context_id="",
                         lease=lease) for lease in leases]


def session_of(caller: Caller, pid: int | None, machine: str = "") -> tuple[str, int]:
    """The session a lease request is made in, and that session's process.

    A lease bound to a process belongs to that process (several connections of
    one script, or a reconnect after a daemon restart, are the same holder);
    otherwise the connection is the session. In cluster mode a process is named
    with its *machine* (``pid:N@machine``): pids repeat across machines.
    """
    if pid is not None:
        return (f"pid:{pid}@{machine}" if machine else f"pid:{pid}"), pid
    return caller.connection_id, caller.pid


def process_runs(pid: int) -> bool:
    """Whether process *pid* runs on this machine (a zombie runs no more)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def check_pid(pid: int, uid: int) -> None:
    """BadRequest unless a lease may be bound to process *pid* for a caller of uid *uid*:
    one that runs (else the lease would end at once), not init (pid 1 never exits: the
    lease would never end), and the caller's own (a process of another user would decide
    how long the caller's lease lasts; root, uid 0, may name any)."""
    if pid == 1 or is_kernel_thread(pid):
        what = "pid 1 (init)" if pid == 1 else f"process {pid} is a kernel thread: it"
        raise BadRequest(f"{what} never exits: a lease bound to it would never end; "
                         "bind it to a process of yours (a shell script: --pid $$)")
    if not process_runs(pid):
        raise BadRequest(f"process {pid} is not running: a lease bound to it would end "
                         "at once")
    owner = process_owner(pid)
    if uid > 0 and owner is not None and owner != uid:
        raise BadRequest(f"process {pid} is another user's (uid {owner}), not yours (uid "
                         f"{uid}): bind a lease to a process of yours")


PF_KTHREAD = 0x00200000
"""The flag of a kernel thread in ``/proc/PID/stat`` (linux/sched.h)."""


def is_kernel_thread(pid: int) -> bool:
    """Process *pid* is the kernel's own (kthreadd, pid 2, and its threads): like init,
    it lives as long as the machine."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return len(fields) > 6 and int(fields[6]) & PF_KTHREAD != 0


def process_owner(pid: int) -> int | None:
    """The uid process *pid* runs as (None: gone, or not to be seen)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def checked_request(request: AcquireLock, default_ttl: float, max_ttl: float
                    ) -> tuple[list[str], float, float]:
    """The request's resources (sorted, each once), ttl and wait, or BadRequest."""
    resources = sorted({check_resource(resource) for resource in request.resources})
    if not resources or len(resources) > MAX_RESOURCES:
        raise BadRequest(f"ask for 1 to {MAX_RESOURCES} resources")
    # A lease bound to a process and asked without a ttl lasts as long as that process:
    # agents work for hours, and the process's exit (watched) ends it at once.
    ttl = checked_ttl(request.ttl if request.ttl is not None else
                      max_ttl if request.pid is not None else default_ttl, max_ttl)
    wait = math.inf if request.wait is None else request.wait
    if not 0 <= wait <= math.inf:
        raise BadRequest("wait must be 0 or more seconds (or nil: as long as it takes)")
    if request.pid is not None and request.pid <= 0:
        raise BadRequest("pid must be a process id")
    if request.pgid is not None and (request.pid is None or request.pgid <= 1):
        raise BadRequest("pgid must be a process group, given with the pid whose session "
                         "it is in")
    return resources, ttl, wait


def checked_ttl(ttl: float, max_ttl: float) -> float:
    if not MIN_TTL <= ttl <= max_ttl:  # (nan too: no comparison holds)
        raise BadRequest(f"ttl must be at least {MIN_TTL:g} and at most {max_ttl:g} "
                         "seconds")
    return ttl


def grant_for(request: AcquireLock, caller: Caller, table: LockTable, *, default_ttl: float,
              max_ttl: float, max_per_agent: int, machine: str) -> tuple[Grant, float]:
    """What the request would be granted, and how long it may wait; refused when the
    session holds one of them already or the agent would hold too many."""
    resources, ttl, wait = checked_request(request, default_ttl, max_ttl)
    if request.pid is not None:
        check_pid(request.pid, caller.uid)
    session, holder_pid = session_of(caller, request.pid, machine)
    agent = caller.agent_id
    mine = table.held_in((agent, session), resources)
    if mine is not None:
        who = f"process {request.pid}" if request.pid is not None else "this connection"
        raise Conflict(f"{who} already holds {mine.lease.resource} (lock id "
                       f"{mine.lease.lock_id}); renew that lease instead of asking again")
    if len(table.held_by(agent)) + len(resources) > max_per_agent:
        raise TooLarge(f"{agent} would hold more than {max_per_agent} leases")
    return Grant(resources, ttl, request, caller, session, holder_pid,
                 while_alive=request.pid is not None and request.ttl is None), wait


def check_wait(grant: Grant, line: LockTable, max_waiters: int) -> None:
    """Refuse a wait that closes a cycle in the wait-for graph (*line*: who holds and who
    waits, as far as this daemon sees), or one too many."""
    agent, session, resources = grant.caller.agent_id, grant.session, grant.resources
    cycle = line.cycle((agent, session), resources, grant.shared)
    if cycle:
        waiters = [describe(agent, grant.holder_pid)] + [b.holder for _, b in cycle]
        raise Deadlock("deadlock: " + ", then ".join(
            f"{waiter} waits for {resource} {_blocked_by(resource, blocker)}"
            for waiter, (resource, blocker) in zip(waiters, cycle, strict=False))
            + "; refusing to wait")
    for resource in resources:
        if line.waiting_count(resource) >= max_waiters:
            raise TooLarge(f"{max_waiters} requests already wait for {resource}")


def _blocked_by(resource: str, blocker: Blocker) -> str:
    """What stands in the way of a wait for *resource*: a lease, or a request ahead."""
    if isinstance(blocker, Holding):
        lease = blocker.lease
        return f"held by {blocker.holder}" + (
            "" if lease.resource == resource else f" (as {lease.resource})")
    wanted = ", ".join(blocker.resources[:3]) + (
        f" and {len(blocker.resources) - 3} more" if len(blocker.resources) > 3 else "")
    return f"behind {blocker.holder}, waiting ahead in line for {wanted}"
