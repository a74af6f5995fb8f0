"""Build an index of a corpus into a collection: one SQLite docstore shared by the collection's indexes.

A collection is a folder::

    my-collection/
        docstore.sqlite        text and metadata of every document
        dense/                 an index: manifest.json + payload, pointing at ../docstore.sqlite

Building reads and validates the whole corpus and encodes it without any lock; then, holding the collection's
writer lock, it stages the index and commits the documents and the index as one step
(``rag.collection.commit``), so a bad record or a crash at any point leaves the previous index and docstore.
The documents' texts replace those of the same ids in the docstore (upsert). If another process changed the
index while this build encoded, the build is refused (``CollectionBusyError``) and writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.collection.commit import IndexKey, commit, index_key, recover, stage
from rag.collection.lock import writer_lock
from rag.corpus import read_corpus
from rag.docstore import Docstore
from rag.errors import CollectionBusyError, ConfigError, CorpusError
from rag.indexes.base import Retriever
from rag.registry import build
from rag.types import Document

if TYPE_CHECKING:
    from rag.distributed import RayCluster

DOCSTORE_FILE = "docstore.sqlite"
RAY_KINDS = ("dense", "dense-sharded")  # the index kinds a Ray cluster can encode
log = logging.getLogger(__name__)


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
    ray: RayCluster | None = None,
) -> Retriever:
    """Index ``corpus`` as ``collection/name`` and return the retriever, ready to search.

    ``ray``: encode on that Ray cluster (a dense index, sharded or not); the index is written here as usual.
    """
    if ray is not None and kind not in RAY_KINDS:
        raise ConfigError(f"--ray encodes dense indexes ({', '.join(RAY_KINDS)}), not {kind!r}")
    docs = list(read_corpus(corpus, fmt, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap))
    if not docs:
        raise CorpusError(f"corpus {corpus} has no documents")
    collection = Path(collection)
    index_dir = collection / name
    store_path = collection / DOCSTORE_FILE
    retriever: Retriever = build("retriever", kind, dict(config or {}))
    seen = _index_state(collection, index_dir)
    if ray is None:
        retriever.add(docs)
    else:
        _add_encoded_on_ray(retriever, docs, ray)
    retriever.docstore_path = store_path
    collection.mkdir(parents=True, exist_ok=True)
    with writer_lock(collection), Docstore.create(store_path, exist_ok=True) as store:
        recover(collection, store)
        if index_key(index_dir) != seen:
            raise CollectionBusyError(
                f"{index_dir} was changed by another process while this build ran; nothing was written "
                "(run the build again)"
            )
        commit(store, index_dir, stage(retriever, index_dir), lambda: store.upsert(docs))
    return retriever


def _add_encoded_on_ray(retriever: Retriever, docs: list[Document], cluster: RayCluster) -> None:
    from rag.distributed import encode_on_ray
    from rag.indexes.dense import DenseRetriever
    from rag.indexes.sharded_dense import ShardedDenseRetriever

    assert isinstance(retriever, DenseRetriever | ShardedDenseRetriever)  # build_index checked the kind
    start = time.perf_counter()
    encoded = encode_on_ray([d.contents for d in docs], retriever.config, cluster)
    retriever.add_vectors([d.id for d in docs], encoded.vectors)
    nodes = encoded.rows_per_node
    log.info("encoded %d documents on %d Ray node(s): %s", len(docs), len(nodes), sorted(nodes.values()))
    retriever.build_seconds += time.perf_counter() - start


def _index_state(collection: Path, index_dir: Path) -> IndexKey:
    """The index as this build starts (after finishing any interrupted commit); None if it does not exist.

    Read at once, not after waiting for the lock: while another process writes, its commit may land before
    this build's, and this build must then be refused rather than replace what it never saw.
    """
    if not collection.is_dir():
        return None
    try:
        with writer_lock(collection, timeout=0):
            store_path = collection / DOCSTORE_FILE
            if store_path.is_file():
                with Docstore(store_path) as store:
                    recover(collection, store)
            return index_key(index_dir)
    except CollectionBusyError:  # a live writer holds it (a dead one's lock is gone): its commits swap whole
        return index_key(index_dir)  # folders, so this is the index before or after one of them
