"""The reranker contract, and the base of rerankers that read the hits' documents and order them.

A variant of :class:`DocumentReranker` implements one method, ``order(query, docs)``, which returns the
candidates' positions best first (and optional scores); documents come from ``docstore`` (anything with
``get(ids) -> list[Document]``, e.g. :class:`~rag.docstore.Docstore` or
:class:`~rag.rerankers.lm.MemoryDocs`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

from rag.errors import ConfigError, EmptyQueryError
from rag.types import Document, Hit


class Reranker(ABC):
    @abstractmethod
    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]:
        """Return ``hits`` reordered (and cut to ``k`` when given), ranks renumbered from 1."""


class DocumentSource(Protocol):
    def get(self, ids: Sequence[str]) -> list[Document]: ...


class DocumentReranker(Reranker):
    """Reads the hits' documents from ``docstore`` (the pipeline sets it when None) and orders them."""

    name = "reranker"  # the registered name, written as the ``source`` of the returned hits

    def __init__(self, docstore: DocumentSource | None = None) -> None:
        self.docstore = docstore

    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]:
        """New hits for the best ``k`` of ``hits`` (all when None), ranks renumbered from 1."""
        if self.docstore is None:
            raise ConfigError(f"the {self.name} reranker has no docstore to read the hits' text from")
        return self.rerank_documents(query, hits, self.docstore.get([h.doc_id for h in hits]), k)

    def rerank_documents(
        self, query: str, hits: Sequence[Hit], docs: Sequence[Document], k: int | None = None
    ) -> list[Hit]:
        """As :meth:`rerank`, with the hits' documents given (``docs[i]`` belongs to ``hits[i]``)."""
        if not query or not query.strip():
            raise EmptyQueryError("the query is empty")
        if len(docs) != len(hits):
            raise ConfigError(f"{len(hits)} hits but {len(docs)} documents")
        if k is not None and k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if not hits:
            return []
        positions, scores = self.order(query.strip(), list(docs))
        if sorted(positions) != list(range(len(hits))):  # a bug in a variant, never a user error
            raise AssertionError(f"{type(self).__name__}.order returned {positions}, not a permutation")
        kept = positions[:k] if k else positions
        return [
            Hit(
                hits[p].doc_id,
                float(scores[p]) if scores is not None else float(len(hits) - rank),
                rank + 1,
                self.name,
            )
            for rank, p in enumerate(kept)
        ]

    @abstractmethod
    def order(self, query: str, docs: list[Document]) -> tuple[list[int], Sequence[float] | None]:
        """Positions of ``docs`` best first, and a score per document (in input order) or None."""
