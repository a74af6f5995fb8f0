"""The one retriever contract every index kind implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

from rag.errors import EmptyQueryError
from rag.types import Document, Hit


class Retriever(ABC):
    """Batch-first search over a collection; add and delete without a rebuild; save and load a directory."""

    kind: str  # the registry name, recorded in the manifest
    # the collection's SQLite docstore, where hits' texts are read; set when an index is built into a
    # collection or loaded from one, None for an index built in memory
    docstore_path: Path | None = None

    @abstractmethod
    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Top-``k`` hits for each query, best first."""

    @abstractmethod
    def add(self, docs: Iterable[Document]) -> int:
        """Index ``docs``; returns how many were added."""

    @abstractmethod
    def delete(self, ids: Iterable[str]) -> int:
        """Remove documents by id; returns how many were removed."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the index atomically to ``directory``."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | Path) -> Retriever:
        """Open an index written by :meth:`save`."""

    def reload(self, directory: str | Path) -> Retriever:
        """The index saved in ``directory`` now (another process may have replaced it); a kind may reuse its
        loaded models."""
        from rag.indexes import load_index

        return load_index(directory)

    @abstractmethod
    def __len__(self) -> int:
        """Number of searchable documents."""

    @abstractmethod
    def doc_ids(self) -> set[str]:
        """The ids of the searchable documents."""


def check_queries(queries: Sequence[str], k: int) -> None:
    """Refuse empty queries and non-positive ``k`` before any work is done."""
    if isinstance(queries, str):
        raise TypeError("search() takes a sequence of queries; wrap a single query in a list")
    for i, query in enumerate(queries):
        if not query or not query.strip():
            raise EmptyQueryError(f"query {i} is empty")
    if k < 1:
        raise EmptyQueryError(f"k must be at least 1, got {k}")
