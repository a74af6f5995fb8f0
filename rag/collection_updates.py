"""Add or delete documents of a live index and its docstore, all or nothing, and save the index atomically.

    >>> from rag.indexes import load_index                              # doctest: +SKIP
    >>> retriever = load_index("my-collection/dense")                   # doctest: +SKIP
    >>> store = Docstore(retriever.docstore_path)                       # doctest: +SKIP
    >>> docs = [Document("n1", "New text.")]                            # doctest: +SKIP
    >>> add_documents(retriever, store, "my-collection/dense", docs)    # doctest: +SKIP
    1

The order keeps search consistent at every step, and each failure undoes what was done before it:

- add: index in memory -> docstore (one transaction) -> index saved (atomic rename). A crash between the
  docstore commit and the save leaves documents in the docstore that no index returns, never the reverse.
- delete: index in memory -> index saved -> docstore. A crash before the docstore delete leaves a document
  no index returns.

The caller serialises updates and searches of one index (the server holds a per-collection lock).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rag.docstore import Docstore
from rag.errors import CorpusError
from rag.indexes.base import Retriever
from rag.types import Document


def add_documents(
    retriever: Retriever, docstore: Docstore, index_dir: str | Path, docs: Sequence[Document]
) -> int:
    """Add ``docs`` to the index and the docstore and save the index; nothing is added if any step fails."""
    docs = list(docs)
    if not docs:
        return 0
    ids = [d.id for d in docs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise CorpusError(
            f"document id(s) {repeated} appear more than once in the request; nothing was added"
        )
    taken = [i for i in ids if i in docstore]
    if taken:
        raise CorpusError(f"document id(s) {taken[:5]} already exist; delete them first; nothing was added")
    retriever.add(docs)  # raises before changing anything on a known id or an encoder failure
    try:
        docstore.add(docs)  # one transaction
        try:
            retriever.save(index_dir)  # atomic: the previous index stays on failure
        except BaseException:
            docstore.delete(ids)
            raise
    except BaseException:
        retriever.delete(ids)
        raise
    return len(docs)


def delete_documents(
    retriever: Retriever, docstore: Docstore, index_dir: str | Path, ids: Sequence[str]
) -> int:
    """Delete ``ids`` from the index and the docstore; returns how many documents the docstore held."""
    present = [i for i in dict.fromkeys(ids) if i in docstore]
    if not present:
        return 0
    docs = docstore.get(present)
    removed = retriever.delete(present)
    try:
        retriever.save(index_dir)
    except BaseException:
        if removed:
            retriever.add(docs)  # re-encode from the docstore, which still holds them
        raise
    docstore.delete(present)
    return len(present)
