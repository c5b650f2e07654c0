"""The daemon's "now": the time units are stamped with and retention measures ages by.

The wall clock, or the wall clock at the start plus trio's time since, when that is
later. In service that is the machine's clock (trio's clock is the monotonic one, which
a suspended machine stops). In tests trio's clock may be virtual
(:class:`trio.testing.MockClock`): it runs ahead of the wall, and with it the daemon's
days pass in a moment, its timestamps and its retention's ages together.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import trio


def anchored_clock() -> Callable[[], dt.datetime]:
    """A clock as the module says, anchored now (call it in a trio run)."""
    wall, start = dt.datetime.now(dt.UTC), trio.current_time()

    def now() -> dt.datetime:
        return max(dt.datetime.now(dt.UTC),
                   wall + dt.timedelta(seconds=trio.current_time() - start))

    return now
