"""Add or delete documents of a live index and its docstore as one commit, under the collection's writer lock.

    >>> from rag.indexes import load_index                              # doctest: +SKIP
    >>> retriever = load_index("my-collection/dense")                   # doctest: +SKIP
    >>> store = Docstore(retriever.docstore_path)                       # doctest: +SKIP
    >>> docs = [Document("n1", "New text.")]                            # doctest: +SKIP
    >>> add_documents(retriever, store, "my-collection/dense", docs)    # doctest: +SKIP
    1

Each update changes the index in memory, stages the saved index beside the old one, then commits the docstore
change and swaps the index in as one step (``rag.collection.commit``): after a crash at any point, the next
open sees either the old index and docstore or the new ones. A failure before the commit undoes the change in
memory. Adding an id the docstore already holds is refused (``CorpusError``); to replace a text, delete it
first, or rebuild the index (a build replaces the texts of the ids in its corpus).

``retriever`` must hold what is on disk (``rag.collection.shared_index.SharedIndex`` reloads it when another
process has committed a change); the writer lock serialises writers of every process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rag.collection.commit import commit, recover, stage
from rag.collection.lock import writer_lock
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
    index_dir = Path(index_dir)
    with writer_lock(index_dir.parent):
        recover(index_dir.parent, docstore)
        taken = [i for i in ids if i in docstore]
        if taken:
            raise CorpusError(
                f"document id(s) {taken[:5]} already exist; delete them first; nothing was added"
            )
        retriever.add(docs)  # raises before changing anything on a known id or an encoder failure
        try:
            commit(docstore, index_dir, stage(retriever, index_dir), lambda: docstore.add(docs))
        except BaseException:
            retriever.delete(ids)
            raise
    return len(docs)


def delete_documents(
    retriever: Retriever, docstore: Docstore, index_dir: str | Path, ids: Sequence[str]
) -> int:
    """Delete ``ids`` from the index and the docstore; returns how many documents the docstore held."""
    index_dir = Path(index_dir)
    with writer_lock(index_dir.parent):
        recover(index_dir.parent, docstore)
        present = [i for i in dict.fromkeys(ids) if i in docstore]
        if not present:
            return 0
        indexed = retriever.doc_ids().intersection(present)
        if not indexed:  # only the docstore holds them (another index of the collection may index them)
            docstore.delete(present)
            return len(present)
        docs = docstore.get(sorted(indexed))
        retriever.delete(indexed)
        try:
            commit(docstore, index_dir, stage(retriever, index_dir), lambda: docstore.delete(present))
        except BaseException:
            retriever.add(docs)  # re-encode from the docstore, which still holds them
            raise
    return len(present)
