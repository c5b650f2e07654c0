"""The process groups this engramd checked itself, the only ones it ever stops.

A lease record in the cluster's bucket names its machine, boot id and process group,
and anyone with the cluster's credentials can write one (or a ticket whose terms a
release hands over): what a record says is no reason to signal a process here. So a
machine stops a lease's group only when it checked that group itself for a request of
its own (:meth:`engramd.groups.ProcessGroups.check`) and noted it here, by the lock id
the lease was to carry: the leases it takes itself, and the lock ids its waiters'
tickets name (a release elsewhere grants those). A lease naming this machine with a
group that is not noted here under its lock id is one without a group: logged once,
never signalled.

Kept in the daemon's own store (``g/<lock id>``, written with RocksDB's log), so the
leases it granted before a restart of engramd in the same boot still have their groups
stopped; entries of another boot, and those whose lease ended while engramd was away,
are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable

import msgspec

from engramd.protocol import Lease
from engramd.storage import Store

log = logging.getLogger("engramd.cluster.leases")

MOST_WARNED = 1024
"""Lock ids remembered as warned of (then the memory starts again)."""


class OwnGroup(msgspec.Struct, array_like=True, frozen=True):
    pgid: int
    boot_id: str


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(OwnGroup).decode


class OwnGroups:
    """Lock id -> the process group this engramd checked for it (see the module)."""

    def __init__(self, store: Store, boot_id: str) -> None:
        self.store = store
        self.boot_id = boot_id
        self.by_lock_id: dict[str, int] = {}
        self.restored: set[str] = set()
        """Lock ids kept from before this start, until the watch shows which still hold."""
        self._warned: set[str] = set()
        for lock_id, raw in list(store.own_groups()):
            try:
                noted = _decode(raw)
            except msgspec.DecodeError:
                noted = None
            if noted is None or not boot_id or noted.boot_id != boot_id:
                self.store.drop_own_group(lock_id)  # (a reboot ended its group)
                continue
            self.by_lock_id[lock_id] = noted.pgid
            self.restored.add(lock_id)

    def note(self, lock_ids: Iterable[str], pgid: int) -> None:
        """The leases *lock_ids* of a request of this machine carry group *pgid*, which
        was checked (noted before any record of them is written)."""
        for lock_id in lock_ids:
            self.store.put_own_group(lock_id, _encode(OwnGroup(pgid, self.boot_id)))
            self.by_lock_id[lock_id] = pgid

    def forget(self, lock_ids: Iterable[str]) -> None:
        for lock_id in lock_ids:
            if self.by_lock_id.pop(lock_id, None) is not None:
                self.store.drop_own_group(lock_id)
            self.restored.discard(lock_id)

    def keep_held(self, held: Container[str]) -> None:
        """After the first full look at the bucket: forget what was kept from before this
        start and is not *held* (its lease ended while engramd was away)."""
        self.forget([lock_id for lock_id in self.restored if lock_id not in held])
        self.restored.clear()

    def vouches(self, lease: Lease) -> bool:
        """Whether *lease*'s group is one this engramd checked for it. One it did not
        (a record written by someone else) is logged once and never signalled."""
        if lease.pgid is not None and self.by_lock_id.get(lease.lock_id) == lease.pgid:
            return True
        if lease.lock_id not in self._warned:
            if len(self._warned) >= MOST_WARNED:
                self._warned.clear()
            self._warned.add(lease.lock_id)
            log.warning("cluster leases: the lease on %.200s (lock id %.40s, holder %.100s) "
                        "names process group %s of this machine, which this engramd did not "
                        "check for it: not written by this engramd; its group is never "
                        "signalled", lease.resource, lease.lock_id, lease.holder, lease.pgid)
        return False
