"""The reranker contract: reorder a retriever's hits for one query."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from rag.types import Hit


class Reranker(ABC):
    @abstractmethod
    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]:
        """Return ``hits`` reordered (and cut to ``k`` when given), ranks renumbered from 1."""
