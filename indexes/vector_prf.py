"""Vector pseudo-relevance feedback (Rocchio) over a dense or PQ retriever.

    >>> from rag.indexes.dense import DenseRetriever
    >>> from rag.indexes.vector_prf import VectorPRFConfig, VectorPRFRetriever
    >>> prf = VectorPRFRetriever(VectorPRFConfig(fb_docs=3, beta=0.5), base=DenseRetriever())

For each query vector q, the first search returns the top ``fb_docs`` documents with vectors d_1..d_n (as the
index stores them: exact for Flat, decoded codes for PQ); the second search uses
q' = normalise(alpha * q + beta * mean(d_i)). ``add`` and ``delete`` go to the base index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag.errors import ConfigError, IndexFormatError
from rag.indexes.base import Retriever, check_queries
from rag.indexes.manifest import Manifest, atomic_directory, relative_docstore
from rag.registry import make_config, register
from rag.types import Document, Hit

_BASE_DIR = "base"


@dataclass(frozen=True)
class VectorPRFConfig:
    base: Any = "dense"  # kind (or {"kind": ..., options}) of the base index to build fresh
    fb_docs: int = 3
    alpha: float = 1.0
    beta: float = 0.5

    def __post_init__(self) -> None:
        if self.fb_docs < 1 or self.alpha < 0 or self.beta < 0:
            raise ConfigError("vector PRF needs fb_docs >= 1, alpha >= 0 and beta >= 0")


@register("retriever", "vector-prf", VectorPRFConfig)
class VectorPRFRetriever(Retriever):
    kind = "vector-prf"

    def __init__(self, config: VectorPRFConfig | None = None, *, base: Retriever | None = None):
        from rag.indexes.hybrid import build_part

        self.config = config or VectorPRFConfig()
        self.base = base if base is not None else build_part(self.config.base)
        for method in ("encode_queries", "search_vectors"):
            if not hasattr(self.base, method):
                raise ConfigError(f"vector PRF needs a dense or PQ base index, not {self.base.kind!r}")
        self.docstore_path: Path | None = None

    def __len__(self) -> int:
        return len(self.base)

    def doc_ids(self) -> set[str]:
        return self.base.doc_ids()

    def _dense(self) -> Any:
        return getattr(self.base, "dense", self.base)  # PQ retrievers wrap a DenseRetriever

    def feedback_vectors(self, hits: Sequence[Hit]) -> np.ndarray:
        """[len(hits), dim] stored vectors of ``hits`` (decoded codes for PQ)."""
        dense = self._dense()
        labels = [dense._labels[h.doc_id] for h in hits]
        try:
            return np.stack([dense.index.reconstruct(label) for label in labels])
        except RuntimeError:  # IVF indexes reconstruct only with a direct map
            faiss.extract_index_ivf(dense.index.index).make_direct_map()
            return np.stack([dense.index.reconstruct(label) for label in labels])

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        check_queries(queries, k)
        vectors = self.base.encode_queries(queries)  # [n, dim]
        first = self.base.search_vectors(vectors, self.config.fb_docs)
        expanded = vectors.copy()
        for i, hits in enumerate(first):
            if hits:
                expanded[i] = self.config.alpha * vectors[i] + self.config.beta * self.feedback_vectors(
                    hits
                ).mean(0)
        expanded /= np.maximum(np.linalg.norm(expanded, axis=1, keepdims=True), 1e-12)
        results = self.base.search_vectors(np.ascontiguousarray(expanded, dtype=np.float32), k)
        return [[Hit(h.doc_id, h.score, h.rank, self.kind) for h in row] for row in results]

    def add(self, docs: Iterable[Document]) -> int:
        return self.base.add(docs)

    def delete(self, ids: Iterable[str]) -> int:
        return self.base.delete(ids)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        with atomic_directory(directory) as work:
            self.base.docstore_path = self.docstore_path
            self.base.save(work / _BASE_DIR)
            Manifest(
                kind=self.kind,
                config=asdict(self.config),
                doc_count=len(self),
                docstore=relative_docstore(directory, self.docstore_path),
                extra={"base": {"kind": self.base.kind, "path": _BASE_DIR}},
            ).write(work)

    @classmethod
    def load(cls, directory: str | Path, **options: Any) -> VectorPRFRetriever:
        from rag.indexes import load_index

        directory = Path(directory)
        manifest = Manifest.read(directory)
        if manifest.kind != cls.kind:
            raise IndexFormatError(f"{directory} holds a {manifest.kind!r} index, not a {cls.kind!r} index")
        config = make_config(VectorPRFConfig, {**manifest.config, **options})
        retriever = cls(config, base=load_index(directory / manifest.extra["base"]["path"]))
        retriever.docstore_path = manifest.docstore_path(directory)
        return retriever
