"""Waiting in line for leases through a daemon restart: what ``lock acquire --wait`` and
``lock run`` share.

A waiter holds nothing, so a daemon that restarts loses nothing of it but its place in
line. The request is made again on a new connection (one that never starts a daemon
of its own: the daemon coming back is the one that knows the leases) every
:data:`RETRY_SECONDS` while the daemon is away, and waits on until it is granted or the
wait it was given runs out, counted from the start. A wait with no end gives up once
the daemon has been away :data:`AWAY_LIMIT` seconds on end.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # (the errors and the protocol when it comes to them: see .fast)
if TYPE_CHECKING:
    from typing import Any

    from engram_cli.client import Client
    from engram_cli.client.errors import EngramError
    from engramd.protocol import Lease

RETRY_SECONDS = 0.1
"""How often an unreachable daemon is tried again."""
AWAY_LIMIT = 300.0
"""Seconds a wait with no end of its own keeps trying a daemon that is away."""
CLUSTER_REFUSAL = "the cluster "
"""How a cluster-mode daemon's ``unavailable`` begins when its cluster cannot serve the
request (no quorum, unreachable: SPECS §9): said at once, not waited out, since the
daemon itself is there (a waiter already in line rides such failures out inside it)."""


def passing() -> tuple[type[EngramError], ...]:
    """What is tried again: the daemon is away, restarting, recovering or busy (also
    :data:`PASSING`; imported when an error comes, which a lean start may never see)."""
    from engram_cli.client.errors import ClientTimeout, RateLimited, Unavailable

    return (Unavailable, ClientTimeout, RateLimited)


def __getattr__(name: str) -> object:
    if name == "PASSING":
        return passing()
    raise AttributeError(name)


def acquire_waiting(client: Client | Any, resources: list[str], *, ttl: float | None,
                    wait: float | None, pid: int | None = None, pgid: int | None = None,
                    shared: bool = False, failed: EngramError | None = None,
                    started: float | None = None) -> list[Lease]:
    """``client.acquire_lock`` waiting up to *wait* seconds (None: as long as it takes),
    asked again whenever the daemon goes away meanwhile (see the module). A daemon not
    there at the start is the caller's error as ever (``Unavailable``, exit 69).

    *failed* (one of :data:`PASSING`) and *started* (``time.monotonic()``): the first
    request was made elsewhere (the fast start's own connection) and failed so; the
    wait goes on here as if it had been made here."""
    if wait == 0 and failed is None:
        return client.acquire_lock(resources, ttl=ttl, wait=0, pid=pid, pgid=pgid,
                                   shared=shared)
    if failed is None:
        client.connect()  # (not there at all: no waiting for it)
    begun = time.monotonic() if started is None else started
    deadline = None if wait is None else begun + wait
    away_since: float | None = None
    while True:
        if failed is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return client.acquire_lock(resources, ttl=ttl, wait=left, pid=pid, pgid=pgid,
                                           shared=shared)
            except passing() as passed:
                failed = passed
        why, failed = failed, None
        from engram_cli.client.errors import Timeout, Unavailable

        if isinstance(why, Unavailable) and str(why).startswith(CLUSTER_REFUSAL):
            raise why  # the daemon is there and answered: its cluster cannot serve now
        now = time.monotonic()
        away_since = now if away_since is None else away_since
        if deadline is not None and now >= deadline:
            raise Timeout(f"waited {wait:g}s; engramd went away meanwhile and did not "
                          f"grant the lease in time ({why})") from None
        if deadline is None and now - away_since >= AWAY_LIMIT:
            raise why
        client.close()
        client.autostart = False  # a daemon started here would not know our line
        time.sleep(RETRY_SECONDS)
        if client_reachable(client):
            away_since = None


def client_reachable(client: Client | Any) -> bool:
    """Whether the daemon answers again (a connection made, or not)."""
    try:
        client.connect()
    except passing():
        return False
    return True
