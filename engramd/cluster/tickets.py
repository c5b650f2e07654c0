"""A machine's waiters in the cluster's line (see :mod:`engramd.cluster.leases`).

A waiter puts a *ticket* in the bucket naming what it waits for (its resources and
mode); the ticket's number is the revision of its first write, so tickets are
numbered in the order the cluster registered them. A waiter takes its resources
when nothing that conflicts with them is held and no live ticket that conflicts
with it has a smaller number; a new request that finds a conflicting ticket joins
the line instead of taking its resources (so a shared request waits behind a
waiting exclusive one). So the cluster serves
waiters first come, first served, whatever their machine, and the waiter with the
smallest ticket is never passed over: no one starves. A machine keeps its
waiters' tickets alive by writing them again every few seconds; the tickets of a
machine that has gone expire, and the line moves on.

A ticket carries the terms of the leases its waiter waits for (their ttl, lock ids,
process and binding), so that the release that lets it go may grant them in its own
write (:mod:`.handover`); each write says when it was sent, on its machine's boot
clock, which bounds the deadline that machine promises for a lease handed over.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import msgspec
import trio

from engramd.cluster.bucket import LeaseBucket, Terms, Ticket, encode_record, ticket_key
from engramd.grants import Grant, boottime, checked_ttl
from engramd.protocol import BadRequest, Unavailable
from engramd.protocol.bounds import MAX_RESOURCES

log = logging.getLogger("engramd.cluster.leases")
T = TypeVar("T")


class BucketCall(Protocol):
    """How the manager runs a bucket operation (tried again while the cluster is away)."""

    def __call__(self, coroutine: Callable[[], Awaitable[T]]) -> Awaitable[T]: ...


class Tickets:
    """The tickets of one machine's waiters, written through *call* (the manager's
    bucket operation, tried again while the cluster does not answer)."""

    TTL = 6.0
    REFRESH = 2.0
    STALE = TTL
    """A ticket not seen written again within this long (three refreshes) is out of the
    line on every machine, whatever its own TTL says (one written by something else may
    have none): its machine has gone, or it is not engram's."""
    FRESH = REFRESH + 0.5
    """A ticket seen written again within this long is of a machine that is up: a
    release hands over only to such a waiter (the refresh, and its write's moment)."""

    def __init__(self, bucket: LeaseBucket, call: BucketCall, machine: str,
                 timeout: float, boot_id: str = "") -> None:
        self.bucket = bucket
        self._call = call
        self.machine = machine
        self.timeout = timeout
        self.boot_id = boot_id

    def ticket(self, grant: Grant, number: int, lock_ids: list[str]) -> Ticket:
        """The waiter's ticket, as sent now."""
        request = grant.request
        return Ticket(
            number=number, machine=self.machine, agent=grant.caller.agent_id,
            session=grant.session, pid=grant.holder_pid, resources=grant.resources,
            shared=grant.shared, terms=Terms(
                ttl=grant.ttl, lock_ids=lock_ids, boot_id=self.boot_id, sent=boottime(),
                pid=request.pid, pgid=request.pgid, bind_connection=request.bind_connection,
                while_alive=grant.while_alive))

    async def register(self, waiter: str, grant: Grant, number: int,
                       lock_ids: list[str]) -> int:
        """Put the waiter's ticket in the line (again); the revision written (the first
        write's is the ticket's number). Its time of sending is read before the first
        attempt: never later than the servers store it."""
        body = encode_record(self.ticket(grant, number, lock_ids))
        return await self._call(functools.partial(
            self.bucket.write, ticket_key(waiter), body, last=None, ttl=self.TTL,
            msg_id=secrets.token_hex(12)))

    async def keep(self, done: trio.Event, waiter: str, grant: Grant, number: int,
                   lock_ids: list[str], consumed: Callable[[], int] = lambda: 0) -> None:
        """Write the waiter's ticket again until it is *done*, then withdraw it (after
        the last write: a ticket written again after its withdrawal would linger),
        unless a handover consumed its last write already (*consumed*: the revision of
        the batch that did, or 0)."""
        last: float = number
        while True:
            with trio.move_on_after(self.REFRESH):
                await done.wait()
            if done.is_set():
                break
            try:
                last = await self.register(waiter, grant, number, lock_ids)
            except Unavailable:
                last = math.inf  # (perhaps written) the next round tries again; the
                # ticket may lapse meanwhile
        if consumed() > last:
            return  # nothing of it is left in the line
        await self.withdraw(waiter)

    async def withdraw(self, waiter: str) -> None:
        """Take the waiter's ticket out of the line (empty, expiring at once)."""
        with trio.move_on_after(self.timeout):
            try:
                await self._call(functools.partial(
                    self.bucket.write, ticket_key(waiter), b"", last=None, ttl=1))
            except Unavailable:
                return  # it expires by itself


MOST_TEXT = 1024
"""Bytes at most of a ticket's machine, agent and session (each a name an engramd
made, far shorter)."""


def checked_ticket(ticket: Ticket, revision: int, max_ttl: float,
                   before: Ticket | None = None) -> Ticket:
    """*ticket* as written at *revision* (its number resolved: a first write's is its
    revision), if its fields are what an engramd writes (as a local request's are
    checked: a ttl within ``locks.max_ttl``, a lock id for each resource, a process
    group only with its process); ValueError otherwise. *before*: the waiter's ticket as
    last seen, whose number a refresh keeps."""
    number = ticket.number or revision
    if not 0 < number <= revision:
        raise ValueError(f"ticket number {ticket.number} after revision {revision}")
    if ticket.number and before is not None and before.number != number:
        raise ValueError(f"ticket number {ticket.number} was {before.number}")
    if not (0 < len(ticket.machine.encode()) <= MOST_TEXT
            and 0 < len(ticket.agent.encode()) <= MOST_TEXT
            and len(ticket.session.encode()) <= MOST_TEXT):
        raise ValueError("a ticket names its machine and agent (1-1024 bytes), and its "
                         "session")
    if ticket.pid < 0 or not 0 < len(ticket.resources) <= MAX_RESOURCES:
        # (pid 0: a request made for an agent, 'as', on no process of its own)
        raise ValueError(f"a ticket has 1 to {MAX_RESOURCES} resources, and no negative "
                         "pid")
    terms = ticket.terms
    if terms is not None:
        try:
            checked_ttl(terms.ttl, max_ttl)
        except BadRequest as exc:
            raise ValueError(str(exc)) from None
        if (len(terms.lock_ids) != len(ticket.resources)
                or len(set(terms.lock_ids)) != len(terms.lock_ids)
                or not all(0 < len(lock_id) <= 64 for lock_id in terms.lock_ids)):
            raise ValueError("a ticket's terms name one lock id for each resource")
        if not math.isfinite(terms.sent) or (terms.pid is not None and terms.pid <= 0):
            raise ValueError("a ticket's terms have a time of sending and a process id")
        if terms.pgid is not None and (terms.pid is None or terms.pgid <= 1):
            raise ValueError("a ticket's process group is given with its process")
    return ticket if ticket.number else msgspec.structs.replace(ticket, number=number)


async def patiently(attempt: Callable[[], Awaitable[T]], pause: float) -> T:
    """``attempt()``, again after *pause* for as long as it says `unavailable` (a waiter
    rides out a cluster that fails for a moment; the caller's cancel scope bounds it)."""
    while True:
        try:
            return await attempt()
        except Unavailable as exc:
            log.info("cluster leases: %s; a waiter tries again", exc)
        await trio.sleep(pause)
