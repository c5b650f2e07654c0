"""How cluster mode lives through the cluster's absence.

The cluster may be away for any length of time (two of three NATS servers down, a
partition): a request then gets ``unavailable`` with one line saying so, and every
background task of cluster mode (the view following the stream, the announcements,
the lease watch, a lease's end owed since its holder died, the tickets of waiters)
goes on: it logs what failed (once, then at most once a :attr:`Patience.QUIET` while it
lasts), waits a little longer each time, and tries again, so that what it could not
do is done once the cluster is back. No failure of the cluster ends the daemon, and
reads go on from the local view.
"""

from __future__ import annotations

import logging
import math
import socket
import urllib.parse
from collections.abc import Sequence

import nats.errors
import nats.js.errors
import trio

from engramd.protocol import EngramError, Unavailable

log = logging.getLogger("engramd.cluster")

NO_QUORUM_CODES = frozenset({
    10158,  # duplicate message id is in process: an earlier attempt awaits a quorum
    10118,  # stream offline
    10008,  # JetStream temporarily unavailable
})
"""JetStream error codes that mean "no quorum now" rather than "refused"."""

TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError,
    nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError, nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError, OSError, trio.TooSlowError)
"""What an operation meets while the cluster elects a leader, reconnects, or has no
quorum: it is tried again."""

CLUSTER_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error, TimeoutError, OSError, trio.TooSlowError, EngramError)
"""What a background task may meet from the cluster: each is logged and tried again."""


def transient(exc: BaseException) -> bool:
    """Whether *exc* says the cluster cannot answer now (rather than refusing)."""
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, nats.js.errors.APIError) and (
        exc.err_code in NO_QUORUM_CODES or exc.code == 503)


def unwrapped(exc: BaseException) -> BaseException:
    """The one error inside (nested) groups of one, as trio's nurseries hand it on."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


WITHOUT_WORDS: dict[type[BaseException], str] = {
    trio.TooSlowError: "no answer in time",
    TimeoutError: "no answer in time",
}
"""What errors that carry no message of their own mean, for a person."""


def describe(exc: BaseException) -> str:
    """*exc* in a few words for a person (never a bare class name)."""
    exc = unwrapped(exc)
    if str(exc):
        return str(exc)
    for kind, words in WITHOUT_WORDS.items():
        if isinstance(exc, kind):
            return words
    return type(exc).__name__


class Patience:
    """A background task's way through failures: :meth:`failed` logs (the first time,
    when the reason changes, then at most once every :attr:`QUIET` seconds) and sleeps
    a pause that doubles up to :attr:`LONGEST`; :meth:`succeeded` says it is over."""

    FIRST = 0.25
    LONGEST = 5.0
    QUIET = 60.0

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0
        self._said = ""
        self._said_at = -math.inf

    @property
    def pause(self) -> float:
        return float(min(self.LONGEST, self.FIRST * 2 ** max(0, self.failures - 1)))

    def note(self, exc: BaseException) -> None:
        """Count a failure and log it (rate-limited): the task keeps its own pace."""
        self.failures += 1
        why, exc = describe(exc), unwrapped(exc)
        now = trio.current_time()
        if why != self._said or now - self._said_at >= self.QUIET:
            expected = isinstance(exc, CLUSTER_ERRORS)
            log.log(logging.WARNING if expected else logging.ERROR,
                    "cluster: %s failed (%s; %d time(s)); trying again", self.what, why,
                    self.failures, exc_info=None if expected else exc)
            self._said, self._said_at = why, now

    async def failed(self, exc: BaseException) -> None:
        """:meth:`note`, then a pause (longer each time)."""
        self.note(exc)
        await trio.sleep(self.pause)

    def succeeded(self) -> None:
        if self.failures:
            log.info("cluster: %s again, after %d failure(s)", self.what, self.failures)
        self.failures, self._said, self._said_at = 0, "", -math.inf


def _address(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url if "://" in url else "nats://" + url)
    return parsed.hostname or "127.0.0.1", parsed.port or 4222


async def servers_answering(servers: Sequence[str], within: float = 0.3) -> int:
    """How many of *servers* accept a connection within *within* seconds (all tried at
    once, so it takes at most that long)."""
    answered = 0

    async def probe(url: str) -> None:
        nonlocal answered
        host, port = _address(url)
        with trio.move_on_after(within):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except (OSError, socket.gaierror):
                return
            await stream.aclose()
            answered += 1

    async with trio.open_nursery() as nursery:
        for url in servers:
            nursery.start_soon(probe, url)
    return answered


ELECTION_SECONDS = 15.0
"""How long a request keeps trying, from its start, while a quorum of the servers
answers but the cluster does not answer it (a stream leader being elected after a
server went, this machine's connection moving to another server: a few seconds);
with too few servers answering for a quorum it gives up after the write timeout."""


async def worth_waiting(servers: Sequence[str], started: float, patience: float) -> bool:
    """Whether a request begun at *started* (trio's clock) that the cluster has not
    answered yet tries again: within *patience* (the write timeout), or within
    :data:`ELECTION_SECONDS` while a quorum of *servers* accepts connections (so an
    election can end; without one, the request is told at once: no quorum)."""
    now = trio.current_time()
    if now < started + patience:
        return True
    if now >= started + max(patience, ELECTION_SECONDS):
        return False
    quorum = len(servers) // 2 + 1
    # A second, longer look before giving up: on a loaded machine a connection to a
    # server that is up may take longer than the first look's 0.3 s (a down server on
    # this host refuses at once; one across a network lets it time out either way).
    return (await servers_answering(servers) >= quorum
            or await servers_answering(servers, within=1.0) >= quorum)


class ClusterAway(Unavailable):
    """A request the cluster could not serve: :attr:`why` (no quorum, unreachable, no
    answer in time), then what the request did."""

    def __init__(self, why: str, did: str) -> None:
        super().__init__(f"{why}: {did}")
        self.why = why

    def having(self, did: str) -> ClusterAway:
        """The same failure, saying *did* of the request as a whole."""
        return ClusterAway(self.why, did)


async def cluster_away(servers: Sequence[str], exc: BaseException, did: str) -> ClusterAway:
    """One line for a request the cluster could not serve: why (no quorum, when too few
    of *servers* answer) and what the request did (*did*)."""
    answering = await servers_answering(servers)
    total = len(servers)
    exc = unwrapped(exc)
    quorum_code = isinstance(exc, nats.js.errors.APIError) and exc.err_code in NO_QUORUM_CODES
    if (total >= 2 and answering < total // 2 + 1) or (answering and quorum_code):
        return ClusterAway(f"the cluster has no quorum ({answering} of {total} servers "
                           "answer)", did)
    if answering == 0:
        return ClusterAway("the cluster is unreachable (no server answers)", did)
    why = describe(exc)
    detail = "" if why == WITHOUT_WORDS[TimeoutError] else f"{why}; "
    return ClusterAway(f"the cluster did not answer in time ({detail}{answering} of {total} "
                       "servers answer)", did)
