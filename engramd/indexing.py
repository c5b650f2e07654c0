"""The search indexes of one data dir, fed with stored events and searched: the keyword
index and, with the ``engram-journal[semantic]`` extra, the vector index.

Synchronous, free of trio and of the store: the same code runs in the index process of
:mod:`engramd.indexproc` (engramd's default: decoding, indexing and embedding off the
interpreter whose lock the request path needs) or in the indexer's thread in engramd
itself (``search.indexer = "thread"``, and engramd on a full disk).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from engramd.protocol.model import Unit, UnitsRemoved
from engramd.search import Document, Hit, SearchIndex

if TYPE_CHECKING:
    from engramd.vectors import VectorIndex

log = logging.getLogger("engramd.indexer")

_unit_decoder = msgspec.msgpack.Decoder(Unit)
_removal_decoder = msgspec.msgpack.Decoder(UnitsRemoved)
_REMOVAL_KIND = b"units.removed"

Stored = list[tuple[int, bytes]]
"""Stored events as the store gives them: ``(seq, value)``, a unit's value starting b"U"."""


def open_index(data_dir: str, applied_seq: int, *, rebuild: bool) -> SearchIndex:
    """The keyword index in *data_dir*, started over if asked or if it is ahead of the
    store (whose applied seq is *applied_seq*)."""
    path = os.path.join(data_dir, "search.db")
    if rebuild:
        SearchIndex.destroy(path)
    index = SearchIndex(path)
    if index.indexed_seq > applied_seq:
        # The index is ahead of the store (a store from elsewhere): start it over.
        index.close()
        SearchIndex.destroy(path)
        index = SearchIndex(path)
    return index


def vector_opener(data_dir: str, embedding: str, *, rebuild: bool,
                  applied_seq: Callable[[], int],
                  exact_rows: int) -> Callable[[], VectorIndex | None] | None:
    """What opens the vector index in *data_dir* (when first needed: loading a model takes
    a while), or None when semantic search is not installed. The opener returns None when
    the model cannot load (logged; keyword search goes on)."""
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
            vectors = VectorIndex(directory, embedder, exact_rows=exact_rows)
            if rebuild or vectors.indexed_seq > applied_seq():
                vectors.clear()  # asked to, or ahead of the store (a store from elsewhere)
        except OSError:
            raise  # retried, like the keyword index
        except Exception:
            log.exception("semantic search is off: its index in %s did not open", directory)
            return None
        graph = vectors.graph
        log.info("vector index open: %s, %d units, seq %d; %s", embedder.identity, vectors.live,
                 vectors.indexed_seq, "search exact" if graph is None else
                 f"approximate index of {graph.rows} rows loaded" if graph.rows else
                 "approximate index to build")
        return vectors

    return open_vectors


def open_indexes(data_dir: str, embedding: str | None, *, rebuild: bool,
                 applied_seq: Callable[[], int], exact_rows: int) -> Indexes:
    """The indexes of *data_dir* (*embedding*: the model of semantic search, None for
    none; *exact_rows*: ``search.exact_rows``), started over if asked; *applied_seq* is
    the store's, as it moves on."""
    opener = None if embedding is None else vector_opener(
        data_dir, embedding, rebuild=rebuild, applied_seq=applied_seq, exact_rows=exact_rows)
    return Indexes(open_index(data_dir, applied_seq(), rebuild=rebuild), opener)


def is_damage(exc: BaseException) -> bool:
    """Whether an SQLite error says the file is damaged (not full, not busy)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.OperationalError)


def check_file(path: str) -> str | None:
    """What SQLite's ``quick_check`` finds wrong with the index file *path* (every page
    read, as no query does), or None. Read through a connection of its own, read-only:
    the indexes go on being fed and searched meanwhile."""
    try:
        db = sqlite3.connect("file:" + urllib.parse.quote(path) + "?mode=ro", uri=True)
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        finally:
            db.close()
    except sqlite3.OperationalError:
        return None  # (busy, gone, unreadable for now: nothing said about its pages)
    except sqlite3.DatabaseError as exc:
        return str(exc)
    problems = [str(row[0]) for row in rows if row[0] != "ok"]
    return "; ".join(problems[:3]) or None


class Indexes:
    """The keyword index and the vector index (opened on first use), used by one thread
    at a time."""

    def __init__(self, index: SearchIndex,
                 open_vectors: Callable[[], VectorIndex | None] | None = None) -> None:
        self.index = index
        self.vectors: VectorIndex | None = None
        self._open_vectors = open_vectors

    @property
    def path(self) -> str:
        return self.index.path

    @property
    def keyword_seq(self) -> int:
        return self.index.indexed_seq

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

    @property
    def approximate_lag(self) -> int:
        """Vectors the approximate index has yet to take in."""
        return self.vectors.approximate_lag if self.vectors is not None else 0

    def _vectors(self) -> VectorIndex | None:
        """The vector index, opened on first use."""
        if self.vectors is None and self._open_vectors is not None:
            # The opener stays set while the model loads: status says 0, not "none".
            self.vectors = self._open_vectors()
            self._open_vectors = None
        return self.vectors

    def kill_if_stopped(self) -> bool:
        """(In engramd's own process: nothing of its own to stop.)"""
        return False

    def wanted_after(self) -> int:
        """The seq after which the indexes want events (the vector index opened first)."""
        vectors = self._vectors()
        keyword_seq = self.index.indexed_seq
        return min(keyword_seq, vectors.indexed_seq) if vectors is not None else keyword_seq

    def take(self, stored: Stored) -> None:
        """Index the units among *stored* (events after :meth:`wanted_after`, in order)."""
        if not stored:
            return
        keyword_seq = self.index.indexed_seq
        vectors = self._vectors()
        vector_seq = vectors.indexed_seq if vectors is not None else keyword_seq
        documents = []
        removals: list[tuple[int, list[int]]] = []
        for seq, value in stored:
            if value[:1] != b"U":
                if _REMOVAL_KIND in value:  # (cheap: only a removal decodes)
                    event = msgspec.msgpack.decode(value)
                    if event.get("kind") == "units.removed":
                        removals.append((seq, _removal_decoder.decode(value).seqs))
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
            self.index.remove([unit for seq, removed in removals if seq > keyword_seq
                               for unit in removed])
            self.index.add([d for d in documents if d.seq > keyword_seq], up_to)
        if vectors is not None and up_to > vector_seq:
            wanted = [d for d in documents if d.seq > vector_seq and d.text and d.text.strip()]
            try:
                # (Once per batch: each removal fsyncs the rows file and its list.)
                vectors.remove([unit for seq, removed in removals if seq > vector_seq
                                for unit in removed])
                vectors.add([d.seq for d in wanted], [d.text or "" for d in wanted], up_to)
            except OSError:
                raise  # a full disk: logged and retried like the keyword index
            except Exception:
                # A model that fails on some text must not stop the daemon or the keyword
                # index: semantic search goes off until the next start, and says so.
                log.exception("semantic search is off: embedding units up to seq %d failed",
                              up_to)
                self.vectors = None

    def catch_up(self) -> bool:
        """A slice of the vector index's approximate graph built (between batches, while
        it is behind the rows); True if more remains."""
        vectors = self.vectors
        return vectors is not None and vectors.catch_up()

    def search(self, query: str | None, **filters: object) -> tuple[int, list[Hit]]:
        return self.index.search(query, **filters)  # type: ignore[arg-type]

    def nearest(self, text: str, *, limit: int, min_similarity: float | None,
                exact: bool = False, **filters: object) -> tuple[int, list[Hit]]:
        """``(candidates, hits)`` with the cosine similarity as each hit's score; *exact*:
        every vector scored, never the approximate index (to measure its recall)."""
        vectors = self._vectors()
        if vectors is None:
            return 0, []
        allowed = self.index.matching_seqs(**filters)
        if allowed is not None and not allowed:
            return 0, []
        total, found = vectors.nearest(text, limit=limit, allowed=allowed,
                                       min_similarity=min_similarity, exact=exact)
        ids = self.index.unit_ids(seq for seq, _ in found)
        return total, [Hit(ids[seq], seq, similarity, "") for seq, similarity in found
                       if seq in ids]

    def start_over(self) -> None:
        """Empty both indexes; they take the journal in again from its start."""
        path = self.index.path
        self.index.close()
        SearchIndex.destroy(path)
        self.index = SearchIndex(path)
        vectors = self._vectors()
        if vectors is not None:
            vectors.clear()

    def close(self) -> None:
        self.index.close()
        if self.vectors is not None:
            self.vectors.close()
