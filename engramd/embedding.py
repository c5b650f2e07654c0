"""Text embeddings for semantic search, behind one small interface.

An :class:`Embedder` turns texts into unit-length float32 vectors and names itself
(``identity``): the vector index stores that name, and a different one means the
index is rebuilt, never mixed. The default is the static model bundled inside the
``wordllama`` wheel (the ``engram-journal[semantic]`` extra): no download, ~0.6 s to load.
``search.embedding`` may name another: ``package.module:factory``, a callable that
takes no argument and returns an Embedder (a local model someone already has).

Nothing here imports numpy or a model until :func:`load_embedder` runs, and the
daemon calls it only when :func:`available` says the extra is installed.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

DEFAULT = "wordllama"
EXTRA_HINT = "pip install 'engram-journal[semantic]'"


class Embedder(Protocol):
    identity: str
    """Names the model and its settings; a change of it rebuilds the vector index."""
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), dim)`` float32 array of unit-length rows."""
        ...


def available(spec: str = DEFAULT) -> bool:
    """Whether *spec* can load here, without importing anything heavy."""
    module = "wordllama" if spec == DEFAULT else spec.partition(":")[0]
    try:
        return (importlib.util.find_spec("numpy") is not None
                and importlib.util.find_spec(module) is not None)
    except (ImportError, ValueError):
        return False


class WordLlamaEmbedder:
    """WordLlama's bundled 256-dimension static model, loaded from its own package
    directory (its default loader looks for the tokenizer elsewhere and would try to
    download)."""

    dim = 256

    def __init__(self) -> None:
        # Its tokenizer's own thread pool measured slower than splitting the batch here.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import wordllama
        from wordllama import WordLlama

        self._model = WordLlama.load(cache_dir=os.path.dirname(wordllama.__file__),
                                     disable_download=True, dim=self.dim)
        version = getattr(wordllama, "__version__", "?")
        self.identity = f"wordllama-l2-supercat-{self.dim}@{version}"
        self._threads = max(1, min(2, os.cpu_count() or 1))
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of *texts*, in order. A text is cut to its first
        :data:`MAX_CHARS` characters, and texts are embedded in groups of like length
        within :data:`PADDED_BUDGET`: the model pads a call to its longest text, so one
        long payload among many short ones would otherwise cost gigabytes."""
        import numpy as np

        cut = [text[:MAX_CHARS] for text in texts]
        order = sorted(range(len(cut)), key=lambda index: len(cut[index]))
        groups: list[list[int]] = []
        for index in order:  # by length: each group's longest text is its last one
            if groups and (len(groups[-1]) + 1) * max(1, len(cut[index])) <= PADDED_BUDGET:
                groups[-1].append(index)
            else:
                groups.append([index])
        if not groups:
            return np.zeros((0, self.dim), dtype=np.float32)
        batches = [[cut[index] for index in group] for group in groups]
        if len(batches) == 1 or self._threads == 1:
            parts = [self._model.embed(batch, norm=True) for batch in batches]
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._threads, thread_name_prefix="engramd-embed")
            parts = list(self._pool.map(lambda batch: self._model.embed(batch, norm=True),
                                        batches))
        vectors = np.empty((len(cut), self.dim), dtype=np.float32)
        for group, part in zip(groups, parts, strict=True):
            vectors[group] = part
        return np.ascontiguousarray(vectors)


MAX_CHARS = 2_000
"""What of a text is embedded: a unit's opening carries what a search by meaning looks
for, and a static model averages its tokens anyway."""
PADDED_BUDGET = 100_000
"""Characters (at least as many as tokens) one call may pad to: about 100 MB of
256-float token vectors, whatever the batch."""


def load_embedder(spec: str = DEFAULT) -> Embedder:
    """The embedder *spec* names. Raises ImportError when it cannot load."""
    if spec == DEFAULT:
        return WordLlamaEmbedder()
    module_name, sep, factory = spec.partition(":")
    if not sep or not factory:
        raise ImportError(f"search.embedding must be {DEFAULT!r} or 'module:factory', "
                          f"not {spec!r}")
    made: Any = getattr(importlib.import_module(module_name), factory)()
    if not isinstance(getattr(made, "identity", None), str) or not hasattr(made, "embed"):
        raise ImportError(f"{spec} did not return an embedder (identity, dim, embed)")
    return made  # type: ignore[no-any-return]
