"""Dense retrieval: a sentence-transformers encoder and a faiss index chosen by a factory string.

    >>> from rag.indexes.dense import DenseConfig, DenseRetriever
    >>> from rag.types import Document
    >>> retriever = DenseRetriever(DenseConfig(encoder="minilm", factory="Flat"))
    >>> retriever.add([Document("a", "Cats purr."), Document("b", "Stocks fell.")])
    2
    >>> retriever.search(["kitten sounds"], k=1)[0][0].doc_id
    'a'

Vectors are L2-normalised and compared by inner product (cosine similarity). Documents carry string ids;
faiss sees integer labels through an ``IndexIDMap2``, so ``delete`` works without a rebuild on every index
type that can remove vectors, and by filtering on those (HNSW) that cannot.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from rag.errors import ConfigError, IndexFormatError
from rag.indexes.base import Retriever, check_queries
from rag.indexes.manifest import Manifest, atomic_directory, read_json, relative_docstore
from rag.models import folder_checksum, load_sentence_transformer, resolve_model
from rag.registry import make_config, register
from rag.types import Document, Hit

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_FAISS_FILE = "vectors.faiss"
_IDS_FILE = "ids.json"


@dataclass(frozen=True)
class DenseConfig:
    encoder: str = "minilm"  # bundled name, local folder or hub id
    factory: str = "Flat"  # faiss index_factory string: "Flat", "HNSW32", "IVF256,Flat", ...
    batch_size: int = 32
    max_seq_length: int = 256
    device: str | None = None  # None: CUDA when present, else CPU
    show_progress: bool = True


def encoder_checksum(encoder: str) -> str:
    source = resolve_model(encoder)
    return folder_checksum(source) if isinstance(source, Path) else f"hub:{source}"


class ReusesEncoder(Retriever):
    """A retriever over the vectors of one loaded sentence-transformers ``encoder``: its manifest records the
    encoder (name and sha256), and a reload of its own index reuses the loaded one."""

    config: DenseConfig
    encoder: SentenceTransformer
    dim: int
    docstore_path: Path | None
    build_seconds: float

    def manifest(self, directory: Path, **extra: Any) -> Manifest:
        """The manifest of this index saved as ``directory``, with the kind's own ``extra`` facts."""
        return Manifest(
            kind=self.kind,
            config=asdict(self.config),
            doc_count=len(self),
            encoder=self.config.encoder,
            encoder_sha256=encoder_checksum(self.config.encoder),
            docstore=relative_docstore(directory, self.docstore_path),
            build_seconds=round(self.build_seconds, 3),
            extra={"dim": self.dim, **extra},
        )

    def reload(self, directory: str | Path) -> Retriever:
        """The saved index, reusing this retriever's loaded encoder when the saved config is this one's."""
        manifest = Manifest.read(directory)
        if manifest.kind == self.kind and make_config(type(self.config), manifest.config) == self.config:
            return type(self).load(directory, model=self.encoder)  # type: ignore[call-arg]
        return super().reload(directory)


@register("retriever", "dense", DenseConfig)
class DenseRetriever(ReusesEncoder):
    kind = "dense"

    def __init__(self, config: DenseConfig | None = None, *, encoder: SentenceTransformer | None = None):
        self.config = config or DenseConfig()
        self.encoder = encoder or load_sentence_transformer(self.config.encoder, device=self.config.device)
        self.encoder.max_seq_length = self.config.max_seq_length
        self.dim = self.encoder.get_embedding_dimension()
        try:
            inner = faiss.index_factory(self.dim, self.config.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise ConfigError(f"bad faiss factory string {self.config.factory!r}: {error}") from None
        self.index = faiss.IndexIDMap2(inner)
        self._ids: list[str | None] = []  # faiss label -> document id (None once deleted)
        self._labels: dict[str, int] = {}  # document id -> faiss label
        self._hidden: set[int] = set()  # labels deleted from an index that cannot remove vectors
        self._gpu_index: faiss.Index | None = None  # a GPU copy for search, dropped on every update
        self._id_table: np.ndarray | None = None  # object array of self._ids for vectorised lookup
        self.docstore_path: Path | None = None
        self.build_seconds = 0.0

    def __len__(self) -> int:
        return len(self._labels)

    def doc_ids(self) -> set[str]:
        return set(self._labels)

    # -- encoding ------------------------------------------------------------------------------------------

    def encode_documents(self, docs: Sequence[Document]) -> np.ndarray:
        """[len(docs), dim] float32, L2-normalised."""
        return self.encode_texts([d.contents for d in docs], progress=self.config.show_progress)

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """[len(queries), dim] float32, L2-normalised."""
        return self.encode_texts(queries)

    def encode_texts(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """[len(texts), dim] float32, L2-normalised."""
        vectors = self.encoder.encode(
            list(texts),
            batch_size=self.config.batch_size,
            show_progress_bar=progress and len(texts) > self.config.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def ids_of_labels(self, labels: np.ndarray) -> list[str | None]:
        """The document id of each faiss label ([n] int64); None for a deleted document."""
        return [self._ids[label] for label in labels.tolist()]

    # -- updates -------------------------------------------------------------------------------------------

    def add(self, docs: Iterable[Document]) -> int:
        docs = list(docs)
        self._check_new_ids(d.id for d in docs)
        if not docs:
            return 0
        start = time.perf_counter()
        self.add_vectors([d.id for d in docs], self.encode_documents(docs))
        self.build_seconds += time.perf_counter() - start
        return len(docs)

    def add_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Index precomputed ``vectors`` ([len(ids), dim], normalised) under ``ids``."""
        self._check_new_ids(ids)
        if vectors.shape != (len(ids), self.dim):
            raise ConfigError(f"expected vectors of shape {(len(ids), self.dim)}, got {vectors.shape}")
        if not self.index.is_trained:
            self.index.train(vectors)
        labels = np.arange(len(self._ids), len(self._ids) + len(ids), dtype=np.int64)
        self.index.add_with_ids(vectors, labels)
        self._gpu_index = self._id_table = None
        for doc_id, label in zip(ids, labels.tolist(), strict=True):
            self._ids.append(doc_id)
            self._labels[doc_id] = label

    def _check_new_ids(self, ids: Iterable[str]) -> None:
        seen: set[str] = set()
        for doc_id in ids:
            if doc_id in self._labels or doc_id in seen:
                raise ConfigError(f"document {doc_id!r} is already in the index; delete it first")
            seen.add(doc_id)

    def delete(self, ids: Iterable[str]) -> int:
        labels = [self._labels.pop(doc_id) for doc_id in set(ids) if doc_id in self._labels]
        if not labels:
            return 0
        for label in labels:
            self._ids[label] = None
        self._gpu_index = self._id_table = None
        try:
            remove_labels(self.index, np.asarray(labels, dtype=np.int64))
        except RuntimeError:  # HNSW and some others cannot remove: hide the labels at search time
            self._hidden.update(labels)
        return len(labels)

    # -- search --------------------------------------------------------------------------------------------

    def search(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        check_queries(queries, k)
        return self.search_vectors(self.encode_queries(queries), k)

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Top-``k`` hits for each row of ``vectors`` ([n, dim], normalised)."""
        if len(self) == 0:
            return [[] for _ in range(len(vectors))]
        fetch = min(k + len(self._hidden), self.index.ntotal)
        scores, labels = self._searchable().search(vectors, fetch)  # both [n, fetch]
        if self._id_table is None:
            # label -> id, None for deleted labels; the extra last None is what faiss' "no result" -1 picks
            self._id_table = np.array([*self._ids, None], dtype=object)
        source = self.kind
        results = []
        for row_ids, row_scores in zip(self._id_table[labels].tolist(), scores.tolist(), strict=True):
            found = [(d, s) for d, s in zip(row_ids, row_scores, strict=True) if d is not None][:k]
            results.append([Hit(d, s, rank, source) for rank, (d, s) in enumerate(found, start=1)])
        return results

    def _searchable(self) -> faiss.Index:
        """The index to search: a copy on the GPUs when faiss-gpu sees any, else the CPU index itself."""
        if self._gpu_index is None and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
            self._gpu_index = faiss.index_cpu_to_all_gpus(self.index)
        return self.index if self._gpu_index is None else self._gpu_index

    # -- persistence ---------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        import json

        directory = Path(directory)
        with atomic_directory(directory) as work:
            faiss.write_index(self.index, str(work / _FAISS_FILE))
            (work / _IDS_FILE).write_text(json.dumps({"ids": self._ids, "hidden": sorted(self._hidden)}))
            self.manifest(directory, factory=self.config.factory).write(work)

    @classmethod
    def load(
        cls, directory: str | Path, *, encoder: str | None = None, model: SentenceTransformer | None = None
    ) -> DenseRetriever:
        """Open a saved index; refuses one whose encoder differs from the installed (or given) encoder.

        ``model``: an already loaded encoder of the configured name, used instead of loading it again.
        """
        directory = Path(directory)
        manifest = Manifest.read(directory)
        if manifest.kind != cls.kind:
            raise IndexFormatError(f"{directory} holds a {manifest.kind!r} index, not a {cls.kind!r} index")
        config = make_config(DenseConfig, {**manifest.config, **({"encoder": encoder} if encoder else {})})
        checksum = encoder_checksum(config.encoder)
        if checksum != manifest.encoder_sha256:
            raise IndexFormatError(
                f"encoder mismatch: {directory} was built with {manifest.encoder!r} (sha256 "
                f"{manifest.encoder_sha256[:12]}…), but {config.encoder!r} has sha256 {checksum[:12]}…; "
                "query with the encoder the index was built with, or rebuild the index"
            )
        retriever = cls(config, encoder=model)
        try:
            retriever.index = faiss.read_index(str(directory / _FAISS_FILE))
        except RuntimeError as error:
            raise IndexFormatError(f"corrupt faiss file in {directory}: {error}") from None
        saved = read_json(directory / _IDS_FILE, "id table")
        retriever._ids = saved["ids"]
        retriever._hidden = set(saved["hidden"])
        retriever._labels = {d: i for i, d in enumerate(retriever._ids) if d is not None}
        if len(retriever) != manifest.doc_count or retriever.index.d != retriever.dim:
            raise IndexFormatError(
                f"corrupt index {directory}: manifest says {manifest.doc_count} documents of dimension "
                f"{manifest.extra.get('dim')}, payload has {len(retriever)} of dimension {retriever.index.d}"
            )
        retriever.docstore_path = manifest.docstore_path(directory)
        retriever.build_seconds = manifest.build_seconds
        return retriever


def remove_labels(index: faiss.IndexIDMap2, labels: np.ndarray) -> None:
    """Remove ``labels`` from ``index`` and keep its id map true for inverted-file indexes.

    ``IndexIDMap2.remove_ids`` compacts its id map (inner id -> label) as if the inner index renumbered the
    vectors it keeps, which flat and PQ indexes do but IVF lists do not: their entries keep the old inner
    ids. This renumbers the entries of every list the way the id map was compacted.
    """
    ivf = faiss.try_extract_index_ivf(faiss.downcast_index(index.index))
    old_map = faiss.vector_to_array(index.id_map) if ivf is not None else None
    index.remove_ids(labels)
    if ivf is None:
        return
    renumber = np.cumsum(~np.isin(old_map, labels)) - 1  # old inner id -> new inner id, for kept entries
    lists = ivf.invlists
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size == 0:
            continue
        ids = renumber[faiss.rev_swig_ptr(lists.get_ids(list_no), size)].astype(np.int64)
        codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * lists.code_size).copy()
        lists.update_entries(list_no, 0, size, faiss.swig_ptr(ids), faiss.swig_ptr(codes))
