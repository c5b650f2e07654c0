"""Opening the journal: the store, the log and the search index, in a worker thread.

Every way this can fail is one :class:`StartupError` line that names the file and the
fix (``engramd --rebuild-store``, ``--reindex``, ``--repair``), never a traceback. A
full disk is not a failure: the journal opens read-only (the store as of its last
flush, nothing written) and says so, so that reads go on until there is space.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass

from engramd.config import DaemonConfig
from engramd.errors import JournalDamaged, StartupError
from engramd.indexer import Indexer
from engramd.indexing import Indexes, open_indexes
from engramd.indexproc import IndexProcess
from engramd.integrity import log_first_seq
from engramd.rocks import StoreDamaged, StoreFull, StoreMemory, is_disk_full
from engramd.search import SearchIndex
from engramd.storage import SchemaMismatch, Store
from engramd.wal.cuts import CutLedger
from engramd.wal.log import Corruption, WriteAheadLog

log = logging.getLogger("engramd.engine")

REINDEX_HINT = "it is derived from the journal: run 'engramd --reindex' to rebuild it"


@dataclass
class Opened:
    store: Store
    wal: WriteAheadLog | None
    """None in cluster mode (the journal is the cluster's stream) and when read-only."""
    indexer: Indexer
    read_only: str | None = None
    """Why the journal is read-only (a full disk), or None."""
    cuts: CutLedger | None = None
    """The notes of log tails cut at start-up (None without a local log)."""


def store_memory(config: DaemonConfig) -> StoreMemory:
    """The store's memory bounds, as configured (``store.*`` keys)."""
    return StoreMemory(block_cache_bytes=config.block_cache_bytes,
                       write_buffer_bytes=config.write_buffer_bytes,
                       write_buffers=config.write_buffers)


def open_storage(config: DaemonConfig) -> Opened:
    """Open the store and the log and replay the log. In cluster mode there is no local
    log: the store is a view the cluster's stream feeds."""
    started = time.monotonic()
    clustered = bool(config.cluster_servers)
    path = os.path.join(config.data_dir, "store")
    first = None if clustered else log_first_seq(os.path.join(config.data_dir, "wal"))
    if first is not None and first > 1 and not os.path.exists(path):
        raise StartupError(_STORE_GONE.format(f"the log begins at seq {first}"))
    try:
        store = Store(path, memory=store_memory(config))
    except StoreFull:
        return _open_read_only(config, path)
    except (SchemaMismatch, StoreDamaged) as exc:
        if not clustered:
            raise StartupError(_cannot_open(exc)) from None
        store = _store_anew(path, exc, store_memory(config))
    try:
        _check_mode(config, store)
    except StartupError:
        store.close()
        raise
    wal, cuts = None, None
    if not clustered:
        wal = WriteAheadLog(os.path.join(config.data_dir, "wal"),
                            segment_bytes=config.segment_bytes,
                            sync=config.durability == "fsync")
        fresh = store.applied_seq == 0
        cuts = CutLedger(wal.directory)
        try:
            recovery = wal.recover(store.applied_seq, store.apply, cuts=cuts)
        except Corruption as exc:
            store.close()
            raise _wal_damage(exc, fresh) from None
        except StoreDamaged as exc:
            store.close()
            raise StartupError(_cannot_open(exc)) from None
        except OSError as exc:
            store.close()
            wal.close()
            if not is_disk_full(exc):
                raise StartupError(f"cannot open the log in {wal.directory}: "
                                   f"{exc.strerror}") from None
            return _open_read_only(config, path)
        log.info("journal open: seq %d, %d entries replayed, %d torn bytes cut, %.3fs",
                 recovery.last_seq, recovery.entries_replayed, recovery.truncated_bytes,
                 time.monotonic() - started)
    try:
        indexes = _open_indexes(config, store)
    except (sqlite3.Error, OSError) as exc:
        store.close()
        if wal is not None:
            wal.close()
        search = os.path.join(config.data_dir, "search.db")
        if is_disk_full(exc) or "disk is full" in str(exc) or "disk I/O" in str(exc):
            return _open_read_only(config, path)
        if isinstance(exc, sqlite3.Error):
            raise StartupError(f"the search index {search} cannot be opened ({exc}); "
                               f"{REINDEX_HINT}") from None
        raise StartupError(f"the search index {search} cannot be opened: {exc}") from None
    indexer = Indexer(store, indexes, reserve_bytes=config.reserve_bytes)
    return Opened(store, wal, indexer, cuts=cuts)


def _open_indexes(config: DaemonConfig, store: Store) -> Indexes | IndexProcess:
    """The search indexes, in a process of their own unless configured otherwise."""
    embedding = config.embedding if config.semantic == "auto" else None
    if config.indexer == "process":
        return IndexProcess(config.data_dir, embedding, rebuild=config.reindex,
                            applied_seq=lambda: store.applied_seq,
                            exact_rows=config.exact_rows)
    return open_indexes(config.data_dir, embedding, rebuild=config.reindex,
                        applied_seq=lambda: store.applied_seq, exact_rows=config.exact_rows)


def _open_read_only(config: DaemonConfig, path: str) -> Opened:
    """The journal on a full disk: the store as of its last flush, nothing written."""
    try:
        store = Store(path, read_only=True, memory=store_memory(config))
    except (SchemaMismatch, StoreDamaged) as exc:
        raise StartupError(_cannot_open(exc)) from None
    why = (f"the disk holding {config.data_dir} is full: engramd started read-only (reads "
           f"answer as of seq {store.applied_seq}; writes are refused). Free some space and "
           "restart engramd")
    log.error("%s", why)
    search = os.path.join(config.data_dir, "search.db")
    try:
        indexes: Indexes | None = Indexes(SearchIndex(search, read_only=True))
    except sqlite3.Error:
        indexes = None
    indexer = Indexer(store, indexes, reserve_bytes=config.reserve_bytes, read_only=why)
    return Opened(store, None, indexer, read_only=why)


def _cannot_open(exc: Exception) -> str:
    if isinstance(exc, StoreDamaged):
        return (f"cannot start: the store is damaged: {exc.path}: {exc.reason}. Run "
                "'engramd --rebuild-store' to rebuild it from the journal (the damaged store "
                "is kept aside)")
    return f"cannot start: {exc}"


_STORE_GONE = ("cannot start: the store is empty but the log begins later ({}); the older "
               "entries were in the store. Restore the store from a backup, or run 'engramd "
               "--rebuild-store' to rebuild what the log still holds")


def _wal_damage(exc: Corruption, fresh_store: bool) -> StartupError:
    if fresh_store and "segments are missing" in exc.reason:
        # Not a damaged log: the store that held the older entries has gone.
        return StartupError(_STORE_GONE.format(exc.reason))
    return JournalDamaged(f"{exc}; engramd changed nothing and stops: run 'engramd --repair' "
                          "to keep every intact record and set the damaged bytes aside")


def _check_mode(config: DaemonConfig, store: Store) -> None:
    """Refuse a data dir of the other mode: a single machine's journal is not a view
    of a cluster's stream (its seqs would not follow the stream's), nor the reverse."""
    clustered = bool(config.cluster_servers)
    if clustered and store.applied_seq > 0 and store.stream_seq == 0:
        raise StartupError(
            f"{config.data_dir} holds a single machine's journal (seq "
            f"{store.applied_seq}); cluster mode needs a data dir of its own. Move the "
            "journal in with 'engram unit export --all' and 'engram unit import' "
            "(docs/cluster.md)")
    if not clustered and store.stream_seq > 0:
        raise StartupError(
            f"{config.data_dir} is a machine's view of a cluster's journal; start "
            "engramd with cluster.servers set, or give it a data dir of its own")


def _store_anew(path: str, exc: Exception, memory: StoreMemory) -> Store:
    """Cluster mode: the store is only a view of the cluster's stream, so one that
    cannot be opened is moved aside and the view is built again from the stream."""
    aside = f"{path}.damaged-{int(time.time())}"
    os.replace(path, aside)
    log.error("cluster: the store cannot be opened (%s); moved to %s, rebuilding this "
              "machine's view from the stream", exc, aside)
    return Store(path, memory=memory)
