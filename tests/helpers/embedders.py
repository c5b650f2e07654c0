"""Embedders for ``search.embedding = "tests.helpers.embedders:NAME"`` (the pluggable
interface), one of them failing on purpose (fault injection)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engramd.embedding import WordLlamaEmbedder


class PoisonedEmbedder(WordLlamaEmbedder):
    """The bundled model, but it fails on any text that says "poison"."""

    def __init__(self) -> None:
        super().__init__()
        self.identity = "poisoned-" + self.identity

    def embed(self, texts: Sequence[str]) -> Any:
        if any("poison" in text for text in texts):
            raise ValueError("this model cannot read poison")
        return super().embed(texts)


def poisoned() -> PoisonedEmbedder:
    return PoisonedEmbedder()
