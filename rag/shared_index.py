"""An index of a collection that several processes search and update at once, with its docstore.

    >>> index = SharedIndex("my-collection/dense")                       # doctest: +SKIP
    >>> index.add([Document("n1", "New text.")])                         # doctest: +SKIP
    1
    >>> [(hits, docs)] = index.search_documents(["new text"], k=3)       # doctest: +SKIP

Readers see committed changes: before each search the index folder's manifest is checked (one ``stat``) and
the index is reloaded when another process has replaced it. Writers take the collection's writer lock, reload
if needed, and commit through ``rag.collection_updates``. Opening the index finishes a commit that a crashed
writer left half done (``rag.collection_commit.recover``). A hit whose document another process has just
deleted is retried once the writer is done; documents deleted for good are dropped from the hits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from rag.collection_commit import index_key, recover, recover_index
from rag.collection_lock import writer_lock
from rag.collection_updates import add_documents, delete_documents
from rag.docstore import Docstore
from rag.errors import ConfigError
from rag.indexes import Manifest, load_index
from rag.indexes.base import Retriever
from rag.types import Document, Hit

log = logging.getLogger(__name__)


class SharedIndex(Retriever):
    """A :class:`Retriever` over a saved index that follows the commits of other processes."""

    def __init__(self, index_dir: str | Path) -> None:
        self.index_dir = Path(index_dir)
        self.folder = self.index_dir.resolve().parent
        self._lock = threading.RLock()  # one search or update at a time in this process
        recover_index(self.index_dir)
        manifest = Manifest.read(self.index_dir)
        path = manifest.docstore_path(self.index_dir)
        if path is None:
            raise ConfigError(f"the index {self.index_dir} records no docstore")
        self.docstore = Docstore(path)
        try:
            self._key = index_key(self.index_dir)
            self.retriever: Retriever = load_index(self.index_dir)
        except BaseException:
            self.docstore.close()
            raise

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.retriever.kind

    @property
    def docstore_path(self) -> Path:
        return self.docstore.path

    def __len__(self) -> int:
        with self._lock:
            self.refresh()
            return len(self.retriever)

    def doc_ids(self) -> set[str]:
        with self._lock:
            self.refresh()
            return self.retriever.doc_ids()

    def refresh(self) -> bool:
        """Reload the index if another process has committed a change since; True if it did."""
        with self._lock:
            key = index_key(self.index_dir)
            if key == self._key:
                return False
            retriever = self.retriever.reload(self.index_dir)
            self.retriever, self._key = retriever, key
            return True

    # -- reading ------------------------------------------------------------------------------------------

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        with self._lock:
            self.refresh()
            return self.retriever.search(queries, k)

    def search_documents(self, queries: Sequence[str], k: int = 10) -> list[tuple[list[Hit], list[Document]]]:
        """The top-``k`` hits of each query with their documents, as one consistent read."""
        with self._lock:
            results = self.search(queries, k)
            try:
                return [(hits, self.docstore.get([h.doc_id for h in hits])) for hits in results]
            except KeyError:
                pass  # a writer is between its docstore commit and its index swap, or crashed there
            with writer_lock(self.folder):  # waits for that writer; repairs after a crash
                recover(self.folder, self.docstore)
                results = self.search(queries, k)
            return [self._with_documents(hits) for hits in results]

    def _with_documents(self, hits: list[Hit]) -> tuple[list[Hit], list[Document]]:
        found = {d.id: d for d in self.docstore.get_present([h.doc_id for h in hits])}
        kept = [h for h in hits if h.doc_id in found]
        if len(kept) < len(hits):
            missing = sorted({h.doc_id for h in hits} - set(found))
            log.warning("%s returns ids the docstore no longer holds: %s", self.index_dir, missing[:5])
        return kept, [found[h.doc_id] for h in kept]

    # -- writing ------------------------------------------------------------------------------------------

    def add(self, docs: Iterable[Document]) -> int:
        docs = list(docs)
        with self._lock, writer_lock(self.folder):
            self.refresh()
            try:
                return add_documents(self.retriever, self.docstore, self.index_dir, docs)
            finally:
                self._key = index_key(self.index_dir)

    def delete(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        with self._lock, writer_lock(self.folder):
            self.refresh()
            try:
                return delete_documents(self.retriever, self.docstore, self.index_dir, ids)
            finally:
                self._key = index_key(self.index_dir)

    # -- persistence and lifetime -------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        with self._lock:
            self.retriever.save(directory)

    @classmethod
    def load(cls, directory: str | Path) -> SharedIndex:
        return cls(directory)

    def close(self) -> None:
        self.docstore.close()
