"""PQ-compressed dense retrieval: faiss PQ, OPQ+PQ and IVF-PQ, configured by bytes per vector.

    >>> from rag.indexes.pq import PQConfig, PQRetriever
    >>> retriever = PQRetriever(PQConfig(bytes_per_vector=24))   # 384-d MiniLM: 1536 -> 24 bytes, 64x
    >>> retriever.compression_ratio
    64.0

Each variant is a small class naming its faiss factory string:

- ``pq``:    ``PQ{m}x{nbits}``: m sub-quantizers of 2^nbits centroids, m * nbits / 8 = bytes per vector;
- ``opq``:   ``OPQ{m},PQ{m}x{nbits}``: a learned rotation first (``opq_niter`` training iterations);
- ``ivfpq``: ``IVF{nlist},PQ{m}x{nbits}``: a coarse quantizer, ``nprobe`` lists searched.

The quantizers are trained on the vectors of the first ``add`` (at least 2^nbits of them). The index is a
``DenseRetriever`` (saved in ``dense/``) under a manifest that records bytes per vector and the compression
ratio against float32. A query encoder tuned against the codes (``rag index tune-pq``, JPQ, see
``rag.indexes.pq_tuning``) is saved in ``query_encoder/`` and used for queries only; documents keep the codes
of the original encoder, and the manifest's ``extra.query_encoder_tuning`` records the data and settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from rag.errors import ConfigError, IndexFormatError
from rag.indexes.base import Retriever, check_queries
from rag.indexes.dense import DenseConfig, DenseRetriever
from rag.indexes.manifest import Manifest, atomic_directory, relative_docstore
from rag.registry import make_config, register
from rag.types import Document, Hit

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_DENSE_DIR = "dense"
_QUERY_ENCODER_DIR = "query_encoder"


@dataclass(frozen=True)
class PQConfig:
    encoder: str = "minilm"
    bytes_per_vector: int = 48  # code size; 48 bytes of a 384-d float32 vector (1536 bytes) = 32x
    nbits: int = 8  # bits per sub-quantizer code (2^nbits centroids each)
    nlist: int = 64  # ivfpq: coarse lists
    nprobe: int = 16  # ivfpq: lists searched per query
    opq_niter: int = 20  # opq: rotation training iterations (faiss' default of 50 costs ~4 minutes at d=384)
    batch_size: int = 32
    max_seq_length: int = 256
    device: str | None = None
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.nbits not in range(1, 17) or (self.bytes_per_vector * 8) % self.nbits:
            raise ConfigError(
                f"bytes_per_vector * 8 must be a multiple of nbits, got {self.bytes_per_vector}, {self.nbits}"
            )
        if min(self.bytes_per_vector, self.nlist, self.nprobe, self.opq_niter) < 1:
            raise ConfigError("bytes_per_vector, nlist, nprobe and opq_niter must be at least 1")

    @property
    def subquantizers(self) -> int:
        return self.bytes_per_vector * 8 // self.nbits


@register("retriever", "pq", PQConfig)
class PQRetriever(Retriever):
    kind = "pq"

    def __init__(
        self,
        config: PQConfig | None = None,
        *,
        encoder: SentenceTransformer | None = None,
        dense: DenseRetriever | None = None,
    ):
        self.config = config or PQConfig()
        self.dense = dense or DenseRetriever(self._dense_config(), encoder=encoder)
        self._configure(self.dense.index)
        self.query_encoder: SentenceTransformer | None = None  # JPQ-tuned; None: the document encoder
        self.tuning: dict[str, Any] | None = None  # how the query encoder was tuned (pq_tuning.tune_pq)
        self.docstore_path: Path | None = None

    def factory(self) -> str:
        c = self.config
        return f"PQ{c.subquantizers}x{c.nbits}"

    def min_training_docs(self) -> int:
        return 2**self.config.nbits

    def _configure(self, index: faiss.Index) -> None:
        """Set search- or training-time parameters on a freshly built or loaded index."""

    def _dense_config(self) -> DenseConfig:
        c = self.config
        return DenseConfig(
            c.encoder, self.factory(), c.batch_size, c.max_seq_length, c.device, c.show_progress
        )

    @property
    def compression_ratio(self) -> float:
        """float32 vector bytes / code bytes."""
        return 4 * self.dense.dim / self.config.bytes_per_vector

    def __len__(self) -> int:
        return len(self.dense)

    def doc_ids(self) -> set[str]:
        return self.dense.doc_ids()

    def add(self, docs: Iterable[Document]) -> int:
        docs = list(docs)
        if not self.dense.index.is_trained and len(docs) < self.min_training_docs():
            raise ConfigError(
                f"the first add trains the quantizers and needs at least {self.min_training_docs()} "
                f"documents, got {len(docs)}; add more at once or lower nbits (or nlist)"
            )
        return self.dense.add(docs)

    def add_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Index precomputed document vectors ([len(ids), dim], normalised); the first call trains."""
        if not self.dense.index.is_trained and len(ids) < self.min_training_docs():
            raise ConfigError(f"training needs at least {self.min_training_docs()} vectors, got {len(ids)}")
        self.dense.add_vectors(ids, vectors)

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-``k`` hits for query vectors ([n, dim], normalised)."""
        hits = self.dense.search_vectors(vectors, k)
        return [[Hit(h.doc_id, h.score, h.rank, self.kind) for h in row] for row in hits]

    def delete(self, ids: Iterable[str]) -> int:
        return self.dense.delete(ids)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """[len(queries), dim] float32, normalised, from the tuned query encoder when there is one."""
        if self.query_encoder is None:
            return self.dense.encode_queries(queries)
        vectors = self.query_encoder.encode(
            list(queries), batch_size=self.config.batch_size, convert_to_numpy=True, normalize_embeddings=True
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        check_queries(queries, k)
        return self.search_vectors(self.encode_queries(queries), k)

    def index_bytes(self) -> int:
        """Serialized size of the faiss index (codes, codebooks, id map)."""
        return int(faiss.serialize_index(self.dense.index).size)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        with atomic_directory(directory) as work:
            self.dense.docstore_path = None  # the outer manifest records the docstore
            self.dense.save(work / _DENSE_DIR)
            if self.query_encoder is not None:
                self.query_encoder.save(str(work / _QUERY_ENCODER_DIR))
            Manifest(
                kind=self.kind,
                config=asdict(self.config),
                doc_count=len(self),
                encoder=self.config.encoder,
                encoder_sha256=Manifest.read(work / _DENSE_DIR).encoder_sha256,
                docstore=relative_docstore(directory, self.docstore_path),
                build_seconds=round(self.dense.build_seconds, 3),
                extra={
                    "factory": self.factory(),
                    "bytes_per_vector": self.config.bytes_per_vector,
                    "compression_ratio": self.compression_ratio,
                    "index_bytes": self.index_bytes(),
                    "tuned_query_encoder": self.query_encoder is not None,
                    "query_encoder_tuning": self.tuning,
                },
            ).write(work)

    @classmethod
    def load(cls, directory: str | Path, **options: Any) -> PQRetriever:
        directory = Path(directory)
        manifest = Manifest.read(directory)
        if manifest.kind != cls.kind:
            raise IndexFormatError(f"{directory} holds a {manifest.kind!r} index, not a {cls.kind!r} index")
        config = make_config(PQConfig, {**manifest.config, **options})
        retriever = cls(config, dense=DenseRetriever.load(directory / _DENSE_DIR))
        retriever._configure(retriever.dense.index)
        if (directory / _QUERY_ENCODER_DIR).is_dir():
            from sentence_transformers import SentenceTransformer

            retriever.query_encoder = SentenceTransformer(str(directory / _QUERY_ENCODER_DIR), device="cpu")
            retriever.tuning = manifest.extra.get("query_encoder_tuning")
        retriever.docstore_path = manifest.docstore_path(directory)
        return retriever


@register("retriever", "opq", PQConfig)
class OPQRetriever(PQRetriever):
    kind = "opq"

    def factory(self) -> str:
        c = self.config
        return f"OPQ{c.subquantizers},PQ{c.subquantizers}x{c.nbits}"

    def min_training_docs(self) -> int:
        # faiss trains the rotation with 8-bit codes, and corrupts memory with fewer points than dimensions
        return max(2**self.config.nbits, 256, self.dense.dim)

    def _configure(self, index: faiss.Index) -> None:
        chain = faiss.downcast_index(faiss.downcast_index(index).index)  # IndexIDMap2 -> IndexPreTransform
        faiss.downcast_VectorTransform(chain.chain.at(0)).niter = self.config.opq_niter


@register("retriever", "ivfpq", PQConfig)
class IVFPQRetriever(PQRetriever):
    kind = "ivfpq"

    def factory(self) -> str:
        c = self.config
        return f"IVF{c.nlist},PQ{c.subquantizers}x{c.nbits}"

    def min_training_docs(self) -> int:
        return max(2**self.config.nbits, self.config.nlist)

    def _configure(self, index: faiss.Index) -> None:
        faiss.extract_index_ivf(faiss.downcast_index(index).index).nprobe = self.config.nprobe
