"""An index of a collection that several processes search and update at once, with its docstore.

    >>> index = SharedIndex("my-collection/dense")                       # doctest: +SKIP
    >>> index.add([Document("n1", "New text.")])                         # doctest: +SKIP
    1
    >>> [(hits, docs)] = index.search_documents(["new text"], k=3)       # doctest: +SKIP

Readers see committed changes: before each search the index folder's manifest is checked (one ``stat``) and
the index is reloaded when another process has replaced it. Writers take the collection's writer lock, reload
if needed, and commit through ``rag.collection.updates``. Opening the index finishes a commit that a crashed
writer left half done (``rag.collection.commit.recover``). A hit whose document another process has just
deleted is retried once the writer is done; documents deleted for good are dropped from the hits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from rag.collection.commit import IndexKey, index_key, recover, recover_index
from rag.collection.lock import writer_lock
from rag.collection.updates import add_documents, delete_documents
from rag.docstore import Docstore
from rag.errors import ConfigError, IndexFormatError
from rag.indexes import load_index
from rag.indexes.base import Retriever
from rag.types import Document, Hit

log = logging.getLogger(__name__)
READ_RETRY_S = 30.0  # how long a read is retried while other processes keep committing


class SharedIndex(Retriever):
    """A :class:`Retriever` over a saved index that follows the commits of other processes."""

    def __init__(self, index_dir: str | Path) -> None:
        self.index_dir = Path(index_dir)
        self.folder = self.index_dir.resolve().parent
        self._lock = threading.RLock()  # one search or update at a time in this process
        recover_index(self.index_dir)
        self._key, self.retriever = read_committed(self.index_dir, lambda: load_index(self.index_dir))
        path = self.retriever.docstore_path
        if path is None:
            raise ConfigError(f"the index {self.index_dir} records no docstore")
        self.docstore = Docstore(path)

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
            if index_key(self.index_dir) == self._key:
                return False
            self._key, self.retriever = read_committed(
                self.index_dir, lambda: self.retriever.reload(self.index_dir)
            )
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


def read_committed(index_dir: Path, load: Callable[[], Retriever]) -> tuple[IndexKey, Retriever]:
    """``load()`` of one committed version of the index, and that version's key.

    A writer's commit swaps the index folder with two renames, so a read that spans a commit can see no
    folder, or the old manifest with the new payload (``IndexFormatError``), or finish on a version that is
    already replaced. Such a read is done again, as long as the folder keeps changing (up to
    :data:`READ_RETRY_S`); a damaged index that stays as it is raises at once.
    """
    deadline = time.monotonic() + READ_RETRY_S
    while True:
        before = index_key(index_dir)
        try:
            retriever = load()
        except IndexFormatError:
            after = index_key(index_dir)
            changing = after != before or (after is None and _mid_swap(index_dir))
            if not changing or time.monotonic() > deadline:
                raise  # damaged, or missing, and no writer is replacing it
            log.info("%s changed while it was read; reading it again", index_dir)
            time.sleep(0.01)
            continue
        if before is not None and index_key(index_dir) == before:
            return before, retriever
        if time.monotonic() > deadline:
            raise IndexFormatError(f"{index_dir} kept changing for {READ_RETRY_S:g} s while it was read")


def _mid_swap(index_dir: Path) -> bool:
    """Whether a writer is between its two renames: the old folder moved aside, the new not yet in place."""
    return any(index_dir.parent.glob(f".{index_dir.name}.old-*"))
