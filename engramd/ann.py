"""The approximate nearest-neighbour graph of semantic search: usearch's HNSW over
int8 vectors by cosine, keyed by the units' seqs, saved as a snapshot.

A snapshot is ``ann-<rows>.usearch`` (the graph of the first *rows* rows of the vector
index) and ``ann.json`` naming it: the library and its version, model, dimension, the
rows and removals it covers, its size and its SHA-256. It is written
beside the one in use and named in ``ann.json`` only once complete, so a crash at any
point leaves the previous one; one that does not match what ``ann.json`` says (cut,
overwritten, another library's) is not loaded and the graph is built again from the
rows. Synchronous and trio-free, like the vector index that owns it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger("engramd.indexer")

LIBRARY = "usearch"
_POINTER = "ann.json"
_DIGEST_CHUNK = 1 << 20
CONNECTIVITY = 16
EXPANSION_ADD = 64
EXPANSION_SEARCH = 1024
"""HNSW settings. Adding is what costs at millions of units (1,700 adds/s at 7.5M with
usearch's default 128, the scale bench's slowest part): half that to add, 1.7 times the
adds per second, measured on a million of the scale bench's unit vectors. A graph built
so needs a wider search as it grows: searching at 64 (usearch's default) gave recall@10
0.971 at 1M after the rescoring of :mod:`engramd.vectors`, at 160 0.990 at 1M but 0.927
at 10M (the scale bench). A query's cost is small beside the 50 ms target, so the search
is wide: at 1,024, recall@10 0.967 and p99 10.1 ms at 10M (SPECS §8.2)."""


def library_version() -> str:
    import usearch

    return f"{LIBRARY} {usearch.__version__}"


def _digest(path: str) -> str:
    """The SHA-256 of the whole file (1.7 GB/s here: 2 s for a 10M-unit graph). A digest
    of the head and tail alone let a snapshot damaged in its middle load, and usearch
    then crashed the index process on the first search, at every start."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_DIGEST_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Graph:
    """The graph over the first :attr:`rows` rows of the vector index (removed ones
    left out), with what its snapshot on disk covers."""

    def __init__(self, directory: str, model: str, dim: int) -> None:
        from usearch.index import Index

        self.directory = directory
        self.model = model
        self.dim = dim
        self._index = Index(ndim=dim, metric="cos", dtype="i8", connectivity=CONNECTIVITY,
                            expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
        self.rows = 0
        """Rows of the vector index taken in (the next one to add is this one)."""
        self.removed = 0
        """Removals (entries of the vector index's removal list) applied."""
        self.saved_rows = 0
        """Rows the snapshot on disk covers (0: none)."""

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _pointer(self) -> dict[str, Any] | None:
        try:
            with open(self._path(_POINTER), encoding="utf-8") as file:
                pointer = json.load(file)
        except (OSError, ValueError):
            return None
        return pointer if isinstance(pointer, dict) else None

    def load(self, rows: int, removed: int) -> bool:
        """Load the snapshot, if there is a sound one of this model, dimension and
        library covering at most *rows* rows and *removed* removals; False otherwise
        (then the graph stays empty and is built again)."""
        pointer = self._pointer()
        name = (pointer or {}).get("file")
        for other in os.listdir(self.directory):  # one cut short by a crash or a kill
            if other.startswith("ann-") and other != name:
                remove_file(self._path(other))
        if pointer is None:
            return False
        wanted = {"library": library_version(), "model": self.model, "dim": self.dim}
        if any(pointer.get(key) != value for key, value in wanted.items()) \
                or not isinstance(name, str) or os.sep in name \
                or not isinstance(pointer.get("rows"), int) \
                or not isinstance(pointer.get("removed"), int) \
                or not isinstance(pointer.get("sha256"), str) \
                or not 0 < pointer["rows"] <= rows or not 0 <= pointer["removed"] <= removed:
            log.info("vector index: the ANN snapshot is of another model, library, format "
                     "or journal; building it again")
            return False
        path = self._path(name)
        try:
            size = os.path.getsize(path)
            sound = size == pointer.get("size") and _digest(path) == pointer["sha256"]
            if sound:
                self._index.load(path)
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("vector index: the ANN snapshot %s did not load (%s); building it "
                        "again", path, exc)
            self._index.reset()  # type: ignore[no-untyped-call]
            return False
        if not sound:
            log.warning("vector index: the ANN snapshot %s is damaged (its size or digest "
                        "differs); building it again", path)
            return False
        self.rows = self.saved_rows = pointer["rows"]
        self.removed = pointer["removed"]
        return True

    def add(self, seqs: np.ndarray, vectors: np.ndarray, up_to_row: int) -> None:
        """Add the units *seqs* (their *vectors*), the rows before *up_to_row* then all in."""
        if len(seqs):
            self._index.add(seqs.astype(np.uint64), vectors, threads=ADD_THREADS)
        self.rows = up_to_row

    def remove(self, seqs: np.ndarray, removed: int) -> None:
        """Leave out the units *seqs* (those it never had are nothing to it)."""
        if len(seqs):
            self._index.remove(seqs.astype(np.uint64))
        self.removed = removed

    def search(self, query: np.ndarray, count: int) -> np.ndarray:
        """The seqs of up to *count* units near *query*, nearest first (approximately)."""
        if not len(self._index) or count <= 0:
            return np.zeros(0, dtype=np.int64)
        found = self._index.search(query, min(count, len(self._index)))
        return np.asarray(found.keys, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._index)

    def save(self) -> None:
        """Write a snapshot of the graph as it is, then name it in ``ann.json``; the
        previous one is deleted after."""
        name = f"ann-{self.rows}.usearch"
        path = self._path(name)
        temporary = path + ".tmp"
        self._index.save(temporary)
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
        size = os.path.getsize(path)
        pointer = {"library": library_version(), "model": self.model, "dim": self.dim,
                   "rows": self.rows, "removed": self.removed, "file": name, "size": size,
                   "sha256": _digest(path)}
        previous = self._pointer()
        pointer_tmp = self._path(_POINTER + ".tmp")
        with open(pointer_tmp, "w", encoding="utf-8") as file:
            json.dump(pointer, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(pointer_tmp, self._path(_POINTER))
        self.saved_rows = self.rows
        old = (previous or {}).get("file")
        if isinstance(old, str) and old != name and os.sep not in old:
            remove_file(self._path(old))

    @staticmethod
    def destroy(directory: str) -> None:
        """Delete every snapshot in *directory*."""
        for name in os.listdir(directory):
            if name == _POINTER or name.startswith("ann-"):
                remove_file(os.path.join(directory, name))


def exact_top(rows: np.ndarray, query: np.ndarray, count: int) -> np.ndarray:
    """The indexes of the *count* rows (int8, any array or memory map) most similar to
    *query* (int8) by cosine, every row compared: usearch's SIMD kernels, about twelve
    times numpy's widening of the rows to float32 here (40 ms for 500,000 rows)."""
    from usearch.compiled import MetricKind
    from usearch.index import search

    found = search(rows, query, min(count, len(rows)), MetricKind.Cos, exact=True,
                   threads=ADD_THREADS)
    return np.asarray(found.keys, dtype=np.int64)


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


ADD_THREADS = 2
"""Threads usearch adds a slice of rows with (it releases the interpreter lock)."""
