"""A Lucene index directory that the Lucene retrievers write, search and save (copy-on-write).

    >>> from rag.indexes.lucene_store import LuceneStore
    >>> store = LuceneStore(["-collection", "JsonCollection"])
    >>> store.add(['{"id": "a", "contents": "cats purr"}'])
    >>> store.delete(["a"])

A new store writes into a private temporary directory. A store opened on a saved index reads that directory
in place and copies it to a private one only before the first ``add`` or ``delete``, so the saved index
changes only through ``save`` (atomic, see ``rag.indexes.manifest``). Appending uses Anserini's
``SimpleIndexer`` in ``-append`` mode; deleting uses Lucene's ``IndexWriter.deleteDocuments`` on the ``id``
term that Anserini indexes for every document.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

from rag.indexes.lucene_jvm import java_class


class LuceneStore:
    def __init__(self, indexer_args: Sequence[str], directory: str | Path | None = None, threads: int = 1):
        self.indexer_args = list(indexer_args)  # SimpleIndexer arguments other than -index/-append/-threads
        self.threads = threads
        self._path = Path(directory) if directory is not None else None
        self._owned: Path | None = None  # our private working copy, removed with this object
        self._has_commit = directory is not None

    @property
    def path(self) -> Path | None:
        """The directory searchers read; None while nothing was ever written."""
        return self._path if self._has_commit else None

    @property
    def is_private(self) -> bool:
        """True once writes went to our own working copy (the saved directory is then never touched)."""
        return self._owned is not None

    def _writable(self) -> Path:
        if self._owned is None:
            self._owned = Path(tempfile.mkdtemp(prefix="ragloom-lucene-"))
            weakref.finalize(self, shutil.rmtree, self._owned, ignore_errors=True)
            if self._path is not None:  # copy-on-write of a saved index
                shutil.copytree(self._path, self._owned, dirs_exist_ok=True)
            self._path = self._owned
        return self._owned

    def add(self, json_docs: Sequence[str]) -> None:
        """Index Anserini JSON documents (``{"id": ..., "contents": ...}``), appending to what is there."""
        if not json_docs:
            return
        work = self._writable()
        args = [*self.indexer_args, "-index", str(work), "-input", "", "-threads", str(self.threads)]
        if self._has_commit:
            args.append("-append")
        indexer = java_class("io.anserini.index.SimpleIndexer")(args)
        try:
            added = indexer.addRawDocuments(list(json_docs))
        finally:
            indexer.close()
        self._has_commit = True
        if added != len(json_docs):
            raise RuntimeError(f"Lucene indexed {added} of {len(json_docs)} documents")

    def delete(self, ids: Sequence[str]) -> None:
        """Delete documents by their ``id`` term (Lucene's delete-by-term, then a commit)."""
        if not ids or not self._has_commit:
            return
        work = self._writable()
        config = java_class("org.apache.lucene.index.IndexWriterConfig")()
        config.setOpenMode(java_class("org.apache.lucene.index.IndexWriterConfig$OpenMode").APPEND)
        directory = java_class("org.apache.lucene.store.FSDirectory").open(
            java_class("java.io.File")(str(work)).toPath()
        )
        writer = java_class("org.apache.lucene.index.IndexWriter")(directory, config)
        term, query = (
            java_class("org.apache.lucene.index.Term"),
            java_class("org.apache.lucene.search.TermQuery"),
        )
        try:
            for doc_id in ids:  # one call per id: pyjnius cannot pick the Term[] varargs overload
                writer.deleteDocuments(query(term("id", doc_id)))
            writer.commit()
        finally:
            writer.close()

    def copy_to(self, target: Path) -> None:
        """Copy the index files into ``target`` (a fresh directory)."""
        if self.path is None:
            target.mkdir(parents=True, exist_ok=True)
            return
        shutil.copytree(self.path, target, ignore=shutil.ignore_patterns("write.lock"), dirs_exist_ok=True)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()) if self.path else 0
