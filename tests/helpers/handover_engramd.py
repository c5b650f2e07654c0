"""``engramd`` with a fault in a handover in one write, for the tests of it.

Run as ``python -m tests.helpers.handover_engramd`` in place of ``python -m engramd``,
with ``HANDOVER_FAULT`` naming the fault and ``HANDOVER_FAULT_FILE`` a file: the fault
happens once, the first time it can while that file exists (then the file is removed,
so the test knows it happened and when):

* ``intrude``: just before this machine sends a handover's batch, a third party (as
  another machine would) writes a lease under the root of the batch's first grant,
  on another resource: the batch's expectation under the root no longer holds.
* ``lose-answer``: this machine's handover batch is stored, and its answer lost (as
  when the server that took it goes before answering): the batch is sent again.
* ``slow-grant``: this machine's watch delivers a lease handed over to one of its
  waiters only after ``HANDOVER_FAULT_DELAY`` seconds (its waiter may give up
  meanwhile).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from typing import Any

import msgspec

from engramd.cluster import bucket
from engramd.main import main
from engramd.protocol import Lease
from engramd.protocol.resources import parse

_write_batch = bucket.LeaseBucket.write_batch
_next_updates = bucket.LeaseBucket.next_updates


def _due(fault: str) -> bool:
    """Whether *fault* is this process's and is to happen now (once)."""
    path = os.environ.get("HANDOVER_FAULT_FILE", "")
    if os.environ.get("HANDOVER_FAULT") != fault or not path:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


async def _faulty_write_batch(self: bucket.LeaseBucket, writes: list[bucket.BatchWrite]
                              ) -> int:
    if _due("intrude"):
        granted = bucket.decode_lease_record(writes[1].value)
        assert isinstance(granted, bucket.Held)
        root = parse(granted.lease.resource).root
        resource = f"{root}intruder" if root.endswith(":") else root
        now = dt.datetime.now(dt.UTC)
        intruder = Lease(resource=resource, holder="intruder", lock_id="i" * 32,
                         fencing_token=0, acquired_at=now, expires_at=now, ttl=2,
                         session="elsewhere", machine="elsewhere")
        await self.write(bucket.lease_key(resource, bucket.holder_token("intruder", "x")),
                         bucket.encode_record(bucket.Held(intruder)), last=None, ttl=2)
    elif _due("lose-answer"):
        await _write_batch(self, writes)
        raise TimeoutError("the answer was lost (a fault of the test)")
    return await _write_batch(self, writes)


async def _slow_next_updates(self: bucket.LeaseBucket, limit: int, wait: float
                             ) -> list[bucket.KeyUpdate | None]:
    found = await _next_updates(self, limit, wait)
    if any(_handed(update) for update in found) and _due("slow-grant"):
        await asyncio.sleep(float(os.environ.get("HANDOVER_FAULT_DELAY", "3")))
    return found


def _handed(update: Any) -> bool:
    if update is None or not update.key.startswith("l.") or not update.value:
        return False
    try:
        record = bucket.decode_lease_record(update.value)
    except msgspec.DecodeError:
        return False
    return isinstance(record, bucket.Held) and bool(record.waiter)


def install() -> None:
    """Patch this process's engramd (never done on import)."""
    bucket.LeaseBucket.write_batch = _faulty_write_batch  # type: ignore[method-assign]
    bucket.LeaseBucket.next_updates = _slow_next_updates  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    raise SystemExit(main())
