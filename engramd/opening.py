"""Opening the journal: the store, the log and the search index, in a worker thread.

Every way this can fail is one :class:`StartupError` line that names the file and the
fix (``engramd --rebuild-store``, ``--reindex``, ``--repair``), never a traceback.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass

from engramd.config import DaemonConfig
from engramd.errors import StartupError
from engramd.indexer import Indexer, open_index, vector_opener
from engramd.integrity import log_first_seq
from engramd.rocks import StoreDamaged
from engramd.storage import SchemaMismatch, Store
from engramd.wal.log import Corruption, WriteAheadLog

log = logging.getLogger("engramd.engine")

REINDEX_HINT = "it is derived from the journal: run 'engramd --reindex' to rebuild it"


@dataclass
class Opened:
    store: Store
    wal: WriteAheadLog | None
    """None in cluster mode: the journal is the cluster's stream."""
    indexer: Indexer


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
        store = Store(path)
    except (SchemaMismatch, StoreDamaged) as exc:
        if not clustered:
            raise StartupError(_cannot_open(exc)) from None
        store = _store_anew(path, exc)
    try:
        _check_mode(config, store)
    except StartupError:
        store.close()
        raise
    wal = None
    if not clustered:
        wal = WriteAheadLog(os.path.join(config.data_dir, "wal"),
                            segment_bytes=config.segment_bytes,
                            sync=config.durability == "fsync")
        fresh = store.applied_seq == 0
        try:
            recovery = wal.recover(store.applied_seq, store.apply)
        except Corruption as exc:
            store.close()
            raise StartupError(_wal_damage(exc, fresh)) from None
        except StoreDamaged as exc:
            store.close()
            raise StartupError(_cannot_open(exc)) from None
        except OSError as exc:
            store.close()
            wal.close()
            raise StartupError(f"cannot open the log in {wal.directory}: "
                               f"{exc.strerror}") from None
        log.info("journal open: seq %d, %d entries replayed, %d torn bytes cut, %.3fs",
                 recovery.last_seq, recovery.entries_replayed, recovery.truncated_bytes,
                 time.monotonic() - started)
    try:
        index = open_index(config.data_dir, store, rebuild=config.reindex)
    except sqlite3.Error as exc:
        store.close()
        if wal is not None:
            wal.close()
        search = os.path.join(config.data_dir, "search.db")
        raise StartupError(f"the search index {search} cannot be opened ({exc}); "
                           f"{REINDEX_HINT}") from None
    indexer = Indexer(store, index, vector_opener(config.data_dir, config.embedding,
                                                  rebuild=config.reindex, store=store)
                      if config.semantic == "auto" else None)
    return Opened(store, wal, indexer)


def _cannot_open(exc: Exception) -> str:
    if isinstance(exc, StoreDamaged):
        return (f"cannot start: the store is damaged: {exc.path}: {exc.reason}. Run "
                "'engramd --rebuild-store' to rebuild it from the journal (the damaged store "
                "is kept aside)")
    return f"cannot start: {exc}"


_STORE_GONE = ("cannot start: the store is empty but the log begins later ({}); the older "
               "entries were in the store. Restore the store from a backup, or run 'engramd "
               "--rebuild-store' to rebuild what the log still holds")


def _wal_damage(exc: Corruption, fresh_store: bool) -> str:
    if fresh_store and "segments are missing" in exc.reason:
        # Not a damaged log: the store that held the older entries has gone.
        return _STORE_GONE.format(exc.reason)
    return (f"{exc}. Nothing was changed; 'engramd --repair' cuts the log there, "
            "losing what follows")


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


def _store_anew(path: str, exc: Exception) -> Store:
    """Cluster mode: the store is only a view of the cluster's stream, so one that
    cannot be opened is moved aside and the view is built again from the stream."""
    aside = f"{path}.damaged-{int(time.time())}"
    os.replace(path, aside)
    log.error("cluster: the store cannot be opened (%s); moved to %s, rebuilding this "
              "machine's view from the stream", exc, aside)
    return Store(path)
