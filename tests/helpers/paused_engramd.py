"""``engramd`` whose holder is paused between the fence check and the journal write.

Run as ``python -m tests.helpers.paused_engramd`` in place of ``python -m engramd``.
The first journal write holding a unit whose payload is ``PAUSE_PAYLOAD`` has been
built (its fences checked) when engramd stops itself (SIGSTOP), just before it
publishes: a paused holder. From then on its view of the leases bucket takes in
nothing (the worst case of a machine that resumes before its watch has caught up:
it still believes the lease held). The test ends the lease meanwhile, lets another
machine's holder write, and sends SIGCONT.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from engramd.cluster import journal, leaseview
from engramd.main import main
from engramd.protocol.model import UnitCreated

PAUSE_PAYLOAD = b"paused between check and write"

_frozen = False
_publish = journal.ClusterJournal.publish
_apply = leaseview.LeaseView.apply
_seen = leaseview.LeaseView.seen


async def _pausing_publish(self: journal.ClusterJournal, entries: list[Any], after: int,
                           marks: Any = None) -> int:
    global _frozen
    if not _frozen and any(isinstance(event, UnitCreated)
                           and event.unit.payload == PAUSE_PAYLOAD
                           for entry in entries for event in entry.events):
        _frozen = True
        os.kill(os.getpid(), signal.SIGSTOP)
    return await _publish(self, entries, after, marks)


def _apply_unless_frozen(self: leaseview.LeaseView, update: Any) -> None:
    if not _frozen:
        _apply(self, update)


def _seen_unless_frozen(self: leaseview.LeaseView, key: str, found: Any) -> None:
    if not _frozen:
        _seen(self, key, found)


def install() -> None:
    """Patch this process's engramd (never done on import: the tests import the payload)."""
    journal.ClusterJournal.publish = _pausing_publish  # type: ignore[method-assign]
    leaseview.LeaseView.apply = _apply_unless_frozen  # type: ignore[method-assign]
    leaseview.LeaseView.seen = _seen_unless_frozen  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    raise SystemExit(main())
