"""A collection as one service: its docstore and one of its indexes, searched and changed from any process.

    >>> collection = Collection.build("notes.jsonl", "my-collection")             # doctest: +SKIP
    >>> collection = Collection("my-collection/dense")                          # doctest: +SKIP
    >>> hits, docs = collection.search("what is ragloom?", k=3)                  # doctest: +SKIP
    >>> collection.add([Document("n1", "New text.")])                            # doctest: +SKIP
    1

``rag ask``, ``rag search``, ``rag rerank`` and ``rag eval qa``, the REST routes, LangChain's retriever and
``Pipeline.from_config`` all open an index this way. Each search reads one committed state of the index
with the documents of its hits (:class:`~rag.collection.shared_index.SharedIndex` follows other processes'
commits); ``add`` and ``delete`` change the index and the docstore as one commit under the collection's
writer lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from rag.collection.build import build_index
from rag.collection.shared_index import SharedIndex
from rag.docstore import Docstore
from rag.types import Document, Hit


class Collection:
    """One index of a collection folder (``COLLECTION/NAME``) and the collection's docstore."""

    def __init__(self, index_dir: str | Path) -> None:
        self.index = SharedIndex(
            index_dir
        )  # finishes a commit a crashed writer left; IndexFormatError if damaged

    @classmethod
    def build(
        cls, corpus: str | Path, folder: str | Path, *, name: str = "dense", **options: Any
    ) -> Collection:
        """Index ``corpus`` as ``folder/name`` (:func:`~rag.collection.build.build_index`, which takes the
        ``options``), then open it."""
        build_index(corpus, folder, name=name, **options)
        return cls(Path(folder) / name)

    @property
    def index_dir(self) -> Path:
        return self.index.index_dir

    @property
    def kind(self) -> str:
        return self.index.kind

    @property
    def docstore(self) -> Docstore:
        return self.index.docstore

    def __len__(self) -> int:
        """Documents in the docstore (which every index of the collection shares)."""
        return len(self.docstore)

    def search(self, query: str, k: int = 10) -> tuple[list[Hit], list[Document]]:
        """The top-``k`` hits of ``query`` and their documents, from one committed state."""
        return self.index.search_documents([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 10) -> list[tuple[list[Hit], list[Document]]]:
        return self.index.search_documents(queries, k)

    def documents(self, ids: Sequence[str]) -> tuple[list[Document], list[str]]:
        """The documents with these ids, and the ids the collection does not hold (then no documents)."""
        found = self.docstore.get_present(ids)
        held = {d.id for d in found}
        missing = [i for i in ids if i not in held]
        return ([] if missing else found), missing

    def add(self, docs: Iterable[Document]) -> int:
        """Add ``docs`` to the index and the docstore as one commit; an id already held is refused."""
        return self.index.add(docs)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete ``ids`` from the index and the docstore; returns how many the docstore held."""
        return self.index.delete(ids)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
