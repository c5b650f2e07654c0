"""``engramd`` whose view of the cluster journal receives nothing while a file exists.

Run as ``python -m tests.helpers.stalled_view_engramd`` in place of ``python -m engramd``,
with ``STALL_FILE`` naming the file: while it exists, every message the view's
subscription gives is dropped (as nats-py drops what overflows its queue, counted as
delivered), so the view falls behind the stream with nothing to show a hole.
"""

from __future__ import annotations

import os

from engramd.cluster import nats
from engramd.main import main

_next_messages = nats.NatsLink.next_messages


async def _stalling_next_messages(self: nats.NatsLink, limit: int, wait: float
                                  ) -> list[tuple[int, bytes, str]]:
    found = await _next_messages(self, limit, wait)
    if os.path.exists(os.environ.get("STALL_FILE", "")):
        return []
    return found


nats.NatsLink.next_messages = _stalling_next_messages  # type: ignore[method-assign]

if __name__ == "__main__":
    raise SystemExit(main())
