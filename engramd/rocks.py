"""RocksDB reads that never come back short: damage is an error that names the file.

A RocksDB iterator that meets a block whose checksum fails simply stops, as if the
keys ended there; only its ``status()`` says why. :class:`CheckedIter` asks at every
stop, and a point read's exception is turned into the same :class:`StoreDamaged`,
so that a damaged store answers with an error naming the file and the fix, never
with fewer units. Checksums are verified on every read and files are checked when
the store opens (paranoid checks).

Synchronous and trio-free, like the store.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rocksdict import (
    AccessType,
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    RdictIter,
    ReadOptions,
)

from engramd.protocol.errors import Damaged, DiskFull

REBUILD_HINT = ("stop engramd and run 'engramd --rebuild-store' (the store is rebuilt from "
                "the journal; the damaged one is kept aside)")
_FILE = re.compile(r"(/\S+?\.(?:sst|log|blob)|/\S+/MANIFEST-\d+|/\S+/CURRENT|/\S+/OPTIONS-\d+)"
                   r"(?:[:\s]|$)")
_OFFSET = re.compile(r"offset (\d+)")


class StoreDamaged(Damaged):
    """A read of the store met damage (RocksDB says ``Corruption``, or cannot read a
    file). Carries the file RocksDB named (else the store's directory)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"the store is damaged: {path}: {reason}; {REBUILD_HINT}")
        self.path = path
        self.reason = reason


class StoreFull(DiskFull):
    """The store could not write for want of space (or was opened read-only)."""


def damage_of(exc: BaseException, store: str) -> StoreDamaged:
    """The :class:`StoreDamaged` that a RocksDB error (a plain ``Exception``) reports."""
    message = str(exc)
    found = _FILE.search(message)
    path = found.group(1) if found else store
    reason = message.split(" in /", 1)[0].split("  ", maxsplit=1)[0]
    # RocksDB puts the checksums it compared in the middle: they tell a user nothing.
    reason = re.sub(r": stored\(context removed\).*?type = \d+", "", reason).strip()
    offset = _OFFSET.search(message)
    if offset and "offset" not in reason:
        reason += f" at offset {offset.group(1)}"
    return StoreDamaged(path, reason or "unreadable")


def is_disk_full(exc: BaseException) -> bool:
    """Whether a RocksDB (or OS) error says the disk is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)


class CheckedIter:
    """An :class:`RdictIter` whose :meth:`valid` raises :class:`StoreDamaged` where the
    plain iterator would just stop early."""

    __slots__ = ("_damaged", "_it", "key", "next", "prev", "seek", "seek_for_prev", "value")

    def __init__(self, it: RdictIter, damaged: Callable[[BaseException], StoreDamaged]) -> None:
        self._it = it
        self._damaged = damaged
        self.seek = it.seek
        self.seek_for_prev = it.seek_for_prev
        self.next = it.next
        self.prev = it.prev
        self.key = it.key
        self.value = it.value

    def valid(self) -> bool:
        if self._it.valid():
            return True
        try:
            self._it.status()
        except Exception as exc:
            raise self._damaged(exc) from None
        return False

    def seek_to_first(self) -> None:
        self._it.seek_to_first()


@dataclass(frozen=True)
class StoreMemory:
    """What the store may hold in memory, whatever its size on disk (``store.*`` keys)."""

    block_cache_bytes: int = 64 * 1024 * 1024
    """Blocks read lately, and the index and filter blocks of every table file."""
    write_buffer_bytes: int = 64 * 1024 * 1024
    write_buffers: int = 2
    """Memtables at once: writes take at most ``write_buffer_bytes`` times this."""


INFO_LOG_BYTES = 4 * 1024 * 1024
INFO_LOGS = 5


def _options(memory: StoreMemory) -> Options:
    options = Options(raw_mode=True)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(memory.block_cache_bytes))
    # Left out of the cache (RocksDB's default), every table file's index and filter
    # blocks stay in memory as long as the file is open: memory that grows with the
    # store. In the cache, partitioned, only the top level of each index stays pinned.
    table.set_cache_index_and_filter_blocks(True)
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_pin_top_level_index_and_filter(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    options.set_block_based_table_factory(table)
    options.set_write_buffer_size(memory.write_buffer_bytes)
    options.set_max_write_buffer_number(memory.write_buffers)
    # RocksDB's own info log (LOG) gains its statistics every ten minutes and a new file
    # at each open, 1000 of them kept by default: bounded here to 5 x 4 MiB.
    options.set_max_log_file_size(INFO_LOG_BYTES)
    options.set_keep_log_file_num(INFO_LOGS)
    return options


def read_options() -> ReadOptions:
    options = ReadOptions()
    options.set_verify_checksums(True)
    return options


def open_rocks(path: str, *, read_only: bool = False,
               memory: StoreMemory = StoreMemory()) -> Rdict:
    """Open the RocksDB at *path*, creating it only where there is nothing yet.

    A directory with a manifest or tables but no ``CURRENT`` is a damaged store, never a
    new one: RocksDB would start an empty store there and delete the old files as
    obsolete. (Without either, it is a creation that never finished: made anew.)

    Raises:
        StoreDamaged: it cannot be opened (the message names the file).
        StoreFull: the disk is full (open it ``read_only``).
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    names = os.listdir(path)
    fresh = "CURRENT" not in names
    if fresh and any(name.startswith("MANIFEST-") or name.endswith(".sst") for name in names):
        raise StoreDamaged(os.path.join(path, "CURRENT"), "missing")
    options = _options(memory)
    options.create_if_missing(fresh and not read_only)
    options.set_paranoid_checks(True)
    access = AccessType.read_only() if read_only else AccessType.read_write()
    try:
        # The column family's options given as well: without them rocksdict reads the
        # default family's from the store's OPTIONS file, the ones it was created with
        # (the block cache became RocksDB's 8 MiB and the memtables never changed).
        db = Rdict(path, options, column_families={"default": options}, access_type=access)
    except Exception as exc:
        if is_disk_full(exc):
            raise StoreFull(f"the store cannot be opened for writing: the disk is full "
                            f"({path})") from None
        raise damage_of(exc, path) from None
    db.set_read_options(read_options())
    return db


def rocks_get(db: Any, key: Any, damaged: Callable[[BaseException], StoreDamaged]) -> Any:
    """``db.get(key)`` (one key or a list of keys), damage raised as StoreDamaged."""
    try:
        return db.get(key)
    except Exception as exc:
        raise damaged(exc) from None
