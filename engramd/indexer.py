"""The indexer: keeps the search indexes fed from the event log, off the event loop.

A commit wakes it; it reads the stored events after the indexes' seqs in batches, in
its one worker thread, and hands them to the indexes (:mod:`engramd.indexing`), which
by default live in a process of their own (:mod:`engramd.indexproc`): decoding,
indexing and embedding then take no turn of the interpreter lock the request path
needs. Woken, it first lets the commits of the next ``SETTLE_SECONDS`` gather, so that
under a steady trickle of writes one SQLite transaction (and one hand-off) takes many
units instead of one each: indexing a unit on its own cost more than writing it. The
indexes are derived data, so their failures (a full disk, an index process that died)
are logged and retried, never fatal.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable

import trio

from engramd.indexing import Indexes, check_file, is_damage
from engramd.indexproc import IndexProcess, IndexProcessFailed, IndexProcessGone
from engramd.protocol import Damaged, DiskFull, Unavailable
from engramd.rocks import StoreDamaged
from engramd.runtime import free_bytes
from engramd.search import Hit
from engramd.storage import Store

log = logging.getLogger("engramd.indexer")

BATCH = 2000
BATCH_BYTES = 16 * 1024 * 1024
"""A batch's stored bytes at most (so one takes the index process seconds, not minutes)."""
SEARCH_WAIT_SECONDS = 10.0
"""How long a search waits for the indexes (behind a batch being indexed) before it is
answered ``unavailable``: a client waits 30 s for its answer, and must get one."""
RETRY_SECONDS = 1.0
ROOM_SHARE = 4
"""A batch's stored bytes stay under 1/ROOM_SHARE of the room above the reserve."""
PAUSED_RETRY_SECONDS = 5.0
"""How often a paused indexer (disk nearly full, store damaged) looks again."""
SETTLE_SECONDS = 0.05
"""How long a wake-up waits for more commits: how far searches may trail the journal."""


class Indexer:
    """Feeds the indexes; pauses (and says why) while the disk is nearly full or the
    store is damaged, and catches up once that is over: the journal comes first."""

    def __init__(self, store: Store, indexes: Indexes | IndexProcess | None, *,
                 reserve_bytes: int = 0, read_only: str | None = None) -> None:
        self.store = store
        self._indexes = indexes
        self.reserve_bytes = reserve_bytes
        """The indexer writes only while more than this is free on the data dir's disk."""
        self.read_only = read_only
        self.paused: str | None = read_only
        """Why the indexes are not being fed now, or None."""
        self.damaged: str | None = None
        """Why the index file is damaged, as :meth:`verify` found it, until it is rebuilt."""
        self._wanted = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        """The indexes are used by one worker thread at a time."""

    @property
    def indexes(self) -> Indexes | IndexProcess:
        if self._indexes is None:
            raise DiskFull(f"search is unavailable: {self.read_only}")
        return self._indexes

    @property
    def indexed_seq(self) -> int:
        return 0 if self._indexes is None else self._indexes.keyword_seq

    @property
    def semantic(self) -> bool:
        """Whether semantic search is installed (its index may still be opening)."""
        return self._indexes is not None and self._indexes.semantic

    @property
    def vector_seq(self) -> int | None:
        """How far the vector index has taken in the journal; None without semantic search."""
        return None if self._indexes is None else self._indexes.vector_seq

    @property
    def approximate_lag(self) -> int:
        """Vectors the approximate index has yet to take in (0 without one)."""
        return 0 if self._indexes is None else self._indexes.approximate_lag

    def wake(self) -> None:
        """New events are durable: index them soon."""
        self._wanted.set()

    async def run(self) -> None:
        if self.read_only is not None:
            return
        self._wanted.set()  # catch up with what came before this start
        while True:
            await self._wanted.wait()
            await trio.sleep(SETTLE_SECONDS)
            self._wanted = trio.Event()
            try:
                while await trio.to_thread.run_sync(self._feed, limiter=self._limiter):
                    pass
            except (sqlite3.Error, OSError) as exc:
                if is_damage(exc):  # not worth a retry a second: said once, looked at now and then
                    self._pause(f"the search index {self.indexes.path} is damaged ({exc}); "
                                "rebuild it with 'engram daemon reindex' (or 'engramd "
                                "--reindex')")
                else:
                    # Searches lag meanwhile; status shows by how much.
                    log.warning("search index not updated (%s); retrying in %gs", exc,
                                RETRY_SECONDS)
                    await trio.sleep(RETRY_SECONDS)
                    self._wanted.set()
            except StoreDamaged as exc:
                self._pause(str(exc))
            if self.paused is not None:
                await trio.sleep(PAUSED_RETRY_SECONDS)
                self._wanted.set()

    def _pause(self, why: str | None) -> None:
        if why != self.paused:
            if why is not None:
                log.warning("search indexing paused: %s", why)
            else:
                log.info("search indexing resumed")
        self.paused = why

    def _feed(self) -> bool:
        """One batch, unless the disk is nearly full (then the journal comes first) or
        the index file is damaged (then it waits to be rebuilt)."""
        if self.damaged is not None:
            self._pause(self.damaged)
            return False
        free = free_bytes(os.path.dirname(self.indexes.path) or ".")
        if free <= self.reserve_bytes:
            self._pause(f"{free} bytes free on the data dir's disk, under the reserve of "
                        f"{self.reserve_bytes} (search.reserve_bytes): the journal comes "
                        "first; indexing catches up once there is space")
            return False
        # The index keeps the text, and SQLite's log a copy of each page it changes until
        # its checkpoint: a batch's text may take a quarter of the room left.
        more = self._batch(min(BATCH_BYTES, (free - self.reserve_bytes) // ROOM_SHARE))
        self._pause(None)
        return more

    def _batch(self, budget: int | None = None) -> bool:
        """Index the next events after the indexes' seqs (at least one, then no more
        than *budget* stored bytes); True if more may remain."""
        indexes = self.indexes
        stored = self.store.events_after(indexes.wanted_after(), BATCH)
        if not stored:
            # Nothing new: build a slice of the approximate graph if it is behind.
            return indexes.catch_up()
        full = len(stored) == BATCH
        if budget is not None:
            total = 0
            for count, (_, value) in enumerate(stored):
                total += len(value)
                if total > budget and count:
                    stored, full = stored[:count], True
                    break
        indexes.take(stored)
        return full

    async def verify(self) -> None:
        """Read the whole index file once (``store.verify_on_start``), so that damage
        shows at once (status, log), not when a search meets it or never: derived data,
        treated as the store is."""
        if self.read_only is not None:
            return
        path = self.indexes.path
        damage = await trio.to_thread.run_sync(check_file, path)
        if damage is None:
            log.info("search index read in full: no damage")
            return
        self.damaged = (f"the search index {path} is damaged ({damage}); it is derived from "
                        "the journal: rebuild it with 'engram daemon reindex' (or 'engramd "
                        "--reindex')")
        log.error("%s", self.damaged)
        self._pause(self.damaged)

    async def rebuild(self) -> None:
        """Start the index over from the store; it catches up in the background."""
        if self.read_only is not None:
            raise DiskFull(f"the search index cannot be rebuilt: {self.read_only}")
        await trio.to_thread.run_sync(self.indexes.start_over, limiter=self._limiter)
        if self.damaged is not None:
            self.damaged = None
            self._pause(None)
        self._wanted.set()

    async def _searched(self, search: Callable[[], tuple[int, list[Hit]]]
                        ) -> tuple[int, list[Hit]]:
        """*search* run in a worker thread once the indexes are free (a batch may be
        indexing), or ``unavailable`` if they are not within ``SEARCH_WAIT_SECONDS``;
        ``damaged`` while the index file is known to be."""
        if self.damaged is not None:
            raise Damaged(self.damaged)
        with trio.move_on_after(SEARCH_WAIT_SECONDS):
            await self._limiter.acquire()
            try:
                return await trio.to_thread.run_sync(search)
            except (IndexProcessGone, IndexProcessFailed) as exc:
                raise Unavailable(f"search is unavailable: {exc}") from None
            finally:
                self._limiter.release()
        if self._indexes is not None and self._indexes.kill_if_stopped():
            raise Unavailable("search is unavailable: the index process was stopped while "
                              "it indexed a batch; it was killed and starts again: retry")
        raise Unavailable(f"search is unavailable: the search index was busy for "
                          f"{SEARCH_WAIT_SECONDS:g}s (indexing a batch)")

    async def search(self, query: str | None, **filters: object) -> tuple[int, list[Hit]]:
        """Run :meth:`SearchIndex.search` in the index's worker thread."""
        indexes = self.indexes
        try:
            return await self._searched(lambda: indexes.search(query, **filters))
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            raise Damaged(f"the search index {indexes.path} is damaged ({exc}); it is derived "
                          "from the journal: rebuild it with 'engram daemon reindex' (or "
                          "'engramd --reindex')") from None

    async def nearest(self, text: str, *, limit: int, min_similarity: float | None,
                      exact: bool = False, **filters: object) -> tuple[int, list[Hit]]:
        """Semantic search in the indexes' worker thread: ``(candidates, hits)`` with the
        cosine similarity as each hit's score (*exact*: never the approximate index)."""
        indexes = self.indexes
        return await self._searched(lambda: indexes.nearest(
            text, limit=limit, min_similarity=min_similarity, exact=exact, **filters))

    def close(self) -> None:
        if self._indexes is not None:
            self._indexes.close()
