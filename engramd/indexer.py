"""The indexer: keeps the search index fed from the event log, off the event loop.

It owns the :class:`~engramd.search.SearchIndex` and the one worker thread that
may use it: a commit wakes it, it reads the stored events after the index's seq
in batches and indexes the units among them. Woken, it first lets the commits of
the next ``SETTLE_SECONDS`` gather, so that under a steady trickle of writes one
SQLite transaction (and one hand-off to its thread) takes many units instead of
one each: indexing a unit on its own cost more than writing it. The index is
derived data, so its failures (a full disk) are logged and retried, never fatal.
"""

from __future__ import annotations

import logging
import os
import sqlite3

import msgspec
import trio

from engramd.protocol.model import Unit
from engramd.search import Document, Hit, SearchIndex
from engramd.storage import Store

log = logging.getLogger("engramd.indexer")

BATCH = 2000
RETRY_SECONDS = 1.0
SETTLE_SECONDS = 0.05
"""How long a wake-up waits for more commits: how far searches may trail the journal."""
_unit_decoder = msgspec.msgpack.Decoder(Unit)


def open_index(data_dir: str, store: Store, *, rebuild: bool) -> SearchIndex:
    """The index in *data_dir*, started over if asked or if it is ahead of the store."""
    path = os.path.join(data_dir, "search.db")
    if rebuild:
        SearchIndex.destroy(path)
    index = SearchIndex(path)
    if index.indexed_seq > store.applied_seq:
        # The index is ahead of the store (a store from elsewhere): start it over.
        index.close()
        SearchIndex.destroy(path)
        index = SearchIndex(path)
    return index


class Indexer:
    def __init__(self, store: Store, index: SearchIndex) -> None:
        self.store = store
        self.index = index
        self._wanted = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        """The SQLite connection is used by one worker thread at a time."""

    @property
    def indexed_seq(self) -> int:
        return self.index.indexed_seq

    def wake(self) -> None:
        """New events are durable: index them soon."""
        self._wanted.set()

    async def run(self) -> None:
        self._wanted.set()  # catch up with what came before this start
        while True:
            await self._wanted.wait()
            await trio.sleep(SETTLE_SECONDS)
            self._wanted = trio.Event()
            try:
                while await trio.to_thread.run_sync(self._batch, limiter=self._limiter):
                    pass
            except (sqlite3.Error, OSError) as exc:
                # Searches lag meanwhile; status shows by how much.
                log.warning("search index not updated (%s); retrying in %gs", exc,
                            RETRY_SECONDS)
                await trio.sleep(RETRY_SECONDS)
                self._wanted.set()

    def _batch(self) -> bool:
        """Index the next events after the index's seq; True if more may remain."""
        stored = self.store.events_after(self.index.indexed_seq, BATCH)
        if not stored:
            return False
        documents = []
        for seq, value in stored:
            if value[:1] != b"U":
                continue
            unit = _unit_decoder.decode(value[1:])
            try:
                text: str | None = unit.payload.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            documents.append(Document(seq, unit.id, unit.context_id, unit.agent_id, unit.type,
                                      int(unit.ts.timestamp() * 1_000_000), text, unit.meta))
        self.index.add(documents, stored[-1][0])
        return len(stored) == BATCH

    async def rebuild(self) -> None:
        """Start the index over from the store; it catches up in the background."""

        def start_over() -> None:
            path = self.index.path
            self.index.close()
            SearchIndex.destroy(path)
            self.index = SearchIndex(path)

        await trio.to_thread.run_sync(start_over, limiter=self._limiter)
        self._wanted.set()

    async def search(self, query: str | None, **filters: object) -> tuple[int, list[Hit]]:
        """Run :meth:`SearchIndex.search` in the index's worker thread."""
        return await trio.to_thread.run_sync(
            lambda: self.index.search(query, **filters),  # type: ignore[arg-type]
            limiter=self._limiter)

    def close(self) -> None:
        self.index.close()
