"""A lease request made into a grant: its resources and times checked, the session it
is made in, the boot clock its deadline is kept on, and the leases it gives.

Shared by the lease manager of one machine (:mod:`engramd.leases`) and of a cluster
(:mod:`engramd.cluster.leases`): the same rules, whoever decides who holds.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
import time
from dataclasses import dataclass

from engramd.caller import Caller
from engramd.protocol import AcquireLock, BadRequest, Lease, LockAcquired

MAX_RESOURCE_BYTES = 1024
MAX_RESOURCES = 64


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip()
    except OSError:
        return ""


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def check_resource(resource: str) -> str:
    if not resource or "\0" in resource or len(resource.encode()) > MAX_RESOURCE_BYTES:
        raise BadRequest(f"a resource is 1 to {MAX_RESOURCE_BYTES} bytes without NUL, "
                         f"got {resource!r:.60}")
    return resource


@dataclass(frozen=True)
class Grant:
    """What the leases of one acquire are made of, built once their seqs are known."""

    resources: list[str]
    ttl: float
    request: AcquireLock
    caller: Caller
    session: str
    holder_pid: int

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
                     holder_pid=self.holder_pid, machine=machine)


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


def checked_request(request: AcquireLock, default_ttl: float, max_ttl: float
                    ) -> tuple[list[str], float, float]:
    """The request's resources (sorted, each once), ttl and wait, or BadRequest."""
    resources = sorted({check_resource(resource) for resource in request.resources})
    if not resources or len(resources) > MAX_RESOURCES:
        raise BadRequest(f"ask for 1 to {MAX_RESOURCES} resources")
    ttl = checked_ttl(default_ttl if request.ttl is None else request.ttl, max_ttl)
    wait = math.inf if request.wait is None else request.wait
    if not 0 <= wait <= math.inf:
        raise BadRequest("wait must be 0 or more seconds (or nil: as long as it takes)")
    if request.pid is not None and request.pid <= 0:
        raise BadRequest("pid must be a process id")
    return resources, ttl, wait


def checked_ttl(ttl: float, max_ttl: float) -> float:
    if not 0 < ttl <= max_ttl or not math.isfinite(ttl):
        raise BadRequest(f"ttl must be more than 0 and at most {max_ttl:g} seconds")
    return ttl
