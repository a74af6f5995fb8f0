"""Dense retrieval over shards: several faiss indexes searched in parallel, their top-k merged.

    >>> from rag.indexes.sharded_dense import ShardedDenseConfig, ShardedDenseRetriever
    >>> from rag.types import Document
    >>> retriever = ShardedDenseRetriever(ShardedDenseConfig(shards=2))
    >>> retriever.add([Document("a", "Cats purr."), Document("b", "Stocks fell.")])
    2
    >>> retriever.search(["kitten sounds"], k=1)[0][0].doc_id
    'a'

Each shard is a :class:`~rag.indexes.dense.DenseRetriever` saved in a folder of its own (``shard-000/``, ...),
and all of them share one encoder. A search encodes the queries once, searches every shard on its own thread
(faiss releases the GIL) and merges the shards' top-k by score: with exact (``Flat``) shards that is the
unsharded index's top-k. An index built on a Ray cluster (``rag index build --ray``) can be written this way,
and a corpus too large for one index file can be split so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rag.errors import ConfigError, IndexFormatError
from rag.indexes.base import check_queries
from rag.indexes.dense import DenseConfig, DenseRetriever, ReusesEncoder
from rag.indexes.manifest import Manifest, atomic_directory
from rag.registry import make_config, register
from rag.types import Document, Hit

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


@dataclass(frozen=True)
class ShardedDenseConfig(DenseConfig):
    shards: int = 2  # faiss indexes; each batch of new documents is split evenly among them

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ConfigError(f"shards must be at least 1, got {self.shards}")

    @property
    def shard_config(self) -> DenseConfig:
        """The config of each shard: this one without ``shards``."""
        return DenseConfig(**{f.name: getattr(self, f.name) for f in fields(DenseConfig)})


@register("retriever", "dense-sharded", ShardedDenseConfig)
class ShardedDenseRetriever(ReusesEncoder):
    kind = "dense-sharded"

    def __init__(
        self,
        config: ShardedDenseConfig | None = None,
        *,
        encoder: SentenceTransformer | None = None,
        shards: Sequence[DenseRetriever] | None = None,
    ) -> None:
        self.config = config or ShardedDenseConfig()
        if shards is None:
            first = DenseRetriever(self.config.shard_config, encoder=encoder)
            rest = [
                DenseRetriever(self.config.shard_config, encoder=first.encoder)
                for _ in range(1, self.config.shards)
            ]
            shards = [first, *rest]
        if len(shards) != self.config.shards:
            raise ConfigError(f"expected {self.config.shards} shards, got {len(shards)}")
        self.shards = list(shards)
        self.docstore_path: Path | None = None
        self.build_seconds = 0.0

    @property
    def encoder(self) -> SentenceTransformer:
        return self.shards[0].encoder

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def doc_ids(self) -> set[str]:
        return set().union(*(shard.doc_ids() for shard in self.shards))

    # -- updates -------------------------------------------------------------------------------------------

    def add(self, docs: Iterable[Document]) -> int:
        docs = list(docs)
        self._check_new_ids([d.id for d in docs])
        if not docs:
            return 0
        self.add_vectors([d.id for d in docs], self.shards[0].encode_documents(docs))
        return len(docs)

    def add_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Index precomputed ``vectors`` ([len(ids), dim], normalised): consecutive runs of rows, one per
        shard, of sizes that differ by at most one."""
        self._check_new_ids(ids)
        bounds = np.linspace(0, len(ids), self.config.shards + 1).round().astype(int)
        for shard, start, stop in zip(self.shards, bounds[:-1], bounds[1:], strict=True):
            if stop > start:
                shard.add_vectors(ids[start:stop], vectors[start:stop])

    def _check_new_ids(self, ids: Sequence[str]) -> None:
        known = [doc_id for doc_id in ids if any(doc_id in shard._labels for shard in self.shards)]
        if known:
            raise ConfigError(f"document {known[0]!r} is already in the index; delete it first")
        if len(set(ids)) != len(ids):
            raise ConfigError("the new documents repeat an id")

    def delete(self, ids: Iterable[str]) -> int:
        ids = set(ids)
        return sum(shard.delete(ids) for shard in self.shards)

    # -- search --------------------------------------------------------------------------------------------

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        check_queries(queries, k)
        return self.search_vectors(self.shards[0].encode_queries(queries), k)

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-``k`` hits for each row of ``vectors`` ([n, dim], normalised), merged from every shard."""
        with ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="shard") as pool:
            per_shard = list(pool.map(lambda shard: shard.search_vectors(vectors, k), self.shards))
        merged = []
        for row in zip(*per_shard, strict=True):  # one query: each shard's hits, best first
            # sorted() is stable: equal scores keep shard order, then each shard's rank
            best = sorted((hit for hits in row for hit in hits), key=lambda hit: -hit.score)[:k]
            merged.append([Hit(h.doc_id, h.score, rank, self.kind) for rank, h in enumerate(best, start=1)])
        return merged

    # -- persistence ---------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        names = [f"shard-{i:03d}" for i in range(len(self.shards))]
        with atomic_directory(directory) as work:
            for name, shard in zip(names, self.shards, strict=True):
                shard.docstore_path = self.docstore_path
                shard.save(work / name)
            self.manifest(directory, shards=names).write(work)

    @classmethod
    def load(
        cls, directory: str | Path, *, encoder: str | None = None, model: SentenceTransformer | None = None
    ) -> ShardedDenseRetriever:
        """Open a saved index (each shard checks its encoder as :meth:`DenseRetriever.load` does)."""
        directory = Path(directory)
        manifest = Manifest.read(directory)
        if manifest.kind != cls.kind:
            raise IndexFormatError(f"{directory} holds a {manifest.kind!r} index, not a {cls.kind!r} index")
        config = make_config(
            ShardedDenseConfig, {**manifest.config, **({"encoder": encoder} if encoder else {})}
        )
        names = manifest.extra.get("shards", [])
        if len(names) != config.shards:
            raise IndexFormatError(
                f"corrupt index {directory}: manifest lists {len(names)} shards, config says {config.shards}"
            )
        shards: list[DenseRetriever] = []
        for name in names:
            shards.append(DenseRetriever.load(directory / name, encoder=encoder, model=model))
            model = shards[0].encoder
        retriever = cls(config, shards=shards)
        if len(retriever) != manifest.doc_count:
            raise IndexFormatError(
                f"corrupt index {directory}: manifest says {manifest.doc_count} documents, "
                f"its shards hold {len(retriever)}"
            )
        retriever.docstore_path = manifest.docstore_path(directory)
        retriever.build_seconds = manifest.build_seconds
        return retriever
