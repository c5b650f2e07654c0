"""One caller's share of the gateway's bounded pools: the streams it follows (512 with
the defaults) and the stream tickets waiting to be used (10,000). Without a share, one
agent (a runaway script, a tab reloading in a loop) could take every place and leave the
others none; past its share it is refused at once, 429 ``rate_limited`` with
``Retry-After``, and everyone else is served as before."""

from __future__ import annotations

import collections
import contextlib
import hashlib
from collections.abc import Iterator

from engram_cli.doors.gateway.auth import Credentials
from engramd.protocol import RateLimited

STREAMS_PER_AGENT = 64
"""Streams one caller may have open at once (``--streams-per-agent``)."""
TICKETS_PER_AGENT = 100
"""Unused stream tickets one caller may hold at once (``--tickets-per-agent``)."""
STREAM_RETRY = 5
"""Seconds a stream refused past its caller's share is told to wait."""


def caller_of(credentials: Credentials) -> str:
    """Who a share is counted for: the agent, or with an agent token (whose agent the
    daemon names) the token, by digest."""
    if credentials.agent_id:
        return "agent:" + credentials.agent_id
    return "token:" + hashlib.sha256((credentials.token or "").encode()).hexdigest()


class StreamShares:
    """The streams each caller has open, against its share."""

    def __init__(self, per_agent: int = STREAMS_PER_AGENT) -> None:
        self.per_agent = per_agent
        self._open: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def hold(self, credentials: Credentials) -> Iterator[None]:
        """One more stream for the caller for the block's length; RateLimited at once
        past its share."""
        who = caller_of(credentials)
        if self._open[who] >= self.per_agent:
            raise RateLimited(f"this agent has {self._open[who]} streams open, as many as "
                              f"one agent may (--streams-per-agent); close one, or retry "
                              f"in {STREAM_RETRY}s")
        self._open[who] += 1
        try:
            yield
        finally:
            self._open[who] -= 1
            if not self._open[who]:
                del self._open[who]
