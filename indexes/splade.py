"""Learned-sparse retrieval: SPLADE term weights as integer impacts in a Lucene impact index.

    >>> from rag.indexes.splade import SpladeConfig, SpladeRetriever
    >>> from rag.types import Document
    >>> retriever = SpladeRetriever(SpladeConfig(show_progress=False))
    >>> retriever.add([Document("a", "Cats purr when content."), Document("b", "Stocks fell sharply.")])
    2
    >>> retriever.search(["why do cats purr"], k=1)[0][0].doc_id
    'a'

Documents and queries are encoded by the same masked LM (``splade-tiny`` by default) and quantised to
integer impacts round(w * scale). Each document is stored the way Anserini's ``--impact --pretokenized``
indexing stores a JSON vector: every term repeated ``impact`` times in a whitespace-analysed field, so the
term frequency *is* the impact. ``SimpleImpactSearcher`` (what pyserini's ``LuceneImpactSearcher`` wraps)
scores a query {term: impact} by sum_t q_t * d_t: exactly the dot product of the quantised vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rag.errors import ConfigError, IndexFormatError
from rag.indexes.dense import encoder_checksum
from rag.indexes.lucene_base import LuceneRetriever, java_list
from rag.indexes.lucene_jvm import java_class
from rag.indexes.manifest import Manifest
from rag.indexes.splade_encoder import SpladeEncoder
from rag.registry import register
from rag.types import Document

EMPTY_TERM = "[ragloom-empty]"  # stands in for a document whose vector is all zeros (no query has it)


@dataclass(frozen=True)
class SpladeConfig:
    encoder: str = "splade-tiny"  # bundled name, local folder or hub id of a masked LM
    scale: float = 100.0  # impact = round(weight * scale)
    doc_max_length: int = 256
    query_max_length: int = 64
    batch_size: int = 16
    threads: int = 1  # Java threads for indexing and batch search
    device: str | None = None
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError(f"scale must be positive, got {self.scale}")
        if min(self.doc_max_length, self.query_max_length, self.batch_size, self.threads) < 1:
            raise ConfigError("lengths, batch_size and threads must be at least 1")


@register("retriever", "splade", SpladeConfig)
class SpladeRetriever(LuceneRetriever):
    kind = "splade"
    config_class = SpladeConfig
    indexer_args: ClassVar[list[str]] = ["-collection", "JsonVectorCollection", "-impact", "-pretokenized"]

    def __init__(
        self,
        config: SpladeConfig | None = None,
        *,
        directory: Path | None = None,
        encoder: SpladeEncoder | None = None,
    ):
        super().__init__(config or SpladeConfig(), directory=directory)
        self.encoder = encoder or SpladeEncoder(self.config.encoder, device=self.config.device)

    def encode_documents(self, texts: Sequence[str]) -> list[dict[str, int]]:
        c = self.config
        return self.encoder.encode_quantised(texts, c.doc_max_length, c.scale, c.batch_size, c.show_progress)

    def encode_queries(self, queries: Sequence[str]) -> list[dict[str, int]]:
        c = self.config
        return self.encoder.encode_quantised(queries, c.query_max_length, c.scale, c.batch_size)

    def to_records(self, docs: Sequence[Document]) -> list[dict[str, str]]:
        vectors = self.encode_documents([d.contents for d in docs])
        return [
            {"id": d.id, "contents": " ".join(t for t, n in v.items() for _ in range(n)) or EMPTY_TERM}
            for d, v in zip(docs, vectors, strict=True)
        ]

    def open_searcher(self, path: Path) -> Any:
        return java_class("io.anserini.search.SimpleImpactSearcher")(str(path))

    def search_batch(self, searcher: Any, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        return self.search_impacts(searcher, self.encode_queries(queries), k)

    def search_impacts(self, searcher: Any, vectors: Sequence[dict[str, int]], k: int) -> list[list[Any]]:
        """Search quantised query vectors; a query with no non-zero term finds nothing."""
        hash_map, integer = java_class("java.util.HashMap"), java_class("java.lang.Integer")
        queries, qids = [], []
        for i, vector in enumerate(vectors):
            if vector:
                query = hash_map()
                for term, impact in vector.items():
                    query.put(term, integer(impact))
                queries.append(query)
                qids.append(str(i))
        found = searcher.batch_search(java_list(queries), java_list(qids), k, self.config.threads)
        results: list[list[Any]] = [[] for _ in vectors]
        for qid in qids:
            results[int(qid)] = [(hit.docid, hit.score) for hit in found.get(qid)]
        return results

    def manifest_fields(self) -> dict[str, Any]:
        return {"encoder": self.config.encoder, "encoder_sha256": encoder_checksum(self.config.encoder)}

    def check_manifest(self, manifest: Manifest, directory: Path) -> None:
        checksum = encoder_checksum(self.config.encoder)
        if checksum != manifest.encoder_sha256:
            raise IndexFormatError(
                f"encoder mismatch: {directory} was built with {manifest.encoder!r} (sha256 "
                f"{manifest.encoder_sha256[:12]}…), but {self.config.encoder!r} has sha256 {checksum[:12]}…; "
                "query with the encoder the index was built with, or rebuild the index"
            )
