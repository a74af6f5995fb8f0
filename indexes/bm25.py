"""BM25 on Lucene (Anserini through pyserini's jar), optionally with RM3 pseudo-relevance feedback.

    >>> from rag.indexes.bm25 import BM25Config, BM25Retriever
    >>> from rag.types import Document
    >>> retriever = BM25Retriever(BM25Config())
    >>> retriever.add([Document("a", "Cats purr when content."), Document("b", "Stocks fell sharply.")])
    2
    >>> retriever.search(["why do cats purr"], k=1)[0][0].doc_id
    'a'

Documents are indexed as ``title + " " + text`` with Anserini's default English analyzer (Porter stemmer,
Lucene stopwords): the BEIR "flat" configuration, which gives nDCG@10 = 0.6789 on SciFact test with the
defaults k1=0.9, b=0.4. Term vectors are stored so RM3 can expand queries. After deletions, BM25's collection
statistics (document count, average length) still count deleted documents until Lucene merges segments, so
scores may differ slightly from a fresh build.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rag.errors import ConfigError
from rag.indexes.lucene_base import LuceneRetriever, java_list
from rag.indexes.lucene_jvm import java_class
from rag.registry import register
from rag.types import Document


@dataclass(frozen=True)
class BM25Config:
    k1: float = 0.9
    b: float = 0.4
    rm3: bool = False  # RM3 pseudo-relevance feedback (query expansion from the top documents)
    rm3_fb_terms: int = 10
    rm3_fb_docs: int = 10
    rm3_original_weight: float = 0.5
    threads: int = 1  # Java threads for indexing and batch search

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")
        if self.rm3_fb_terms < 1 or self.rm3_fb_docs < 1 or not 0 <= self.rm3_original_weight <= 1:
            raise ConfigError("RM3 needs fb_terms >= 1, fb_docs >= 1 and 0 <= original_weight <= 1")
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")


@register("retriever", "bm25", BM25Config)
class BM25Retriever(LuceneRetriever):
    kind = "bm25"
    config_class = BM25Config
    indexer_args: ClassVar[list[str]] = [
        "-collection",
        "JsonCollection",
        "-storePositions",
        "-storeDocvectors",
    ]

    def __init__(self, config: BM25Config | None = None, *, directory: Path | None = None):
        super().__init__(config or BM25Config(), directory=directory)

    def to_records(self, docs: Sequence[Document]) -> list[dict[str, str]]:
        return [{"id": d.id, "contents": d.contents} for d in docs]

    def open_searcher(self, path: Path) -> Any:
        searcher = java_class("io.anserini.search.SimpleSearcher")(str(path))
        searcher.set_bm25(float(self.config.k1), float(self.config.b))
        if self.config.rm3:
            searcher.set_rm3(
                None,  # collection class: None reads the stored term vectors
                self.config.rm3_fb_terms,
                self.config.rm3_fb_docs,
                float(self.config.rm3_original_weight),
                False,  # debug
                True,  # filter non-English terms
            )
        return searcher

    def search_batch(self, searcher: Any, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        qids = [str(i) for i in range(len(queries))]
        found = searcher.batch_search(java_list(list(queries)), java_list(qids), k, self.config.threads)
        return [[(hit.docid, hit.score) for hit in found.get(qid)] for qid in qids]
