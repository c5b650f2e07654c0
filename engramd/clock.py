"""The daemon's "now": the time units are stamped with and retention measures ages by.

The wall clock, plus however far trio's clock has run ahead of the machine's own
monotonic clock since the start. In service trio's clock *is* that clock (its
``SystemClock`` reads ``perf_counter``), so this is the wall clock itself, NTP's steps
and all. In tests trio's clock may be virtual (:class:`trio.testing.MockClock`): its
jumps move the daemon's days on in a moment, its timestamps and its retention's ages
together.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import trio


def anchored_clock() -> Callable[[], dt.datetime]:
    """A clock as the module says, anchored now (call it in a trio run)."""
    trio_start, machine_start = trio.current_time(), time.perf_counter()

    def now() -> dt.datetime:
        ahead = (trio.current_time() - trio_start) - (time.perf_counter() - machine_start)
        wall = dt.datetime.now(dt.UTC)
        # (Two readings of one clock differ by microseconds: only a jump counts.)
        return wall + dt.timedelta(seconds=ahead) if ahead > 1.0 else wall

    return now
