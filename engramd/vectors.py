"""The vector index: one embedding per unit with text, for semantic search.

Derived data, like the keyword index: rebuilt from the store at any time, and
started over when the embedding model changes (its identity is stored with it).
Kept in ``<data dir>/vectors/``: ``vectors.i8`` (one int8 row per unit, scaled so that
its largest component is ±127: a quarter of float32's bytes, and the cosine of a
query with it is within about 0.005 of the float one), ``seqs.i64`` (the unit's seq
per row, ascending), ``removed.i64`` (the seqs removed, whose rows are zeroed) and
``state.json`` (model, dimension, rows, indexed seq), rewritten atomically after each
batch. Rows past ``state.json``'s count (a crash between the appends and the state)
are cut on open. The rows are read through a memory map, not held in memory.

Search is exact (every row scored) while the index has fewer than ``exact_rows``
units, and for a filtered search whose allowed units are that few; otherwise the
approximate graph of :mod:`engramd.ann` proposes ``OVERFETCH`` times the wanted
hits, which are scored again exactly from the rows (the graph's own int8 is coarser),
and rows the graph has not taken in yet are scored exactly beside them. The graph is
built in slices of ``CATCH_UP_ROWS`` (each batch, and between batches while it is
behind), so no call takes long. Synchronous and trio-free; used by the indexer's one
thread.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from engramd.embedding import Embedder

if TYPE_CHECKING:
    from engramd.ann import Graph

log = logging.getLogger("engramd.indexer")

_STATE = "state.json"
_VECTORS = "vectors.i8"
_SEQS = "seqs.i64"
_REMOVED = "removed.i64"
_OLD_VECTORS = "vectors.f32"
FORMAT = "int8"

EXACT_ROWS = 10_000
"""Below this many units search is exact (``search.exact_rows``): measured a few ms
here, and no graph to build or save."""
OVERFETCH = 8
"""The graph proposes this many times the wanted hits, rescored exactly: measured
recall@50 and @100 0.96 with 8 (0.92 and 0.90 with 4), at 3 and 8 ms (SPECS §2.8)."""
MIN_FETCH = 40
CATCH_UP_ROWS = 10_000
"""Rows added to the graph in one slice (about 2 to 4 s on two threads here)."""
SAVE_EVERY_ROWS = 100_000
"""The graph is saved when it has taken in this many rows (or a quarter of what its
snapshot covers, whichever is more) since its snapshot, and on close."""
_CHUNK = 32_768


def _counts(state: dict[str, Any] | None) -> tuple[int, int]:
    """``(rows, indexed_seq)`` from a state file; ``(-1, -1)`` when it has no sound ones."""
    try:
        rows, seq = (state or {})["rows"], (state or {})["indexed_seq"]
    except KeyError:
        return -1, -1
    if not isinstance(rows, int) or not isinstance(seq, int):
        return -1, -1
    return rows, seq


def quantize(vectors: np.ndarray) -> np.ndarray:
    """Rows of int8, each scaled so its largest component is ±127 (a zero row stays
    zero: the mark of a removed unit)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    peak = np.abs(vectors).max(axis=1, keepdims=True) if len(vectors) else vectors[:, :1]
    scale = np.where(peak > 0, 127.0 / np.where(peak > 0, peak, 1), 0)
    quantized: np.ndarray = np.rint(vectors * scale).astype(np.int8)
    return quantized


def _unit_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, live)``: int8 *rows* as unit float32 vectors, and which are not zero."""
    floats = rows.astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", floats, floats))
    live = norms > 0
    floats[live] /= norms[live, None]
    return floats, live


class VectorIndex:
    def __init__(self, directory: str, embedder: Embedder, *,
                 exact_rows: int = EXACT_ROWS) -> None:
        self.directory = directory
        self.embedder = embedder
        self.dim = embedder.dim
        self.exact_rows = exact_rows
        os.makedirs(directory, mode=0o700, exist_ok=True)
        state = self._read_state()
        rows, self.indexed_seq = _counts(state)
        if state is None or state.get("model") != embedder.identity \
                or state.get("dim") != self.dim or rows < 0 or self.indexed_seq < 0:
            self._reset()  # another model's, or not ours to read: start over
            rows, self.indexed_seq = 0, 0
        elif state.get("format") != FORMAT:
            self._convert(rows)  # float32 rows of an earlier engramd
        elif os.path.exists(self._path(_OLD_VECTORS)):
            os.unlink(self._path(_OLD_VECTORS))  # converted, and a crash came before this
        self.rows = rows
        if self._size(_VECTORS) < rows * self.dim or self._size(_SEQS) < rows * 8:
            self._reset()  # files shorter than the state says: start over
            self.rows = self.indexed_seq = 0
        self._truncate_files()
        self._map()
        self.graph: Graph | None = None
        self._building = False
        """Whether the graph was opened behind the rows: logged once it has them all."""
        self._open_graph()

    @property
    def model(self) -> str:
        return self.embedder.identity

    @property
    def removed(self) -> int:
        """How many units were removed (:meth:`remove`)."""
        return len(self._removed)

    @property
    def live(self) -> int:
        """Units with a vector (rows not removed)."""
        return self.rows - self.removed

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _size(self, name: str) -> int:
        try:
            return os.path.getsize(self._path(name))
        except FileNotFoundError:
            return 0

    def _read_state(self) -> dict[str, Any] | None:
        try:
            with open(self._path(_STATE), encoding="utf-8") as file:
                state = json.load(file)
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def _reset(self) -> None:
        from engramd.ann import Graph, remove_file

        for name in (_VECTORS, _SEQS, _REMOVED, _STATE, _OLD_VECTORS):
            remove_file(self._path(name))
        Graph.destroy(self.directory)

    def _convert(self, rows: int) -> None:
        """Rewrite an earlier engramd's float32 rows as int8 (no model needed)."""
        old = self._path(_OLD_VECTORS)
        if self._size(_OLD_VECTORS) < rows * self.dim * 4:
            self._reset()
            self.indexed_seq = 0
            return
        floats = np.memmap(old, dtype=np.float32, mode="r", shape=(rows, self.dim)) \
            if rows else np.zeros((0, self.dim), dtype=np.float32)
        with open(self._path(_VECTORS), "wb") as file:
            for start in range(0, rows, _CHUNK):
                file.write(quantize(floats[start:start + _CHUNK]).tobytes())
        del floats
        self.rows = rows
        self._write_state()
        os.unlink(old)
        log.info("vector index: %d float32 rows rewritten as int8", rows)

    def _truncate_files(self) -> None:
        for name, size in ((_VECTORS, self.rows * self.dim), (_SEQS, self.rows * 8),
                           (_REMOVED, self._size(_REMOVED) // 8 * 8)):
            with open(self._path(name), "ab") as file:
                file.truncate(size)

    def _map(self) -> None:
        """Map the rows as they are on disk now (again after they grow)."""
        self._vectors: np.ndarray
        self._seqs: np.ndarray
        if self.rows:
            self._vectors = np.memmap(self._path(_VECTORS), dtype=np.int8, mode="r",
                                      shape=(self.rows, self.dim))
            self._seqs = np.memmap(self._path(_SEQS), dtype=np.int64, mode="r",
                                   shape=(self.rows,))
        else:
            self._vectors = np.zeros((0, self.dim), dtype=np.int8)
            self._seqs = np.zeros(0, dtype=np.int64)
        self._removed = np.fromfile(self._path(_REMOVED), dtype=np.int64)

    def _open_graph(self) -> None:
        """The graph, once the index is large enough to want one: its snapshot loaded
        (and the removals since applied), or empty to be built by :meth:`catch_up`."""
        if self.graph is not None or self.live < self.exact_rows:
            return
        try:
            from engramd.ann import Graph

            graph = Graph(self.directory, self.model, self.dim)
        except ImportError as exc:  # an install of before the extra named usearch
            log.warning("vector index: no approximate index (%s); search stays exact", exc)
            self.exact_rows = 1 << 62
            return
        if graph.load(self.rows, self.removed):
            graph.remove(self._removed[graph.removed:], self.removed)
        else:
            Graph.destroy(self.directory)
        self.graph = graph
        self._building = graph.rows < self.rows

    def clear(self) -> None:
        """Start over: no vectors, nothing taken in (a rebuild follows from the store)."""
        self._reset()
        self.rows = self.indexed_seq = 0
        self.graph = None
        self._truncate_files()
        self._map()

    def _write_state(self) -> None:
        temporary = self._path(_STATE + ".tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump({"model": self.model, "dim": self.dim, "format": FORMAT,
                       "rows": self.rows, "indexed_seq": self.indexed_seq}, file)
        os.replace(temporary, self._path(_STATE))

    def add(self, seqs: Sequence[int], texts: Sequence[str], up_to: int) -> None:
        """Embed *texts* (the units *seqs*, ascending, after every unit already in) and
        record *up_to* as taken in."""
        if seqs:
            rows = quantize(self.embedder.embed(texts))
            with open(self._path(_VECTORS), "ab") as file:
                file.write(rows.tobytes())
            with open(self._path(_SEQS), "ab") as file:
                file.write(np.asarray(seqs, dtype=np.int64).tobytes())
            self.rows += len(seqs)
            self._map()
        self.indexed_seq = up_to
        self._write_state()
        self.catch_up()

    def catch_up(self) -> bool:
        """Take up to ``CATCH_UP_ROWS`` rows into the graph (and save it when due);
        True if more remain."""
        self._open_graph()
        graph = self.graph
        if graph is None or graph.rows >= self.rows:
            return False
        end = min(self.rows, graph.rows + CATCH_UP_ROWS)
        # The rows as they are: usearch's own int8 of a float vector is x·127, which leaves
        # a 256-dimension unit vector (components about ±0.06) a few levels; ours use all.
        rows = np.asarray(self._vectors[graph.rows:end])
        live = rows.any(axis=1)
        graph.add(np.asarray(self._seqs[graph.rows:end])[live], rows[live], end)
        if graph.rows - graph.saved_rows >= max(SAVE_EVERY_ROWS, graph.saved_rows // 4):
            graph.save()
        behind = graph.rows < self.rows
        if not behind and self._building:
            self._building = False  # said once: a bench waits for it before it measures
            log.info("vector index: the approximate index has every row (%d)", graph.rows)
        return behind

    @property
    def approximate_lag(self) -> int:
        """Rows the approximate index has yet to take in (searches score them exactly
        meanwhile); 0 without one."""
        return 0 if self.graph is None else max(0, self.rows - self.graph.rows)

    def remove(self, seqs: Iterable[int]) -> int:
        """Remove the units *seqs*: zeroed in ``vectors.i8``, listed in ``removed.i64``,
        left out of the graph. Durable when it returns; seqs not in (or removed already)
        are nothing to it. Returns how many were removed now."""
        rows, wanted = self._rows_of(seqs)
        fresh = ~np.isin(wanted, self._removed)
        rows, wanted = rows[fresh], wanted[fresh]
        if not len(wanted):
            return 0
        zero = bytes(self.dim)
        with open(self._path(_VECTORS), "r+b") as file:
            for row in rows.tolist():
                file.seek(row * self.dim)
                file.write(zero)
            file.flush()
            os.fsync(file.fileno())
        with open(self._path(_REMOVED), "ab") as file:
            file.write(wanted.tobytes())
            file.flush()
            os.fsync(file.fileno())
        self._map()
        if self.graph is not None:
            self.graph.remove(wanted, self.removed)
        return len(wanted)

    def nearest(self, text: str, *, limit: int, allowed: set[int] | None = None,
                min_similarity: float | None = None,
                exact: bool = False) -> tuple[int, list[tuple[int, float]]]:
        """``(candidates, hits)``: up to *limit* ``(seq, cosine similarity)``, most similar
        first (ties newest first), out of *candidates* units: only seqs in *allowed* when
        given, only at least *min_similarity* when given. *exact* scores every row (what
        a measure of the graph's recall compares with); otherwise the graph answers when
        the index (or *allowed*) is large, and *candidates* counts the units it proposed
        that pass *min_similarity* (all the allowed ones without it)."""
        if not self.live or limit <= 0:
            return 0, []
        query = self.embedder.embed([text])[0].astype(np.float32)
        if allowed is not None:
            rows, _ = self._rows_of(allowed)
            if not len(rows):
                return 0, []
            if exact or self.graph is None or len(rows) <= self.exact_rows:
                return self._best(rows, self._score(rows, query), limit, min_similarity)
        elif exact or self.graph is None or self.live < self.exact_rows:
            return self._exact_all(query, limit, min_similarity)
        return self._approximate(query, limit, allowed, min_similarity)

    def _rows_of(self, seqs: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """The rows of those of *seqs* that have one, and their seqs (ascending, once)."""
        wanted = np.unique(np.fromiter(seqs, dtype=np.int64))
        rows = np.searchsorted(self._seqs, wanted)
        inside = rows < self.rows
        rows, wanted = rows[inside], wanted[inside]
        held = np.asarray(self._seqs[rows]) == wanted
        return rows[held], wanted[held]

    def _score(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Cosine similarity of *query* with each row of *rows*, to the 6 decimals a hit
        reports (so that equal rows tie, whatever lanes the product ran them in, and ties
        go newest first); NaN for removed ones."""
        vectors, live = _unit_rows(np.asarray(self._vectors[rows]))
        scores: np.ndarray = np.round(vectors @ query, 6)
        scores[~live] = np.nan
        return scores

    def _best(self, rows: np.ndarray, scores: np.ndarray, limit: int,
              min_similarity: float | None) -> tuple[int, list[tuple[int, float]]]:
        keep = ~np.isnan(scores)
        if min_similarity is not None:
            keep &= scores >= min_similarity
        rows, scores = rows[keep], scores[keep]
        if not len(scores):
            return 0, []
        seqs = np.asarray(self._seqs[rows])
        order = np.lexsort((-seqs, -scores))[:limit]  # best first, then newest
        return len(scores), [(int(seqs[i]), round(float(scores[i]), 6)) for i in order]

    def _exact_all(self, query: np.ndarray, limit: int,
                   min_similarity: float | None) -> tuple[int, list[tuple[int, float]]]:
        """Every row scored: by usearch's kernels on a large index (no min_similarity to
        count by), else a chunk at a time with numpy (each chunk's best kept, ties at its
        last place included, so the newest-first order of ties holds)."""
        if min_similarity is None and self.graph is not None:
            from engramd.ann import exact_top

            count = limit * 2 + 32
            rows = exact_top(self._vectors, quantize(query[None])[0], count)
            _, hits = self._best(rows, self._score(rows, query), count, None)
            # Sure when every row was fetched, or when no removed (zero) row took a place
            # and no tie with the last hit wanted reaches past what was fetched; otherwise
            # every row with numpy.
            if len(rows) == self.rows or (len(hits) == len(rows) > limit
                                          and hits[limit - 1][1] > hits[-1][1]):
                return self.live, hits[:limit]
        total, kept_rows, kept_scores = 0, [], []
        for begin in range(0, self.rows, _CHUNK):
            rows = np.arange(begin, min(self.rows, begin + _CHUNK))
            scores = self._score(slice(begin, begin + len(rows)), query)  # type: ignore[arg-type]
            keep = ~np.isnan(scores)
            if min_similarity is not None:
                keep &= scores >= min_similarity
            rows, scores = rows[keep], scores[keep]
            total += len(scores)
            if len(scores) > limit:
                floor = np.partition(scores, len(scores) - limit)[len(scores) - limit]
                rows, scores = rows[scores >= floor], scores[scores >= floor]
            kept_rows.append(rows)
            kept_scores.append(scores)
        if not total:
            return 0, []
        _, hits = self._best(np.concatenate(kept_rows), np.concatenate(kept_scores), limit,
                             None)
        return total, hits

    def _approximate(self, query: np.ndarray, limit: int, allowed: set[int] | None,
                     min_similarity: float | None) -> tuple[int, list[tuple[int, float]]]:
        """The graph's proposals rescored from the rows, with the rows it has not taken
        in yet scored exactly; asked again for more while a filter leaves too few."""
        graph = self.graph
        assert graph is not None
        allowed_rows = None if allowed is None else self._rows_of(allowed)[0]
        allowed_seqs = None if allowed_rows is None else np.asarray(self._seqs[allowed_rows])
        share = 1.0 if allowed_rows is None else max(len(allowed_rows) / self.live, 1e-6)
        count = int(max(MIN_FETCH, limit * OVERFETCH) / share)
        tail = np.arange(graph.rows, self.rows)
        if allowed_seqs is not None and len(tail):
            tail = tail[np.isin(np.asarray(self._seqs[tail]), allowed_seqs)]
        tail_scores = self._score(tail, query)
        while True:
            seqs = graph.search(quantize(query[None])[0], count)
            proposed = np.searchsorted(self._seqs, seqs)
            if allowed_seqs is not None:
                proposed = proposed[np.isin(seqs, allowed_seqs)]
            scores = self._score(proposed, query)
            passing = ~np.isnan(scores)
            if min_similarity is not None:
                passing &= scores >= min_similarity
            # Proposals come nearest first: one under min_similarity means no more pass.
            below = min_similarity is not None and bool((scores < min_similarity).any())
            if allowed_seqs is None or below or count >= len(graph) \
                    or int(passing.sum()) >= limit:
                break
            count *= 4
            if count > max(self.exact_rows, MIN_FETCH) * OVERFETCH:
                # The filter keeps too few of the graph's proposals: exact over them.
                assert allowed_rows is not None
                return self._best(allowed_rows, self._score(allowed_rows, query), limit,
                                  min_similarity)
        found, hits = self._best(np.concatenate([proposed, tail]),
                                 np.concatenate([scores, tail_scores]), limit, min_similarity)
        if min_similarity is None:
            found = self.live if allowed_rows is None else len(allowed_rows)
        return found, hits

    def close(self) -> None:
        """Save the graph if it took rows in since its snapshot."""
        if self.graph is not None and self.graph.rows > self.graph.saved_rows:
            self.graph.save()
