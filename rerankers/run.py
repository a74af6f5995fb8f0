"""Rerank a whole retrieval run (query id -> hits), for evaluation and benchmarks.

>>> run = run_queries(retriever, queries, k=20)                        # doctest: +SKIP
>>> reranked = rerank_run(reranker, run, queries, docstore, depth=20)  # doctest: +SKIP
>>> score_run(reranked, qrels)                                         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping

from tqdm.auto import tqdm

from rag.rerankers.base import Reranker
from rag.rerankers.lm import DocumentSource
from rag.types import Hit


def rerank_run(
    reranker: Reranker,
    run: Mapping[str, list[Hit]],
    queries: Mapping[str, str],
    docstore: DocumentSource | None = None,
    *,
    depth: int | None = None,
    progress: bool = True,
) -> dict[str, list[Hit]]:
    """Rerank the first ``depth`` hits of every query (all when None); hits below ``depth`` follow unchanged.

    ``docstore`` is given to rerankers that read documents and have none yet.
    """
    if docstore is not None and getattr(reranker, "docstore", False) is None:
        reranker.docstore = docstore  # type: ignore[attr-defined]
    reranked: dict[str, list[Hit]] = {}
    for qid, hits in tqdm(run.items(), desc="rerank", unit="q", disable=not progress):
        head, tail = (hits[:depth], hits[depth:]) if depth is not None else (hits, [])
        top = reranker.rerank(queries[qid], head)
        low = top[-1].score if top else 0.0  # keep the tail below the reranked head, in retriever order
        rest = [Hit(h.doc_id, low - 1.0 - i, len(top) + i + 1, h.source) for i, h in enumerate(tail)]
        reranked[qid] = top + rest
    return reranked
