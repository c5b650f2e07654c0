"""One caller's share of the gateway's bounded pools: the streams it follows (512 with
the defaults) and the stream tickets waiting to be used (10,000). Without a share, one
agent (a runaway script, a tab reloading in a loop) could take every place and leave the
others none; past its share it is refused at once, 429 ``rate_limited`` with
``Retry-After``, and everyone else is served as before."""

from __future__ import annotations

import collections
import contextlib
import hashlib
from collections.abc import Callable, Iterator

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


class Held:
    """How many of a pool each caller holds now, against a share of *per_caller*."""

    def __init__(self, per_caller: int) -> None:
        self.per_caller = per_caller
        self._held: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def one_more(self, who: str, refusal: Callable[[int], Exception]) -> Iterator[None]:
        """One more for *who* for the block's length; ``refusal(held)`` raised at once
        past its share."""
        if self._held[who] >= self.per_caller:
            raise refusal(self._held[who])
        self._held[who] += 1
        try:
            yield
        finally:
            self._held[who] -= 1
            if not self._held[who]:
                del self._held[who]


class StreamShares:
    """The streams each caller has open, against its share."""

    def __init__(self, per_agent: int = STREAMS_PER_AGENT) -> None:
        self._open = Held(per_agent)

    def hold(self, credentials: Credentials) -> contextlib.AbstractContextManager[None]:
        """One more stream for the caller for the block's length; RateLimited at once
        past its share."""
        return self._open.one_more(caller_of(credentials), lambda held: RateLimited(
            f"this agent has {held} streams open, as many as one agent may "
            f"(--streams-per-agent); close one, or retry in {STREAM_RETRY}s"))
