"""The indexer: keeps the search index fed from the event log, off the event loop.

It owns the :class:`~engramd.search.SearchIndex` and the one worker thread that
may use it: a commit wakes it, it reads the stored events after the index's seq
in batches and indexes the units among them. Woken, it first lets the commits of
the next ``SETTLE_SECONDS`` gather, so that under a steady trickle of writes one
SQLite transaction (and one hand-off to its thread) takes many units instead of
one each: indexing a unit on its own cost more than writing it. The index is
derived data, so its failures (a full disk) are logged and retried, never fatal.

With the ``engram-journal[semantic]`` extra it also owns the vector index
(:mod:`engramd.vectors`), fed from the same batches in the same thread; without
it, nothing here imports numpy or a model.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import trio

from engramd.protocol import Damaged, DiskFull
from engramd.protocol.model import Unit
from engramd.rocks import StoreDamaged
from engramd.runtime import free_bytes
from engramd.search import Document, Hit, SearchIndex
from engramd.storage import Store

if TYPE_CHECKING:
    from engramd.vectors import VectorIndex

log = logging.getLogger("engramd.indexer")

BATCH = 2000
RETRY_SECONDS = 1.0
ROOM_SHARE = 4
"""A batch's stored bytes stay under 1/ROOM_SHARE of the room above the reserve."""
PAUSED_RETRY_SECONDS = 5.0
"""How often a paused indexer (disk nearly full, store damaged) looks again."""
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


def vector_opener(data_dir: str, embedding: str, *, rebuild: bool,
                  store: Store) -> Callable[[], VectorIndex | None] | None:
    """What opens the vector index in *data_dir* (in the indexer's thread, when first
    needed: loading a model takes a while), or None when semantic search is not
    installed. The opener returns None when the model cannot load (logged; keyword
    search goes on)."""
    from engramd import embedding as embeddings

    if not embeddings.available(embedding):
        return None
    directory = os.path.join(data_dir, "vectors")

    def open_vectors() -> VectorIndex | None:
        from engramd.vectors import VectorIndex

        try:
            embedder = embeddings.load_embedder(embedding)
        except Exception as exc:  # a model that cannot load must not stop the daemon
            log.warning("semantic search is off: the embedding model %s did not load (%s)",
                        embedding, exc)
            return None
        try:
            vectors = VectorIndex(directory, embedder)
            if rebuild or vectors.indexed_seq > store.applied_seq:
                vectors.clear()  # asked to, or ahead of the store (a store from elsewhere)
        except OSError:
            raise  # retried, like the keyword index
        except Exception:
            log.exception("semantic search is off: its index in %s did not open", directory)
            return None
        log.info("vector index open: %s, %d units, seq %d", embedder.identity, vectors.rows,
                 vectors.indexed_seq)
        return vectors

    return open_vectors


def _damaged(exc: BaseException) -> bool:
    """Whether an SQLite error says the file is damaged (not full, not busy)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.OperationalError)


class Indexer:
    """Feeds the indexes; pauses (and says why) while the disk is nearly full or the
    store is damaged, and catches up once that is over: the journal comes first."""

    def __init__(self, store: Store, index: SearchIndex | None,
                 open_vectors: Callable[[], VectorIndex | None] | None = None, *,
                 reserve_bytes: int = 0, read_only: str | None = None) -> None:
        self.store = store
        self._index = index
        self.reserve_bytes = reserve_bytes
        """The indexer writes only while more than this is free on the data dir's disk."""
        self.read_only = read_only
        self.paused: str | None = read_only
        """Why the indexes are not being fed now, or None."""
        self.vectors: VectorIndex | None = None
        self._open_vectors = open_vectors
        """Opens the vector index on first use, in the worker thread (None: no semantic)."""
        self._wanted = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        """The SQLite connection is used by one worker thread at a time."""

    @property
    def index(self) -> SearchIndex:
        if self._index is None:
            raise DiskFull(f"search is unavailable: {self.read_only}")
        return self._index

    @index.setter
    def index(self, index: SearchIndex) -> None:
        self._index = index

    @property
    def indexed_seq(self) -> int:
        return 0 if self._index is None else self._index.indexed_seq

    @property
    def semantic(self) -> bool:
        """Whether semantic search is installed (its index may still be opening)."""
        return self.vectors is not None or self._open_vectors is not None

    @property
    def vector_seq(self) -> int | None:
        """How far the vector index has taken in the journal; None without semantic search."""
        if self.vectors is not None:
            return self.vectors.indexed_seq
        return 0 if self._open_vectors is not None else None

    def _vectors(self) -> VectorIndex | None:
        """The vector index, opened on first use (worker thread only)."""
        if self.vectors is None and self._open_vectors is not None:
            # The opener stays set while the model loads: status says 0, not "none".
            self.vectors = self._open_vectors()
            self._open_vectors = None
        return self.vectors

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
                if _damaged(exc):  # not worth a retry a second: said once, looked at now and then
                    self._pause(f"the search index {self.index.path} is damaged ({exc}); "
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
        """One batch, unless the disk is nearly full (then the journal comes first)."""
        free = free_bytes(os.path.dirname(self.index.path) or ".")
        if free <= self.reserve_bytes:
            self._pause(f"{free} bytes free on the data dir's disk, under the reserve of "
                        f"{self.reserve_bytes} (search.reserve_bytes): the journal comes "
                        "first; indexing catches up once there is space")
            return False
        # The index keeps the text, and SQLite's log a copy of each page it changes until
        # its checkpoint: a batch's text may take a quarter of the room left.
        more = self._batch((free - self.reserve_bytes) // ROOM_SHARE)
        self._pause(None)
        return more

    def _batch(self, budget: int | None = None) -> bool:
        """Index the next events after the indexes' seqs (at least one, then no more
        than *budget* stored bytes); True if more may remain."""
        keyword_seq = self.index.indexed_seq
        vectors = self._vectors()
        vector_seq = vectors.indexed_seq if vectors is not None else keyword_seq
        stored = self.store.events_after(min(keyword_seq, vector_seq), BATCH)
        if not stored:
            return False
        full = len(stored) == BATCH
        if budget is not None:
            total = 0
            for count, (_, value) in enumerate(stored):
                total += len(value)
                if total > budget and count:
                    stored, full = stored[:count], True
                    break
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
        up_to = stored[-1][0]
        if up_to > keyword_seq:
            self.index.add([d for d in documents if d.seq > keyword_seq], up_to)
        if vectors is not None and up_to > vector_seq:
            wanted = [d for d in documents if d.seq > vector_seq and d.text and d.text.strip()]
            try:
                vectors.add([d.seq for d in wanted], [d.text or "" for d in wanted], up_to)
            except OSError:
                raise  # a full disk: logged and retried like the keyword index
            except Exception:
                # A model that fails on some text must not stop the daemon or the keyword
                # index: semantic search goes off until the next start, and says so.
                log.exception("semantic search is off: embedding units up to seq %d failed",
                              up_to)
                self.vectors = None
        return full

    async def rebuild(self) -> None:
        """Start the index over from the store; it catches up in the background."""

        if self.read_only is not None:
            raise DiskFull(f"the search index cannot be rebuilt: {self.read_only}")

        def start_over() -> None:
            path = self.index.path
            self.index.close()
            SearchIndex.destroy(path)
            self.index = SearchIndex(path)
            vectors = self._vectors()
            if vectors is not None:
                vectors.clear()

        await trio.to_thread.run_sync(start_over, limiter=self._limiter)
        self._wanted.set()

    async def search(self, query: str | None, **filters: object) -> tuple[int, list[Hit]]:
        """Run :meth:`SearchIndex.search` in the index's worker thread."""
        index = self.index
        try:
            return await trio.to_thread.run_sync(
                lambda: index.search(query, **filters),  # type: ignore[arg-type]
                limiter=self._limiter)
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            raise Damaged(f"the search index {index.path} is damaged ({exc}); it is derived "
                          "from the journal: rebuild it with 'engram daemon reindex' (or "
                          "'engramd --reindex')") from None

    async def nearest(self, text: str, *, limit: int, min_similarity: float | None,
                      **filters: object) -> tuple[int, list[Hit]]:
        """Semantic search in the indexes' worker thread: ``(candidates, hits)`` with the
        cosine similarity as each hit's score."""
        def run() -> tuple[int, list[Hit]]:
            vectors = self._vectors()
            if vectors is None:
                return 0, []
            allowed = self.index.matching_seqs(**filters)
            if allowed is not None and not allowed:
                return 0, []
            total, found = vectors.nearest(text, limit=limit, allowed=allowed,
                                           min_similarity=min_similarity)
            ids = self.index.unit_ids(seq for seq, _ in found)
            return total, [Hit(ids[seq], seq, similarity, "") for seq, similarity in found
                           if seq in ids]

        return await trio.to_thread.run_sync(run, limiter=self._limiter)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
