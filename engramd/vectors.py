"""The vector index: one embedding per unit with text, for semantic search.

Derived data, like the keyword index: rebuilt from the store at any time, and
started over when the embedding model changes (its identity is stored with it).
Kept in ``<data dir>/vectors/``: ``vectors.f32`` (one float32 row per unit),
``seqs.i64`` (the unit's seq per row) and ``state.json`` (model, dimension, rows,
indexed seq), rewritten atomically after each batch. Rows past ``state.json``'s
count (a crash between the appends and the state) are cut on open.

Search is brute force over all rows in memory (a matrix-vector product, then a
partial sort): at 256 dimensions that is 1 KiB of memory and disk per unit, and
measured faster than any index worth its upkeep up to a few hundred thousand
units (SPECS §2.8). Synchronous and trio-free; used by the indexer's one thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from engramd.embedding import Embedder

_STATE = "state.json"
_VECTORS = "vectors.f32"
_SEQS = "seqs.i64"


def _counts(state: dict[str, Any] | None) -> tuple[int, int]:
    """``(rows, indexed_seq)`` from a state file; ``(-1, -1)`` when it has no sound ones."""
    try:
        rows, seq = (state or {})["rows"], (state or {})["indexed_seq"]
    except KeyError:
        return -1, -1
    if not isinstance(rows, int) or not isinstance(seq, int):
        return -1, -1
    return rows, seq


class VectorIndex:
    def __init__(self, directory: str, embedder: Embedder) -> None:
        self.directory = directory
        self.embedder = embedder
        self.dim = embedder.dim
        os.makedirs(directory, mode=0o700, exist_ok=True)
        state = self._read_state()
        rows, self.indexed_seq = _counts(state)
        if state is None or state.get("model") != embedder.identity \
                or state.get("dim") != self.dim or rows < 0 or self.indexed_seq < 0:
            self._reset()  # another model's, or not ours to read: start over
            rows, self.indexed_seq = 0, 0
        self._vectors = np.zeros((max(1024, rows * 2), self.dim), dtype=np.float32)
        self._seqs = np.zeros(self._vectors.shape[0], dtype=np.int64)
        self.rows = 0
        if rows:
            vectors = np.fromfile(self._path(_VECTORS), dtype=np.float32,
                                  count=rows * self.dim)
            seqs = np.fromfile(self._path(_SEQS), dtype=np.int64, count=rows)
            if vectors.size != rows * self.dim or seqs.size != rows:
                self._reset()  # files shorter than the state says: start over
                self.indexed_seq = 0
            else:
                self._vectors[:rows] = vectors.reshape(rows, self.dim)
                self._seqs[:rows] = seqs
                self.rows = rows
        self._truncate_files()

    @property
    def model(self) -> str:
        return self.embedder.identity

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            with open(self._path(_STATE), encoding="utf-8") as file:
                state = json.load(file)
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def _reset(self) -> None:
        for name in (_VECTORS, _SEQS, _STATE):
            if os.path.exists(self._path(name)):
                os.unlink(self._path(name))

    def clear(self) -> None:
        """Start over: no vectors, nothing taken in (a rebuild follows from the store)."""
        self._reset()
        self.rows = self.indexed_seq = 0
        self._truncate_files()

    def _truncate_files(self) -> None:
        for name, width in ((_VECTORS, self.dim * 4), (_SEQS, 8)):
            with open(self._path(name), "ab") as file:
                file.truncate(self.rows * width)

    def _write_state(self) -> None:
        temporary = self._path(_STATE + ".tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump({"model": self.model, "dim": self.dim, "rows": self.rows,
                       "indexed_seq": self.indexed_seq}, file)
        os.replace(temporary, self._path(_STATE))

    def add(self, seqs: Sequence[int], texts: Sequence[str], up_to: int) -> None:
        """Embed *texts* (the units *seqs*) and record *up_to* as taken in."""
        if seqs:
            vectors = self.embedder.embed(texts)
            needed = self.rows + len(seqs)
            if needed > self._vectors.shape[0]:
                self._grow(max(needed, self._vectors.shape[0] * 2))
            self._vectors[self.rows:needed] = vectors
            self._seqs[self.rows:needed] = seqs
            with open(self._path(_VECTORS), "ab") as file:
                file.write(vectors.tobytes())
            with open(self._path(_SEQS), "ab") as file:
                file.write(np.asarray(seqs, dtype=np.int64).tobytes())
            self.rows = needed
        self.indexed_seq = up_to
        self._write_state()

    def _grow(self, size: int) -> None:
        vectors = np.zeros((size, self.dim), dtype=np.float32)
        seqs = np.zeros(size, dtype=np.int64)
        vectors[:self.rows] = self._vectors[:self.rows]
        seqs[:self.rows] = self._seqs[:self.rows]
        self._vectors, self._seqs = vectors, seqs

    def nearest(self, text: str, *, limit: int, allowed: set[int] | None = None,
                min_similarity: float | None = None) -> tuple[int, list[tuple[int, float]]]:
        """``(candidates, hits)``: up to *limit* ``(seq, cosine similarity)``, most similar
        first, out of *candidates* rows: only seqs in *allowed* when given, only at least
        *min_similarity* when given."""
        if not self.rows or limit <= 0:
            return 0, []
        query = self.embedder.embed([text])[0]
        scores = self._vectors[:self.rows] @ query
        seqs = self._seqs[:self.rows]
        if allowed is not None:
            keep = np.isin(seqs, np.fromiter(allowed, dtype=np.int64, count=len(allowed)))
            scores, seqs = scores[keep], seqs[keep]
        if min_similarity is not None:
            keep = scores >= min_similarity
            scores, seqs = scores[keep], seqs[keep]
        if not len(scores):
            return 0, []
        if len(scores) > limit:
            top = np.argpartition(-scores, limit - 1)[:limit]
        else:
            top = np.arange(len(scores))
        top = top[np.lexsort((-seqs[top], -scores[top]))]  # best first, then newest
        return len(scores), [(int(seqs[i]), round(float(scores[i]), 6)) for i in top]

    # -- retention's removal: the brute-force form (an ANN index has its own) -----------

    def remove(self, seqs: Sequence[int]) -> int:
        """Drop the rows of the units *seqs* (retention removed them) and rewrite the
        files without them; how many rows went. Seqs without a row are passed over."""
        if not self.rows or not seqs:
            return 0
        keep = ~np.isin(self._seqs[:self.rows], np.asarray(seqs, dtype=np.int64))
        kept = int(keep.sum())
        if kept == self.rows:
            return 0
        vectors, kept_seqs = self._vectors[:self.rows][keep], self._seqs[:self.rows][keep]
        self._vectors[:kept], self._seqs[:kept] = vectors, kept_seqs
        gone, self.rows = self.rows - kept, kept
        for name, data in ((_VECTORS, vectors), (_SEQS, kept_seqs)):
            temporary = self._path(name + ".tmp")
            with open(temporary, "wb") as file:
                file.write(data.tobytes())
            os.replace(temporary, self._path(name))
        self._write_state()
        return gone

    def memory_bytes(self) -> int:
        return int(self._vectors.nbytes + self._seqs.nbytes)
