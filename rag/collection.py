"""Build an index of a corpus into a collection: one SQLite docstore shared by the collection's indexes.

A collection is a folder::

    my-collection/
        docstore.sqlite        text and metadata of every document
        dense/                 an index: manifest.json + payload, pointing at ../docstore.sqlite

Building reads and validates the whole corpus first, then encodes, then stores the documents in one
transaction and writes the index atomically, so a bad record or a crash leaves no half-built index.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rag.corpus import read_corpus
from rag.docstore import Docstore
from rag.errors import CorpusError
from rag.indexes.base import Retriever
from rag.registry import build
from rag.types import Document

DOCSTORE_FILE = "docstore.sqlite"


def build_index(
    corpus: str | Path,
    collection: str | Path,
    *,
    name: str = "dense",
    kind: str = "dense",
    config: Mapping[str, Any] | None = None,
    fmt: str | None = None,
    chunk_tokens: int = 256,
    chunk_overlap: int = 32,
) -> Retriever:
    """Index ``corpus`` as ``collection/name`` and return the retriever, ready to search."""
    docs = list(read_corpus(corpus, fmt, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap))
    if not docs:
        raise CorpusError(f"corpus {corpus} has no documents")
    collection = Path(collection)
    retriever: Retriever = build("retriever", kind, dict(config or {}))
    retriever.add(docs)
    store_path = collection / DOCSTORE_FILE
    collection.mkdir(parents=True, exist_ok=True)
    with Docstore.create(store_path, exist_ok=True) as store:
        store.add(_missing_from(store, docs))
    retriever.docstore_path = store_path  # type: ignore[attr-defined]
    retriever.save(collection / name)
    return retriever


def _missing_from(store: Docstore, docs: list[Document]) -> list[Document]:
    """Documents the shared docstore lacks (another index of the collection may have added some)."""
    return [d for d in docs if d.id not in store]
