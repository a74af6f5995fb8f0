"""Lucene's SPLADE ranking against the exact sparse dot product of the same quantised vectors.

``SimpleImpactSearcher`` scores ``sum_t q_t * d_t`` over integer impacts; a scipy CSR product computes the
same scores for every document. Agreement is measured per query as the fraction of Lucene's top-k that the
exact scores also put in their top k, counting ties at the k-th score as agreement (Lucene breaks ties by
its internal document order, which need not match ours).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rag.indexes.splade import SpladeRetriever


class SpladeKeepingVectors(SpladeRetriever):
    """A SPLADE retriever that keeps the quantised document vectors it indexes, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept_vectors: list[dict[str, int]] = []

    def encode_documents(self, texts: Sequence[str]) -> list[dict[str, int]]:
        vectors = super().encode_documents(texts)
        self.kept_vectors.extend(vectors)
        return vectors


def exact_scores(
    doc_vectors: Sequence[dict[str, int]], query_vectors: Sequence[dict[str, int]]
) -> np.ndarray:
    """``# [queries, docs]`` integer dot products of quantised query and document vectors."""
    from scipy.sparse import csr_matrix

    column: dict[str, int] = {}
    for vector in doc_vectors:
        for term in vector:
            column.setdefault(term, len(column))

    def matrix(vectors: Sequence[dict[str, int]]) -> csr_matrix:
        rows, cols, values = [], [], []
        for i, vector in enumerate(vectors):
            for term, impact in vector.items():
                if term in column:  # a query term no document has scores nothing
                    rows.append(i)
                    cols.append(column[term])
                    values.append(impact)
        return csr_matrix((values, (rows, cols)), shape=(len(vectors), len(column)), dtype=np.int64)

    return (matrix(query_vectors) @ matrix(doc_vectors).T).toarray()


def top_k_agreement(
    lucene_ids: Sequence[Sequence[str]], scores: np.ndarray, doc_ids: Sequence[str], k: int = 10
) -> list[float]:
    """Per query: the fraction of Lucene's top-``k`` ids whose exact score reaches the exact k-th score.

    A query whose exact scores are all zero expects no hits; it agrees when Lucene returns none.
    """
    row_of = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    agreement = []
    for ids, row in zip(lucene_ids, scores, strict=True):
        expected = np.sort(row)[::-1][:k]
        positive = expected[expected > 0]
        if len(positive) == 0:
            agreement.append(1.0 if not ids else 0.0)
            continue
        threshold = positive[-1]
        wanted = len(positive)
        hits = sum(1 for doc_id in list(ids)[:k] if row[row_of[doc_id]] >= threshold)
        agreement.append(min(hits, wanted) / wanted)
    return agreement
