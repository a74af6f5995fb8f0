"""What the Lucene retrievers (BM25, SPLADE impact) share: the id table, add/delete, save/load.

A subclass names its ``kind``, its config class, the ``SimpleIndexer`` arguments, how a document becomes an
Anserini JSON record, and how a batch of queries is searched; everything else lives here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from rag.errors import ConfigError, IndexFormatError
from rag.indexes.base import Retriever, check_queries
from rag.indexes.lucene_jvm import java_class
from rag.indexes.lucene_store import LuceneStore
from rag.indexes.manifest import Manifest, atomic_directory, read_json, relative_docstore
from rag.registry import make_config
from rag.types import Document, Hit

_LUCENE_DIR = "lucene"
_IDS_FILE = "ids.json"


class LuceneRetriever(Retriever):
    config_class: ClassVar[type]
    indexer_args: ClassVar[list[str]]

    def __init__(self, config: Any, *, directory: Path | None = None):
        self.config = config
        self.store = LuceneStore(self.indexer_args, directory, threads=getattr(config, "threads", 1))
        self._ids: set[str] = set()
        self._searcher: Any = None  # the Java searcher, reopened after every write
        self.docstore_path: Path | None = None
        self.build_seconds = 0.0

    def __len__(self) -> int:
        return len(self._ids)

    def doc_ids(self) -> set[str]:
        return set(self._ids)

    # -- what a subclass provides ----------------------------------------------------------------------------

    def to_records(self, docs: Sequence[Document]) -> list[dict[str, str]]:
        """Anserini JSON records ``{"id": ..., "contents": ...}`` for ``docs``."""
        raise NotImplementedError

    def open_searcher(self, path: Path) -> Any:
        """A configured Java searcher over the Lucene index at ``path``."""
        raise NotImplementedError

    def search_batch(self, searcher: Any, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """(doc id, score) lists, best first, one per query."""
        raise NotImplementedError

    def manifest_fields(self) -> dict[str, Any]:
        """Extra ``Manifest`` keyword arguments (encoder name and checksum)."""
        return {}

    # -- the contract ----------------------------------------------------------------------------------------

    def add(self, docs: Iterable[Document]) -> int:
        docs = list(docs)
        seen: set[str] = set()
        for doc in docs:
            if doc.id in self._ids or doc.id in seen:
                raise ConfigError(f"document {doc.id!r} is already in the index; delete it first")
            seen.add(doc.id)
        if not docs:
            return 0
        start = time.perf_counter()
        self.store.add([json.dumps(r) for r in self.to_records(docs)])
        self._ids.update(seen)
        self._close_searcher()
        self.build_seconds += time.perf_counter() - start
        return len(docs)

    def delete(self, ids: Iterable[str]) -> int:
        found = sorted(set(ids) & self._ids)
        if found:
            self.store.delete(found)
            self._ids.difference_update(found)
            self._close_searcher()
        return len(found)

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        check_queries(queries, k)
        if not self._ids or self.store.path is None:
            return [[] for _ in queries]
        if self._searcher is None:
            self._searcher = self.open_searcher(self.store.path)
        results = self.search_batch(self._searcher, queries, k)
        return [
            [Hit(doc_id, float(score), rank, self.kind) for rank, (doc_id, score) in enumerate(row, 1)]
            for row in results
        ]

    def _close_searcher(self) -> None:
        if self._searcher is not None:
            self._searcher.close()
            self._searcher = None

    def index_bytes(self) -> int:
        """Size of the Lucene files on disk."""
        return self.store.size_bytes()

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        with atomic_directory(directory) as work:
            self.store.copy_to(work / _LUCENE_DIR)
            (work / _IDS_FILE).write_text(json.dumps(sorted(self._ids)))
            Manifest(
                kind=self.kind,
                config=asdict(self.config),
                doc_count=len(self),
                docstore=relative_docstore(directory, self.docstore_path),
                build_seconds=round(self.build_seconds, 3),
                extra={"index_bytes": self.index_bytes()},
                **self.manifest_fields(),
            ).write(work)
        if not self.store.is_private and self.store.path is not None:  # we read the replaced copy in place
            self._close_searcher()
            self.store = LuceneStore(self.indexer_args, directory / _LUCENE_DIR, threads=self.store.threads)

    @classmethod
    def load(cls, directory: str | Path, **options: Any) -> LuceneRetriever:
        directory = Path(directory)
        manifest = Manifest.read(directory)
        if manifest.kind != cls.kind:
            raise IndexFormatError(f"{directory} holds a {manifest.kind!r} index, not a {cls.kind!r} index")
        config = make_config(cls.config_class, {**manifest.config, **options})
        if not (directory / _LUCENE_DIR).is_dir():
            raise IndexFormatError(f"corrupt index {directory}: no {_LUCENE_DIR}/ folder")
        retriever = cls(config, directory=directory / _LUCENE_DIR)
        retriever.check_manifest(manifest, directory)
        retriever._ids = set(read_json(directory / _IDS_FILE, "id table"))
        if len(retriever) != manifest.doc_count:
            raise IndexFormatError(
                f"corrupt index {directory}: manifest says {manifest.doc_count} documents, "
                f"id table has {len(retriever)}"
            )
        retriever.docstore_path = manifest.docstore_path(directory)
        retriever.build_seconds = manifest.build_seconds
        return retriever

    def check_manifest(self, manifest: Manifest, directory: Path) -> None:
        """Refuse a saved index this retriever cannot read (a subclass checks its encoder)."""


def java_list(items: Sequence[Any]) -> Any:
    """A ``java.util.ArrayList`` holding ``items``."""
    array = java_class("java.util.ArrayList")()
    for item in items:
        array.add(item)
    return array
